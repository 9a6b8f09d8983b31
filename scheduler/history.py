"""The scheduler's memory of finished tasks: the task list and the counts by path.

Pure and small: ``SchedulerState`` hands each task over as it finishes
(``finished``), and the task list (``query("tasks")``, ``taskgraph.util.state.
list_tasks()``) reads it back with the tasks not finished yet. Records use
Ray's state API names (CONVENTIONS.md); ``path`` says how the task travelled:
``scheduled`` (placed by the scheduler), ``lease`` (sent straight to a leased
executor) or ``actor_direct`` (an actor call sent straight to the actor).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskgraph import _wire as w

    from .state import Task

KEEP = 10_000  # finished tasks remembered

STATE_NAMES = {
    "new": "PENDING_ARGS_AVAIL",
    "waiting": "PENDING_ARGS_AVAIL",
    "ready": "PENDING_NODE_ASSIGNMENT",
    "processing": "RUNNING",
    "memory": "FINISHED",
    "erred": "FAILED",
    "cancelled": "FAILED",
}


def path_of(spec: w.TaskSpec) -> str:
    if not spec.channel:
        return "scheduled"
    return "actor_direct" if spec.actor_id else "lease"


def record(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id.hex(),
        "name": task.spec.name,
        "state": STATE_NAMES[task.state],
        "node_id": task.worker,
        "start_time_ms": int(task.started * 1000),
        "end_time_ms": int(task.ended * 1000),
        "actor_id": task.spec.actor_id.hex(),
        "path": path_of(task.spec),
    }


class TaskHistory:
    def __init__(self, keep: int = KEEP) -> None:
        self.finished_by_path = {"scheduled": 0, "lease": 0, "actor_direct": 0}
        self.finished_by_name: dict[tuple[str, str], int] = {}  # (name, FINISHED|FAILED) -> count
        self._last: deque[dict[str, Any]] = deque(maxlen=keep)

    def finished(self, task: Task) -> None:
        entry = record(task)
        self.finished_by_path[entry["path"]] += 1
        key = (entry["name"], entry["state"])
        self.finished_by_name[key] = self.finished_by_name.get(key, 0) + 1
        self._last.append(entry)

    def task_list(self, live: Iterable[Task]) -> list[dict[str, Any]]:
        """The last ``KEEP`` tasks that finished, oldest first, then ``live``."""
        return [*self._last, *(record(t) for t in live)]
