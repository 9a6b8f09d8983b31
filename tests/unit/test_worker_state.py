"""The worker daemon's pure state machine: which executor process runs which task.

No processes are started: the tests play the executors' part by feeding
events, and ``validate()`` runs after every step.
"""

from __future__ import annotations

import pickle
import signal
from typing import Any, TypeVar

import msgspec
import pytest

from taskgraph import _wire as w
from taskgraph.exceptions import TaskCancelledError, TaskError, WorkerCrashedError
from taskgraph.worker.state import (
    CancelRequested,
    Event,
    ExecutorDied,
    ExecutorFinished,
    ExecutorReady,
    Instruction,
    SignalExecutor,
    SpawnExecutor,
    TaskBlocked,
    TasksAssigned,
    TasksReturned,
    TaskUnblocked,
    ToExecutor,
    ToScheduler,
    WorkerState,
)

T = TypeVar("T")

CODE = b"cloudpickled function"


class Harness:
    def __init__(self, min_executors: int = 2, cpus: float | None = None) -> None:
        self.state = WorkerState("w1", min_executors, cpus)
        self._next_task = 0

    def start(self) -> list[Instruction]:
        out = self.state.start()
        self.state.validate()
        return out

    def handle(self, event: Event) -> list[Instruction]:
        out = self.state.handle(event)
        self.state.validate()
        return out

    def ready(self, *executor_ids: int) -> list[Instruction]:
        out: list[Instruction] = []
        for executor_id in executor_ids:
            out += self.handle(
                ExecutorReady(executor_id, 1000 + executor_id, f"client-{executor_id}".encode())
            )
        return out

    def assignment(
        self, name: str = "task", function_id: bytes = b"f", code: bytes = CODE, cpus: float = 0.0
    ) -> w.Assignment:
        self._next_task += 1
        spec = w.TaskSpec(
            task_id=self._next_task.to_bytes(16, "big"),
            function_id=function_id,
            name=name,
            args=b"",
            deps=[],
            resources={"CPU": cpus} if cpus else {},
        )
        return w.Assignment(spec, [], code)

    def assign(self, *assignments: w.Assignment) -> list[Instruction]:
        return self.handle(TasksAssigned(list(assignments)))

    def finish(self, executor_id: int, a: w.Assignment, **result: Any) -> list[Instruction]:
        return self.handle(ExecutorFinished(executor_id, w.TaskResult(a.spec.task_id, **result)))


def of(kind: type[T], out: list[Instruction]) -> list[T]:
    return [i for i in out if isinstance(i, kind)]


def executes(out: list[Instruction]) -> dict[int, w.Assignment]:
    """Executor id -> the assignment it was told to execute."""
    found: dict[int, w.Assignment] = {}
    for ins in of(ToExecutor, out):
        assert isinstance(ins.message, w.Execute)
        found[ins.executor_id] = ins.message.assignment
    return found


def reported(out: list[Instruction]) -> list[w.TaskResult]:
    return [
        r
        for ins in of(ToScheduler, out)
        if isinstance(ins.message, w.TasksDone)
        for r in ins.message.results
    ]


def test_start_spawns_the_minimum_of_executors() -> None:
    h = Harness(min_executors=3)
    assert h.start() == [SpawnExecutor(1), SpawnExecutor(2), SpawnExecutor(3)]
    assert h.state.statistics() == {"queued": 0, "running": 0, "starting": 3}
    assert WorkerState("w", 0).start() == [SpawnExecutor(1)], "at least one"


def test_a_task_waits_for_an_executor_to_be_ready() -> None:
    h = Harness(min_executors=1)
    h.start()
    a = h.assignment()
    out = h.assign(a)
    assert out == [], "the starting executor will take it"
    out = h.ready(1)
    assert executes(out) == {1: a}
    assert h.state.statistics() == {"queued": 0, "running": 1, "busy": 1}


def test_assignments_go_to_idle_executors_and_more_are_spawned_when_all_are_busy() -> None:
    h = Harness(min_executors=2)
    h.start()
    h.ready(1, 2)
    a, b, c = (h.assignment(n) for n in "abc")
    out = h.assign(a, b, c)
    assert sorted(a.spec.name for a in executes(out).values()) == ["a", "b"]
    assert of(SpawnExecutor, out) == [SpawnExecutor(3)]
    assert h.state.statistics() == {"queued": 1, "running": 2, "busy": 2, "starting": 1}

    # A finished executor takes the queued task before the new one is ready.
    first = next(e for e, x in executes(out).items() if x.spec.name == "a")
    out = h.finish(first, a)
    assert [r.task_id for r in reported(out)] == [a.spec.task_id]
    assert list(executes(out)) == [first]
    assert executes(out)[first].spec == c.spec
    assert h.ready(3) == [], "nothing left to run"
    assert h.state.statistics() == {"queued": 0, "running": 2, "busy": 2, "idle": 1}


