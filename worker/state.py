"""The worker daemon's decisions: which executor process runs which task.

Pure: ``handle(event) -> list[instruction]``, no processes, sockets or clock.
The scheduler decides *what* runs here (it never hands a worker more than
its resources allow); this state machine decides *where*: an idle executor,
or a new one when all are busy (a task blocked in ``get`` lends its CPU to
another task, which needs a process of its own).

The events it handles, the instructions it returns and its records of
executors are plain data, in ``records.py``.

Executor states (``EXECUTOR_TRANSITIONS``, ``records.py``; a change missing
from it raises, and each is logged with the event that caused it:
``WorkerState.story``)::

    starting ──▶ idle ◀──▶ busy
        │          └──▶ retiring   (ran a function max_calls times)
        └──▶ actor
    (any) ──▶ dead

A busy executor may hold a few more tasks behind the one it runs (up to
``prefetch`` in all, and about ``HELD_SECONDS`` of work), so that it starts
the next without waiting for us: only tasks of functions seen to take under
``SHORT_TASK`` seconds, on the CPU the running task holds. It runs them in
order and reports each before the next, so the first task handed to it and
not yet reported is the one running. If that task blocks in get(), the
executor hands the others back (``Returned``): they queue here
again, and that executor gets no more until its task ends.
"""

from __future__ import annotations

import pickle
import signal
from collections import deque
from typing import Any

from taskgraph import _wire as w
from taskgraph.exceptions import OutOfMemoryError, TaskCancelledError, WorkerCrashedError

from .records import (  # (the events and instructions are also taken from here: __all__)
    STORY_LENGTH,
    ActorEnds,
    CancelRequested,
    Event,
    Executor,
    ExecutorDied,
    ExecutorFinished,
    ExecutorReady,
    ExecutorState,
    Instruction,
    KillActorRequested,
    MemoryPressure,
    SignalExecutor,
    SpawnExecutor,
    TaskBlocked,
    TasksAssigned,
    TasksReturned,
    TaskUnblocked,
    ToExecutor,
    ToScheduler,
    check_transition,
)

__all__ = [
    "ActorEnds",
    "CancelRequested",
    "Event",
    "ExecutorDied",
    "ExecutorFinished",
    "ExecutorReady",
    "Instruction",
    "KillActorRequested",
    "MemoryPressure",
    "SignalExecutor",
    "SpawnExecutor",
    "TaskBlocked",
    "TaskUnblocked",
    "TasksAssigned",
    "TasksReturned",
    "ToExecutor",
    "ToScheduler",
    "WorkerState",
]

# Tasks of a function whose runs took less than this on average may wait in a
# busy executor behind its running task; longer ones wait here, where any
# executor that frees up can take them.
SHORT_TASK = 0.002
# And no more of them than take about this long together, so that an executor
# that frees up never waits long while another holds work it could do.
HELD_SECONDS = 0.005


