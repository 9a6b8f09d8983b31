"""The worker daemon's decisions: which executor process runs which task.

Pure: ``handle(event) -> list[instruction]``, no processes, sockets or clock.
The scheduler decides *what* runs here (it never hands a worker more than
its resources allow); this state machine decides *where*: an idle executor,
or a new one when all are busy (a task blocked in ``get`` lends its CPU to
another task, which needs a process of its own).

Executor states::

    starting ──▶ idle ◀──▶ busy
        └──────────┴─────────┴──▶ dead
"""

from __future__ import annotations

import pickle
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from taskgraph import _wire as w
from taskgraph.exceptions import TaskCancelledError, WorkerCrashedError

# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TasksAssigned:
    assignments: list[w.Assignment]


@dataclass(frozen=True, slots=True)
class ExecutorStarted:
    executor_id: int


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


Event = (
    TasksAssigned
    | ExecutorStarted
    | ExecutorReady
    | ExecutorFinished
    | ExecutorDied
    | CancelRequested
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


@dataclass(slots=True)
class Executor:
    executor_id: int
    state: str = "starting"
    pid: int = 0
    client_id: bytes = b""
    task: bytes | None = None
    task_name: str = ""
    cancelling: bool = False
    functions: set[bytes] = field(default_factory=set)


class WorkerState:
    def __init__(self, worker_id: str, min_executors: int) -> None:
        self.worker_id = worker_id
        self.min_executors = max(1, min_executors)
        self.executors: dict[int, Executor] = {}
        self.queue: deque[w.Assignment] = deque()
        self.functions: dict[bytes, bytes] = {}
        self.running: dict[bytes, int] = {}  # task id -> executor id
        self.tasks_done = 0
        self._next_executor = 0

    def start(self) -> list[Instruction]:
        return [self._spawn() for _ in range(self.min_executors)]

    def handle(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        if isinstance(event, TasksAssigned):
            for a in event.assignments:
                if a.function:
                    self.functions[a.spec.function_id] = a.function
                self.queue.append(a)
        elif isinstance(event, ExecutorStarted):
            pass
        elif isinstance(event, ExecutorReady):
            ex = self.executors[event.executor_id]
            ex.state, ex.pid, ex.client_id = "idle", event.pid, event.client_id
        elif isinstance(event, ExecutorFinished):
            ex = self.executors[event.executor_id]
            result = event.result
            if ex.cancelling and result.failure == "task":
                result.failure = "cancelled"
            self._finish(ex)
            out.append(ToScheduler(w.TasksDone([result])))
        elif isinstance(event, ExecutorDied):
            out.extend(self._executor_died(event))
        elif isinstance(event, CancelRequested):
            out.extend(self._cancel(event))
        else:  # pragma: no cover
            raise TypeError(f"unknown event {event!r}")
        out.extend(self._dispatch())
        return out

    def _finish(self, ex: Executor) -> None:
        if ex.task is not None:
            self.running.pop(ex.task, None)
        ex.state, ex.task, ex.task_name, ex.cancelling = "idle", None, "", False
        self.tasks_done += 1

    def _executor_died(self, event: ExecutorDied) -> list[Instruction]:
        ex = self.executors.pop(event.executor_id)
        out: list[Instruction] = []
        if ex.client_id:
            out.append(ToScheduler(w.ClientGone(ex.client_id)))
        if ex.task is not None:
            self.running.pop(ex.task, None)
            code = event.exit_code
            if ex.cancelling:
                err: Exception = TaskCancelledError(ex.task_name, ex.task.hex())
                failure = "cancelled"
            else:
                err = WorkerCrashedError(
                    f"executor process {ex.pid} of worker {self.worker_id}",
                    task_name=ex.task_name,
                    exit_code=code,
                )
                failure = "crashed"
            result = w.TaskResult(ex.task, error=pickle.dumps(err), failure=failure, exit_code=code)
            out.append(ToScheduler(w.TasksDone([result])))
        alive = sum(1 for e in self.executors.values() if e.state != "dead")
        if alive < self.min_executors:
            out.append(self._spawn())
        return out

    def _cancel(self, event: CancelRequested) -> list[Instruction]:
        for a in self.queue:
            if a.spec.task_id == event.task_id:
                self.queue.remove(a)
                err = TaskCancelledError(a.spec.name, event.task_id.hex())
                result = w.TaskResult(event.task_id, error=pickle.dumps(err), failure="cancelled")
                return [ToScheduler(w.TasksDone([result]))]
        executor_id = self.running.get(event.task_id)
        if executor_id is None:
            return []
        ex = self.executors[executor_id]
        ex.cancelling = True
        signum = signal.SIGKILL if event.force else signal.SIGINT
        return [SignalExecutor(executor_id, signum)]

    def _dispatch(self) -> list[Instruction]:
        out: list[Instruction] = []
        idle = [e for e in self.executors.values() if e.state == "idle"]
        while self.queue and idle:
            ex = idle.pop()
            a = self.queue.popleft()
            fid = a.spec.function_id
            function = b""
            if fid not in ex.functions:
                function = self.functions.get(fid, b"")
                ex.functions.add(fid)
            if function != a.function:
                a = w.Assignment(a.spec, a.inputs, function, a.gpu_ids)
            ex.state, ex.task, ex.task_name = "busy", a.spec.task_id, a.spec.name
            self.running[a.spec.task_id] = ex.executor_id
            out.append(ToExecutor(ex.executor_id, w.Execute(a)))
        starting = sum(1 for e in self.executors.values() if e.state == "starting")
        for _ in range(len(self.queue) - starting):
            out.append(self._spawn())
        return out

    def _spawn(self) -> SpawnExecutor:
        self._next_executor += 1
        self.executors[self._next_executor] = Executor(self._next_executor)
        return SpawnExecutor(self._next_executor)

    def statistics(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for e in self.executors.values():
            states[e.state] = states.get(e.state, 0) + 1
        return {"queued": len(self.queue), "running": len(self.running), **states}

    def validate(self) -> None:
        for task_id, executor_id in self.running.items():
            ex = self.executors[executor_id]
            assert ex.state == "busy" and ex.task == task_id
        for ex in self.executors.values():
            if ex.state == "busy":
                assert ex.task is not None and self.running.get(ex.task) == ex.executor_id
            else:
                assert ex.task is None
        if self.queue:
            assert not any(e.state == "idle" for e in self.executors.values())


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