def test_a_function_is_sent_once_to_each_executor() -> None:
    h = Harness(min_executors=2)
    h.start()
    h.ready(1, 2)
    # The scheduler sends the code only with the first task of that function.
    first, second = h.assignment("first"), h.assignment("second", code=b"")
    out = h.assign(first, second)
    got = executes(out)
    assert {e: a.function for e, a in got.items()} == {1: CODE, 2: CODE}

    executor = next(e for e, a in got.items() if a.spec.name == "first")
    h.finish(executor, first)
    third = h.assignment("third", code=b"")
    [again] = executes(h.assign(third)).values()
    assert again.spec == third.spec and again.function == b"", "that executor has it already"


def test_an_executor_that_dies_while_busy_reports_a_crash_and_is_replaced() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment("segfaulter")
    h.assign(a)

    out = h.handle(ExecutorDied(1, -signal.SIGSEGV))

    assert ToScheduler(w.ClientGone(b"client-1")) in out
    [result] = reported(out)
    assert result.task_id == a.spec.task_id
    assert result.failure == "crashed" and result.exit_code == -signal.SIGSEGV
    assert result.error is not None
    err = pickle.loads(result.error)
    assert isinstance(err, WorkerCrashedError)
    assert err.exit_code == -signal.SIGSEGV
    assert "SIGSEGV" in str(err) and "segfaulter" in str(err) and "1001" in str(err)
    assert of(SpawnExecutor, out) == [SpawnExecutor(2)]
    assert h.state.statistics() == {"queued": 0, "running": 0, "starting": 1}


def test_an_idle_executor_that_dies_only_says_goodbye_for_its_client() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    out = h.handle(ExecutorDied(1, 1))
    assert out == [ToScheduler(w.ClientGone(b"client-1")), SpawnExecutor(2)]


def test_an_extra_executor_that_dies_is_not_replaced() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    h.assign(h.assignment(), h.assignment())
    h.ready(2)
    out = h.handle(ExecutorDied(2, 0))
    assert len(reported(out)) == 1
    assert of(SpawnExecutor, out) == []


def test_cancel_of_a_queued_task_answers_at_once() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    running, queued = h.assignment("running"), h.assignment("queued")
    h.assign(running, queued)
    out = h.handle(CancelRequested(queued.spec.task_id, force=False))
    [result] = reported(out)
    assert result.failure == "cancelled" and result.task_id == queued.spec.task_id
    assert result.error is not None
    assert isinstance(pickle.loads(result.error), TaskCancelledError)
    assert h.state.statistics()["queued"] == 0
    assert h.handle(CancelRequested(b"unknown", force=True)) == []


def test_cancel_of_a_running_task_asks_its_executor_or_kills_it_by_force() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment("long")
    h.assign(a)
    # The executor interrupts its own task (it knows whether that task still runs).
    out = h.handle(CancelRequested(a.spec.task_id, force=False))
    assert out == [ToExecutor(1, w.CancelTask(a.spec.task_id, False))]
    assert h.handle(CancelRequested(a.spec.task_id, True)) == [SignalExecutor(1, signal.SIGKILL)]


def test_a_running_task_interrupted_by_cancel_reports_cancelled() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment("long")
    h.assign(a)
    h.handle(CancelRequested(a.spec.task_id, force=False))
    interrupted = pickle.dumps(TaskError.from_exception(KeyboardInterrupt(), "long"))
    [result] = reported(h.finish(1, a, error=interrupted, failure="task"))
    assert result.failure == "cancelled"
    assert result.error is not None
    err = pickle.loads(result.error)
    assert isinstance(err, TaskCancelledError) and "long" in str(err)
    assert h.state.statistics() == {"queued": 0, "running": 0, "idle": 1}


def test_a_running_task_that_finishes_despite_cancel_keeps_its_result() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment()
    h.assign(a)
    h.handle(CancelRequested(a.spec.task_id, force=False))
    returns = [w.ReturnValue(b"r" * 16, data=b"done")]
    [result] = reported(h.finish(1, a, returns=returns))
    assert result.failure == "" and result.returns == returns


