"""The wire protocol: every message any two taskgraph processes exchange.

Messages are typed records (msgspec structs, tagged, encoded as msgpack
arrays) so that a peer's bad input is a clear ``ProtocolError``, never a crash
or an unpickle. Values and code ride as opaque ``bytes`` fields that only the
receiver that needs them unpickles, and only after the peer authenticated.

A frame on any stream is ``u32 little-endian length`` + a msgpack array of
messages: every link batches, one frame per flush, whatever the count.

This module knows nothing of sockets, threads or event loops: it encodes and
decodes. Who sends what to whom::

    client ──Submit/Put/Release/Acquire/Want/Cancel/Query/MetricsUpdate──▶ scheduler
    client ◀──Welcome/ObjectsReady/Notice/QueryReply──────── scheduler
    worker ──RegisterWorker/TasksDone/FromClient/Heartbeat──▶ scheduler
    worker ◀──RunTasks/FreeObjects/CancelRunning/ToClient──── scheduler
    executor ──Executed/Returned/Fetch/<client messages>──▶ worker daemon
    executor ◀──Execute/CancelTask/<scheduler-to-client messages>── worker daemon
    any process ──StoreCreate/Seal/Pin/Unpin──▶ its host's worker daemon

Executors reach the scheduler through their worker daemon, so that a task's
submissions and ref releases reach the scheduler in the same order as the
task's completion (one stream, one order).
"""

from __future__ import annotations

import struct
from typing import Any, Literal, Union, get_args

import msgspec

from taskgraph.exceptions import ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 31  # 2 GiB: larger values go through the object store, not a frame


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


# -- shared records ----------------------------------------------------------


class Location(Msg):
    """Where a large object lives: the object store of a worker daemon."""

    worker_id: str
    store: str  # the holding daemon's address on its host, where its store is reached
    size: int
    host: str
    peer: str = ""  # the holding worker's peer server, for readers on other hosts


class WorkerInfo(Msg):
    worker_id: str
    host: str
    address: str
    resources: dict[str, float]
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


class TaskSpec(Msg):
    """One node of the task graph, as the client records it."""

    task_id: bytes
    function_id: bytes
    name: str
    args: bytes  # serialized (args, kwargs); top-level refs stay refs
    deps: list[bytes]  # object ids whose values the task needs before it runs
    nested: list[bytes] = []  # object ids inside the arguments: kept alive, not awaited
    num_returns: int = 1
    resources: dict[str, float] = {}
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
    failure: str = ""  # "" | "task" | "crashed" | "cancelled"
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


# -- client -> scheduler -----------------------------------------------------


class ExportFunction(Msg):
    function_id: bytes
    payload: bytes


class SubmitTasks(Msg):
    tasks: list[TaskSpec]


class PutObject(Msg):
    object_id: bytes
    data: bytes | None = None
    location: Location | None = None
    contains: list[bytes] = []
    site: int = 0  # where the user's code put it (CallSite)


class CallSite(Msg):
    """A place in the user's code that submits tasks or puts objects, named once;
    later tasks and puts from there carry its number (taskgraph/_call_sites.py)."""

    number: int
    text: str  # file.py:function:line


class AcquireRefs(Msg):
    object_ids: list[bytes]


class ReleaseRefs(Msg):
    object_ids: list[bytes]


class WantObjects(Msg):
    object_ids: list[bytes]


class CancelTasks(Msg):
    object_ids: list[bytes]
    force: bool = False
    recursive: bool = True


class GeneratorItem(Msg):
    """One item a generator task yielded, sent as soon as it exists."""

    task_id: bytes
    index: int
    value: ReturnValue


class TaskBlocked(Msg):
    task_id: bytes


class TaskUnblocked(Msg):
    task_id: bytes


QueryName = Literal[
    "nodes",
    "cluster_resources",
    "available_resources",
    "statistics",
    "ping",  # a barrier: answered once everything the asker sent before is handled
    "get_actor",  # by name and namespace
    "actors",
    "memory",  # the top objects by size
    "tasks",
    "story",  # one task's, object's or actor's state changes, by id
    "list",  # the state API: the rows of a kind (scheduler/listing.py)
    "summary",  # the state API: the counts of a kind
]


QUERIES: tuple[str, ...] = get_args(QueryName)


class Query(Msg):
    """A question for the scheduler, answered with a ``QueryReply``."""

    request_id: int
    what: QueryName
    name: str = ""  # get_actor
    namespace: str = ""  # get_actor
    top: int = 10  # memory
    key: bytes = b""  # story
    kind: str = ""  # list, summary: tasks, actors, objects, nodes or workers
    filters: list[list[str]] = []  # list: [key, "=" or "!=", value], all must hold
    limit: int = 0  # list: rows at most (0: all)
    detail: bool = False  # list: every field


