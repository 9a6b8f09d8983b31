"""Messages between a client and the scheduler.

A client is a driver, or a task's or an actor's process (whose messages its
worker daemon relays, in order: ``FromClient`` in ``worker.py``). It exports
functions, submits tasks, puts, holds, releases, waits for and cancels
objects, asks questions (``Query``: one of ``QueryName``) and creates and
kills actors; the scheduler answers with values, notices and replies.
``ClientMessage`` and ``ToClientMessage`` are the two directions' unions.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from .common import Location, Msg, ReturnValue, TaskSpec, Value

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
    # An object that holds an error (a num_returns="dynamic" generator's last
    # item, when it raised): no data, and getting it raises.
    error: bytes | None = None


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


class ObjectUnreadable(Msg):
    """A reader could not read the object's copy on this worker: its holder is
    gone (the scheduler may not have heard yet). The copy counts as lost."""

    object_id: bytes
    worker_id: str


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


class CallerLeft(Msg):
    """From an actor's process: a direct caller's connection closed. Of the calls
    that caller recorded, only those in ``in_flight`` (or reported already)
    reached the actor; the rest never will."""

    actor_id: bytes
    client_id: bytes
    in_flight: list[bytes]


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


ClientMessage = (
    ExportFunction
    | SubmitTasks
    | PutObject
    | AcquireRefs
    | ReleaseRefs
    | WantObjects
    | ObjectUnreadable
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
TO_CLIENT = ToClientMessage.__args__
