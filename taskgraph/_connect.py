"""How ``init()`` joins a cluster: a client connected to a scheduler, or a local
cluster started and waited for, and what ``init()``'s keywords set up on the way
(Ray's logging set-up, a clear error for Ray's keywords we lack).

``_api.py`` decides which (an address, "auto", "local") and keeps the
runtime this returns; nothing here holds state of its own.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph import config
from taskgraph._client import Client
from taskgraph._deliveries import DeliveryListener
from taskgraph._leases import Leases
from taskgraph._local_cluster import LocalCluster
from taskgraph._object_io import host_id
from taskgraph._output import OutputPrinter
from taskgraph._processes import worker_arguments
from taskgraph._transport import connect_blocking
from taskgraph.settings import settings

if TYPE_CHECKING:
    from taskgraph._tls import TLS

JOIN_TIMEOUT = 60.0  # seconds a local cluster's worker may take to join its scheduler


def connect(
    address: str, token: str, namespace: str, output: bool = True, tls: TLS | None = None
) -> Client:
    """A driver's client, connected and welcomed by the scheduler at ``address``."""
    client_id = os.urandom(8)
    secret = config.token_bytes(token)
    # Executors on this host open channels to us here (leases, actors called
    # directly) and, if the hello names it, hand us results we wait for
    # (_deliveries.py).
    listener = DeliveryListener(secret)
    hello = w.Hello(
        "client",
        b"",
        client_id,
        pid=os.getpid(),
        host=host_id(),
        namespace=namespace,
        deliver=listener.address if settings().direct_results else "",
        output=output,
    )
    try:
        conn, welcome = connect_blocking(address, secret, hello, w.SCHEDULER_TO_CLIENT, tls)
    except BaseException:
        listener.close()
        raise
    client = Client(conn, client_id, welcome, token=secret)
    client.objects.tls = tls  # (to pull objects from other hosts' workers)
    client.on_notice = _show_notice
    if output:
        client.output = OutputPrinter(settings().output_fold_window)
    listener.client = client
    client.deliveries = listener
    if settings().task_leases:
        client.leases = Leases(client)
    return client


def start_local(
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    object_store_memory: int | None,
    memory: int | None,
    namespace: str,
    output: bool,
    dashboard: tuple[str, int | None] | None,
    tls: TLS | None = None,
) -> tuple[Client, LocalCluster]:
    """A scheduler and a worker on this machine, and a client connected once the
    worker has joined (it knows the worker from the start)."""
    args = worker_arguments(num_cpus, num_gpus, memory, object_store_memory, resources)
    cluster = LocalCluster(args, dashboard, tls)
    try:
        client = connect(cluster.local_address, cluster.token, namespace, output, tls)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while True:
            nodes = client.query("nodes")
            if nodes:
                client.workers = [
                    w.WorkerInfo(
                        n["node_id"], n["host"], n["address"], n["resources"], n["pid"], n["peer"]
                    )
                    for n in nodes
                ]
                break
            cluster.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the local worker did not join the scheduler within {JOIN_TIMEOUT:g} s"
                )
            time.sleep(0.01)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def _show_notice(level: str, text: str) -> None:
    # Logged, not warnings.warn: this runs on the client's reader thread.
    logging.getLogger("taskgraph").log(logging.getLevelName(level.upper()), text)


# -- init()'s keywords ---------------------------------------------------------

# Ray's init() keywords with no equivalent here yet: an error names them, so a
# program ported from Ray fails clearly rather than with Python's bare message.
RAY_ONLY_KEYWORDS = frozenset(
    {
        "runtime_env",
        "job_config",
        "local_mode",
        "labels",
        "storage",
        "object_spilling_directory",
        "enable_resource_isolation",
        "_system_config",
        "_temp_dir",
        "_node_ip_address",
        "_plasma_directory",
        "_redis_password",
        "_metrics_export_port",
        "_enable_object_reconstruction",
        "_tracing_startup_hook",
    }
)
LOG_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)d -- %(message)s"


def refuse_keywords(given: dict[str, Any], init: Callable[..., Any]) -> None:
    """Raise a TypeError naming the first keyword ``init`` was given but does not take."""
    if not given:
        return
    name = sorted(given)[0]
    if name in RAY_ONLY_KEYWORDS:
        raise TypeError(
            f"init() does not take Ray's {name}= yet: taskgraph has no equivalent. "
            "Remove it (docs/guide.md, 'Porting from Ray', lists what differs)."
        )
    known = [p for p in inspect.signature(init).parameters if p != "unsupported"]
    raise TypeError(f"init() has no keyword {name}=; it takes: {', '.join(known)}.")


def configure_logging(level: int | str, fmt: str | None) -> None:
    """Ray's way: the package's logger gets a level and a stderr handler (one,
    however often init() runs); records still reach the root's handlers."""
    logger = logging.getLogger("taskgraph")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    handler = next((h for h in logger.handlers if isinstance(h, _Stderr)), None)
    if handler is None:
        handler = _Stderr()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt or LOG_FORMAT))


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes: notebooks and test
    runners swap it, and a stream taken at init() could be closed by then."""

    taskgraph = True  # (how tests tell it apart)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # (StreamHandler.__init__ sets it)
