"""The scheduler's records and the events and instructions of its state machine.

Plain data: ``state.py`` and the modules beside it decide, ``views.py`` reads.
"""

from __future__ import annotations

import pickle
import pickletools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskgraph import _wire as w
from taskgraph.exceptions import TaskgraphError

# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientJoined:
    client_id: bytes
    via_worker: str | None = None
    namespace: str = ""
    host: str = ""
    deliver: str = ""  # where executors on its host may hand it results


@dataclass(frozen=True, slots=True)
class ClientLeft:
    client_id: bytes


@dataclass(frozen=True, slots=True)
class ClientSent:
    client_id: bytes
    messages: list[Any]


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    info: w.WorkerInfo


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    worker_id: str
    reason: str = "connection lost"


@dataclass(frozen=True, slots=True)
class WorkerSent:
    worker_id: str
    messages: list[Any]


@dataclass(frozen=True, slots=True)
class Tick:
    now: float  # monotonic seconds (a wall-clock jump must not drop every worker)


Event = ClientJoined | ClientLeft | ClientSent | WorkerJoined | WorkerLeft | WorkerSent | Tick


@dataclass(slots=True)
class Send:
    """Instruction: deliver these messages to a client or a worker."""

    to: str  # "client" | "worker"
    id: Any
    messages: list[Any]


# -- records -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Task:
    spec: w.TaskSpec
    owner: bytes
    state: str = "new"
    need: dict[str, float] = field(default_factory=dict)
    shape: tuple[Any, ...] = ()
    waiting_on: set[bytes] = field(default_factory=set)
    worker: str | None = None
    gpu_ids: list[int] = field(default_factory=list)
    retries_left: int = 0
    blocked: bool = False
    cancel_requested: bool = False
    items: list[bytes] = field(default_factory=list)  # a generator task's item objects
    started: float = 0.0  # wall-clock times from its report (0: not reported)
    awaited: bool = False  # its worker was asked to send its report at once
    ended: float = 0.0
    # For its events (scheduler/history.py): wall-clock times the scheduler
    # recorded it and placed it, and from its report, the process that ran it,
    # its phases' seconds and its error's type.
    submitted: float = 0.0
    placed: float = 0.0
    pid: int = 0
    phases: Sequence[float] = ()  # (a shared empty tuple until reported: no list per task)
    error_type: str = ""

    @property
    def id(self) -> bytes:
        return self.spec.task_id


@dataclass(slots=True, eq=False)
class Obj:
    id: bytes
    task: bytes | None  # the task that makes it; None for put
    state: str = "pending"  # pending | ready | error
    data: bytes | None = None
    location: w.Location | None = None
    error: bytes | None = None
    refs: int = 0
    contains: list[bytes] = field(default_factory=list)
    waiters: set[bytes] = field(default_factory=set)
    dependents: list[Task] = field(default_factory=list)
    copies: dict[str, w.Location] = field(default_factory=dict)  # pulled by other workers
    site: str = ""  # where the user's code made it (file.py:function:line; "": not known)
    # How to make it again if its every copy is lost (scheduler/lineage.py): the
    # task that made it (None: a put, or a task that may not run again, and why
    # in ``no_rebuild``), how many more times it may, and how many objects' such
    # tasks take it as an argument (while any does, its record outlives its value).
    lineage: w.TaskSpec | None = None
    rebuilds_left: int = 0
    no_rebuild: str = ""
    lineage_refs: int = 0

    def as_value(self) -> w.Value:
        return w.Value(self.id, data=self.data, location=self.location, error=self.error)


@dataclass(slots=True, eq=False)
class WorkerRec:
    worker_id: str
    info: w.WorkerInfo
    total: dict[str, float]
    available: dict[str, float]
    gpu_free: list[float]
    running: set[bytes] = field(default_factory=set)
    functions: set[bytes] = field(default_factory=set)
    segments: dict[bytes, str] = field(default_factory=dict)  # object id -> its store
    executors: int = 0
    piped_reports: int = 0  # as of its last heartbeat (worker/reports.py)
    last_seen: float = 0.0
    store: dict[str, int] = field(default_factory=dict)  # its object store, as of its heartbeat
    executor_pids: list[int] = field(default_factory=list)  # its processes, likewise
    system: dict[str, float] = field(default_factory=dict)  # its host's CPU and memory, likewise
    transfers: dict[str, int] = field(default_factory=dict)  # objects pulled and served, likewise

    # The worker's one ledger of what is free: tasks, actors and leases take and
    # give back through these two. GPUs are counted per device, in shares
    # (``GPU: 0.5`` takes half of each device in ``gpu_ids``; 1 or more, all).

    def reserve(self, need: dict[str, float], gpu_ids: list[int]) -> None:
        available = self.available
        for name, amount in need.items():
            available[name] = available.get(name, 0.0) - amount
        if gpu_ids:
            self._gpu_share(need, gpu_ids, -1.0)

    def give_back(self, need: dict[str, float], gpu_ids: list[int]) -> None:
        available = self.available
        for name, amount in need.items():
            available[name] = available.get(name, 0.0) + amount
        if gpu_ids:
            self._gpu_share(need, gpu_ids, 1.0)

    def _gpu_share(self, need: dict[str, float], gpu_ids: list[int], sign: float) -> None:
        share = need.get("GPU", 0.0)
        if share > 0:
            for gpu in gpu_ids:
                self.gpu_free[gpu] += sign * (1.0 if share >= 1 else share)


@dataclass(slots=True, eq=False)
class ClientRec:
    client_id: bytes
    via_worker: str | None
    namespace: str
    host: str = ""
    deliver: str = ""
    held: set[bytes] = field(default_factory=set)
    warned_shapes: set[tuple[Any, ...]] = field(default_factory=set)
    # Actors whose processes lost our direct connection: the calls they got and
    # had not answered then (see CallerLeft), applied when we leave.
    channels_closed: dict[bytes, set[bytes]] = field(default_factory=dict)
    sites: dict[int, str] = field(default_factory=dict)  # its call sites, by number (CallSite)


@dataclass(slots=True, eq=False)
class EarlyReport:
    """A channel task's report that came before its client's record of it. It
    holds the objects its returns contain until the record applies it."""

    worker_id: str
    result: w.TaskResult
    held: list[bytes]


def error_type_of(error: bytes | None) -> str:
    """The class name of a pickled exception, read from the pickle's opcodes (an
    exception pickles as its class, then its arguments), never by unpickling: the
    scheduler runs no code of what it was sent."""
    if not error:
        return ""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(error):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and strings:
                return strings[-1].rsplit(".", 1)[-1]
            elif op.name == "GLOBAL" and arg:
                return str(arg).split(" ")[-1].rsplit(".", 1)[-1]
    except Exception:  # (not a pickle after all)
        return ""
    return ""


def error_bytes(exc: TaskgraphError) -> bytes:
    return pickle.dumps(exc)
