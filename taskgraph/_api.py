"""The module-level API: ``init``, ``shutdown``, ``get``, ``put``, ``wait`` and friends.

One runtime per process: a driver's (which may own a local cluster) or an
executor's (set up by the executor before any task runs), kept here with the
task that runs now. Calls before ``init`` initialize implicitly, as in Ray.
How ``init`` connects or starts a cluster: ``_connect.py``.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from taskgraph import _connect, config
from taskgraph._client import Client
from taskgraph._client_statistics import ClientStatistics
from taskgraph._local_cluster import LocalCluster
from taskgraph._object_ref import ObjectRef
from taskgraph._runtime_context import RuntimeContext
from taskgraph.exceptions import AuthenticationError, ClusterConnectionError, GetTimeoutError
from taskgraph.settings import reread, settings

_lock = threading.RLock()
REPR_TIMEOUT = 2.0  # seconds a notebook repr may wait for the scheduler's answer
_runtime: Runtime | None = None


def _never() -> bool:
    return False


@dataclass
class TaskContext:
    """What runs now in an executor: a task, or an actor's constructor or call."""

    task_id: bytes
    node_id: str
    worker_id: str
    resources: dict[str, float]
    gpu_ids: list[int] = field(default_factory=list)
    actor_id: bytes = b""
    job_id: bytes = b""  # the driver whose job it is (its client id)
    cancelled: Callable[[], bool] = _never  # tg.cancel() was asked for it
    in_async_actor: bool = False  # its calls are coroutines: no context of their own


# The executor's task: set on the thread that runs it (an actor's calls may run
# side by side on threads), and for any other thread the latest one set.
_task_context: TaskContext | None = None
_thread_task = threading.local()


def _current_task() -> TaskContext | None:
    context: TaskContext | None = getattr(_thread_task, "context", None)
    return context if context is not None else _task_context


@dataclass
class Runtime:
    client: Client
    address: str
    namespace: str
    cluster: LocalCluster | None = None
    in_executor: bool = False


