"""The dashboard's tables and what its pages draw, pure: no cluster, no browser.

The actors' and objects' tables (scheduler/feed_tables.py) are built from a
``SchedulerState`` driven event by event (the harness of
test_scheduler_actors.py), as the scheduler would; the Feed's sections, the
task stream's phases, the store's bars, the log page's lines and the
timeline's trace from plain data.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Generator
from typing import Any

import pytest
from test_scheduler_actors import Harness, alive_actor, assigned, ok, raised, ret

from taskgraph import _wire as w
from taskgraph.scheduler.dashboard import PAGE_PATHS, Timeline, trace_json
from taskgraph.scheduler.feed import Feed, Section, Snapshot, Stepped
from taskgraph.scheduler.feed_tables import ObjectTable, actor_table, object_steps, object_table
from taskgraph.scheduler.log_tail import LogAnswer
from taskgraph.scheduler.logs_page import log_columns
from taskgraph.scheduler.pages import FRAMES, PAGES, applications, builders, nav
from taskgraph.scheduler.status_page import phase_columns, store_columns

# -- actors -----------------------------------------------------------------------


def by_id(table: Any) -> dict[str, dict[str, Any]]:
    return {row["actor_id"]: row for row in table.rows}


def test_the_actor_table_counts_calls_restarts_and_states_alive_first() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 4.0})
    dead, _ = alive_actor(h)
    h.send(b"c1", w.KillActor(dead.actor_id, no_restart=True))
    h.died("w1", dead)
    busy, _ = alive_actor(h, max_restarts=2)
    waits = h.task(resources={"CPU": 9.0})  # too big for w1: never runs
    calls = [h.call(busy) for _ in range(3)]
    calls += [h.call(busy, deps=[ret(waits)]), h.call(busy)]  # held back, and behind it
    h.submit(waits, *calls)
    h.done("w1", ok(calls[0]))
    h.done("w1", raised(calls[1]))
    restarted, _ = alive_actor(h, max_restarts=2)
    sends = h.died("w1", restarted)
    h.done("w1", ok(assigned(sends, "w1")[0].spec))

    table = actor_table(h.state, taken=12.5)
    assert table.taken == 12.5 and table.total == 3
    assert table.by_state == {"ALIVE": 2, "DEAD": 1}
    assert [r["state"] for r in table.rows] == ["ALIVE", "ALIVE", "DEAD"]
    rows = by_id(table)
    row = rows[busy.actor_id.hex()]
    assert row["class_name"] == "Counter" and row["node_id"] == "w1"
    assert (row["calls_finished"], row["calls_failed"]) == (1, 1)
    assert (row["calls_running"], row["calls_queued"]) == (1, 2)
    assert row["num_restarts"] == 0 and "methods" not in row
    assert rows[restarted.actor_id.hex()]["num_restarts"] == 1
    assert rows[dead.actor_id.hex()]["node_id"] is None
    assert table.json()["actors"] == table.rows


def test_the_actor_table_lists_at_most_its_limit_but_counts_all() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 8.0})
    for _ in range(5):
        alive_actor(h)
    table = actor_table(h.state, taken=0.0, limit=2)
    assert len(table.rows) == 2 and table.total == 5 and table.by_state == {"ALIVE": 5}


# -- objects ----------------------------------------------------------------------


def stored(h: Harness, size: int, **fields: Any) -> w.PutObject:
    put = w.PutObject(h.new_id(), location=w.Location("w1", "seg", size, "host"), **fields)
    h.send(b"c1", put)
    return put


def test_the_object_table_lists_the_largest_with_their_holders_and_call_sites() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    h.send(b"c1", w.CallSite(1, "job.py:main:7"))
    h.send(b"c1", w.PutObject(h.new_id(), data=b"x" * 10))
    big = stored(h, 5_000_000, site=1)
    middle = stored(h, 3_000)
    outer = stored(h, 2_000, contains=[middle.object_id])
    h.release(middle.object_id)  # kept only inside outer

    table = object_table(h.state, taken=3.0, top=3)
    assert table.taken == 3.0 and table.total_objects == 4
    assert table.total_bytes == 5_000_000 + 3_000 + 2_000 + 10
    assert [r["object_size"] for r in table.rows] == [5_000_000, 3_000, 2_000]
    first, second, third = table.rows
    assert first["object_id"] == big.object_id.hex() and first["call_site"] == "job.py:main:7"
    assert first["holders"] == [f"held by driver {b'c1'.hex()}"]
    assert first["reference_type"] == "LOCAL_REFERENCE" and first["node_id"] == "w1"
    assert second["object_id"] == middle.object_id.hex()
    assert second["reference_type"] == "CAPTURED_IN_OBJECT"
    assert second["holders"] == [f"inside object {outer.object_id.hex()}"]
    assert third["call_site"] is None and third["references"] == 1
    assert table.json()["largest"] == table.rows


def test_holders_name_waiting_and_running_tasks_and_stop_at_a_few() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    big = stored(h, 1 << 20)
    running = h.task(deps=[big.object_id])
    waiting = [h.task(deps=[big.object_id]) for _ in range(6)]
    h.submit(running, *waiting)  # one CPU: the first runs, the rest wait
    [row] = object_table(h.state, taken=0.0, top=1).rows
    assert row["holders"][0].startswith("held by driver")
    assert row["holders"][1:5] == ["argument of waiting task task"] * 4
    assert row["holders"][5] == "and 3 more"  # two more waiting, and the one running
    assert row["references"] == 1 + 7


# -- the feed's sections ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_section_is_made_at_most_once_a_period_and_less_often_when_slow() -> None:
    clock = Clock()
    cost = {"seconds": 0.0}

    def make() -> float:
        clock.now += cost["seconds"]
        return clock.now

    section = Section(make, period=1.0, clock=clock)
    assert section.current() == 0.0 and section.made == 1
    clock.now = 0.9
    assert section.current() == 0.0 and section.made == 1  # within its period
    clock.now = 1.0
    cost["seconds"] = 0.5  # half a second to make: at most 10% of the time, so 5 s apart
    assert section.current() == 1.5 and section.made == 2
    clock.now = 5.9
    assert section.current() == 1.5
    clock.now = 6.0
    assert section.current() == 6.5 and section.made == 3


def test_the_feed_makes_its_tables_only_when_asked() -> None:
    async def run() -> None:
        clock = Clock()
        h = Harness()
        h.client()
        h.worker("w1")
        stored(h, 1_000)
        feed = Feed(h.state, clock=clock, wall=lambda: 42.0)
        assert feed.objects().taken == 0.0, "at first, an empty table (the first is on its way)"
        made = await feed.objects_made()
        assert made.taken == 42.0 and made.total_objects == 1
        assert feed.actors().total == 0 and feed.published == 0  # the task snapshot was not made

    asyncio.run(run())


def test_a_stepped_section_lets_the_loop_run_between_steps_and_keeps_to_its_budget() -> None:
    async def run() -> None:
        clock, between = Clock(), []

        def steps() -> Generator[None, None, float]:
            for _ in range(3):
                clock.now += 0.25  # each step costs 0.25 s: 0.75 s in all, so 7.5 s apart
                yield
            return clock.now

        async def meanwhile() -> None:
            for _ in range(3):
                between.append(clock.now)
                await asyncio.sleep(0)

        section = Stepped(steps, -1.0, period=1.0, clock=clock)
        assert section.current() == -1.0 and section.made == 0
        other = asyncio.ensure_future(meanwhile())
        assert await section.made_once() == 0.75
        await other
        assert len(set(between)) > 1, "the other task ran between the steps"
        clock.now = 7.4
        assert section.current() == 0.75
        await asyncio.sleep(0)
        assert section.made == 1, "not before 7.5 s"
        clock.now = 7.5
        section.current()
        assert await section.made_once() == 0.75  # the last made, not waited for
        for _ in range(10):
            await asyncio.sleep(0)
        assert section.made == 2 and section.current() == 8.25

    asyncio.run(run())


def test_object_steps_yield_every_chunk_and_leave_out_what_was_freed_meanwhile() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    puts = [stored(h, 100 + i) for i in range(25)]
    steps = object_steps(h.state, taken=0.0, top=3, chunk=10)
    next(steps)
    next(steps)  # two chunks of ten objects looked at
    h.release(puts[-1].object_id)  # the largest, freed meanwhile
    with pytest.raises(StopIteration) as made:
        while True:
            next(steps)
    table: ObjectTable = made.value.value
    assert [r["object_size"] for r in table.rows] == [123, 122]
    assert table.total_objects == 25  # as it was when the table began


# -- what the pages draw ----------------------------------------------------------


def task_rows(**columns: list[Any]) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {"name": ["f"] * len(columns["left"]), **columns}
    return rows


def test_phases_are_drawn_over_their_task_one_after_another_and_run_is_left_bare() -> None:
    rows = task_rows(
        left=[1000.0, 2000.0], right=[1010.0, 2003.0], lane=[0, 1],
        fetch=[2.0, 0.0], deserialize=[1.0, 1.0], run=[6.0, 1.0], store=[1.0, 5.0],
    )  # fmt: skip
    phases = phase_columns(rows)
    assert phases["phase"] == ["transfer", "arguments", "store", "arguments", "store"]
    assert phases["left"] == [1000.0, 1002.0, 1009.0, 2000.0, 2002.0]
    # The second task's store is cut at its end: its phases stay inside it.
    assert phases["right"] == [1002.0, 1003.0, 1010.0, 2001.0, 2003.0]
    assert phases["lane"] == [0, 0, 0, 1, 1] and phases["top"] == [0.8, 0.8, 0.8, 1.8, 1.8]
    assert len(set(phases["color"][:3])) == 3, "each phase its own shade"


def test_the_store_bars_have_a_row_per_node() -> None:
    snap = Snapshot(events=deque())
    snap.nodes = [
        {"node_id": "a", "store_bytes": 10, "spilled_bytes": 5, "store_capacity": 100},
        {"node_id": "b", "store_bytes": 0, "spilled_bytes": 0, "store_capacity": 50},
    ]
    assert store_columns(snap) == {
        "node_id": ["a", "b"],
        "in_memory": [10, 0],
        "spilled": [5, 0],
        "spilled_end": [15, 0],
        "capacity": [100, 50],
    }
    assert snap.status()["store"][0] == {
        "node_id": "a", "bytes_in_memory": 10, "bytes_spilled": 5, "capacity": 100,
    }  # fmt: skip


def test_the_log_page_shows_each_files_newest_lines_within_its_limit() -> None:
    files = [
        {"file": "executor-1.out", "pid": 1, "lines": [f"out {i}" for i in range(10)]},
        {"file": "executor-1.err", "pid": 1, "lines": []},
        {"file": "executor-2.out", "pid": 2, "lines": ["two"]},
    ]
    data = log_columns(LogAnswer("n", 0.0, files), limit=6)
    assert data["line"] == ["out 7", "out 8", "out 9", "two"]
    assert data["file"] == ["executor-1.out"] * 3 + ["executor-2.out"]
    assert log_columns(LogAnswer("n", 0.0, error="gone")) == {"file": [], "line": []}


def test_the_bar_links_every_page_and_the_timeline() -> None:
    bar = nav("/actors")
    assert "<b>actors</b>" in bar and 'href="actors"' not in bar
    for path in PAGES:
        if path != "/actors":
            assert f'href="{path[1:]}"' in bar
    assert 'href="api/timeline" download=' in bar


def test_every_page_and_what_bokeh_serves_under_it_goes_to_the_pages() -> None:
    """The port routes by path before Bokeh is imported: every Bokeh application,
    its websocket and scripts, and Bokeh's static files go to the pages; the JSON,
    /metrics and unknown paths do not (they would make Bokeh be imported)."""
    assert tuple(builders()) == PAGES
    mounted = applications(Feed(Harness().state))
    assert set(mounted) == {*PAGES, *FRAMES}
    for path in mounted:
        for under in ("", "/", "/ws", "/autoload.js", "/metadata", "/static/js/x.js"):
            assert PAGE_PATHS.fullmatch(path + under), path + under
    assert PAGE_PATHS.fullmatch("/static/js/bokeh.min.js")
    for other in ("/", "/api/status", "/metrics", "/favicon.ico", "/statusx", "/nothing"):
        assert not PAGE_PATHS.fullmatch(other), other


def test_the_timeline_download_is_tg_timelines_trace() -> None:
    from test_dashboard_feed import finished

    from taskgraph.scheduler.history import TaskHistory

    history = TaskHistory()
    for name in ("a", "b", "b"):
        history.finished(finished(name))
    trace = json.loads(trace_json(history.since(0)))
    tasks = [e for e in trace if e.get("cat") == "task"]
    assert [e["name"] for e in tasks] == ["a", "b", "b"]
    assert all(e["ph"] == "X" and e["dur"] == 500_000 for e in tasks)
    assert {e["name"] for e in trace if e.get("cat") == "phase"} == {
        "deserialize", "run", "store",
    }  # fmt: skip


def test_the_timeline_is_made_once_per_window_however_many_download_it() -> None:
    from test_dashboard_feed import finished

    from taskgraph.scheduler.history import TaskHistory

    history = TaskHistory()
    history.finished(finished("a"))
    feed: Any = SimpleFeed(history)
    timeline = Timeline(feed)

    async def run() -> None:
        first, second = await asyncio.gather(timeline.trace(), timeline.trace())
        assert first is second and timeline.made == 1
        history.finished(finished("b"))
        later = json.loads(await timeline.trace())
        assert timeline.made == 2
        assert [e["name"] for e in later if e.get("cat") == "task"] == ["a", "b"]

    asyncio.run(run())


class SimpleFeed:
    """What Timeline reads of a Feed."""

    def __init__(self, history: Any) -> None:
        self.history = history

    def finished(self) -> tuple[int, list[Any]]:
        return self.history.kept, self.history.since(0)
