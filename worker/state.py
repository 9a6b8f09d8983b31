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


@dataclass(frozen=True, slots=True)
class TaskBlocked:
    """A running task waits in get(): its CPU may run another task meanwhile."""

    task_id: bytes


@dataclass(frozen=True, slots=True)
class TaskUnblocked:
    task_id: bytes


@dataclass(frozen=True, slots=True)
class KillActorRequested:
    actor_id: bytes
    graceful: bool


Event = (
    TasksAssigned
    | ExecutorStarted
    | ExecutorReady
    | ExecutorFinished
    | ExecutorDied
    | CancelRequested
    | KillActorRequested
    | TaskBlocked
    | TaskUnblocked
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
    actor_id: bytes = b""  # a dedicated actor process: never idle, never in the pool
    backlog: list[w.Assignment] = field(default_factory=list)  # calls before it started
    hold_cpus: float = 0.0  # an actor's CPUs once its constructor returned


class WorkerState:
    def __init__(self, worker_id: str, min_executors: int, cpus: float | None = None) -> None:
        self.worker_id = worker_id
        self.min_executors = max(1, min_executors)
        # The scheduler may hand over a few more tasks than there are CPUs, so
        # that an executor finds its next task here the moment it is free; the
        # CPUs themselves are counted here.
        self.cpus = float(min_executors) if cpus is None else cpus
        self.cpus_used = 0.0
        self.task_cpus: dict[bytes, float] = {}  # running task -> CPUs it holds
        self.blocked: set[bytes] = set()
        self.actor_cpus: dict[bytes, float] = {}  # CPUs each actor here holds
        self.executors: dict[int, Executor] = {}
        self.queue: deque[w.Assignment] = deque()
        self.functions: dict[bytes, bytes] = {}
        self.running: dict[bytes, int] = {}  # task id -> executor id
        self.actors: dict[bytes, int] = {}  # actor id -> its executor id
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
                if a.spec.actor_id:
                    out.extend(self._actor_assignment(a))
                else:
                    self.queue.append(a)
        elif isinstance(event, ExecutorStarted):
            pass
        elif isinstance(event, ExecutorReady):
            ex = self.executors[event.executor_id]
            ex.pid, ex.client_id = event.pid, event.client_id
            if ex.actor_id:
                ex.state = "actor"
                out.append(ToScheduler(w.ActorStarted(ex.actor_id, ex.pid)))
                out.extend(ToExecutor(ex.executor_id, w.Execute(a)) for a in ex.backlog)
                ex.backlog.clear()
            else:
                ex.state = "idle"
        elif isinstance(event, ExecutorFinished) and self.executors[event.executor_id].actor_id:
            ex = self.executors[event.executor_id]
            if event.result.task_id == ex.actor_id and not event.result.failure:
                self.cpus_used += ex.hold_cpus - self.actor_cpus[ex.actor_id]
                self.actor_cpus[ex.actor_id] = ex.hold_cpus
            out.append(ToScheduler(w.TasksDone([event.result])))
        elif isinstance(event, ExecutorFinished):
            ex = self.executors[event.executor_id]
            result = event.result
            if ex.cancelling and result.failure == "task":
                # What the task raised is the interrupt we sent; the caller
                # should see that the task was cancelled.
                err = TaskCancelledError(ex.task_name, result.task_id.hex())
                result = w.TaskResult(result.task_id, error=pickle.dumps(err), failure="cancelled")
            self._finish(ex)
            out.append(ToScheduler(w.TasksDone([result])))
        elif isinstance(event, ExecutorDied):
            out.extend(self._executor_died(event))
        elif isinstance(event, CancelRequested):
            out.extend(self._cancel(event))
        elif isinstance(event, TaskBlocked):
            if event.task_id in self.task_cpus and event.task_id not in self.blocked:
                self.blocked.add(event.task_id)
                self.cpus_used -= self.task_cpus[event.task_id]
        elif isinstance(event, TaskUnblocked):
            if event.task_id in self.blocked:
                self.blocked.discard(event.task_id)
                self.cpus_used += self.task_cpus[event.task_id]
        elif isinstance(event, KillActorRequested):
            executor_id = self.actors.get(event.actor_id)
            if executor_id is not None:
                signum = signal.SIGTERM if event.graceful else signal.SIGKILL
                out.append(SignalExecutor(executor_id, signum))
        else:  # pragma: no cover
            raise TypeError(f"unknown event {event!r}")
        out.extend(self._dispatch())
        return out

    def _release_cpus(self, task_id: bytes) -> None:
        cpus = self.task_cpus.pop(task_id, 0.0)
        if task_id in self.blocked:
            self.blocked.discard(task_id)
        else:
            self.cpus_used -= cpus

    def _finish(self, ex: Executor) -> None:
        if ex.task is not None:
            self.running.pop(ex.task, None)
            self._release_cpus(ex.task)
        ex.state, ex.task, ex.task_name, ex.cancelling = "idle", None, "", False
        self.tasks_done += 1

    def _actor_assignment(self, a: w.Assignment) -> list[Instruction]:
        """An actor's creation gets a process of its own; its calls go straight there."""
        if a.spec.actor is not None:
            if not a.function:  # the daemon got the class earlier; a new process has not
                a = w.Assignment(a.spec, a.inputs, self.functions[a.spec.function_id], a.gpu_ids)
            spawn = self._spawn()
            ex = self.executors[spawn.executor_id]
            ex.actor_id = a.spec.actor_id
            # The constructor runs on the CPUs it was placed with; afterwards the
            # actor holds what it asked to hold (often none).
            cpus = a.spec.resources.get("CPU", 0.0)
            self.actor_cpus[a.spec.actor_id] = cpus
            self.cpus_used += cpus
            ex.hold_cpus = a.spec.actor.hold.get("CPU", 0.0) if a.spec.actor else 0.0
            ex.backlog.append(a)
            self.actors[a.spec.actor_id] = ex.executor_id
            return [spawn]
        executor_id = self.actors.get(a.spec.actor_id)
        if executor_id is None:
            return []  # the actor died here; the scheduler already knows from ActorDied
        ex = self.executors[executor_id]
        if ex.state == "starting":
            ex.backlog.append(a)
            return []
        return [ToExecutor(executor_id, w.Execute(a))]

    def _executor_died(self, event: ExecutorDied) -> list[Instruction]:
        ex = self.executors.pop(event.executor_id)
        out: list[Instruction] = []
        if ex.client_id:
            out.append(ToScheduler(w.ClientGone(ex.client_id)))
        if ex.actor_id:
            self.actors.pop(ex.actor_id, None)
            self.cpus_used -= self.actor_cpus.pop(ex.actor_id, 0.0)
            out.append(ToScheduler(w.ActorDied(ex.actor_id, event.exit_code, ex.pid)))
            return out
        if ex.task is not None:
            self.running.pop(ex.task, None)
            self._release_cpus(ex.task)
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
        alive = sum(1 for e in self.executors.values() if not e.actor_id)
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
        while self.queue and idle and self._fits(self.queue[0], self.cpus_used):
            ex = idle.pop()
            a = self.queue.popleft()
            cpus = a.spec.resources.get("CPU", 0.0)
            self.task_cpus[a.spec.task_id] = cpus
            self.cpus_used += cpus
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
        starting = sum(
            1 for e in self.executors.values() if e.state == "starting" and not e.actor_id
        )
        for _ in range(self._runnable() - len(idle) - starting):
            out.append(self._spawn())
        return out

    def _fits(self, a: w.Assignment, used: float) -> bool:
        cpus = a.spec.resources.get("CPU", 0.0)
        return used <= 0 or used + cpus <= self.cpus + 1e-9

    def _runnable(self) -> int:
        """How many queued tasks could start now if there were processes for them."""
        used, count = self.cpus_used, 0
        for a in self.queue:
            if not self._fits(a, used):
                break
            used += a.spec.resources.get("CPU", 0.0)
            count += 1
        return count

    def _spawn(self) -> SpawnExecutor:
        """A new executor process (the caller may bind it to an actor)."""
        self._next_executor += 1
        self.executors[self._next_executor] = Executor(self._next_executor)
        return SpawnExecutor(self._next_executor)

    def statistics(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for e in self.executors.values():
            states[e.state] = states.get(e.state, 0) + 1
        return {"queued": len(self.queue), "running": len(self.running), **states}

    def validate(self) -> None:
        held = sum(c for t, c in self.task_cpus.items() if t not in self.blocked)
        held += sum(self.actor_cpus.values())
        assert set(self.actor_cpus) == set(self.actors)
        assert abs(held - self.cpus_used) < 1e-6, f"cpus_used {self.cpus_used} != {held}"
        assert set(self.task_cpus) == set(self.running)
        assert self.blocked <= set(self.running)
        for task_id, executor_id in self.running.items():
            ex = self.executors[executor_id]
            assert ex.state == "busy" and ex.task == task_id
        for actor_id, executor_id in self.actors.items():
            assert self.executors[executor_id].actor_id == actor_id
        for ex in self.executors.values():
            if ex.actor_id:
                assert ex.state in ("starting", "actor") and ex.task is None
                assert not ex.backlog or ex.state == "starting"
                continue
            if ex.state == "busy":
                assert ex.task is not None and self.running.get(ex.task) == ex.executor_id
            else:
                assert ex.task is None
        if self.queue and self._fits(self.queue[0], self.cpus_used):
            assert not any(e.state == "idle" for e in self.executors.values())


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