class ClusterContext:
    """What ``init`` returns: where the cluster is, usable as a context manager.

    ``dashboard_url``: the scheduler's HTTP port (``/metrics``), as
    ``"http://127.0.0.1:PORT"``; None when it serves none.
    """

    def __init__(
        self, address: str, namespace: str, local: bool, dashboard_url: str | None = None
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.local = local
        self.dashboard_url = dashboard_url

    def __repr__(self) -> str:
        kind = "local cluster" if self.local else "cluster"
        return (
            f"ClusterContext({kind} at {self.address}, namespace={self.namespace!r}, "
            f"dashboard_url={self.dashboard_url!r})"
        )

    def _repr_html_(self) -> str:
        """The cluster's size and resources (asked of the scheduler, briefly), and
        the dashboard's link."""
        from taskgraph import __version__, _html

        nodes, why = self._nodes()
        return _html.cluster(
            kind="local cluster" if self.local else "cluster",
            address=self.address,
            namespace=self.namespace,
            dashboard_url=self.dashboard_url,
            nodes=nodes,
            why_no_nodes=why,
            version=__version__,
        )

    def _nodes(self) -> tuple[list[dict[str, Any]] | None, str]:
        """The nodes, or None and why not: a repr must not start a cluster nor wait long."""
        runtime = _runtime
        if runtime is None or runtime.in_executor or runtime.address != self.address:
            return None, "not connected: shut down, or another cluster's context"
        try:
            return runtime.client.query("nodes", timeout=REPR_TIMEOUT), ""
        except TimeoutError:
            return None, f"the scheduler did not answer within {REPR_TIMEOUT:g} s"
        except ConnectionError as exc:
            return None, str(exc)

    def __enter__(self) -> ClusterContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    logging_level: int | str = logging.INFO,
    logging_format: str | None = None,
    configure_logging: bool = True,
    **unsupported: Any,
) -> ClusterContext:
    """Connect to a cluster, or start one on this machine.

    ``address``: None uses ``TASKGRAPH_ADDRESS`` if set, else starts a local
    cluster; "local" always starts one; "auto" joins the cluster that
    ``taskgraph start --head`` started on this host; "tcp://host:port" joins
    that scheduler (with ``token``, ``TASKGRAPH_TOKEN`` or this host's record).

    ``tls_cert``, ``tls_key``, ``tls_ca``: this driver's certificate, its key
    and the cluster's CA certificate, for a cluster that runs on TLS (else
    ``TASKGRAPH_TLS_*``, else this host's record of that cluster); a local
    cluster given them runs on TLS too. See docs/security.md.

    Ray's logging keywords work as in Ray: ``logging_level`` and
    ``logging_format`` set up the ``taskgraph`` logger (a handler to stderr),
    unless ``configure_logging=False``. What tasks and actors print shows here,
    each line prefixed with who printed it (``log_to_driver=False``: only in
    the workers' log files).

    A local cluster's scheduler serves the dashboard and ``/metrics`` on
    ``dashboard_host`` (127.0.0.1) at ``dashboard_port`` (None: 8686), or a free
    port when that one is taken (the log says so when it was asked for); the
    log says where at INFO level;
    ``include_dashboard=False``: no HTTP port. The returned context's
    ``dashboard_url`` says where (a cluster joined by address: where its
    scheduler serves, whatever these keywords say).
    Another Ray keyword is an error that names it.
    """
    global _runtime
    _connect.refuse_keywords(unsupported, init)
    if configure_logging:
        _connect.configure_logging(logging_level, logging_format)
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                return _context(_runtime)
            raise RuntimeError(
                "taskgraph.init() was already called; call shutdown() first or pass "
                "ignore_reinit_error=True"
            )
        reread()  # the environment as it is now (a program may have set it)
        if address is None:
            address = settings().address or "local"
        namespace = namespace if namespace is not None else os.urandom(4).hex()
        if object_store_memory is not None and (
            isinstance(object_store_memory, bool)
            or not isinstance(object_store_memory, int)
            or object_store_memory < config.MIN_OBJECT_STORE
        ):
            raise ValueError(
                "object_store_memory must be a whole number of bytes, at least 1 MiB; "
                f"got {object_store_memory!r}"
            )
        from taskgraph import _tls

        tls_files = (tls_cert, tls_key, tls_ca)
        if address == "local":
            tls = _tls.resolve(*tls_files, names=_tls.KEYWORDS)
            dashboard = None if include_dashboard is False else (dashboard_host, dashboard_port)
            client, cluster = _connect.start_local(
                num_cpus,
                num_gpus,
                resources,
                object_store_memory,
                memory,
                namespace,
                log_to_driver,
                dashboard,
                tls,
            )
            _runtime = Runtime(client, cluster.address, namespace, cluster)
            url = cluster.dashboard_url
            logging.getLogger("taskgraph").info(
                "started a local cluster at %s%s",
                _runtime.address,
                f"; dashboard at {url}/status" if url else "",
            )  # (as Ray says where its dashboard is)
        else:
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
                raise ValueError(
                    "num_cpus, num_gpus, resources and object_store_memory describe a new "
                    "cluster; when connecting to an existing one, set them on its workers"
                )
            if address == "auto":
                records = config.recorded("scheduler")
                if not records:
                    raise ClusterConnectionError(
                        "init('auto') found no taskgraph cluster started on this host; start one "
                        "with 'taskgraph start --head', or call init() to start a local one",
                        advice="",
                    )
                address = str(records[0]["address"])
                token = token or str(records[0]["token"])
            token = token or config.token_for(address)
            if token is None:
                raise AuthenticationError(
                    f"no token for the cluster at {address}: pass init(address, token=...) "
                    f"or set {config.TOKEN_ENV}"
                )
            tls = _tls.resolve(*tls_files, names=_tls.KEYWORDS, address=address)
            client = _connect.connect(address, token, namespace, log_to_driver, tls)
            _runtime = Runtime(client, address, namespace)
        atexit.register(shutdown)
        return _context(_runtime)


def _context(runtime: Runtime) -> ClusterContext:
    url = runtime.client.dashboard_url or None
    if url is not None:
        # A scheduler serving on every interface names none: use the host we reach it by.
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        if host in ("0.0.0.0", "[::]", ""):
            there = runtime.address.partition("://")[2].rpartition(":")[0]
            url = f"{scheme}://{there or '127.0.0.1'}:{port}"
    return ClusterContext(runtime.address, runtime.namespace, runtime.cluster is not None, url)


def shutdown() -> None:
    """Disconnect, and stop the local cluster if ``init`` started one."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
        if runtime is None or runtime.in_executor:
            _runtime = runtime
            return
        try:
            runtime.client.close()
        finally:
            if runtime.cluster is not None:
                runtime.cluster.close()
        atexit.unregister(shutdown)


def is_initialized() -> bool:
    return _runtime is not None


def client() -> Client:
    """This process's client, starting a local cluster if nothing was initialized."""
    runtime = _runtime
    if runtime is None:
        init()
        runtime = _runtime
    assert runtime is not None
    return runtime.client


def current_client() -> Client | None:
    runtime = _runtime
    return runtime.client if runtime is not None else None


def set_executor_client(c: Client, cluster_id: str) -> None:
    global _runtime
    _runtime = Runtime(c, address="", namespace="", in_executor=True)


def current_namespace() -> str:
    runtime = _runtime
    return runtime.namespace if runtime is not None else ""


