"""Scheduler decisions behind Ray-parity fixes (issue 16), driven event by event.

No processes: the tests play the clients and the workers, and ``validate()``
runs after every step (the actor harness of ``test_scheduler_actors``).
"""

from __future__ import annotations

from test_scheduler_actors import Harness, assigned_ids, ok

from taskgraph.scheduler.state import SchedulerState


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
