"""The worker's records and the events and instructions of its state machine.

Plain data: ``state.py`` decides. An ``Executor`` is one executor process as
the daemon's state machine sees it; its state changes are checked against
``EXECUTOR_TRANSITIONS`` (a pair missing from it raises). Events are what the
daemon feeds ``WorkerState.handle``; instructions are what it carries out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from taskgraph import _wire as w

# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TasksAssigned:
    assignments: list[w.Assignment]


@dataclass(frozen=True, slots=True)
class ExecutorReady:
    executor_id: int
    pid: int
    client_id: bytes


@dataclass(frozen=True, slots=True)
class ExecutorFinished:
    executor_id: int
    result: w.TaskResult


@dataclass(frozen=True, slots=True)
class ExecutorDied:
    executor_id: int
    exit_code: int


@dataclass(frozen=True, slots=True)
class CancelRequested:
    task_id: bytes
    force: bool
    channel: bytes = b""  # the task came down this lease or to this actor directly


@dataclass(frozen=True, slots=True)
class TasksReturned:
    """An executor will not start these tasks it was handed: its running task
    blocked in get()."""

    executor_id: int
    task_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class TaskBlocked:
    """A running task waits in get(): its CPU may run another task meanwhile."""

    task_id: bytes


@dataclass(frozen=True, slots=True)
class TaskUnblocked:
    task_id: bytes


@dataclass(frozen=True, slots=True)
class ActorEnds:
    """An actor's executor said it ends on purpose (``w.ActorEnding``): its exit is no crash."""

    executor_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class KillActorRequested:
    actor_id: bytes
    graceful: bool


@dataclass(frozen=True, slots=True)
class MemoryPressure:
    """The memory monitor (``memory.py``) found memory in use over its limit.

    ``used`` and ``limit``: what it measured against what it holds to (bytes);
    ``usage``: what each executor running a task uses (bytes, by executor id).
    """

    used: int
    limit: int
    usage: dict[int, int]


Event = (
    TasksAssigned
    | ExecutorReady
    | ExecutorFinished
    | ExecutorDied
    | CancelRequested
    | KillActorRequested
    | ActorEnds
    | TaskBlocked
    | TaskUnblocked
    | TasksReturned
    | MemoryPressure
)

# -- instructions ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnExecutor:
    executor_id: int


@dataclass(frozen=True, slots=True)
class ToExecutor:
    executor_id: int
    message: Any


@dataclass(frozen=True, slots=True)
class ToScheduler:
    message: Any


@dataclass(frozen=True, slots=True)
class SignalExecutor:
    executor_id: int
    signum: int


Instruction = SpawnExecutor | ToExecutor | ToScheduler | SignalExecutor


# -- executors ---------------------------------------------------------------


class ExecutorState(StrEnum):
    STARTING = "starting"  # spawned, not connected yet
    IDLE = "idle"  # in the pool, running nothing
    BUSY = "busy"  # running a task (and maybe holding a few more behind it)
    ACTOR = "actor"  # a dedicated actor process: never idle, never in the pool
    RETIRING = "retiring"  # ran a function max_calls times: asked to exit, runs nothing more
    DEAD = "dead"  # exited (then forgotten)


EXECUTOR_TRANSITIONS: dict[tuple[str, str], str] = {
    ("", ExecutorState.STARTING): "a task or an actor needs a process",
    (ExecutorState.STARTING, ExecutorState.IDLE): "it connected",
    (ExecutorState.STARTING, ExecutorState.ACTOR): "an actor's process connected",
    (ExecutorState.IDLE, ExecutorState.BUSY): "it was handed a task",
    (ExecutorState.BUSY, ExecutorState.IDLE): "its last task reported, or came back unstarted",
    (ExecutorState.IDLE, ExecutorState.RETIRING): (
        "it reported its function's `max_calls`-th task: it is asked to exit (`Shutdown`)"
    ),
    (ExecutorState.STARTING, ExecutorState.DEAD): "it exited before it connected",
    (ExecutorState.IDLE, ExecutorState.DEAD): "it exited (or was stopped)",
    (ExecutorState.BUSY, ExecutorState.DEAD): "it crashed or was killed while running",
    (ExecutorState.ACTOR, ExecutorState.DEAD): "its actor ended or died",
    (ExecutorState.RETIRING, ExecutorState.DEAD): "it exited (a new one takes its place)",
}
STORY_LENGTH = 10_000  # executor state changes kept


def check_transition(executor_id: int, start: str, finish: str) -> None:
    if (start, finish) not in EXECUTOR_TRANSITIONS:
        raise RuntimeError(f"no transition {start!r} -> {finish!r} for executor {executor_id}")


@dataclass(slots=True)
class Executor:
    executor_id: int
    state: str = ExecutorState.STARTING
    pid: int = 0
    client_id: bytes = b""
    tasks: deque[w.Assignment] = field(default_factory=deque)  # handed over; the first runs
    cancelling: set[bytes] = field(default_factory=set)  # tasks asked to stop
    # It handed tasks back (its task blocked): send it no more
    # to wait behind that task.
    handed_back: bool = False
    functions: set[bytes] = field(default_factory=set)
    actor_id: bytes = b""  # a dedicated actor process: never idle, never in the pool
    backlog: list[w.Assignment] = field(default_factory=list)  # calls before it started
    hold_cpus: float = 0.0  # an actor's CPUs once its constructor returned
    ending: str = ""  # the actor said it ends on purpose, and why (ActorEnds)
    calls: dict[bytes, int] = field(default_factory=dict)  # runs of max_calls functions here
    # Killed by the memory monitor: (the task it ran, its memory, memory in use,
    # the limit), in bytes.
    killed_for_memory: tuple[bytes, int, int, int] | None = None

    @property
    def task(self) -> bytes | None:
        """The task running here (None when idle)."""
        return self.tasks[0].spec.task_id if self.tasks else None