def set_namespace(namespace: str) -> None:
    """In an executor: the namespace of the job whose task runs now."""
    if _runtime is not None:
        _runtime.namespace = namespace


def set_task_context(context: TaskContext | None) -> None:
    global _task_context
    _task_context = _thread_task.context = context


# -- get / put / wait ----------------------------------------------------------


def _check_refs(refs: Any, verb: str) -> list[ObjectRef]:
    if not isinstance(refs, list):
        raise ValueError(
            f"{verb}() takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}"
        )
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{verb}() was given {r!r}, which is not an ObjectRef")
    return refs


def get(refs: ObjectRef | list[ObjectRef], *, timeout: float | None = None) -> Any:
    """The values of refs (order kept); raises the task's error, or GetTimeoutError."""
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    if isinstance(refs, ObjectRef):
        return client().get([refs], timeout)[0]
    return client().get(_check_refs(refs, "get"), timeout)


def put(value: Any) -> ObjectRef:
    """Store a value in the cluster once; pass the ref to many tasks."""
    return client().put(value)


def wait(
    refs: list[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split refs into (ready, not ready), both in input order, once ``num_returns`` are ready."""
    if isinstance(refs, ObjectRef):
        raise TypeError("wait() takes a list of ObjectRefs, got a single ObjectRef; use [ref]")
    refs = _check_refs(refs, "wait")
    if not refs:  # as Ray: nothing to wait for is nothing ready, whatever num_returns says
        return [], []
    if len({r.id for r in refs}) != len(refs):
        raise ValueError("wait() requires a list of unique ObjectRefs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of refs ({len(refs)})"
        )
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    c = client()
    arrived = c.wait_values([r.id for r in refs], num_returns, timeout)
    if arrived is None:  # timed out: whatever is here by now is ready
        arrived = [r.id for r in refs if c.peek(r.id) is not None]
    here = set(arrived)
    ready = [r for r in refs if r.id in here][:num_returns]
    taken = {r.id for r in ready}
    return ready, [r for r in refs if r.id not in taken]


def as_completed(refs: Sequence[ObjectRef], timeout: float | None = None) -> Iterator[ObjectRef]:
    """Yield refs as their tasks finish (successfully or not)."""
    refs = _check_refs(list(refs), "as_completed")
    done: queue.SimpleQueue[ObjectRef] = queue.SimpleQueue()
    for ref in refs:
        ref.future().add_done_callback(partial(_put_ref, done, ref))
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(len(refs)):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            yield done.get(timeout=remaining)
        except queue.Empty:
            raise GetTimeoutError(timeout) from None


def _put_ref(done: queue.SimpleQueue[ObjectRef], ref: ObjectRef, _future: Any) -> None:
    done.put(ref)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Stop a task: dropped if not started; interrupted (or killed with force) if running."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    client().cancel([ref], force, recursive)


# -- cluster information -------------------------------------------------------


class NodeList(list[dict[str, Any]]):
    """What ``nodes()`` returns: a list of dicts, as Ray's (equal to a plain list
    of them); a notebook shows it as a table."""

    def _repr_html_(self) -> str:
        from taskgraph import _html

        return _html.node_table(self)


def nodes() -> list[dict[str, Any]]:
    """A dict per node: ``node_id``, ``host``, ``address``, ``resources`` (its
    total), ``available`` (free now), ``pid``, ``alive``."""
    return NodeList(client().query("nodes"))


def dashboard_url() -> str | None:
    """Where the cluster's dashboard is (connecting first, as every call does);
    None when its scheduler serves none."""
    client()
    runtime = _runtime
    assert runtime is not None
    return _context(runtime).dashboard_url


def cluster_resources() -> dict[str, float]:
    result: dict[str, float] = client().query("cluster_resources")
    return result


def available_resources() -> dict[str, float]:
    result: dict[str, float] = client().query("available_resources")
    return result


def statistics() -> ClientStatistics:
    """How this process's tasks and actor calls travelled, and how their results
    came back: a frozen snapshot of counts (see ``ClientStatistics``)."""
    return client().statistics()


def object_store_stats(top: int = 10) -> dict[str, Any]:
    """Per node: objects and bytes in its object store; the largest objects and their holders.

    ``objects`` and ``bytes`` are what the scheduler placed on the node (copies
    included); ``bytes_in_memory``, ``bytes_spilled``, ``objects_spilled``,
    ``capacity`` and ``bytes_reserved`` come from the node's own store, as of
    its last heartbeat (once a second): they agree with one another, not
    always with ``bytes``, which may be newer. ``inline`` counts the small objects the
    scheduler keeps in its own memory.
    """
    result: dict[str, Any] = client().query("memory", top)
    return result


def get_gpu_ids() -> list[int]:
    context = _current_task()
    return list(context.gpu_ids) if context is not None else []


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime, _current_task())
