"""The worker daemon's state machine for actors: a dedicated process per actor.

No processes are started: the tests play the executors' part by feeding
events, and ``validate()`` runs after every step.
"""

from __future__ import annotations

import pickle
import signal
from typing import Any, TypeVar

import pytest

from taskgraph import _wire as w
from taskgraph.exceptions import ActorError
from taskgraph.worker.state import (
    Event,
    ExecutorDied,
    ExecutorFinished,
    ExecutorReady,
    Instruction,
    KillActorRequested,
    SignalExecutor,
    SpawnExecutor,
    TasksAssigned,
    ToExecutor,
    ToScheduler,
    WorkerState,
)

T = TypeVar("T")

CLASS_CODE = b"cloudpickled class"
CODE = b"cloudpickled function"


class Harness:
    def __init__(self, min_executors: int = 1, cpus: float | None = 2.0) -> None:
        self.state = WorkerState("w1", min_executors, cpus)
        self._next = 0

    def handle(self, event: Event) -> list[Instruction]:
        out = self.state.handle(event)
        self.state.validate()
        return out

    def start(self) -> list[Instruction]:
        out = self.state.start()
        self.state.validate()
        for spawn in of(SpawnExecutor, out):
            self.ready(spawn.executor_id)
        return out

    def ready(self, executor_id: int) -> list[Instruction]:
        client = f"client-{executor_id}".encode()
        return self.handle(ExecutorReady(executor_id, 1000 + executor_id, client))

    def new_id(self) -> bytes:
        self._next += 1
        return self._next.to_bytes(16, "big")

    def creation(
        self,
        place: float = 1.0,
        hold: float = 0.0,
        code: bytes = CLASS_CODE,
    ) -> w.Assignment:
        actor_id = self.new_id()
        spec = w.TaskSpec(
            task_id=actor_id,
            function_id=b"class",
            name="Counter.__init__",
            args=b"",
            deps=[],
            resources={"CPU": place} if place else {},
            actor_id=actor_id,
            actor=w.ActorSpec("Counter", {"incr": 1}, hold={"CPU": hold} if hold else {}),
        )
        return w.Assignment(spec, [], code)

    def call(self, creation: w.Assignment, method: str = "incr") -> w.Assignment:
        spec = w.TaskSpec(
            task_id=self.new_id(),
            function_id=b"",
            name=f"Counter.{method}",
            args=b"",
            deps=[],
            actor_id=creation.spec.actor_id,
            method=method,
        )
        return w.Assignment(spec, [])

    def task(self, cpus: float = 1.0) -> w.Assignment:
        spec = w.TaskSpec(
            task_id=self.new_id(),
            function_id=b"f",
            name="task",
            args=b"",
            deps=[],
            resources={"CPU": cpus},
        )
        return w.Assignment(spec, [], CODE)

    def assign(self, *assignments: w.Assignment) -> list[Instruction]:
        return self.handle(TasksAssigned(list(assignments)))

    def finish(self, executor_id: int, a: w.Assignment, **result: Any) -> list[Instruction]:
        res = w.TaskResult(a.spec.task_id, **result)
        return self.handle(ExecutorFinished(executor_id, res))

    def actor_up(self, creation: w.Assignment) -> int:
        """Assign the creation and bring its process up; its executor id."""
        [spawn] = of(SpawnExecutor, self.assign(creation))
        self.ready(spawn.executor_id)
        return spawn.executor_id


def of(kind: type[T], out: list[Instruction]) -> list[T]:
    return [i for i in out if isinstance(i, kind)]


def executed(out: list[Instruction]) -> list[tuple[int, w.Assignment]]:
    found = []
    for ins in of(ToExecutor, out):
        assert isinstance(ins.message, w.Execute)
        found.append((ins.executor_id, ins.message.assignment))
    return found


def to_scheduler(out: list[Instruction]) -> list[object]:
    return [ins.message for ins in of(ToScheduler, out)]


