"""The ``/status`` page's task stream (scheduler/status_page.py) over a feed of known
tasks: what it streams to the browser and when. Pure: no cluster, no browser; a
Bokeh document stands in for the page, and the clock is the test's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsStreamedEvent
from test_dashboard_feed import Clock, finished

from taskgraph.scheduler import status_page
from taskgraph.scheduler.feed import Feed
from taskgraph.scheduler.history import TaskHistory
from taskgraph.scheduler.status_page import SHOWN, STREAMED_PER_SECOND, TaskStreamPart


def cluster() -> tuple[TaskHistory, Feed, Clock]:
    history = TaskHistory()
    state: Any = SimpleNamespace(history=history, tasks={}, workers={})
    clock = Clock()
    return history, Feed(state, period=0.2, clock=clock, wall=clock), clock


def finish(
    history: TaskHistory,
    n: int,
    at: float = 100.0,
    length: float = 0.5,
    phases: tuple[float, ...] = (0.0, 0.001, 0.4, 0.002),
) -> list[str]:
    """``n`` tasks finished one after another from ``at``, each ``length`` seconds
    long with those ``phases``; their ids, as the page names them."""
    ids = []
    for i in range(n):
        task = finished("square", at=at + i * length)
        task.ended, task.phases = task.started + length, phases
        history.finished(task)
        ids.append(task.id.hex())
    return ids


def test_while_tasks_pour_in_the_stream_comes_in_fewer_updates_with_every_task() -> None:
    history, feed, clock = cluster()
    part = TaskStreamPart(feed.current(), clock=clock)
    burst = 600  # rows; the stream then waits burst / STREAMED_PER_SECOND s
    assert burst / STREAMED_PER_SECOND > 0.2  # more than one period
    ids = finish(history, burst)
    clock.now = 0.25  # (the page's updates come every 0.2 s or so; the feed's too)
    part.update(feed.current())
    assert part.streams == 1 and list(part.tasks.data["task_id"]) == ids
    ids += finish(history, burst, at=1000.0)
    clock.now = 0.5
    part.update(feed.current())  # (too soon after 600 rows: they wait in the snapshot)
    assert feed.current().seq == 2 * burst
    assert part.streams == 1 and len(part.tasks.data["task_id"]) == burst
    ids += finish(history, burst, at=2000.0)
    clock.now = 0.75
    part.update(feed.current())
    # Two updates' rows in one, none lost, none twice: a rectangle per task.
    assert part.streams == 2 and list(part.tasks.data["task_id"]) == ids
    clock.now = 5.0
    part.update(feed.current())
    assert part.streams == 2, "nothing new: nothing streamed"
    ids += finish(history, 3, at=3000.0)
    clock.now = 5.25
    part.update(feed.current())
    assert part.streams == 3 and list(part.tasks.data["task_id"]) == ids


def test_a_page_holds_and_is_sent_only_the_newest_rows() -> None:
    history, feed, clock = cluster()
    part = TaskStreamPart(feed.current(), clock=clock)
    doc = Document()
    doc.add_root(part.plot)
    sent: list[Any] = []
    doc.on_change(sent.append)  # what the page's websocket would carry
    ids = finish(history, SHOWN + 500)
    clock.now = 0.2
    part.update(feed.current())
    [streamed] = [e for e in sent if isinstance(e, ColumnsStreamedEvent) and e.model is part.tasks]
    assert len(streamed.data["task_id"]) == SHOWN  # (the older would roll over at once)
    assert list(part.tasks.data["task_id"]) == ids[-SHOWN:]
    assert part.seq == history.kept


def test_phases_are_shaded_only_when_a_pixel_wide_on_the_stream_as_shown() -> None:
    # One task of 0.5 s: its 1 ms decoding and 2 ms store are wide enough.
    history, feed, clock = cluster()
    finish(history, 1)
    part = TaskStreamPart(feed.current(), clock=clock)
    assert list(part.phases.data["phase"]) == ["arguments", "store"]
    # Tasks over 1,000 s: a pixel is half a second; no shade is that wide.
    history, feed, clock = cluster()
    finish(history, 2_000)
    part = TaskStreamPart(feed.current(), clock=clock)
    assert len(part.phases.data["phase"]) == 0
    assert len(part.tasks.data["task_id"]) == SHOWN  # (every task drawn all the same)


def test_shades_over_tasks_that_rolled_over_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_page, "SHOWN", 4)
    history, feed, clock = cluster()
    part = TaskStreamPart(feed.current(), clock=clock)
    for round_ in range(3):
        finish(history, 3, at=100.0 + round_ * 10, phases=(0.0, 0.1, 0.2, 0.1))
        clock.now += 10.0
        part.update(feed.current())
    tasks, phases = part.tasks.data, part.phases.data
    assert len(tasks["left"]) == 4
    assert len(phases["left"]) == 2 * 4  # two shades each, over the four held tasks
    assert phases["right"].min() > tasks["left"].min()


def test_the_status_page_sends_its_progress_and_store_only_when_they_change() -> None:
    history, feed, clock = cluster()
    doc = Document()
    status_page.build(doc, feed)
    [update] = doc.session_callbacks
    sent: list[Any] = []
    doc.on_change(sent.append)
    finish(history, 2)
    clock.now = 1.0
    update.callback()
    changed = {e.model.name for e in sent if isinstance(e, ColumnDataChangedEvent)}
    assert changed == {"progress"}  # (no nodes: the store's table stays empty)
    assert list(doc.get_model_by_name("progress").data["done"]) == [2]
    sent.clear()
    clock.now = 2.0
    update.callback()
    assert sent == []  # a new snapshot, nothing new in it: nothing sent
