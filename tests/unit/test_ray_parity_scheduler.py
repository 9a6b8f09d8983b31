"""Scheduler decisions behind Ray-parity fixes (issue 16), driven event by event.

No processes: the tests play the clients and the workers, and ``validate()``
runs after every step (the actor harness of ``test_scheduler_actors``).
"""

from __future__ import annotations

from test_scheduler_actors import Harness, assigned_ids, ok, ret
from test_worker_actors import Harness as WorkerHarness

from taskgraph import _wire as w
from taskgraph.exceptions import ActorDiedError
from taskgraph.scheduler.state import SchedulerState
from taskgraph.worker.state import ActorEnds, ExecutorDied, Instruction, ToScheduler


def queueing_harness() -> Harness:
    """Workers may queue CPU-only work beyond their CPUs, as a real scheduler's do
    (TASKGRAPH_QUEUE_DEPTH, 64 by default)."""
    h = Harness()
    h.state = SchedulerState("test-cluster", queue_depth=64.0)
    h.client()
    return h


def test_an_actor_that_holds_a_cpu_waits_for_one_instead_of_queueing_on_a_busy_worker() -> None:
    h = queueing_harness()
    h.worker("w1", {"CPU": 2.0})
    first, second, third = (h.actor(place={"CPU": 1.0}, hold={"CPU": 1.0}) for _ in range(3))

    sends = h.submit(first, second, third)

    assert assigned_ids(sends, "w1") == [first.task_id, second.task_id]
    assert h.task_state(third) == "ready", "the third actor waits in the scheduler"
    assert h.available("w1") == 0.0
    h.done("w1", ok(first), ok(second))
    assert h.actor_state(third) == "pending"

    sends = h.died("w1", first)  # one ends: its CPU is free again

    assert assigned_ids(sends, "w1") == [third.task_id]


def test_an_actor_without_num_cpus_is_not_queued_behind_busy_cpus_either() -> None:
    # Placed with a CPU (as in Ray): its constructor starts at once wherever it
    # is sent, so being sent to a worker whose CPUs are all taken overfills it.
    h = queueing_harness()
    h.worker("w1", {"CPU": 1.0})
    busy = h.task()
    actor = h.actor()

    sends = h.submit(busy, actor)

    assert assigned_ids(sends, "w1") == [busy.task_id]
    assert h.task_state(actor) == "ready"
    assert assigned_ids(h.done("w1", ok(busy)), "w1") == [actor.task_id]


def test_plain_cpu_only_tasks_still_queue_on_busy_workers() -> None:
    h = queueing_harness()
    h.worker("w1", {"CPU": 1.0})
    first, second = h.task(), h.task()
    assert assigned_ids(h.submit(first, second), "w1") == [first.task_id, second.task_id]


# -- an actor's exit: on purpose only when it said so -------------------------------


def test_an_unannounced_exit_with_code_0_is_a_crash_and_restarts_the_actor() -> None:
    # os._exit(0) in a method: the process is gone without having said it ends.
    h = queueing_harness()
    h.worker("w1")
    spec = h.actor(max_restarts=1)
    h.submit(spec)
    h.done("w1", ok(spec))
    running = h.call(spec)
    h.submit(running)

    sends = h.died("w1", spec, exit_code=0)

    assert h.actor_state(spec) == "restarting"
    assert assigned_ids(sends, "w1") == [spec.task_id], "its constructor runs again"
    err = h.error(ret(running))
    assert isinstance(err, ActorDiedError) and "exited with code 0" in str(err)
    # Not reported as dead: it restarts (issue 15, "messages that tell the truth").
    assert err.restarting and "is being restarted" in str(err)
    assert "give it max_restarts" not in str(err)


def test_a_call_failed_by_a_death_for_good_says_the_actor_is_dead() -> None:
    h = queueing_harness()
    h.worker("w1")
    spec = h.actor(max_restarts=0)
    h.submit(spec)
    h.done("w1", ok(spec))
    running = h.call(spec)
    h.submit(running)

    h.died("w1", spec, exit_code=1)

    assert h.actor_state(spec) == "dead"
    err = h.error(ret(running))
    assert isinstance(err, ActorDiedError) and not err.restarting
    assert "give it max_restarts" in str(err)


def test_an_announced_end_is_never_restarted_and_says_why() -> None:
    h = queueing_harness()
    h.worker("w1")
    spec = h.actor(max_restarts=-1)
    h.submit(spec)
    h.done("w1", ok(spec))
    running = h.call(spec)
    h.submit(running)

    ending = "it called sys.exit(0) in its method 'stop'"
    sends = h.from_worker("w1", w.ActorDied(spec.actor_id, 0, pid=4242, ending=ending))

    assert h.actor_state(spec) == "dead"
    assert assigned_ids(sends, "w1") == []
    err = h.error(ret(running))
    assert isinstance(err, ActorDiedError) and ending in str(err)


def test_an_end_announced_in_the_constructor_fails_the_creation_for_good() -> None:
    h = queueing_harness()
    h.worker("w1")
    spec = h.actor(max_restarts=3)
    queued = h.call(spec)
    h.submit(spec, queued)

    ending = "it called sys.exit(0) in its constructor"
    sends = h.from_worker("w1", w.ActorDied(spec.actor_id, 0, pid=4242, ending=ending))

    assert h.actor_state(spec) == "dead" and assigned_ids(sends, "w1") == []
    assert h.available("w1") == 2.0, "its placement CPU is back"
    err = h.error(ret(queued))
    assert isinstance(err, ActorDiedError) and ending in str(err)


# -- the worker daemon's part: it passes on what the actor announced ------------------


def worker_with_an_actor() -> tuple[WorkerHarness, bytes, int]:
    h = WorkerHarness(min_executors=1)
    h.start()
    creation = h.creation()
    executor = h.actor_up(creation)
    h.finish(executor, creation)
    return h, creation.spec.actor_id, executor


def died_reports(out: list[Instruction]) -> list[w.ActorDied]:
    return [
        i.message for i in out if isinstance(i, ToScheduler) and isinstance(i.message, w.ActorDied)
    ]


def test_the_daemon_reports_an_announced_end_with_its_reason() -> None:
    h, actor_id, executor = worker_with_an_actor()
    assert h.handle(ActorEnds(executor, "it called exit_actor()")) == []

    [died] = died_reports(h.handle(ExecutorDied(executor, 0)))

    assert died == w.ActorDied(actor_id, 0, 1000 + executor, ending="it called exit_actor()")


def test_the_daemon_reports_an_exit_with_code_0_it_was_not_told_of_as_a_crash() -> None:
    h, actor_id, executor = worker_with_an_actor()

    [died] = died_reports(h.handle(ExecutorDied(executor, 0)))

    assert died == w.ActorDied(actor_id, 0, 1000 + executor) and died.ending == ""