def test_a_task_killed_by_force_cancel_reports_cancelled_not_crashed() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment("stuck")
    h.assign(a)
    h.handle(CancelRequested(a.spec.task_id, force=True))
    out = h.handle(ExecutorDied(1, -signal.SIGKILL))
    [result] = reported(out)
    assert result.failure == "cancelled"
    assert result.error is not None
    assert isinstance(pickle.loads(result.error), TaskCancelledError)
    assert of(SpawnExecutor, out) == [SpawnExecutor(2)]


def test_tasks_beyond_the_cpus_wait_in_the_worker_s_queue() -> None:
    h = Harness(min_executors=2, cpus=2.0)
    h.start()
    h.ready(1, 2)
    a, b, c = (h.assignment(n, cpus=1.0) for n in "abc")
    out = h.assign(a, b, c)
    assert sorted(x.spec.name for x in executes(out).values()) == ["a", "b"]
    assert of(SpawnExecutor, out) == [], "no process for a task with no CPU to run on"
    assert h.state.statistics()["queued"] == 1
    first = next(e for e, x in executes(out).items() if x.spec.name == "a")
    out = h.finish(first, a)
    assert {e: x.spec.name for e, x in executes(out).items()} == {first: "c"}
    assert h.state.statistics() == {"queued": 0, "running": 2, "busy": 2}


def test_a_blocked_task_lends_its_cpu_to_a_queued_task_and_takes_it_back() -> None:
    h = Harness(min_executors=2, cpus=2.0)
    h.start()
    h.ready(1, 2)
    a, b, c, d = (h.assignment(n, cpus=1.0) for n in "abcd")
    got = executes(h.assign(a, b, c))
    by_name = {x.spec.name: e for e, x in got.items()}

    out = h.handle(TaskBlocked(a.spec.task_id))
    assert out == [SpawnExecutor(3)], "c may run now, but needs a process of its own"
    assert {e: x.spec.name for e, x in executes(h.ready(3)).items()} == {3: "c"}
    assert h.state.statistics()["running"] == 3

    h.handle(TaskUnblocked(a.spec.task_id))
    assert h.state.cpus_used == 3.0, "overcommitted until a task ends"
    assert executes(h.assign(d)) == {}
    assert executes(h.finish(by_name["b"], b)) == {}, "still a CPU short"
    assert [x.spec.name for x in executes(h.finish(3, c)).values()] == ["d"]


def test_a_blocked_task_that_ends_gives_back_nothing_twice() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    a, b = h.assignment("a", cpus=1.0), h.assignment("b", cpus=1.0)
    h.assign(a, b)
    h.handle(TaskBlocked(a.spec.task_id))
    h.handle(TaskBlocked(a.spec.task_id))
    h.ready(2)  # b runs on the CPU a lent
    h.finish(1, a)
    assert h.state.cpus_used == 1.0
    h.handle(TaskUnblocked(a.spec.task_id))  # too late: a is gone
    assert h.state.cpus_used == 1.0


def test_validate_catches_a_queue_beside_an_idle_executor() -> None:
    h = Harness(min_executors=1)
    h.start()
    h.ready(1)
    h.state.queue.append(h.assignment())
    with pytest.raises(AssertionError):
        h.state.validate()


# -- short tasks wait in busy executors (prefetch) ----------------------------


def prefetching(prefetch: int = 3) -> Harness:
    """Two executors on two CPUs that have seen function b"f" run in 10 us."""
    h = Harness(min_executors=2, cpus=2.0)
    h.state.prefetch = prefetch
    h.start()
    h.ready(1, 2)
    warm = [h.assignment(f"warm{i}", cpus=1.0) for i in range(2)]
    for e, a in executes(h.assign(*warm)).items():
        h.finish(e, a, duration=1e-5)
    return h


def test_short_tasks_wait_in_busy_executors_and_start_as_the_running_one_ends() -> None:
    h = prefetching(prefetch=3)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(8)]
    out = h.assign(*tasks)
    handed = [(i.executor_id, i.message.assignment.spec.name) for i in of(ToExecutor, out)]
    assert len(handed) == 6, "each executor: the one it runs and two waiting"
    assert {e for e, _ in handed} == {1, 2}
    assert h.state.statistics() == {"queued": 2, "running": 2, "busy": 2}
    assert h.state.cpus_used == 2.0, "waiting tasks hold no CPU"

    # The executor runs them in order: its next report is for the next one.
    first = next(a for a in tasks if a.spec.task_id == h.state.executors[1].task)
    out = h.finish(1, first, duration=1e-5)
    assert [r.task_id for r in reported(out)] == [first.spec.task_id]
    assert len(h.state.executors[1].tasks) == 3, "a queued task took the freed place"
    assert h.state.cpus_used == 2.0


