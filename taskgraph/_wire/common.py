"""What every link shares: the base of every message, the handshake, and the
records that ride inside other messages.

``Msg`` is the base of every message (a msgspec struct, tagged with its class
name, encoded as a positional array). The handshake opens every connection
(``taskgraph/_transport.py``); the records (a task's spec, its result, a
value, where an object lives, a worker) travel only inside other messages.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

PROTOCOL_VERSION = 1


class Msg(msgspec.Struct, tag=True, array_like=True, omit_defaults=True):
    """Base of every message."""


# -- handshake ---------------------------------------------------------------


class Challenge(Msg):
    nonce: bytes
    version: int = PROTOCOL_VERSION


class Hello(Msg):
    """First message from a connecting peer: who it is and the proof of the token."""

    role: str  # "client" | "worker" | "executor"
    digest: bytes  # HMAC-SHA256(token, nonce)
    client_id: bytes
    version: int = PROTOCOL_VERSION
    pid: int = 0
    host: str = ""
    namespace: str = ""
    deliver: str = ""  # a client's address for results from executors on its host
    output: bool = False  # a driver that shows what its tasks print (log_to_driver)


class Welcome(Msg):
    client_id: bytes
    cluster_id: str
    workers: list[WorkerInfo] = []
    dashboard: str = ""  # the scheduler's HTTP port (/metrics), "http://host:port"; "": none


class Rejected(Msg):
    reason: str


class StartTLS(Msg):
    """A server with certificates says so first, in plain text; then both ends
    run a TLS handshake and the handshake above goes on inside it
    (``taskgraph/_tls.py``)."""


# -- shared records ----------------------------------------------------------


class Location(Msg):
    """Where a large object lives: the object store of a worker daemon."""

    worker_id: str
    store: str  # the holding daemon's address on its host, where its store is reached
    size: int
    host: str
    peer: str = ""  # the holding worker's peer server, for readers on other hosts


# A resource amount as it crosses the wire: finite and not negative, or the frame
# is refused where it enters (one `CPU: nan` would stop placement everywhere).
Amount = Annotated[float, msgspec.Meta(ge=0.0, le=1e18)]


class WorkerInfo(Msg):
    worker_id: str
    host: str
    address: str
    resources: dict[str, Amount]
    pid: int = 0
    peer: str = ""  # tcp://ip:port where other hosts pull this worker's objects


class ActorSpec(Msg):
    """What an actor creation task carries beyond a task's fields."""

    class_name: str
    methods: dict[str, int]  # method name -> num_returns
    hold: dict[str, float] = {}  # resources held while alive (creation places with spec's)
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int = 1
    is_async: bool = False
    name: str = ""
    namespace: str = ""
    detached: bool = False
    get_if_exists: bool = False


FOREVER = 2**31 - 1  # max_retries / max_restarts of -1 (the user's "forever"), on the wire


class TaskSpec(Msg):
    """One node of the task graph, as the client records it."""

    task_id: bytes
    function_id: bytes
    name: str
    args: bytes  # serialized (args, kwargs); top-level refs stay refs
    deps: list[bytes]  # object ids whose values the task needs before it runs
    nested: list[bytes] = []  # object ids inside the arguments: kept alive, not awaited
    num_returns: int = 1
    resources: dict[str, Amount] = {}
    max_retries: int = 0
    retry_exceptions: bool = False
    strategy: str = "DEFAULT"  # "DEFAULT" | "SPREAD" | "node:<id>" | "node?:<id>" (soft)
    parent: bytes = b""  # task that submitted it, for recursive cancel
    generator: bool = False
    actor_id: bytes = b""  # set on actor creation and method call tasks
    method: str = ""  # the method a call runs; "" on the creation task
    actor: ActorSpec | None = None  # set on the creation task only
    namespace: str = ""  # the submitter's: code in the task sees the same named actors
    # A client's address: the executor that runs this opens a channel to it
    # (taskgraph/_channels.py). On a lease (no actor_id), to serve the client's
    # tasks; on an actor call, to take that caller's later calls.
    channel_to: str = ""
    # Sent down a channel (a lease's task id, or an actor's id): the client sends
    # it straight to the executor and tells the scheduler only to record it.
    channel: bytes = b""
    # The driver whose job this is (what it prints goes there), when the submitter
    # is not that driver: a task's tasks. Empty: the submitter's own.
    job: bytes = b""
    site: int = 0  # where the user's code submitted it (CallSite; 0: not known)
    # retry_exceptions given as a list: those exception classes, pickled; the
    # executor says when what the task raised is none of them (no_retry).
    retry_on: bytes = b""
    # An executor runs this function at most max_calls times, then exits and is
    # replaced (worker/state.py). 0: no limit.
    max_calls: int = 0


def is_lease(spec: TaskSpec) -> bool:
    return bool(spec.channel_to) and not spec.actor_id


class Value(Msg):
    """An object's content as the scheduler hands it out: inline, in a store, or an error."""

    object_id: bytes
    data: bytes | None = None
    location: Location | None = None
    error: bytes | None = None


class ReturnValue(Msg):
    object_id: bytes
    data: bytes | None = None
    location: Location | None = None
    contains: list[bytes] = []


class TaskResult(Msg):
    task_id: bytes
    returns: list[ReturnValue] = []
    error: bytes | None = None  # pickled exception (TaskError or a system error)
    # "" | "task" | "crashed" | "oom" (the memory monitor killed it) | "cancelled" |
    # "input" (see ``lost``)
    failure: str = ""
    exit_code: int = 0
    duration: float = 0.0  # seconds the executor spent on it (0: not measured)
    started: float = 0.0  # wall-clock time it started (time.time(); 0: it never ran)
    delivered: bool = False  # the returns went straight to the waiting owner (_deliveries.py)
    channel: bytes = b""  # it came down a channel (TaskSpec.channel): the daemon only relays it
    pid: int = 0  # the process that ran it
    # Seconds it spent in each phase: [fetch, deserialize, run, store] (its
    # arguments fetched from other hosts, then decoded; its function; its
    # returns stored). Fewer when it failed before the end.
    phases: list[float] = []
    error_type: str = ""  # the class name of the exception the task raised
    no_retry: bool = False  # what it raised is not among its retry_exceptions (TaskSpec.retry_on)
    lost: bytes = b""  # failure "input": the argument it could not read (its copy is gone)
    lost_from: str = ""  # ... and the worker whose copy that was