def query_for(what: QueryName, arg: Any = None, request_id: int = 0) -> Query:
    """The typed query for ``what``; ``arg``: get_actor's {"name", "namespace"},
    memory's top count, story's key, or list's and summary's fields as a dict."""
    if what == "get_actor":
        return Query(request_id, what, name=arg["name"], namespace=arg.get("namespace", ""))
    if what == "memory":
        return Query(request_id, what, top=int(arg or 10))
    if what == "story":
        return Query(request_id, what, key=arg)
    if what in ("list", "summary"):
        return Query(request_id, what, **arg)
    return Query(request_id, what)


class CreateNamedActor(Msg):
    """A named actor's creation waits for the scheduler's word: the name may be taken."""

    request_id: int
    spec: TaskSpec


class KillActor(Msg):
    actor_id: bytes
    no_restart: bool = True
    graceful: bool = False


class Goodbye(Msg):
    """The client is shutting down on purpose; its refs are released."""


class MetricSeries(Msg):
    """One tag combination of a user metric, as changed since the last update."""

    tags: list[str]  # the tag values, in the metric's tag_keys order
    value: float = 0.0  # counter: its increase; gauge: its value; histogram: sum observed
    buckets: list[int] = []  # histogram: observations per bucket (the last: above all)


class MetricData(Msg):
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    series: list[MetricSeries]
    description: str = ""
    tag_keys: list[str] = []
    boundaries: list[float] = []


class MetricsUpdate(Msg):
    """A process's user metrics (``taskgraph.util.metrics``) since its last update,
    at most one a second. For the scheduler's shell, which exports them on
    ``/metrics``; the state machine never sees one. Executors' go through their
    worker daemon unwrapped (order does not matter for them)."""

    metrics: list[MetricData]


# -- scheduler -> client -----------------------------------------------------


class ObjectsReady(Msg):
    values: list[Value]


class Notice(Msg):
    """Something the user should see once, e.g. a task no worker can ever run."""

    level: str
    text: str


class TaskOutput(Msg):
    """Lines a task or actor printed (worker/output.py): daemon to scheduler, and
    on to the driver of its job, if that driver asked for output."""

    job: bytes  # the driver's client id
    label: str  # "square", or "Counter[name]" for an actor
    pid: int
    node: str  # the worker id
    stream: int  # 1: stdout, 2: stderr
    lines: list[str]


class ReadLogs(Msg):
    """A driver asks one worker for its log files (worker/logs.py), through the
    scheduler, which answers with a ``QueryReply``. Not an executor's message."""

    request_id: int
    node: str
    pid: int = 0  # one process's files; 0: all
    task: str = ""  # only this task's lines (hex id)
    offsets: dict[str, int] | None = None  # following: read on from an earlier answer
    tail: int = 100  # lines of each file, from its end
    client_id: bytes = b""  # who asked: set by the scheduler on the way


class LogsRead(Msg):
    """A worker's answer to ``ReadLogs``: one entry per file (``read_logs``)."""

    client_id: bytes
    request_id: int
    files: list[dict[str, Any]]


class QueryReply(Msg):
    request_id: int
    result: Any


# -- worker <-> scheduler ----------------------------------------------------


class RegisterWorker(Msg):
    info: WorkerInfo


class Assignment(Msg):
    spec: TaskSpec
    inputs: list[Value]  # values of spec.deps, in order
    function: bytes = b""  # the function's code, the first time this worker sees it
    gpu_ids: list[int] = []
    deliver: str = ""  # the owner waits for the returns here (taskgraph/_deliveries.py)


class RunTasks(Msg):
    assignments: list[Assignment]


class TasksDone(Msg):
    results: list[TaskResult]


class FromClient(Msg):
    """Messages of an executor's client, relayed by its worker daemon in order."""

    client_id: bytes
    messages: list[ClientMessage]


class ToClient(Msg):
    client_id: bytes
    messages: list[ToClientMessage]


class ClientGone(Msg):
    client_id: bytes


class FreeObjects(Msg):
    object_ids: list[bytes]


class CancelRunning(Msg):
    task_id: bytes
    force: bool = False
    channel: bytes = b""  # the task came down this channel (a lease's id, or an actor's)


class StoreClientGone(Msg):
    """A process other than our executors (a driver) left a worker's store: the
    objects it sealed there that are not freed yet."""

    client_id: bytes
    object_ids: list[bytes]