def test_tasks_of_unknown_or_long_functions_wait_in_the_daemon() -> None:
    h = prefetching()
    running = [h.assignment(f"r{i}", cpus=1.0) for i in range(2)]
    unknown = [h.assignment(f"u{i}", function_id=b"g", cpus=1.0) for i in range(4)]
    out = h.assign(*running, *unknown)
    assert len(of(ToExecutor, out)) == 2, "the short ones run; the unknown wait here"
    assert h.state.statistics()["queued"] == 4
    h2 = Harness(min_executors=1, cpus=1.0)
    h2.state.prefetch = 4
    h2.start()
    h2.ready(1)
    slow = [h2.assignment(f"s{i}", cpus=1.0) for i in range(3)]
    h2.assign(slow[0])
    out = h2.finish(1, slow[0], duration=0.5)
    out = h2.assign(*slow[1:])
    assert len(of(ToExecutor, out)) == 1, "a long function's tasks go one at a time"


def test_a_blocked_task_hands_back_what_waits_behind_it() -> None:
    h = prefetching(prefetch=3)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(6)]
    h.assign(*tasks)
    ex = h.state.executors[1]
    head, *behind = list(ex.tasks)
    assert len(behind) == 2
    h.handle(TaskBlocked(head.spec.task_id))
    assert h.state.executors[1].tasks[0] is head
    out = h.handle(TasksReturned(1, [a.spec.task_id for a in behind]))
    assert list(h.state.executors[1].tasks) == [head]
    # The CPU it lent runs them: a new process, since the others are busy.
    assert of(SpawnExecutor, out) == [SpawnExecutor(3)]
    got = [i.message.assignment.spec.task_id for i in of(ToExecutor, h.ready(3))]
    assert got == [a.spec.task_id for a in behind], "handed back, first in line, in order"


def test_cancel_of_a_task_waiting_in_an_executor_goes_to_the_executor() -> None:
    h = prefetching(prefetch=2)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(4)]
    h.assign(*tasks)
    waiting = h.state.executors[1].tasks[1]
    tid = waiting.spec.task_id
    out = h.handle(CancelRequested(tid, force=True))
    assert out == [ToExecutor(1, w.CancelTask(tid, True))], "not a kill: another task runs"
    # It dropped the task and says so; the running one goes on.
    cancelled = w.TaskResult(tid, error=b"x", failure="cancelled")
    out = h.handle(ExecutorFinished(1, cancelled))
    assert reported(out) == [cancelled]
    assert len(h.state.executors[1].tasks) == 1


def test_a_cancelled_task_handed_back_is_not_queued_again() -> None:
    h = prefetching(prefetch=2)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(4)]
    h.assign(*tasks)
    head, waiting = list(h.state.executors[1].tasks)
    h.handle(CancelRequested(waiting.spec.task_id, force=False))
    h.handle(TaskBlocked(head.spec.task_id))
    out = h.handle(TasksReturned(1, [waiting.spec.task_id]))
    [result] = reported(out)
    assert result.task_id == waiting.spec.task_id and result.failure == "cancelled"
    assert all(a.spec.task_id != waiting.spec.task_id for a in h.state.queue)


def test_an_executor_that_dies_fails_its_running_task_and_requeues_the_rest() -> None:
    h = prefetching(prefetch=3)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(6)]
    h.assign(*tasks)
    head, *behind = list(h.state.executors[1].tasks)
    out = h.handle(ExecutorDied(1, -signal.SIGSEGV))
    # It reported every task before starting the next: the first one not
    # reported was running, the others never started.
    [result] = reported(out)
    assert result.task_id == head.spec.task_id and result.failure == "crashed"
    assert [a.spec.task_id for a in list(h.state.queue)[:2]] == [a.spec.task_id for a in behind]
    assert of(SpawnExecutor, out) == [SpawnExecutor(3)]


def test_a_task_handed_back_by_an_idle_executor_is_queued_again() -> None:
    h = prefetching(prefetch=2)
    a = h.assignment("a", cpus=1.0)
    out = h.assign(a)
    [executor_id] = executes(out)
    out = h.handle(TasksReturned(executor_id, [a.spec.task_id]))
    # It goes out again at once, to an idle executor (perhaps the same one).
    assert [i.message.assignment.spec.task_id for i in of(ToExecutor, out)] == [a.spec.task_id]
    assert h.state.cpus_used == 1.0


