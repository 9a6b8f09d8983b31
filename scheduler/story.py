"""What happened to one task, object or actor: the scheduler's bounded log of state changes.

Every change of a task's, object's or actor's state is checked against its
table (a pair missing from it is a bug and raises) and logged with its
*stimulus*: the message or event the scheduler was handling when it made the
change (``SubmitTasks`` from a client, ``TasksDone`` from a worker, a worker
that left, or its own placement). ``SchedulerState.story(key)`` reads it
back, as dask's ``story`` does; ``taskgraph story KEY`` asks a live cluster.

Logging is one tuple appended to a deque per change; the stimulus is kept
as the tuple it came as and only formatted when read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from taskgraph._ids import same_task

LOG_LENGTH = 100_000  # changes kept, all keys together


class TaskState(StrEnum):
    NEW = "new"
    WAITING = "waiting"
    READY = "ready"
    PROCESSING = "processing"
    MEMORY = "memory"
    ERRED = "erred"
    CANCELLED = "cancelled"


class ObjectState(StrEnum):
    PENDING = "pending"  # its task has not made it yet
    READY = "ready"  # a value (inline, or in a store)
    ERROR = "error"  # its task failed, or it was lost: the error is its value
    RELEASED = "released"  # no holder left, its value freed; kept to rebuild what was made from it


class ActorState(StrEnum):
    PENDING = "pending"  # created, its constructor not run yet
    ALIVE = "alive"
    RESTARTING = "restarting"  # its process died; a new one will run the constructor
    DEAD = "dead"


# (start, finish) -> when it happens. "" is the start of a record's life.
OBJECT_TRANSITIONS: dict[tuple[str, str], str] = {
    ("", ObjectState.PENDING): "a task that will make it is submitted",
    ("", ObjectState.READY): "`put()`",
    (ObjectState.PENDING, ObjectState.READY): "its task finished",
    (ObjectState.PENDING, ObjectState.ERROR): "its task failed or was cancelled",
    (ObjectState.READY, ObjectState.ERROR): (
        "its every copy was lost (its worker left) and it cannot be made again: "
        "`ObjectLostError` for a `put()`, `ObjectReconstructionFailedError` with the reason "
        "for a task's result"
    ),
    (ObjectState.READY, ObjectState.PENDING): (
        "its every copy was lost and something holds it: its task runs again (lineage)"
    ),
    (ObjectState.READY, ObjectState.RELEASED): (
        "no holder is left, but an object made from it still may need rebuilding: its value "
        "is freed, its record (the task that made it) kept"
    ),
    (ObjectState.ERROR, ObjectState.RELEASED): (
        "no holder is left, and an object made from it still names it (its record stays)"
    ),
    (ObjectState.RELEASED, ObjectState.PENDING): (
        "an object made from it was lost and its task needs it: its task runs again"
    ),
}
ACTOR_TRANSITIONS: dict[tuple[str, str], str] = {
    ("", ActorState.PENDING): "`Cls.remote()` submitted the creation task (`Actors.created`)",
    (ActorState.PENDING, ActorState.ALIVE): (
        "the constructor returned (`creation_done`): the creation task goes "
        "`processing → memory`, the actor takes what it holds for life, and its queued "
        "calls are handed over"
    ),
    (ActorState.PENDING, ActorState.RESTARTING): (
        "its process died while the constructor ran, and `max_restarts` allows another try"
    ),
    (ActorState.PENDING, ActorState.DEAD): (
        "the constructor raised (every call gets that `ActorError`, traceback included); "
        "it called `sys.exit(0)`; `kill()`; its process died with no restarts left"
    ),
    (ActorState.ALIVE, ActorState.RESTARTING): (
        "its process died (a crash, a signal, `os._exit()` whatever the code, `sys.exit()` "
        "with a code other than 0, `kill(no_restart=False)`, its node left) and "
        "`max_restarts` allows a restart"
    ),
    (ActorState.ALIVE, ActorState.DEAD): (
        "`kill()`; `exit_actor()`, `__taskgraph_terminate__` or `sys.exit(0)` (an end on "
        "purpose, announced with `ActorEnding`: never restarted); its process died with no "
        "restarts left; its last handle was dropped"
    ),
    (ActorState.RESTARTING, ActorState.ALIVE): "the constructor returned again",
    (ActorState.RESTARTING, ActorState.DEAD): (
        "`kill()`; the new process died with no restarts left; its last handle was dropped"
    ),
}

# One change: (kind, key, start, finish, stimulus, time).
Change = tuple[str, bytes, str, str, tuple[Any, ...], float]


class Story:
    """The last ``LOG_LENGTH`` state changes of every task, object and actor."""

    def __init__(self, length: int = LOG_LENGTH) -> None:
        self.log: deque[Change] = deque(maxlen=length)

    def record(
        self, kind: str, key: bytes, start: str, finish: str, stimulus: tuple[Any, ...], now: float
    ) -> None:
        self.log.append((kind, key, start, finish, stimulus, now))

    def of(self, key: bytes) -> list[dict[str, Any]]:
        """The changes of ``key`` and of the ids that share its task: a task and its
        returns (given any of them), an actor and its creation; oldest first."""
        return [describe(c) for c in self.log if same_task(c[1], key)]


def describe(change: Change) -> dict[str, Any]:
    kind, key, start, finish, stimulus, now = change
    return {
        "kind": kind,
        "key": key.hex(),
        "from": start,
        "to": finish,
        "stimulus": stimulus_text(stimulus),
        "time": now,
    }


def stimulus_text(stimulus: tuple[Any, ...]) -> str:
    """``("TasksDone", "worker", "w1")`` -> ``"TasksDone from worker w1"``."""
    what, *source = stimulus
    if not source or not source[0]:
        return str(what)
    role, peer = source
    name = peer.hex() if isinstance(peer, bytes) else str(peer)
    return f"{what} from {role} {name}"


def check(
    table: dict[tuple[str, str], str], kind: str, key: bytes, start: str, finish: str
) -> None:
    if (start, finish) not in table:
        raise RuntimeError(f"no transition {start!r} -> {finish!r} for {kind} {key.hex()}")


def states(table: Iterable[tuple[str, str]]) -> set[str]:
    return {s for pair in table for s in pair if s}