class ObjectCopied(Msg):
    """A worker pulled a copy of an object into its own store."""

    object_id: bytes
    location: Location


class ActorDied(Msg):
    actor_id: bytes
    exit_code: int
    pid: int = 0


class ActorStarted(Msg):
    actor_id: bytes
    pid: int


class CallerLeft(Msg):
    """From an actor's process: a direct caller's connection closed. Of the calls
    that caller recorded, only those in ``in_flight`` (or reported already)
    reached the actor; the rest never will."""

    actor_id: bytes
    client_id: bytes
    in_flight: list[bytes]


class Heartbeat(Msg):
    running: int = 0
    executors: int = 0
    store: dict[str, int] | None = None  # ObjectStore.stats()
    piped_reports: int = 0  # reports read from executors' report pipes, ever
    system: dict[str, float] | None = None  # the host's cpu_percent, memory_* (psutil)
    transfers: dict[str, int] | None = None  # objects and bytes pulled and served, ever
    executor_pids: list[int] = []  # its executor processes (the state API's workers)


class Shutdown(Msg):
    reason: str = ""


class AfterFrames(Msg):
    """Opens each frame of an executor's report pipe: the frames it had sent on its
    stream before (worker/reports.py)."""

    count: int


class ReadReports(Msg):
    """To a worker: something waits on these tasks, running there; send their
    reports the moment they are in (read the report pipes now, and do not
    gather them with others: worker/reports.py)."""

    task_ids: list[bytes]


# -- executor <-> worker daemon ----------------------------------------------


class Fetch(Msg):
    """Executor to its daemon: bring this object from another host into our store."""

    request_id: int
    object_id: bytes
    location: Location


class Fetched(Msg):
    request_id: int
    location: Location | None = None
    error: str = ""


# -- worker <-> worker (peer transfer) ----------------------------------------


class FetchObject(Msg):
    object_id: bytes


class ObjectData(Msg):
    """Followed on the stream by exactly ``size`` raw bytes: the object."""

    object_id: bytes
    size: int


class ObjectMissing(Msg):
    object_id: bytes
    reason: str


# -- a process <-> its host's worker daemon (the object store) -----------------


class StoreCreate(Msg):
    """Room for a new object of ``size`` bytes; answered with a StoreReply."""

    object_id: bytes
    size: int


class StoreSeal(Msg):
    """The object is written; answered, so readers never see it half-done."""

    object_id: bytes


class StorePin(Msg):
    """Where is the object? Keep it there until unpinned."""

    object_id: bytes


class StoreUnpin(Msg):
    """Not answered: the last views of these objects are gone."""

    object_ids: list[bytes]


class StoreStats(Msg):
    """What the store holds; answered with a StoreReply carrying ``stats``."""


class StoreReply(Msg):
    object_id: bytes
    offset: int = -1  # in the arena
    size: int = 0
    path: str = ""  # a spilled object's file, when it could not come back
    error: str = ""
    full: list[int] | None = None  # needed, used, capacity: the store is full
    stats: dict[str, int] | None = None
    object_ids: list[bytes] | None = None  # with stats: every object held


# -- a client <-> an executor serving it (channels: taskgraph/_channels.py) ----


class ChannelReady(Msg):
    """Executor to client, first on the connection it opens back to the client: it
    serves channel ``channel_id`` (a lease's task id, or an actor's id)."""

    channel_id: bytes


class ChannelTask(Msg):
    """Client to executor: run this task or actor call (answered with ``DirectResult``).
    ``function`` is the task's code, the first time this channel runs it."""

    spec: TaskSpec
    function: bytes = b""


class DirectResult(Msg):
    """A channel task's result, straight from the executor that ran (and reports)
    it. ``via_scheduler``: the values are not in it (their returns hold refs):
    ask the scheduler for them."""

    result: TaskResult
    via_scheduler: bool = False


class LeaseEnding(Msg):
    """Executor to client, on a lease: idle a while (or ``revoked``: the scheduler
    wants the resources back), the lease ends; the client closes its side
    (after it, nothing more is sent), and what it sent before still runs."""

    revoked: bool = False


class Execute(Msg):
    assignment: Assignment


class Executed(Msg):
    result: TaskResult


class Returned(Msg):
    """Executor to daemon: tasks it was handed but will not start, because the task
    it runs is blocked in get(); the daemon queues them again."""

    task_ids: list[bytes]


class CancelTask(Msg):
    """Daemon to executor: cancel this task, whether it waits there or runs."""

    task_id: bytes
    force: bool = False