def test_an_executor_holds_about_a_few_milliseconds_of_work() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.state.prefetch = 16
    h.start()
    h.ready(1)
    warm = h.assignment("warm", cpus=1.0)
    h.assign(warm)
    h.finish(1, warm, duration=0.001)  # 1 ms a task: 5 of them make HELD_SECONDS
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(20)]
    out = h.assign(*tasks)
    assert len(of(ToExecutor, out)) == 5
    assert h.state.statistics()["queued"] == 15


def test_an_executor_that_handed_tasks_back_gets_none_until_its_task_ends() -> None:
    h = prefetching(prefetch=4)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(8)]
    h.assign(*tasks)
    head, *behind = list(h.state.executors[1].tasks)
    h.handle(TasksReturned(1, [a.spec.task_id for a in behind]))  # its task blocked
    assert list(h.state.executors[1].tasks) == [head]
    more = [h.assignment(f"m{i}", cpus=1.0) for i in range(4)]
    out = h.assign(*more)
    assert all(i.executor_id != 1 for i in of(ToExecutor, out)), "none behind the long task"
    h.finish(1, head, duration=1e-5)
    assert len(h.state.executors[1].tasks) > 1, "its next task is an ordinary one again"


def test_an_executor_handing_back_what_we_count_as_running_frees_its_cpu() -> None:
    h = prefetching(prefetch=3)
    tasks = [h.assignment(f"t{i}", cpus=1.0) for i in range(6)]
    h.assign(*tasks)
    head, second, third = list(h.state.executors[1].tasks)
    # Not expected, but it must not leak a CPU: the third runs in their place.
    h.handle(TasksReturned(1, [head.spec.task_id, second.spec.task_id]))  # validate()s
    assert h.state.executors[1].task == third.spec.task_id
    assert h.state.task_cpus.get(third.spec.task_id) == 1.0
    assert head.spec.task_id not in h.state.task_cpus
    assert h.state.cpus_used == 2.0


def test_a_lease_is_asked_to_end_when_a_task_waits_for_its_cpu() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    lease = h.assignment("lease", cpus=1.0)
    lease = w.Assignment(msgspec.structs.replace(lease.spec, channel_to="unix://client"), [], b"")
    h.assign(lease)
    task = h.assignment("t", cpus=1.0)
    out = h.assign(task)
    cancels = [i for i in of(ToExecutor, out) if isinstance(i.message, w.CancelTask)]
    assert cancels == [ToExecutor(1, w.CancelTask(lease.spec.task_id))], "the lease ends, softly"
    assert not [
        i
        for i in of(ToExecutor, h.assign(h.assignment("u", cpus=1.0)))
        if isinstance(i.message, w.CancelTask)
    ], "asked once"
    # The lease ends; the waiting task gets its CPU.
    out = h.finish(1, lease)
    assert executes(out)[1].spec == task.spec
    assert not h.state.revoked


def test_a_blocked_lease_is_not_asked_to_end() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    lease = h.assignment("lease", cpus=1.0)
    lease = w.Assignment(msgspec.structs.replace(lease.spec, channel_to="unix://client"), [], b"")
    h.assign(lease)
    h.handle(TaskBlocked(lease.spec.task_id))  # its task waits in get(): its CPU is lent
    out = h.assign(h.assignment("t", cpus=1.0), h.assignment("u", cpus=1.0))
    assert not [i for i in of(ToExecutor, out) if isinstance(i.message, w.CancelTask)]


def test_a_leased_tasks_report_is_relayed_and_its_cancel_reaches_the_lease() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    lease = h.assignment("lease", cpus=1.0)
    lease = w.Assignment(msgspec.structs.replace(lease.spec, channel_to="unix://client"), [], b"")
    h.assign(lease)
    leased = b"leased-task-id00"
    out = h.handle(CancelRequested(leased, force=False, channel=lease.spec.task_id))
    assert out == [ToExecutor(1, w.CancelTask(leased, False))], "to the executor serving it"
    before = (h.state.cpus_used, dict(h.state.running), h.state.tasks_done)
    report = w.TaskResult(leased, failure="cancelled", channel=lease.spec.task_id)
    out = h.handle(ExecutorFinished(1, report))
    assert out == [ToScheduler(w.TasksDone([report]))]
    assert (h.state.cpus_used, dict(h.state.running), h.state.tasks_done) == before
    assert h.state.executors[1].task == lease.spec.task_id, "the lease goes on"