class WorkerState:
    def __init__(
        self, worker_id: str, min_executors: int, cpus: float | None = None, prefetch: int = 1
    ) -> None:
        self.worker_id = worker_id
        self.min_executors = max(1, min_executors)
        # The scheduler may hand over a few more tasks than there are CPUs, so
        # that an executor finds its next task here the moment it is free; the
        # CPUs themselves are counted here.
        self.cpus = float(min_executors) if cpus is None else cpus
        self.cpus_used = 0.0
        # (executor id, from, to, cause): the last STORY_LENGTH changes (story()).
        self.changes: deque[tuple[int, str, str, str]] = deque(maxlen=STORY_LENGTH)
        self.task_cpus: dict[bytes, float] = {}  # running task -> CPUs it holds
        self.blocked: set[bytes] = set()
        self.revoked: set[bytes] = set()  # leases asked to end: a task here waits for their CPUs
        self.actor_cpus: dict[bytes, float] = {}  # CPUs each actor here holds
        self.executors: dict[int, Executor] = {}
        self.queue: deque[w.Assignment] = deque()
        self.functions: dict[bytes, bytes] = {}
        self.running: dict[bytes, int] = {}  # task id -> executor id (running or waiting there)
        self.actors: dict[bytes, int] = {}  # actor id -> its executor id
        self.prefetch = max(1, prefetch)  # tasks a busy executor may hold, the running one too
        self.durations: dict[bytes, float] = {}  # function id -> its tasks' mean run time
        self.tasks_done = 0
        self._next_executor = 0

    def start(self) -> list[Instruction]:
        return [self._spawn() for _ in range(self.min_executors)]

    def handle(self, event: Event) -> list[Instruction]:
        return self.handle_all([event])

    def handle_all(self, events: list[Event]) -> list[Instruction]:
        """Several events (one frame's worth), then one look at what can start."""
        out: list[Instruction] = []
        for event in events:
            out.extend(self._apply(event))
        out.extend(self._dispatch())
        return out

    def _apply(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        if isinstance(event, TasksAssigned):
            for a in event.assignments:
                if a.function:
                    self.functions[a.spec.function_id] = a.function
                if a.spec.actor_id:
                    out.extend(self._actor_assignment(a))
                else:
                    self.queue.append(a)
        elif isinstance(event, ExecutorReady):
            ex = self.executors[event.executor_id]
            ex.pid, ex.client_id = event.pid, event.client_id
            if ex.actor_id:
                self._set_state(ex, ExecutorState.ACTOR, event)
                out.append(ToScheduler(w.ActorStarted(ex.actor_id, ex.pid)))
                out.extend(ToExecutor(ex.executor_id, w.Execute(a)) for a in ex.backlog)
                ex.backlog.clear()
            else:
                self._set_state(ex, ExecutorState.IDLE, event)
        elif isinstance(event, ExecutorFinished) and event.result.channel:
            # Sent straight to the executor (a lease's task, a direct actor call):
            # nothing here to update, the scheduler hears of it in this order.
            out.append(ToScheduler(w.TasksDone([event.result])))
        elif isinstance(event, ExecutorFinished) and self.executors[event.executor_id].actor_id:
            ex = self.executors[event.executor_id]
            if event.result.task_id == ex.actor_id and not event.result.failure:
                self.cpus_used += ex.hold_cpus - self.actor_cpus[ex.actor_id]
                self.actor_cpus[ex.actor_id] = ex.hold_cpus
            out.append(ToScheduler(w.TasksDone([event.result])))
        elif isinstance(event, ExecutorFinished):
            out.extend(self._finished(self.executors[event.executor_id], event.result))
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
        elif isinstance(event, TasksReturned):
            out.extend(self._returned(self.executors[event.executor_id], event.task_ids))
        elif isinstance(event, ActorEnds):
            actor_ex = self.executors.get(event.executor_id)
            if actor_ex is not None and actor_ex.actor_id:
                actor_ex.ending = event.reason
        elif isinstance(event, MemoryPressure):
            out.extend(self._memory_pressure(event))
        elif isinstance(event, KillActorRequested):
            executor_id = self.actors.get(event.actor_id)
            if executor_id is not None:
                signum = signal.SIGTERM if event.graceful else signal.SIGKILL
                out.append(SignalExecutor(executor_id, signum))
        else:  # pragma: no cover
            raise TypeError(f"unknown event {event!r}")
        return out

    def _release_cpus(self, task_id: bytes) -> None:
        cpus = self.task_cpus.pop(task_id, 0.0)
        self.revoked.discard(task_id)
        if task_id in self.blocked:
            self.blocked.discard(task_id)
        else:
            self.cpus_used -= cpus

    def _finished(self, ex: Executor, result: w.TaskResult) -> list[Instruction]:
        task_id = result.task_id
        if ex.task != task_id:
            # Cancelled while it waited behind the running task: it never ran.
            for a in ex.tasks:
                if a.spec.task_id == task_id:
                    ex.tasks.remove(a)
                    self.running.pop(task_id, None)
                    ex.cancelling.discard(task_id)
                    return [ToScheduler(w.TasksDone([result]))]
            return []  # not ours (a late report after a crash was handled)
        if task_id in ex.cancelling and result.failure == "task":
            # What the task raised is the interrupt we asked for; the caller
            # should see that the task was cancelled.
            err = TaskCancelledError(ex.tasks[0].spec.name, task_id.hex())
            result = w.TaskResult(task_id, error=pickle.dumps(err), failure="cancelled")
        elif not result.failure and result.duration > 0:
            fid = ex.tasks[0].spec.function_id
            mean = self.durations.get(fid)
            self.durations[fid] = (
                result.duration if mean is None else 0.8 * mean + 0.2 * result.duration
            )
        spec = ex.tasks[0].spec
        self._finish(ex)
        out: list[Instruction] = [ToScheduler(w.TasksDone([result]))]
        if spec.max_calls:
            out.extend(self._count_call(ex, spec))
        return out

    def _count_call(self, ex: Executor, spec: w.TaskSpec) -> list[Instruction]:
        """A task of a function with ``max_calls`` ran here: at the last allowed, the
        process exits (Ray's max_calls). Nothing waits behind such a task (_short),
        so the executor is idle now."""
        calls = ex.calls[spec.function_id] = ex.calls.get(spec.function_id, 0) + 1
        if calls < spec.max_calls:
            return []
        self._set_state(ex, ExecutorState.RETIRING, "max_calls")
        return [ToExecutor(ex.executor_id, w.Shutdown())]

    def _finish(self, ex: Executor) -> None:
        """The running task is over; the next one waiting in the executor starts."""
        if ex.tasks:
            done = ex.tasks.popleft().spec.task_id
            self.running.pop(done, None)
            self._release_cpus(done)
            ex.cancelling.discard(done)
        if ex.tasks:
            self._hold_cpus(ex.tasks[0])
        else:
            self._set_state(ex, ExecutorState.IDLE, "reported")
        ex.handed_back = False
        self.tasks_done += 1

    def _hold_cpus(self, a: w.Assignment) -> None:
        cpus = a.spec.resources.get("CPU", 0.0)
        self.task_cpus[a.spec.task_id] = cpus
        self.cpus_used += cpus

    def _returned(self, ex: Executor, task_ids: list[bytes]) -> list[Instruction]:
        """Tasks an executor handed back unstarted: queue them first, or end the cancelled."""
        out: list[Instruction] = []
        wanted = set(task_ids)
        # Not expected (an executor hands back only tasks behind a running
        # one), but nothing may hang on it: if the one we count as running
        # comes back, the next (if any) runs in its place.
        head_back = ex.task in wanted
        if head_back:
            self._release_cpus(ex.tasks[0].spec.task_id)
        back = [a for a in ex.tasks if a.spec.task_id in wanted]
        for a in back:
            ex.tasks.remove(a)
            self.running.pop(a.spec.task_id, None)
        if head_back and ex.tasks:
            self._hold_cpus(ex.tasks[0])
        ex.handed_back = not head_back and bool(ex.tasks)
        if not ex.tasks:
            self._set_state(ex, ExecutorState.IDLE, "handed back")
        for a in reversed(back):
            if a.spec.task_id in ex.cancelling:
                ex.cancelling.discard(a.spec.task_id)
                out.append(ToScheduler(w.TasksDone([_cancelled(a)])))
            else:
                self.queue.appendleft(a)
        return out

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
        self._set_state(ex, ExecutorState.DEAD, event)
        out: list[Instruction] = []
        if ex.client_id:
            out.append(ToScheduler(w.ClientGone(ex.client_id)))
        if ex.actor_id:
            self.actors.pop(ex.actor_id, None)
            self.cpus_used -= self.actor_cpus.pop(ex.actor_id, 0.0)
            died = w.ActorDied(ex.actor_id, event.exit_code, ex.pid, ending=ex.ending)
            out.append(ToScheduler(died))
            return out
        if ex.tasks:
            out.extend(self._lost_with(ex, event.exit_code))
        alive = sum(1 for e in self.executors.values() if not e.actor_id)
        if alive < self.min_executors:
            out.append(self._spawn())
        return out

    def _lost_with(self, ex: Executor, code: int) -> list[Instruction]:
        """What an executor that died had in hand.

        The first task handed over and not reported was running: it crashed
        (or was cancelled). An executor reports each task before it starts the
        next, so the others never started: they run elsewhere.
        """
        head = ex.tasks.popleft()
        task_id = head.spec.task_id
        self.running.pop(task_id, None)
        self._release_cpus(task_id)
        if task_id in ex.cancelling:
            result = _cancelled(head, code)
        elif ex.killed_for_memory is not None and ex.killed_for_memory[0] == task_id:
            _, memory, used, limit = ex.killed_for_memory
            oom = OutOfMemoryError(
                head.spec.name,
                used,
                limit,
                node=self.worker_id,
                memory=memory,
                task_id=task_id.hex(),
            )
            result = w.TaskResult(task_id, error=pickle.dumps(oom), failure="oom", exit_code=code)
        else:
            err = WorkerCrashedError(
                f"executor process {ex.pid} of worker {self.worker_id}",
                task_name=head.spec.name,
                exit_code=code,
            )
            result = w.TaskResult(
                task_id, error=pickle.dumps(err), failure="crashed", exit_code=code
            )
        out: list[Instruction] = [ToScheduler(w.TasksDone([result]))]
        for a in reversed(ex.tasks):
            self.running.pop(a.spec.task_id, None)
            if a.spec.task_id in ex.cancelling:
                out.append(ToScheduler(w.TasksDone([_cancelled(a, code)])))
            else:
                self.queue.appendleft(a)
        ex.tasks.clear()
        return out

    def _memory_pressure(self, event: MemoryPressure) -> list[Instruction]:
        """Memory is over the limit: SIGKILL one running task's executor. Of the
        tasks using at least half as much as the largest, a retriable one first,
        then the newest (Ray's retriable-LIFO, among those whose end frees much).
        One at a time: none more until that executor's exit is handled."""
        if any(e.killed_for_memory is not None for e in self.executors.values()):
            return []
        started = {task_id: n for n, task_id in enumerate(self.task_cpus)}
        running = [
            (event.usage.get(e.executor_id, 0), e)
            for e in self.executors.values()
            if e.state == "busy" and e.task is not None and not e.actor_id
        ]
        if not running:
            return []
        most = max(memory for memory, _ in running)
        heavy = [(memory, e) for memory, e in running if 2 * memory >= most]
        memory, victim = max(
            heavy,
            key=lambda pair: (
                pair[1].tasks[0].spec.max_retries > 0,
                started.get(pair[1].task or b"", -1),
            ),
        )
        victim.killed_for_memory = (victim.task or b"", memory, event.used, event.limit)
        return [SignalExecutor(victim.executor_id, signal.SIGKILL)]

    def _cancel(self, event: CancelRequested) -> list[Instruction]:
        if event.channel:  # the executor serving the lease or the actor knows the task
            executor_id = self.actors.get(event.channel, self.running.get(event.channel))
            if executor_id is None:
                return []
            return [ToExecutor(executor_id, w.CancelTask(event.task_id, event.force))]
        for a in self.queue:
            if a.spec.task_id == event.task_id:
                self.queue.remove(a)
                return [ToScheduler(w.TasksDone([_cancelled(a)]))]
        executor_id = self.running.get(event.task_id)
        if executor_id is None:
            return []
        ex = self.executors[executor_id]
        ex.cancelling.add(event.task_id)
        if event.force and ex.task == event.task_id:
            return [SignalExecutor(executor_id, signal.SIGKILL)]
        # The executor knows best whether the task runs or still waits there:
        # it interrupts the task, or drops it and reports it cancelled.
        return [ToExecutor(executor_id, w.CancelTask(event.task_id, event.force))]

    def _dispatch(self) -> list[Instruction]:
        out: list[Instruction] = []
        idle = [e for e in self.executors.values() if e.state == "idle"]
        while self.queue and idle and self._fits(self.queue[0], self.cpus_used):
            ex = idle.pop()
            a = self.queue.popleft()
            self._hold_cpus(a)
            self._set_state(ex, ExecutorState.BUSY, "dispatch")
            out.append(self._hand_over(ex, a))
        starting = sum(
            1 for e in self.executors.values() if e.state == "starting" and not e.actor_id
        )
        for _ in range(self._runnable() - len(idle) - starting):
            out.append(self._spawn())
        if self.queue and not self._fits(self.queue[0], self.cpus_used):
            out.extend(self._revoke_leases())
            if self.prefetch > 1:
                out.extend(self._prefetch())
        return out

    def _revoke_leases(self) -> list[Instruction]:
        """A task waits here for CPUs: leases keep theirs between their client's
        tasks (taskgraph/_leases.py), so ask them to end (a cancel, to a lease)."""
        out: list[Instruction] = []
        for ex in self.executors.values():
            lease = ex.task
            if (
                lease is not None
                and w.is_lease(ex.tasks[0].spec)
                and lease not in self.revoked
                and lease not in self.blocked
            ):
                self.revoked.add(lease)
                out.append(ToExecutor(ex.executor_id, w.CancelTask(lease)))
        return out

    def _hand_over(self, ex: Executor, a: w.Assignment) -> ToExecutor:
        fid = a.spec.function_id
        function = b""
        if fid not in ex.functions:
            function = self.functions.get(fid, b"")
            ex.functions.add(fid)
        if function != a.function:
            a = w.Assignment(a.spec, a.inputs, function, a.gpu_ids)
        ex.tasks.append(a)
        self.running[a.spec.task_id] = ex.executor_id
        return ToExecutor(ex.executor_id, w.Execute(a))

    def _prefetch(self) -> list[Instruction]:
        """Every CPU is taken: short tasks wait in the busy executors, not here."""
        out: list[Instruction] = []
        while self.queue and self._short(self.queue[0]):
            first = self.queue[0]
            cpus = first.spec.resources.get("CPU", 0.0)
            mean = self.durations[first.spec.function_id]
            limit = max(2, min(self.prefetch, int(HELD_SECONDS / max(mean, 1e-6))))
            # Tasks behind the running one were short when they were handed
            # over; the running one may not be (it may have found the executor idle).
            room = [
                e
                for e in self.executors.values()
                if e.state == "busy"
                and not e.handed_back
                and len(e.tasks) < limit
                and e.tasks[0].spec.task_id not in self.blocked
                and e.tasks[0].spec.resources.get("CPU", 0.0) == cpus
                and self._short(e.tasks[0])
            ]
            if not room:
                break
            ex = min(room, key=lambda e: (len(e.tasks), e.executor_id))
            out.append(self._hand_over(ex, self.queue.popleft()))
        return out

    def _short(self, a: w.Assignment) -> bool:
        """May wait in an executor behind another (and another behind it)."""
        mean = self.durations.get(a.spec.function_id)
        return (
            mean is not None
            and mean < SHORT_TASK
            and not a.gpu_ids
            and not a.spec.generator
            and not a.spec.max_calls
        )

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
        ex = self.executors[self._next_executor] = Executor(self._next_executor)
        self._log(ex, "", ex.state, "spawn")
        return SpawnExecutor(self._next_executor)

    def _set_state(self, ex: Executor, finish: str, stimulus: Any) -> None:
        """Move an executor to ``finish`` (a change missing from EXECUTOR_TRANSITIONS
        raises; staying is no change)."""
        if ex.state == finish:
            return
        check_transition(ex.executor_id, ex.state, finish)
        self._log(ex, ex.state, finish, stimulus)
        ex.state = finish

    def _log(self, ex: Executor, start: str, finish: str, stimulus: Any) -> None:
        """``stimulus``: the event being handled (kept by its name only), or a word."""
        cause = stimulus if isinstance(stimulus, str) else type(stimulus).__name__
        self.changes.append((ex.executor_id, start, finish, cause))

    def story(self, executor_id: int) -> list[tuple[str, str, str]]:
        """An executor's state changes, oldest first: (from, to, cause)."""
        return [
            (start, finish, cause)
            for key, start, finish, cause in self.changes
            if key == executor_id
        ]

    def statistics(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for e in self.executors.values():
            states[e.state] = states.get(e.state, 0) + 1
        return {"queued": len(self.queue), "running": len(self.task_cpus), **states}

    def validate(self) -> None:
        held = sum(c for t, c in self.task_cpus.items() if t not in self.blocked)
        held += sum(self.actor_cpus.values())
        assert set(self.actor_cpus) == set(self.actors)
        assert abs(held - self.cpus_used) < 1e-6, f"cpus_used {self.cpus_used} != {held}"
        assert set(self.task_cpus) == {
            e.task for e in self.executors.values() if e.task is not None
        }
        assert self.blocked <= set(self.task_cpus)
        for task_id, executor_id in self.running.items():
            ex = self.executors[executor_id]
            assert ex.state == "busy" and any(a.spec.task_id == task_id for a in ex.tasks)
        handed = sum(len(e.tasks) for e in self.executors.values())
        assert handed == len(self.running), "a task handed to two executors, or lost"
        for actor_id, executor_id in self.actors.items():
            assert self.executors[executor_id].actor_id == actor_id
        for ex in self.executors.values():
            if ex.actor_id:
                assert ex.state in ("starting", "actor") and ex.task is None
                assert not ex.backlog or ex.state == "starting"
                continue
            if ex.state == "busy":
                assert ex.task is not None and self.running.get(ex.task) == ex.executor_id
                assert len(ex.tasks) <= self.prefetch
                # A task of a max_calls function runs alone (its executor may exit after it).
                assert len(ex.tasks) == 1 or not any(a.spec.max_calls for a in ex.tasks)
            else:
                assert ex.task is None
        if self.queue and self._fits(self.queue[0], self.cpus_used):
            assert not any(e.state == "idle" for e in self.executors.values())


def _cancelled(a: w.Assignment, exit_code: int = 0) -> w.TaskResult:
    err = TaskCancelledError(a.spec.name, a.spec.task_id.hex())
    return w.TaskResult(
        a.spec.task_id, error=pickle.dumps(err), failure="cancelled", exit_code=exit_code
    )