def test_a_creation_gets_a_process_of_its_own_and_waits_for_it() -> None:
    h = Harness(min_executors=1)
    h.start()
    creation = h.creation()
    out = h.assign(creation)
    assert out == [SpawnExecutor(2)], "a dedicated process, not the idle pool executor"
    assert h.state.statistics() == {"queued": 0, "running": 0, "idle": 1, "starting": 1}

    out = h.handle(ExecutorReady(2, 4242, b"actor-client"))
    assert to_scheduler(out) == [w.ActorStarted(creation.spec.actor_id, 4242)]
    assert executed(out) == [(2, creation)]
    assert h.state.statistics() == {"queued": 0, "running": 0, "idle": 1, "actor": 1}


def test_a_creation_carries_the_class_code_the_daemon_got_earlier() -> None:
    h = Harness()
    h.start()
    first = h.creation()
    h.actor_up(first)
    second = h.creation(code=b"")  # the scheduler sends code once per worker
    [spawn] = of(SpawnExecutor, h.assign(second))
    [(_, a)] = executed(h.ready(spawn.executor_id))
    assert a.spec == second.spec and a.function == CLASS_CODE, "a new process needs it"


def test_calls_before_the_process_is_up_wait_and_then_go_in_order() -> None:
    h = Harness()
    h.start()
    creation = h.creation()
    calls = [h.call(creation) for _ in range(3)]
    out = h.assign(creation, *calls[:2])
    assert of(SpawnExecutor, out) == [SpawnExecutor(2)] and executed(out) == []
    assert h.assign(calls[2]) == []
    out = h.ready(2)
    assert executed(out) == [(2, creation), *((2, c) for c in calls)]


def test_calls_go_straight_to_the_actors_process_whatever_the_pool_is_doing() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    creation = h.creation(place=0.0)
    executor = h.actor_up(creation)
    busy, queued = h.task(), h.task()
    h.assign(busy, queued)
    assert h.state.statistics()["queued"] == 1, "the pool's only CPU is taken"
    call = h.call(creation)
    assert h.assign(call) == [ToExecutor(executor, w.Execute(call))]
    assert h.state.statistics()["queued"] == 1


def test_an_actors_results_are_forwarded_without_touching_the_task_pool() -> None:
    h = Harness(min_executors=1)
    h.start()
    creation = h.creation(place=0.0)
    executor = h.actor_up(creation)
    call = h.call(creation)
    h.assign(call)
    before = (dict(h.state.running), h.state.tasks_done, h.state.statistics())
    returns = [w.ReturnValue(b"r" * 16, data=b"1")]
    out = h.finish(executor, call, returns=returns)
    assert to_scheduler(out) == [w.TasksDone([w.TaskResult(call.spec.task_id, returns=returns)])]
    assert (dict(h.state.running), h.state.tasks_done, h.state.statistics()) == before
    assert h.state.executors[executor].state == "actor", "never idle, never in the pool"


def test_pool_tasks_never_run_on_an_actors_process() -> None:
    h = Harness(min_executors=1, cpus=4.0)
    h.start()
    executor = h.actor_up(h.creation(place=0.0))
    a, b = h.task(), h.task()
    out = h.assign(a, b)
    assert [e for e, _ in executed(out)] == [1]
    assert of(SpawnExecutor, out) == [SpawnExecutor(executor + 1)]


def test_an_actor_counts_its_placement_cpus_while_its_constructor_runs() -> None:
    h = Harness(min_executors=2, cpus=1.0)
    h.start()
    creation = h.creation(place=1.0, hold=0.0)
    executor = h.actor_up(creation)
    assert h.state.cpus_used == 1.0
    task = h.task()
    assert executed(h.assign(task)) == [], "the constructor has the CPU"

    out = h.finish(executor, creation, returns=[w.ReturnValue(b"a" * 16, data=b"")])
    assert h.state.cpus_used == 1.0, "the task took the CPU the actor gave back"
    assert [a.spec for _, a in executed(out)] == [task.spec]
    assert to_scheduler(out)[0] == w.TasksDone(
        [w.TaskResult(creation.spec.task_id, returns=[w.ReturnValue(b"a" * 16, data=b"")])]
    )


