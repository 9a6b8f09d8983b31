"""Messages between a worker daemon and the scheduler.

The scheduler hands a worker tasks (``RunTasks``), frees, cancels and kills
there, and passes its executors' clients what is theirs (``ToClient``); the
worker reports its tasks (``TasksDone``), relays its executors' client
messages (``FromClient``), and tells of copies, actors, departures and its
heartbeat.
"""

from __future__ import annotations

from .client import ClientMessage, ToClientMessage
from .common import Location, Msg, TaskResult, TaskSpec, Value, WorkerInfo

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
    """An actor's process exited. ``ending``: why, when the actor ended on purpose
    (its executor said so first, ``ActorEnding``); empty for a crash, whatever
    the exit code, which restarts it while ``max_restarts`` allows."""

    actor_id: bytes
    exit_code: int
    pid: int = 0
    ending: str = ""


class ActorStarted(Msg):
    actor_id: bytes
    pid: int


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


class ReadReports(Msg):
    """To a worker: something waits on these tasks, running there; send their
    reports the moment they are in (read the report pipes now, and do not
    gather them with others: worker/reports.py)."""

    task_ids: list[bytes]
