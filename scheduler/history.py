"""Task events: the scheduler's record of each task's life, for the state API and timeline.

Every task and actor call is on record, whichever road it took (a lease, a
direct call, the scheduler). While it lives, its ``Task`` record is read; when
it finishes, ``TaskHistory.finished`` keeps a compact ``TaskEvent`` of it in a
window of the last ``keep`` (``TASKGRAPH_TASK_EVENTS``; 0 keeps none) and
counts those that fell out (``dropped``). Pure and small: no clock, no IO;
times are wall-clock seconds, given by the state machine.

Records use Ray's state API names (CONVENTIONS.md). Beyond Ray's: ``path``
says how the task travelled (``scheduled``: placed by the scheduler;
``lease``: sent straight to a leased executor; ``actor_direct``: an actor
call sent straight to the actor), and ``phases`` (with ``detail``) how long it
spent fetching and decoding its arguments, running and storing its returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskgraph import _wire as w

    from .records import Task

KEEP = 10_000  # finished tasks remembered, unless the scheduler is told otherwise

STATE_NAMES = {
    "new": "PENDING_ARGS_AVAIL",
    "waiting": "PENDING_ARGS_AVAIL",
    "ready": "PENDING_NODE_ASSIGNMENT",
    "processing": "RUNNING",
    "memory": "FINISHED",
    "erred": "FAILED",
    "cancelled": "FAILED",
}
PHASES = ("fetch_s", "deserialize_s", "run_s", "store_s")  # TaskResult.phases, named


def path_of(spec: w.TaskSpec) -> str:
    if not spec.channel:
        return "scheduled"
    return "actor_direct" if spec.actor_id else "lease"


def type_of(spec: w.TaskSpec) -> str:
    if spec.actor is not None:
        return "ACTOR_CREATION_TASK"
    return "ACTOR_TASK" if spec.actor_id else "NORMAL_TASK"


@dataclass(slots=True)  # (not frozen: a frozen init costs a setattr call per field)
class TaskEvent:
    """What is kept of a finished task (its spec, arguments and all, is not)."""

    task_id: bytes
    name: str
    state: str  # the Task's state (memory, erred or cancelled, once finished)
    job: bytes
    actor_id: bytes
    parent: bytes
    type: str
    path: str
    resources: dict[str, float]
    node: str | None
    pid: int
    attempt: int
    submitted: float
    placed: float
    started: float
    ended: float
    phases: Sequence[float]
    error_type: str
    # The ids of the objects its arguments awaited (the spec's own list, not a
    # copy): the /graph page's edges, which outlive the task (scheduler/graph.py).
    deps: Sequence[bytes]

    @classmethod
    def of(cls, task: Task) -> TaskEvent:
        spec = task.spec
        return cls(
            spec.task_id,
            spec.name,
            task.state,
            spec.job or spec.task_id[:8],
            spec.actor_id,
            spec.parent,
            type_of(spec),
            path_of(spec),
            spec.resources,
            task.worker,
            task.pid,
            max(0, spec.max_retries - task.retries_left),
            task.submitted,
            task.placed,
            task.started,
            task.ended,
            task.phases,
            task.error_type,
            spec.deps,
        )

    def record(self, detail: bool = False) -> dict[str, Any]:
        state = STATE_NAMES[self.state]
        entry: dict[str, Any] = {
            "task_id": self.task_id.hex(),
            "name": self.name,
            "state": state,
            "type": self.type,
            "job_id": self.job.hex(),
            "actor_id": self.actor_id.hex(),
            "node_id": self.node,
            "worker_pid": self.pid or None,
            "error_type": self.error_type or None,
            "attempt_number": self.attempt,
            "start_time_ms": _ms(self.started),
            "end_time_ms": _ms(self.ended),
            "path": self.path,
        }
        if detail:
            events = [("PENDING_ARGS_AVAIL", self.submitted), ("SUBMITTED_TO_WORKER", self.placed)]
            events += [("RUNNING", self.started)]
            if state in ("FINISHED", "FAILED"):
                events.append((state, self.ended))
            entry.update(
                parent_task_id=self.parent.hex(),
                required_resources=dict(self.resources),
                events=[{"state": s, "created_ms": _ms(t)} for s, t in events if t],
                phases=dict(zip(PHASES, self.phases, strict=False)),
            )
        return entry


def _ms(seconds: float) -> int | None:
    return int(seconds * 1000) if seconds else None


class TaskHistory:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.finished_by_path = {"scheduled": 0, "lease": 0, "actor_direct": 0}
        self.finished_by_name: dict[tuple[str, str], int] = {}  # (name, FINISHED|FAILED) -> count
        self.dropped = 0  # finished tasks that fell out of the window
        self.kept = 0  # events ever put in the window: the newest one's sequence number
        self._last: deque[TaskEvent] = deque(maxlen=max(keep, 1))

    def finished(self, task: Task) -> None:
        spec = task.spec
        self.finished_by_path[path_of(spec)] += 1
        key = (spec.name, STATE_NAMES[task.state])
        self.finished_by_name[key] = self.finished_by_name.get(key, 0) + 1
        if not self.keep:
            self.dropped += 1
            return
        if len(self._last) == self.keep:
            self.dropped += 1
        self._last.append(TaskEvent.of(task))
        self.kept += 1

    def since(self, seq: int) -> list[TaskEvent]:
        """The events kept after sequence number ``seq`` (``kept`` as it was then),
        oldest first; those that already fell out of the window are gone. Costs
        what it returns, not the window's size (the dashboard asks every 0.2 s)."""
        n = min(self.kept - seq, len(self._last))
        if n <= 0:
            return []
        newest = list(islice(reversed(self._last), n))
        newest.reverse()
        return newest

    def events(self, live: Iterable[Task]) -> Iterator[TaskEvent]:
        """The last ``keep`` tasks that finished, oldest first, then ``live``."""
        yield from self._last
        for task in live:
            yield TaskEvent.of(task)

    def task_list(self, live: Iterable[Task], detail: bool = False) -> list[dict[str, Any]]:
        return [event.record(detail) for event in self.events(live)]