def test_an_actor_with_explicit_cpus_holds_them_after_its_constructor() -> None:
    h = Harness(min_executors=1, cpus=2.0)
    h.start()
    creation = h.creation(place=2.0, hold=2.0)
    executor = h.actor_up(creation)
    h.finish(executor, creation)
    assert h.state.cpus_used == 2.0
    task = h.task()
    assert executed(h.assign(task)) == []
    out = h.handle(ExecutorDied(executor, -signal.SIGKILL))
    assert h.state.cpus_used == 1.0, "its CPUs are back, and the task took one"
    assert [a.spec for _, a in executed(out)] == [task.spec]


def test_a_failed_constructor_keeps_its_cpus_until_its_process_is_gone() -> None:
    h = Harness(min_executors=1, cpus=2.0)
    h.start()
    creation = h.creation(place=1.0, hold=0.0)
    executor = h.actor_up(creation)
    error = pickle.dumps(ActorError("Counter", "its constructor raised"))
    out = h.finish(executor, creation, error=error, failure="task")
    [done] = to_scheduler(out)
    assert isinstance(done, w.TasksDone) and done.results[0].failure == "task"
    assert h.state.cpus_used == 1.0, "the process is still there"
    # The scheduler answers with KillActor; the process ends.
    out = h.handle(KillActorRequested(creation.spec.actor_id, graceful=False))
    assert out == [SignalExecutor(executor, signal.SIGKILL)]
    h.handle(ExecutorDied(executor, -signal.SIGKILL))
    assert h.state.cpus_used == 0.0


def test_an_actors_process_dying_reports_the_actor_died() -> None:
    h = Harness(min_executors=1)
    h.start()
    creation = h.creation()
    executor = h.actor_up(creation)
    h.finish(executor, creation)
    out = h.handle(ExecutorDied(executor, -signal.SIGSEGV))
    assert to_scheduler(out) == [
        w.ClientGone(f"client-{executor}".encode()),
        w.ActorDied(creation.spec.actor_id, -signal.SIGSEGV, 1000 + executor),
    ]
    assert of(SpawnExecutor, out) == [], "the pool is whole: no replacement"
    assert h.state.actors == {} and h.state.actor_cpus == {}
    assert h.assign(h.call(creation)) == [], "a late call to the dead actor is dropped"


def test_an_actor_dying_before_its_process_said_hello_reports_no_client() -> None:
    h = Harness(min_executors=1)
    h.start()
    creation = h.creation()
    [spawn] = of(SpawnExecutor, h.assign(creation, h.call(creation)))
    out = h.handle(ExecutorDied(spawn.executor_id, 1))
    assert to_scheduler(out) == [w.ActorDied(creation.spec.actor_id, 1, 0)]
    assert h.state.cpus_used == 0.0


def test_an_actor_restarted_on_the_same_worker_gets_a_new_process() -> None:
    h = Harness(min_executors=1)
    h.start()
    creation = h.creation()
    first = h.actor_up(creation)
    h.handle(ExecutorDied(first, -signal.SIGKILL))
    again = w.Assignment(creation.spec, [], b"")
    second = h.actor_up(again)
    assert second != first and h.state.actors == {creation.spec.actor_id: second}
    call = h.call(creation)
    assert executed(h.assign(call)) == [(second, call)]


@pytest.mark.parametrize(("graceful", "signum"), [(True, signal.SIGTERM), (False, signal.SIGKILL)])
def test_kill_actor_signals_its_process(graceful: bool, signum: int) -> None:
    h = Harness()
    h.start()
    creation = h.creation()
    executor = h.actor_up(creation)
    out = h.handle(KillActorRequested(creation.spec.actor_id, graceful))
    assert out == [SignalExecutor(executor, signum)]
    assert h.handle(KillActorRequested(b"\x09" * 16, graceful)) == [], "not here: nothing"


def test_kill_actor_reaches_a_process_still_starting() -> None:
    h = Harness()
    h.start()
    creation = h.creation()
    [spawn] = of(SpawnExecutor, h.assign(creation))
    out = h.handle(KillActorRequested(creation.spec.actor_id, graceful=False))
    assert out == [SignalExecutor(spawn.executor_id, signal.SIGKILL)]


def test_validate_catches_actor_cpus_counted_twice() -> None:
    h = Harness()
    h.start()
    h.actor_up(h.creation(place=1.0))
    h.state.cpus_used += 1.0
    with pytest.raises(AssertionError):
        h.state.validate()
