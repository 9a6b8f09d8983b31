"""The wire protocol: every message any two taskgraph processes exchange.

Messages are typed records (msgspec structs, tagged, encoded as msgpack
arrays) so that a peer's bad input is a clear ``ProtocolError``, never a crash
or an unpickle. Values and code ride as opaque ``bytes`` fields that only the
receiver that needs them unpickles, and only after the peer authenticated.

A frame on any stream is ``u32 little-endian length`` + a msgpack array of
messages: every link batches, one frame per flush, whatever the count.

This package knows nothing of sockets, threads or event loops: it encodes and
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

Here: the links (which messages may travel each) and frames. Every message
is ``w.Name`` (``from taskgraph import _wire as w``), defined beside this::

    common.py    the base ``Msg``, the handshake, and records that ride inside
                 messages (TaskSpec, TaskResult, Value, Location, WorkerInfo, ...)
    client.py    a client and the scheduler
    worker.py    a worker daemon and the scheduler
    executor.py  an executor and its daemon; a client and an executor (channels)
    store.py     a process and its host's object store; daemons on two hosts (peers)
"""

from __future__ import annotations

import struct
from typing import Any, Union

import msgspec

from taskgraph.exceptions import ProtocolError

from .client import (
    CLIENT_MESSAGES,
    QUERIES,
    TO_CLIENT,
    AcquireRefs,
    CallerLeft,
    CallSite,
    CancelTasks,
    ClientMessage,
    CreateNamedActor,
    ExportFunction,
    GeneratorItem,
    Goodbye,
    KillActor,
    LogsRead,
    MetricData,
    MetricSeries,
    MetricsUpdate,
    Notice,
    ObjectsReady,
    ObjectUnreadable,
    PutObject,
    Query,
    QueryName,
    QueryReply,
    ReadLogs,
    ReleaseRefs,
    SubmitTasks,
    TaskBlocked,
    TaskOutput,
    TaskUnblocked,
    ToClientMessage,
    WantObjects,
    query_for,
)
from .common import (
    FOREVER,
    PROTOCOL_VERSION,
    ActorSpec,
    Challenge,
    Hello,
    Location,
    Msg,
    Rejected,
    ReturnValue,
    StartTLS,
    TaskResult,
    TaskSpec,
    Value,
    Welcome,
    WorkerInfo,
    is_lease,
)
from .executor import (
    ActorEnding,
    AfterFrames,
    CancelTask,
    ChannelReady,
    ChannelTask,
    DirectResult,
    Execute,
    Executed,
    Fetch,
    Fetched,
    LeaseEnding,
    Returned,
)
from .store import (
    FetchObject,
    ObjectData,
    ObjectMissing,
    StoreCreate,
    StorePin,
    StoreReply,
    StoreSeal,
    StoreStats,
    StoreUnpin,
)
from .worker import (
    ActorDied,
    ActorStarted,
    Assignment,
    CancelRunning,
    ClientGone,
    FreeObjects,
    FromClient,
    Heartbeat,
    ObjectCopied,
    ReadReports,
    RegisterWorker,
    RunTasks,
    Shutdown,
    StoreClientGone,
    TasksDone,
    ToClient,
)

# Every message, record and helper beside this module, as w.Name.
__all__ = [
    "CLIENT_MESSAGES",
    "FOREVER",
    "PROTOCOL_VERSION",
    "QUERIES",
    "TO_CLIENT",
    "AcquireRefs",
    "ActorDied",
    "ActorEnding",
    "ActorSpec",
    "ActorStarted",
    "AfterFrames",
    "Assignment",
    "CallSite",
    "CallerLeft",
    "CancelRunning",
    "CancelTask",
    "CancelTasks",
    "Challenge",
    "ChannelReady",
    "ChannelTask",
    "ClientGone",
    "ClientMessage",
    "CreateNamedActor",
    "DirectResult",
    "Execute",
    "Executed",
    "ExportFunction",
    "Fetch",
    "FetchObject",
    "Fetched",
    "FreeObjects",
    "FromClient",
    "GeneratorItem",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "KillActor",
    "LeaseEnding",
    "Location",
    "LogsRead",
    "MetricData",
    "MetricSeries",
    "MetricsUpdate",
    "Msg",
    "Notice",
    "ObjectCopied",
    "ObjectData",
    "ObjectMissing",
    "ObjectUnreadable",
    "ObjectsReady",
    "PutObject",
    "Query",
    "QueryName",
    "QueryReply",
    "ReadLogs",
    "ReadReports",
    "RegisterWorker",
    "Rejected",
    "ReleaseRefs",
    "ReturnValue",
    "Returned",
    "RunTasks",
    "Shutdown",
    "StartTLS",
    "StoreClientGone",
    "StoreCreate",
    "StorePin",
    "StoreReply",
    "StoreSeal",
    "StoreStats",
    "StoreUnpin",
    "SubmitTasks",
    "TaskBlocked",
    "TaskOutput",
    "TaskResult",
    "TaskSpec",
    "TaskUnblocked",
    "TasksDone",
    "ToClient",
    "ToClientMessage",
    "Value",
    "WantObjects",
    "Welcome",
    "WorkerInfo",
    "is_lease",
    "query_for",
]

HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 31  # 2 GiB: larger values go through the object store, not a frame

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


HANDSHAKE = Link("handshake", Challenge, Hello, Welcome, Rejected, StartTLS)
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
    "executor to daemon", Executed, Returned, Fetch, ActorEnding, *CLIENT_MESSAGES, MetricsUpdate
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
