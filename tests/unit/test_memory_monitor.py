"""The memory monitor without processes: which task the worker's state machine
kills when memory runs short (``WorkerState._memory_pressure``), and what
``MemoryMonitor`` measures against which limit (its readings injected)."""

from __future__ import annotations

import pickle
import signal

import msgspec
from test_worker_state import Harness, executes, of, reported

from taskgraph import _wire as w
from taskgraph.exceptions import OutOfMemoryError, TaskgraphError, WorkerCrashedError
from taskgraph.worker.memory import MemoryMonitor
from taskgraph.worker.state import (
    ExecutorDied,
    MemoryPressure,
    SignalExecutor,
    SpawnExecutor,
    TaskBlocked,
)

MiB = 1 << 20


def running(*tasks: tuple[str, int]) -> tuple[Harness, dict[str, int]]:
    """A worker running one task per (name, max_retries), in that order of start;
    returns the executor id of each task's name."""
    h = Harness(min_executors=len(tasks), cpus=len(tasks))
    h.start()
    h.ready(*range(1, len(tasks) + 1))
    where: dict[str, int] = {}
    for name, retries in tasks:
        a = h.assignment(name, cpus=1.0)
        a = w.Assignment(msgspec.structs.replace(a.spec, max_retries=retries), [], a.function)
        [(executor_id, _)] = executes(h.assign(a)).items()
        where[name] = executor_id
    return h, where


def pressure(where: dict[str, int], **memory: int) -> MemoryPressure:
    return MemoryPressure(900 * MiB, 800 * MiB, {where[n]: m * MiB for n, m in memory.items()})


def killed(out: list[object]) -> list[int]:
    return [i.executor_id for i in of(SignalExecutor, out) if i.signum == signal.SIGKILL]  # type: ignore[arg-type]


def test_the_task_using_the_most_memory_is_killed_and_fails_with_out_of_memory() -> None:
    h, where = running(("small", 0), ("hog", 0))
    out = h.handle(pressure(where, small=20, hog=500))
    assert killed(out) == [where["hog"]]

    out = h.handle(ExecutorDied(where["hog"], -signal.SIGKILL))
    [result] = reported(out)
    assert result.failure == "oom" and result.exit_code == -signal.SIGKILL
    assert result.error is not None
    err = pickle.loads(result.error)
    assert isinstance(err, OutOfMemoryError) and isinstance(err, TaskgraphError)
    assert not isinstance(err, WorkerCrashedError)
    assert (err.task_name, err.node, err.memory) == ("hog", "w1", 500 * MiB)
    assert (err.used, err.total) == (900 * MiB, 800 * MiB)
    assert "'hog'" in str(err) and "node w1" in str(err) and "500.0 MiB" in str(err)
    assert of(SpawnExecutor, out), "the executor is replaced"
    assert h.state.statistics()["busy"] == 1, "the small task runs on"


def test_a_retriable_task_goes_first_then_the_newest_among_those_using_much() -> None:
    h, where = running(("old_retriable", 3), ("new_retriable", 3), ("big_final", 0))
    out = h.handle(pressure(where, old_retriable=300, new_retriable=300, big_final=400))
    assert killed(out) == [where["new_retriable"]], "retriable, and newest of those"

    h, where = running(("old", 0), ("new", 0))
    assert killed(h.handle(pressure(where, old=300, new=290))) == [where["new"]]


def test_a_small_retriable_task_is_spared_beside_a_hog() -> None:
    h, where = running(("hog", 0), ("small_retriable", 3))
    out = h.handle(pressure(where, hog=500, small_retriable=30))
    assert killed(out) == [where["hog"]], "killing the small one would free nothing"


def test_one_kill_at_a_time_until_that_executor_is_gone() -> None:
    h, where = running(("a", 0), ("b", 0))
    assert killed(h.handle(pressure(where, a=500, b=200))) == [where["a"]]
    assert killed(h.handle(pressure(where, a=500, b=200))) == [], "its death is not in yet"
    h.handle(ExecutorDied(where["a"], -signal.SIGKILL))
    assert killed(h.handle(pressure(where, b=400))) == [where["b"]]


def test_a_blocked_task_can_be_killed_and_actors_idle_executors_cannot() -> None:
    h, where = running(
        ("blocked", 0),
    )
    assert killed(h.handle(MemoryPressure(2, 1, {}))) == [where["blocked"]], "even unmeasured"

    h, where = running(
        ("waits", 0),
    )
    [task_id] = list(h.state.task_cpus)
    h.handle(TaskBlocked(task_id))
    assert killed(h.handle(pressure(where, waits=100))) == [where["waits"]]

    idle = Harness(min_executors=2)
    idle.start()
    idle.ready(1, 2)
    assert idle.handle(MemoryPressure(2, 1, {1: 100, 2: 100})) == [], "nothing runs"


def test_a_crash_of_an_executor_killed_for_memory_after_its_task_finished_is_a_crash() -> None:
    h, where = running(
        ("first", 0),
    )
    h.handle(pressure(where, first=100))
    [a] = [x for x in h.state.executors[where["first"]].tasks]
    h.finish(where["first"], a)
    # (the task ended as the kill went out; the next one handed over is not blamed)
    b = h.assignment("next", cpus=1.0)
    h.assign(b)
    [result] = reported(h.handle(ExecutorDied(where["first"], -signal.SIGKILL)))
    assert result.task_id == b.spec.task_id and result.failure == "crashed"


def test_the_monitor_compares_host_memory_with_its_threshold() -> None:
    host = {"used": 90, "total": 100}
    monitor = MemoryMonitor(
        0.95, read_host=lambda: (host["used"], host["total"]), read_process=lambda pid: pid * 10
    )
    assert monitor.look({1: 7}) is None, "under 95%"
    host["used"] = 96
    assert monitor.look({1: 7, 2: 8}) == MemoryPressure(96, 95, {1: 70, 2: 80})
    assert monitor.look({}) is None, "no task of ours runs: nothing to kill"
    assert monitor.times_over == 1


def test_the_monitor_holds_running_tasks_to_the_task_memory_limit() -> None:
    monitor = MemoryMonitor(
        0.95, 150, read_host=lambda: (10, 100), read_process=lambda pid: pid * 10
    )
    assert monitor.look({1: 7, 2: 8}) is None, "70 + 80 is not over 150"
    assert monitor.look({1: 7, 2: 9}) == MemoryPressure(160, 150, {1: 70, 2: 90})


def test_a_process_gone_uses_no_memory_and_a_live_one_is_measured() -> None:
    import os

    monitor = MemoryMonitor(0.95, 1)
    assert monitor._process_memory(os.getpid()) > 0
    assert monitor._process_memory(2**22 + 12345) == 0