ClientMessage = (
    ExportFunction
    | SubmitTasks
    | PutObject
    | AcquireRefs
    | ReleaseRefs
    | WantObjects
    | CancelTasks
    | GeneratorItem
    | TaskBlocked
    | TaskUnblocked
    | Query
    | CreateNamedActor
    | KillActor
    | CallerLeft
    | CallSite
    | Goodbye
)
ToClientMessage = ObjectsReady | Notice | QueryReply | TaskOutput

CLIENT_MESSAGES = ClientMessage.__args__

_encoder = msgspec.msgpack.Encoder()


class Link:
    """One direction of one kind of connection, and the messages that may travel it.

    Every reader decodes with its link's decoder: a message of another kind
    fails the whole frame with a ``ProtocolError`` before any of it is handled
    (the reader then closes the connection).
    """

    def __init__(self, name: str, *messages: type[Msg]) -> None:
        self.name = name
        self.messages = messages
        self._decoder = msgspec.msgpack.Decoder(list[Union[messages]])  # type: ignore[valid-type]  # noqa: UP007

    def decode(self, body: bytes | memoryview) -> list[Any]:
        try:
            return self._decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(
                f"a message that does not belong on the {self.name} link: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"Link({self.name!r})"


TO_CLIENT = ToClientMessage.__args__
HANDSHAKE = Link("handshake", Challenge, Hello, Welcome, Rejected)
CLIENT_TO_SCHEDULER = Link("client to scheduler", *CLIENT_MESSAGES, ReadLogs, MetricsUpdate)
SCHEDULER_TO_CLIENT = Link("scheduler to client", *TO_CLIENT)
WORKER_TO_SCHEDULER = Link(
    "worker to scheduler",
    RegisterWorker,
    TasksDone,
    FromClient,
    ClientGone,
    StoreClientGone,
    ObjectCopied,
    ActorDied,
    ActorStarted,
    Heartbeat,
    TaskOutput,
    LogsRead,
    MetricsUpdate,
)
SCHEDULER_TO_WORKER = Link(
    "scheduler to worker",
    RunTasks,
    ToClient,
    ReadReports,
    FreeObjects,
    CancelRunning,
    KillActor,
    Shutdown,
    ReadLogs,
)
EXECUTOR_TO_DAEMON = Link(
    "executor to daemon", Executed, Returned, Fetch, *CLIENT_MESSAGES, MetricsUpdate
)
DAEMON_TO_EXECUTOR = Link("daemon to executor", Execute, CancelTask, Fetched, Shutdown, *TO_CLIENT)
REPORT_PIPE = Link("report pipe", AfterFrames, Executed)
STORE_REQUESTS = Link("store requests", StoreCreate, StoreSeal, StorePin, StoreUnpin, StoreStats)
STORE_REPLIES = Link("store replies", StoreReply)
PEER_REQUESTS = Link("peer requests", FetchObject)
PEER_REPLIES = Link("peer replies", ObjectData, ObjectMissing)
EXECUTOR_TO_CLIENT = Link(
    "executor to client", ObjectsReady, ChannelReady, DirectResult, LeaseEnding
)
CLIENT_TO_EXECUTOR = Link("client to executor", ChannelTask)
LINKS = (
    HANDSHAKE,
    CLIENT_TO_SCHEDULER,
    SCHEDULER_TO_CLIENT,
    WORKER_TO_SCHEDULER,
    SCHEDULER_TO_WORKER,
    EXECUTOR_TO_DAEMON,
    DAEMON_TO_EXECUTOR,
    REPORT_PIPE,
    STORE_REQUESTS,
    STORE_REPLIES,
    PEER_REQUESTS,
    PEER_REPLIES,
    EXECUTOR_TO_CLIENT,
    CLIENT_TO_EXECUTOR,
)


def encode(messages: list[Msg]) -> bytes:
    """One frame: length prefix + msgpack array of messages."""
    body = _encoder.encode(messages)
    return HEADER.pack(len(body)) + body


def take_frames(buffer: bytearray, link: Link) -> list[list[Any]]:
    """Decode and remove the whole frames at the start of ``buffer`` (a partial
    one stays for the next call): each frame's messages, in order. Every reader
    that gathers bytes itself splits them here."""
    frames: list[list[Any]] = []
    pos, end = 0, len(buffer)
    with memoryview(buffer) as view:
        while end - pos >= HEADER.size:
            n = frame_length(bytes(view[pos : pos + HEADER.size]))
            if end - pos - HEADER.size < n:
                break
            frames.append(link.decode(view[pos + HEADER.size : pos + HEADER.size + n]))
            pos += HEADER.size + n
    if pos:
        del buffer[:pos]
    return frames


def frame_length(header: bytes) -> int:
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return n
