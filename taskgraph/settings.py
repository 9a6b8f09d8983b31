"""Every ``TASKGRAPH_*`` environment variable, in one record.

A process reads its settings once, on first use (``settings()``), and again
at each ``tg.init()``; nothing else in taskgraph reads a ``TASKGRAPH_*``
variable (a test checks). ``python docs/settings.py --write`` puts the table
into docs/settings.md (a test checks that they match)::

    from taskgraph.settings import settings
    settings().task_leases     # True unless TASKGRAPH_TASK_LEASES=0

Variables marked *internal* are set by a worker daemon for the executors it
starts; a user has no reason to set them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _flag(text: str) -> bool:
    return text != "0"


@dataclass(frozen=True)
class Variable:
    name: str  # TASKGRAPH_<name upper-cased>
    default: str  # as text, the way it would be set
    parse: Callable[[str], Any]
    meaning: str
    internal: bool = False

    @property
    def env(self) -> str:
        return "TASKGRAPH_" + self.name.upper()


VARIABLES: tuple[Variable, ...] = (
    # -- where the cluster is ---------------------------------------------------
    Variable("address", "", str, "cluster address `tg.init()` and the CLIs use when given none"),
    Variable(
        "token", "", str, "the cluster's token (else the one recorded for this host's cluster)"
    ),
    Variable(
        "state_dir",
        "/tmp/taskgraph-<uid>",
        str,
        "where clusters started by the CLI are recorded, with their logs",
    ),
    Variable("shm_dir", "/dev/shm", str, "where worker daemons make their shared-memory arenas"),
    Variable(
        "host_id",
        "",
        str,
        "this process's host name in the cluster (else the machine's); "
        "processes with different ones do not share memory",
    ),
    Variable(
        "peer_host",
        "",
        str,
        "the address other hosts' workers reach this worker's objects at "
        "(else the one it reaches the scheduler from)",
    ),
    # -- TLS (docs/security.md): all three, or none ---------------------------------
    Variable(
        "tls_cert",
        "",
        str,
        "this process's TLS certificate, signed by the cluster's CA (`taskgraph tls init`); "
        "with the two below, every connection to the scheduler and between hosts is TLS, "
        "and plain TCP is refused",
    ),
    Variable("tls_key", "", str, "the private key of `TASKGRAPH_TLS_CERT`"),
    Variable(
        "tls_ca", "", str, "the cluster's CA certificate, which every peer's must be signed by"
    ),
    # -- fast paths -------------------------------------------------------------
    Variable(
        "direct_results",
        "1",
        _flag,
        "0: an executor never hands a result to its waiting driver itself",
    ),
    Variable("task_leases", "1", _flag, "0: a driver never leases an executor for its tasks"),
    Variable("direct_actor_calls", "1", _flag, "0: actor calls always go through the scheduler"),
    Variable(
        "read_in_get",
        "1",
        _flag,
        "0: a thread waiting in get() for answers from a lease or an actor called "
        "directly never reads them itself (the channel's own thread hands them over)",
    ),
    Variable(
        "lease_idle", "0.05", float, "seconds a leased executor waits for a task before ending"
    ),
    # -- timing and sizes -------------------------------------------------------
    Variable(
        "store_full_wait",
        "1.0",
        float,
        "seconds a put into a full store waits for room before it fails",
    ),
    Variable(
        "batch_delay",
        "0.001",
        float,
        "seconds a worker daemon gathers messages nothing waits on before sending",
    ),
    Variable(
        "executor_prefetch",
        "16",
        int,
        "short tasks a worker daemon hands an executor at once, at most",
    ),
    Variable(
        "output_fold_window",
        "5",
        float,
        "seconds a driver folds the same line printed by other processes into one "
        "'[repeated Nx across the cluster]' line; 0: show every line",
    ),
    Variable(
        "task_events",
        "10000",
        int,
        "finished tasks the scheduler remembers for the state API and the timeline "
        "(the oldest are dropped, and counted); 0: none",
    ),
    Variable("heartbeat_interval", "1", float, "seconds between a worker daemon's heartbeats"),
    Variable(
        "worker_timeout",
        "30",
        float,
        "seconds without a heartbeat before the scheduler counts a worker as dead",
    ),
    Variable(
        "queue_depth",
        "64",
        float,
        "tasks the scheduler queues per CPU of a worker beyond those it runs",
    ),
    # -- the memory monitor (worker/memory.py) -----------------------------------
    Variable(
        "memory_usage_threshold",
        "0.95",
        float,
        "share of the host's memory in use (total less available) above which a worker "
        "daemon kills a task to free memory (Ray's RAY_memory_usage_threshold)",
    ),
    Variable(
        "memory_monitor_refresh_ms",
        "250",
        int,
        "milliseconds between a worker daemon's looks at memory; 0: no memory monitor "
        "(Ray's RAY_memory_monitor_refresh_ms)",
    ),
    Variable(
        "task_memory_limit",
        "0",
        int,
        "bytes a worker's running tasks may use together (their processes' resident "
        "memory less what they share); above it the monitor kills as for host memory; "
        "0: no such cap, only the host's",
    ),
    # -- set by a worker daemon for its executors ---------------------------------
    Variable("executor_socket", "", str, "the daemon's socket", internal=True),
    Variable("token_hex", "", str, "the cluster token, hex-encoded", internal=True),
    Variable("worker_id", "", str, "the daemon's worker id", internal=True),
    Variable("executor_id", "", str, "the executor's number at its daemon", internal=True),
    Variable("report_fd", "-1", int, "the write end of the executor's report pipe", internal=True),
)


@dataclass(frozen=True)
class Settings:
    """This process's settings; see ``VARIABLES`` for each one's meaning."""

    address: str
    token: str
    state_dir: str
    shm_dir: str
    host_id: str
    peer_host: str
    tls_cert: str
    tls_key: str
    tls_ca: str
    direct_results: bool
    task_leases: bool
    direct_actor_calls: bool
    read_in_get: bool
    lease_idle: float
    store_full_wait: float
    batch_delay: float
    executor_prefetch: int
    output_fold_window: float
    task_events: int
    heartbeat_interval: float
    worker_timeout: float
    queue_depth: float
    memory_usage_threshold: float
    memory_monitor_refresh_ms: int
    task_memory_limit: int
    executor_socket: str
    token_hex: str
    worker_id: str
    executor_id: str
    report_fd: int

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives (a malformed value is a ValueError
        that names the variable)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            text = environ.get(var.env)
            if text is None:
                text = var.default
                if var.name == "state_dir":
                    text = f"/tmp/taskgraph-{os.getuid()}"
            try:
                values[var.name] = var.parse(text)
            except ValueError:
                raise ValueError(f"{var.env}={text!r}: {var.meaning}") from None
        return cls(**values)

    def state_path(self) -> Path:
        path = Path(self.state_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path


_current: Settings | None = None


def settings() -> Settings:
    """This process's settings, read on first use."""
    global _current
    if _current is None:
        _current = Settings.read()
    return _current


def reread() -> Settings:
    """Read the environment again (``tg.init()`` does)."""
    global _current
    _current = Settings.read()
    return _current


def markdown() -> str:
    """The table docs/settings.md holds."""
    lines = [
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(none)"
        meaning = ("*internal:* " if var.internal else "") + var.meaning
        lines.append(f"| `{var.env}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


assert [f.name for f in dataclasses.fields(Settings)] == [v.name for v in VARIABLES]
