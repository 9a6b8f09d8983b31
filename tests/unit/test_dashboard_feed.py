"""The dashboard's snapshots (scheduler/feed.py) and ``TaskHistory.since``: pure, no
cluster, no browser."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

from taskgraph import _wire as w
from taskgraph.scheduler.feed import Feed, color_of
from taskgraph.scheduler.history import TaskHistory
from taskgraph.scheduler.records import Task

IDS = itertools.count(1)


def finished(name: str, state: str = "memory", pid: int = 7, at: float = 100.0) -> Task:
    spec = w.TaskSpec(
        task_id=next(IDS).to_bytes(16, "big"),
        function_id=b"f" * 16,
        name=name,
        args=b"",
        deps=[],
        resources={"CPU": 1.0},
    )
    task = Task(spec, owner=b"c" * 16, state=state, worker="node-a", pid=pid)
    task.started, task.ended, task.phases = at, at + 0.5, (0.0, 0.001, 0.4, 0.002)
    return task


def test_since_hands_out_the_events_after_a_sequence_number_oldest_first() -> None:
    history = TaskHistory(keep=5)
    assert history.since(0) == []
    for i in range(3):
        history.finished(finished(f"f{i}"))
    assert history.kept == 3
    assert [e.name for e in history.since(0)] == ["f0", "f1", "f2"]
    assert [e.name for e in history.since(2)] == ["f2"]
    assert history.since(3) == [] and history.since(9) == []
    for i in range(3, 9):
        history.finished(finished(f"f{i}"))
    # Those that fell out of the window are gone: the last five remain.
    assert [e.name for e in history.since(0)] == ["f4", "f5", "f6", "f7", "f8"]
    assert [e.name for e in history.since(8)] == ["f8"]


def test_since_with_no_window_hands_out_nothing() -> None:
    history = TaskHistory(keep=0)
    history.finished(finished("f"))
    assert history.since(0) == [] and history.dropped == 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed_for(history: TaskHistory, tasks: dict[bytes, Task] | None = None) -> tuple[Feed, Clock]:
    state: Any = SimpleNamespace(history=history, tasks=tasks or {}, workers={})
    clock = Clock()
    return Feed(state, period=0.2, keep=4, clock=clock, wall=clock), clock


def test_a_snapshot_is_made_at_most_once_a_period_and_pages_get_only_new_rows() -> None:
    history = TaskHistory()
    feed, clock = feed_for(history)
    history.finished(finished("square"))
    snap = feed.current()
    seq, rows = snap.rows_since(0)
    assert seq == 1 and rows["name"] == ["square"] and rows["duration"] == [500.0]
    assert rows["left"] == [100_000.0] and rows["lane"] == [0] and rows["run"] == [400.0]
    assert rows["color"] == [color_of("square")] and rows["state"] == ["FINISHED"]
    history.finished(finished("square", pid=8))
    assert feed.current().seq == 1 and feed.published == 1  # within the period: the same one
    clock.now = 0.2
    snap = feed.current()
    seq, rows = snap.rows_since(1)
    assert seq == 2 and rows["lane"] == [1] and snap.lanes == ["node-a/7", "node-a/8"]
    assert snap.rows_since(2)[1]["name"] == []


def test_the_window_of_rows_rolls_over_and_numbers_stay_right() -> None:
    history = TaskHistory()
    feed, _ = feed_for(history)
    for i in range(6):
        history.finished(finished(f"f{i}"))
    snap = feed.current()
    assert [n for n, _, _ in snap.events] == [3, 4, 5, 6]  # keep=4
    assert snap.rows_since(0)[1]["name"] == ["f2", "f3", "f4", "f5"]
    assert snap.rows_since(5)[1]["name"] == ["f5"]
    assert [t["name"] for t in snap.tasks(2)] == ["f4", "f5"]


def test_progress_counts_finished_failed_and_live_tasks_by_function() -> None:
    history = TaskHistory()
    history.finished(finished("square"))
    history.finished(finished("square", state="erred"))
    live = {t.id: t for t in (finished("square", "processing"), finished("halve", "waiting"))}
    feed, _ = feed_for(history, live)
    status = feed.current().status()
    assert status["by_function"] == {
        "square": {"done": 1, "running": 1, "waiting": 0, "failed": 1},
        "halve": {"done": 0, "running": 0, "waiting": 1, "failed": 0},
    }
    assert status["tasks"] == {"done": 1, "running": 1, "waiting": 1, "failed": 1}


class SlowTasks(dict[bytes, Task]):
    """Live tasks whose pass takes ``seconds`` of the clock's time."""

    def __init__(self, clock: Clock, seconds: float, tasks: list[Task]) -> None:
        super().__init__((t.id, t) for t in tasks)
        self.clock, self.seconds = clock, seconds

    def values(self) -> Any:
        self.clock.now += self.seconds
        return super().values()


def test_progress_is_counted_on_its_own_budget_and_a_slow_count_holds_back_no_rows() -> None:
    history = TaskHistory()
    clock = Clock()
    tasks = SlowTasks(clock, 0.3, [finished("square", "waiting")])
    state: Any = SimpleNamespace(history=history, tasks=tasks, workers={})
    feed = Feed(state, period=0.2, table_period=1.0, clock=clock, wall=clock)
    assert feed.current().progress["square"]["waiting"] == 1  # a pass of 0.3 s: next in 3 s
    for at in (0.6, 0.8, 1.0, 2.0):
        history.finished(finished("square"))
        clock.now = at
        snap = feed.current()
        assert snap.seq == history.kept, "the rows come every period"
        assert snap.progress["square"]["done"] == 0, "the counts wait for their budget"
    clock.now = 3.0
    assert feed.current().progress["square"] == {"done": 4, "running": 0, "waiting": 1, "failed": 0}
