"""``max_calls`` in the worker daemon's state machine: an executor that ran a
function that many times is asked to exit, runs nothing more, and a new one
takes its place (worker/state.py). ``validate()`` runs after every step."""

from __future__ import annotations

import msgspec
from test_worker_state import Harness, executes, of, prefetching, reported

from taskgraph import _wire as w
from taskgraph.worker.state import ExecutorDied, SpawnExecutor, ToExecutor


def limited(h: Harness, max_calls: int, name: str = "m", function_id: bytes = b"f") -> w.Assignment:
    a = h.assignment(name, function_id=function_id, cpus=1.0)
    return msgspec.structs.replace(a, spec=msgspec.structs.replace(a.spec, max_calls=max_calls))


def shutdowns(out: list) -> list[int]:
    return [i.executor_id for i in of(ToExecutor, out) if isinstance(i.message, w.Shutdown)]


def test_an_executor_exits_after_its_functions_max_calls_and_is_replaced() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    first, second = limited(h, 2, "first"), limited(h, 2, "second")
    assert list(executes(h.assign(first))) == [1]
    out = h.finish(1, first, duration=0.1)
    assert shutdowns(out) == [] and h.state.executors[1].state == "idle"
    assert list(executes(h.assign(second))) == [1]
    out = h.finish(1, second, duration=0.1)
    assert [r.task_id for r in reported(out)] == [second.spec.task_id], "reported first"
    assert shutdowns(out) == [1]
    assert h.state.executors[1].state == "retiring"
    assert h.state.story(1)[-1] == ("idle", "retiring", "max_calls")

    # Nothing more goes to it: a task that comes meanwhile gets a new process.
    third = limited(h, 2, "third")
    out = h.assign(third)
    assert executes(out) == {} and of(SpawnExecutor, out) == [SpawnExecutor(2)]
    out = h.handle(ExecutorDied(1, 0))
    assert reported(out) == [] and of(SpawnExecutor, out) == [], "one replacement is enough"
    assert executes(h.ready(2)) == {2: third}


def test_an_idle_pool_is_refilled_when_a_retired_executor_exits() -> None:
    h = Harness(min_executors=2, cpus=2.0)
    h.start()
    h.ready(1, 2)
    once = limited(h, 1)
    (executor_id,) = executes(h.assign(once))
    out = h.finish(executor_id, once, duration=0.1)
    assert shutdowns(out) == [executor_id] and of(SpawnExecutor, out) == []
    assert of(SpawnExecutor, h.handle(ExecutorDied(executor_id, 0))) == [SpawnExecutor(3)]


def test_calls_count_per_function_and_other_functions_do_not_count() -> None:
    h = Harness(min_executors=1, cpus=1.0)
    h.start()
    h.ready(1)
    for a in (limited(h, 2, "f1"), h.assignment("plain", function_id=b"p", cpus=1.0)):
        h.assign(a)
        assert shutdowns(h.finish(1, a, duration=0.1)) == []
    other = limited(h, 2, "g1", function_id=b"g")
    h.assign(other)
    assert shutdowns(h.finish(1, other, duration=0.1)) == [], "g ran once here"
    again = limited(h, 2, "f2")
    h.assign(again)
    assert shutdowns(h.finish(1, again, duration=0.1)) == [1], "f ran twice here"
    assert h.state.executors[1].calls == {b"f": 2, b"g": 1}


def test_max_calls_tasks_never_wait_behind_another_or_have_one_wait_behind_them() -> None:
    h = prefetching(prefetch=4)  # function b"f" is known to be short
    running = [h.assignment(f"r{i}", cpus=1.0) for i in range(2)]
    fast_limited = [limited(h, 5, f"l{i}") for i in range(3)]
    out = h.assign(*running, *fast_limited)
    assert len(of(ToExecutor, out)) == 2, "the limited ones wait in the daemon"
    assert h.state.statistics()["queued"] == 3

    h2 = prefetching(prefetch=4)
    head = [limited(h2, 5, f"l{i}") for i in range(2)]
    out = h2.assign(*head, *[h2.assignment(f"s{i}", cpus=1.0) for i in range(3)])
    assert len(of(ToExecutor, out)) == 2, "nothing waits behind a limited task"
