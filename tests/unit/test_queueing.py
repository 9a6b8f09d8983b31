"""Busy workers hold a short queue of CPU-only tasks; the worker counts CPUs itself."""

from __future__ import annotations

import pickle

from taskgraph import _wire as w
from taskgraph.scheduler import placement
from taskgraph.scheduler.state import ClientJoined, ClientSent, SchedulerState, WorkerJoined
from taskgraph.worker.state import (
    ExecutorFinished,
    ExecutorReady,
    TaskBlocked,
    TasksAssigned,
    TaskUnblocked,
    ToExecutor,
    WorkerState,
)


class View:
    def __init__(self, worker_id: str, cpus: float, free: float) -> None:
        self.worker_id = worker_id
        self.total = {"CPU": cpus}
        self.available = {"CPU": free}
        self.gpu_free: list[float] = []


def test_placement_queues_only_cpu_only_default_tasks_on_busy_workers():
    busy = [View("a", 2, 0), View("b", 2, -1)]
    assert placement.choose_worker({"CPU": 1}, "DEFAULT", busy, {}) is None
    chosen = placement.choose_worker({"CPU": 1}, "DEFAULT", busy, {}, queue_depth=1.0)
    assert chosen is not None and chosen.worker_id == "a"  # the shorter queue
    full = [View("a", 2, -2)]
    assert placement.choose_worker({"CPU": 1}, "DEFAULT", full, {}, queue_depth=1.0) is None
    assert placement.choose_worker({"CPU": 1}, "SPREAD", busy, {}, queue_depth=1.0) is None
    assert placement.choose_worker({"CPU": 1, "x": 1}, "DEFAULT", busy, {}, 1.0) is None


def _spec(i: int, cpus: float = 1.0) -> w.TaskSpec:
    return w.TaskSpec(
        task_id=i.to_bytes(12, "little") + b"\0\0\0\0",
        function_id=b"f",
        name=f"t{i}",
        args=pickle.dumps(((), {})),
        deps=[],
        resources={"CPU": cpus},
    )


def test_scheduler_hands_a_busy_worker_one_cpu_worth_of_extra_tasks():
    state = SchedulerState(queue_depth=1.0)
    state.handle(ClientJoined(b"c"), WorkerJoined(w.WorkerInfo("w1", "h", "", {"CPU": 2})))
    sends = state.handle(ClientSent(b"c", [w.SubmitTasks([_spec(i) for i in range(6)])]))
    assigned = [m for s in sends for m in s.messages if isinstance(m, w.RunTasks)]
    assert sum(len(m.assignments) for m in assigned) == 4  # 2 CPUs + a queue of 2
    state.validate()
    assert state.statistics()["tasks"] == {"processing": 4, "ready": 2}


def test_worker_runs_no_more_than_its_cpus_and_lends_blocked_ones():
    state = WorkerState("w", min_executors=2, cpus=2.0)
    state.start()
    for executor_id in (1, 2):
        state.handle(ExecutorReady(executor_id, 100 + executor_id, b"c%d" % executor_id))
    assignments = [w.Assignment(_spec(i), []) for i in range(3)]
    out = state.handle(TasksAssigned(assignments))
    started = [i for i in out if isinstance(i, ToExecutor)]
    assert len(started) == 2 and len(state.queue) == 1
    assert not [i for i in out if type(i).__name__ == "SpawnExecutor"]
    state.validate()
    first = started[0].message.assignment.spec.task_id
    out = state.handle(TaskBlocked(first))
    assert [type(i).__name__ for i in out] == ["SpawnExecutor"]  # a process for the lent CPU
    state.handle(ExecutorReady(3, 103, b"c3"))
    assert state.cpus_used == 2.0 and not state.queue
    state.validate()
    state.handle(TaskUnblocked(first))
    assert state.cpus_used == 3.0  # over for a moment: the blocked task runs again
    executor_id = state.running[first]
    done = w.TaskResult(first)
    state.handle(ExecutorFinished(executor_id, done))
    assert state.cpus_used == 2.0
    state.validate()


def test_hard_affinity_to_a_missing_node_warns_once():
    state = SchedulerState()
    state.handle(ClientJoined(b"c"), WorkerJoined(w.WorkerInfo("w1", "h", "", {"CPU": 2})))
    specs = [_spec(i) for i in range(2)]
    for spec in specs:
        spec.strategy = "node:nowhere"
    sends = state.handle(ClientSent(b"c", [w.SubmitTasks(specs)]))
    notices = [m for s in sends for m in s.messages if isinstance(m, w.Notice)]
    assert len(notices) == 1 and "node nowhere" in notices[0].text
    state.validate()
