"""The ``/graph`` page's graph (scheduler/graph.py) and its shell (scheduler/graph_feed.py
and graph_page.py): which tasks are nodes, their edges and layers, collapsing by function,
when layouts run, and what a page is sent. Pure: no cluster, no browser, no thread."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future
from types import SimpleNamespace
from typing import Any

import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsPatchedEvent

from taskgraph import _wire as w
from taskgraph._ids import first_return, task_id
from taskgraph.scheduler import graph_page as graph_page_module
from taskgraph.scheduler.feed import BUDGET
from taskgraph.scheduler.graph import (
    MIN_ROWS,
    STATE_COLORS,
    Shape,
    TaskGraph,
    layout,
    positions,
)
from taskgraph.scheduler.graph_feed import GraphFeed
from taskgraph.scheduler.graph_page import graph_page
from taskgraph.scheduler.history import TaskHistory
from taskgraph.scheduler.records import Task

BASES = itertools.count(1)


def task(
    name: str, *deps: Task, state: str = "waiting", puts: int = 0, lease: bool = False
) -> Task:
    """A task record awaiting the first return of each of ``deps`` (and ``puts``
    objects that no task made)."""
    objects = [first_return(d.id) for d in deps]
    objects += [next(BASES).to_bytes(12, "big") + b"\1\0\0\0" for _ in range(puts)]
    spec = w.TaskSpec(
        task_id=task_id(next(BASES).to_bytes(12, "big")),
        function_id=b"f" * 16,
        name=name,
        args=b"",
        deps=objects,
        resources={"CPU": 1.0},
        channel_to="unix:/tmp/x" if lease else "",
    )
    return Task(spec, owner=b"c" * 16, state=state)


class Cluster:
    """What a GraphFeed reads of the state: its history and its live tasks."""

    def __init__(self) -> None:
        self.history = TaskHistory()
        self.tasks: dict[bytes, Task] = {}

    def submit(self, *tasks: Task) -> None:
        for t in tasks:
            self.tasks[t.id] = t

    def finish(self, *tasks: Task, state: str = "memory") -> None:
        for t in tasks:
            t.state = state
            del self.tasks[t.id]
            self.history.finished(t)


def diamond() -> list[Task]:
    """a -> b, a -> c, (b, c) -> d; d also awaits a put object."""
    a = task("a")
    b, c = task("b", a), task("c", a)
    return [a, b, c, task("d", b, c, puts=1)]


def shape_of(tasks: list[Task], limit: int = 5_000) -> Shape:
    graph = TaskGraph(limit=limit)
    graph.update([], tasks)
    return graph.shape()


def named(laid: Any) -> dict[str, tuple[float, float]]:
    return {name: (x, y) for name, x, y in zip(laid.names, laid.x, laid.y, strict=True)}


# -- the graph ---------------------------------------------------------------


def test_a_diamond_has_its_four_edges_and_three_layers() -> None:
    a, b, c, d = diamond()
    laid = layout(shape_of([a, b, c, d]))
    assert not laid.collapsed and laid.keys == [a.id, b.id, c.id, d.id]
    assert sorted(laid.edges) == [(0, 1), (0, 2), (1, 3), (2, 3)]  # (the put makes none)
    at = named(laid)
    assert at["a"][0] < at["b"][0] == at["c"][0] < at["d"][0]
    assert at["b"][1] != at["c"][1]
    assert at["a"][1] == at["d"][1] == (at["b"][1] + at["c"][1]) / 2  # centred


def test_chains_run_straight_beside_each_other() -> None:
    chains: list[list[Task]] = [[task("c")], [task("c")]]
    for _ in range(3):
        for chain in chains:
            chain.append(task("c", chain[-1]))
    laid = layout(shape_of([t for pair in zip(*chains, strict=True) for t in pair]))
    for chain in chains:
        ys = {laid.y[laid.index[t.id]] for t in chain}
        assert len(ys) == 1, ys
    assert laid.y[laid.index[chains[0][0].id]] != laid.y[laid.index[chains[1][0].id]]


def test_a_parent_shared_by_two_children_sits_between_them() -> None:
    r1, r2, r3 = task("r1"), task("r2"), task("r3")
    # Joined in an order that would cross edges: the middle one feeds both.
    at = named(layout(shape_of([r2, r1, r3, task("left", r2, r1), task("right", r2, r3)])))
    assert sorted(["r1", "r2", "r3"], key=lambda r: at[r][1])[1] == "r2"
    assert at["left"][1] == (at["r1"][1] + at["r2"][1]) / 2  # between its parents


def test_a_tall_generation_wraps_into_columns_row_by_row() -> None:
    n = 3 * MIN_ROWS + 1  # four columns
    x, y = positions(n, [])
    assert len(set(zip(x, y, strict=True))) == n  # nowhere two on one spot
    height = math.ceil(n / 4)
    assert len(set(x)) == 4 and max(y) - min(y) == height - 1
    assert y[0] == y[3] == max(y) and x[0] < x[1] < x[2] < x[3]  # its order runs across...
    assert y[4] == y[0] - 1  # ...then down
    tall = 40 * 40 + 1  # above sqrt(n) rows, when that is more than MIN_ROWS
    assert max(positions(tall, [])[1]) - min(positions(tall, [])[1]) == 40


def test_states_change_cheaply_and_only_new_tasks_change_the_shape() -> None:
    cluster = Cluster()
    a, b, c, d = diamond()
    cluster.submit(a, b, c, d)
    graph = TaskGraph()
    graph.update(cluster.history.since(0), cluster.tasks.values())
    assert graph.version == 1
    a.state = "processing"
    b.state = "ready"
    graph.update([], cluster.tasks.values())
    assert graph.version == 1  # the same nodes: no new layout
    assert [graph.states[t.id] for t in (a, b, c)] == [
        "RUNNING",
        "PENDING_NODE_ASSIGNMENT",
        "PENDING_ARGS_AVAIL",
    ]
    cluster.finish(a)
    cluster.finish(b, state="erred")
    graph.update(cluster.history.since(0), cluster.tasks.values())
    assert graph.version == 1  # finished tasks stay
    assert graph.states[a.id] == "FINISHED" and graph.states[b.id] == "FAILED"
    view = graph.view(layout(graph.shape()))
    assert view.colors()[:2] == [STATE_COLORS["FINISHED"], STATE_COLORS["FAILED"]]
    assert len(view.layout.edges) == 4  # the finished keep their edges (TaskEvent.deps)
    graph.update([], [*cluster.tasks.values(), task("e", d)])
    assert graph.version == 2 and len(graph.nodes) == 5


def test_finished_tasks_stay_while_among_the_last_keep_and_leases_never_count() -> None:
    cluster = Cluster()
    graph = TaskGraph(keep=3)
    first = [task(f"t{i}") for i in range(5)]
    lease = task("lease", lease=True)
    cluster.submit(*first, lease)
    graph.update([], cluster.tasks.values())
    assert len(graph.nodes) == 5  # (not the lease)
    cluster.finish(*first, lease)
    graph.update(cluster.history.since(0), cluster.tasks.values())
    assert [graph.nodes[k].name for k in graph.nodes] == ["t2", "t3", "t4"]
    # A live task that left without an event (it fell out of the history
    # before it was read) leaves the graph too.
    gone = task("gone")
    graph.update([], [gone])
    graph.update([], [])
    assert gone.id not in graph.nodes and len(graph.nodes) == 3


def test_above_the_limit_the_graph_collapses_by_function_with_counts_by_state() -> None:
    loads = [task("load") for _ in range(4)]
    adds = [task("add", loads[i], loads[i + 1]) for i in range(3)]
    done = task("total", *adds)
    graph = TaskGraph(limit=5)
    cluster = Cluster()
    cluster.submit(*loads, *adds, done)
    cluster.finish(*loads)
    adds[0].state = "processing"
    graph.update(cluster.history.since(0), cluster.tasks.values())
    laid = layout(graph.shape())
    assert laid.collapsed and laid.names == ["load", "add", "total"]
    edges = {
        (laid.names[s], laid.names[t]): n
        for (s, t), n in zip(laid.edges, laid.weights, strict=True)
    }
    assert edges == {("load", "add"): 6, ("add", "total"): 3}
    assert laid.x[0] < laid.x[1] < laid.x[2]
    view = graph.view(laid)
    assert view.counts == [
        {"FINISHED": 4},
        {"RUNNING": 1, "PENDING_ARGS_AVAIL": 2},
        {"PENDING_ARGS_AVAIL": 1},
    ]
    assert view.states == ["FINISHED", "PENDING_ARGS_AVAIL", "PENDING_ARGS_AVAIL"]
    api = view.to_json()
    assert api["collapsed"] and api["tasks"] == 8
    assert api["nodes"][1] == {
        "name": "add",
        "tasks": 3,
        "states": {"RUNNING": 1, "PENDING_ARGS_AVAIL": 2},
        "x": laid.x[1],
        "y": laid.y[1],
    }
    assert {"source": "load", "target": "add", "tasks": 6} in api["edges"]


def test_functions_that_call_each_other_collapse_into_a_cycle_that_still_lays_out() -> None:
    f1 = task("f")
    g1 = task("g", f1)
    f2 = task("f", g1)  # f -> g -> f
    laid = layout(shape_of([f1, g1, f2, task("h", f2)], limit=3))
    edges = {(laid.names[s], laid.names[t]) for s, t in laid.edges}
    assert edges == {("f", "g"), ("g", "f"), ("f", "h")}  # the one back is drawn
    at = named(laid)
    assert at["f"][0] < at["g"][0] and at["f"][0] < at["h"][0]


def test_the_json_names_each_edge_by_its_tasks() -> None:
    a, b, c, d = diamond()
    graph = TaskGraph()
    graph.update([], [a, b, c, d])
    api = graph.view(layout(graph.shape()), taken=12.5).to_json()
    assert api["time"] == 12.5 and not api["collapsed"] and api["tasks"] == 4
    assert [n["name"] for n in api["nodes"]] == ["a", "b", "c", "d"]
    assert (
        api["nodes"][0]["task_id"] == a.id.hex()
        and api["nodes"][0]["state"] == "PENDING_ARGS_AVAIL"
    )
    ends = {(e["source"], e["target"]) for e in api["edges"]}
    assert (a.id.hex(), b.id.hex()) in ends and len(ends) == 4


def test_laying_out_five_thousand_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    """Timed, not asserted (the machine decides): reported on the test's output."""
    tasks: list[Task] = []
    for i in range(5_000):  # a map (1000), then four rounds of pairwise combining
        if i < 1_000:
            tasks.append(task("map"))
        else:
            tasks.append(task("combine", tasks[i - 1_000], tasks[i - 999 if i % 1_000 else i - 1]))
    shape = shape_of(tasks)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        laid = layout(shape)
        seconds.append(time.perf_counter() - start)
    assert len(laid.keys) == 5_000 and len(laid.edges) == 8_000 and not laid.collapsed
    # What the loop pays per snapshot meanwhile: every task live, one changed.
    on_loop = []
    graph = TaskGraph()
    graph.update([], tasks)
    for i in range(5):
        tasks[i].state = "processing"
        start = time.perf_counter()
        graph.update([], tasks)
        graph.shape()
        graph.view(laid)
        on_loop.append(time.perf_counter() - start)

    def ms(times: list[float]) -> str:
        return (
            f"median {statistics.median(times) * 1000:.1f} ms "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) over {len(times)}"
        )

    with capsys.disabled():
        print(f"\nlayout of 5,000 tasks, 8,000 edges, off the loop: {ms(seconds)}")
        print(f"a snapshot of them on the loop (update, shape, view): {ms(on_loop)}")


# -- the shell: when layouts run, what a page is sent ---------------------------


class Clock:
    """Stands still unless moved, or told to ``step`` on every reading."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Held(Executor):
    """Runs what is submitted only when the test says (``run``)."""

    def __init__(self) -> None:
        self.queue: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.queue.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run(self, fail: bool = False) -> None:
        future, job = self.queue.pop(0)
        if fail:
            future.set_exception(RuntimeError("a bug in the layout"))
        else:
            future.set_result(job())


def feed_of(
    cluster: Cluster, executor: Executor | None = None, limit: int = 5_000
) -> tuple[GraphFeed, Clock]:
    clock = Clock()
    state: Any = SimpleNamespace(history=cluster.history, tasks=cluster.tasks)
    return GraphFeed(state, executor, period=0.2, limit=limit, clock=clock, wall=clock), clock


def test_a_layout_runs_off_the_caller_one_at_a_time_and_the_last_one_is_shown_meanwhile() -> None:
    cluster = Cluster()
    a, b, c, d = diamond()
    cluster.submit(a, b)
    held = Held()
    feed, clock = feed_of(cluster, held)
    assert feed.current().layout.keys == [] and len(held.queue) == 1  # asked, not done
    cluster.submit(c, d)
    clock.now = 1.0
    view = feed.current()
    assert view.nodes == 4 and view.layout.keys == [] and len(held.queue) == 1  # one at a time
    held.run()
    clock.now = 2.0
    view = feed.current()
    assert view.layout.keys == [a.id, b.id] and feed.layouts == 1  # the first, taken
    assert len(held.queue) == 1  # and the next asked for, the graph having grown
    a.state = "processing"
    clock.now = 3.0
    assert feed.current().states[0] == "RUNNING"  # states are fresh, the layout the last
    held.run()
    clock.now = 4.0
    assert len(feed.current().layout.keys) == 4 and not held.queue


def test_a_layout_that_fails_is_logged_and_the_last_one_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = Cluster()
    cluster.submit(task("a"))
    held = Held()
    feed, clock = feed_of(cluster, held)
    feed.current()
    held.run()
    cluster.submit(task("b"))
    clock.now = 1.0
    feed.current()
    held.run(fail=True)
    clock.now = 2.0
    assert len(feed.current().layout.keys) == 1
    assert "laying out the task graph failed" in caplog.text


def test_snapshots_come_at_most_once_a_period_and_layouts_within_their_budget() -> None:
    cluster = Cluster()
    cluster.submit(task("a"))
    held = Held()
    feed, clock = feed_of(cluster, held)
    feed.current()
    clock.step = 0.05  # the layout takes 50 ms (a step between its two readings)
    held.run()
    clock.step = 0.0
    clock.now = 1.0
    first = feed.current()
    assert feed.layouts == 1 and feed.layout_seconds == pytest.approx(0.05)
    cluster.submit(task("b"))
    clock.now = 1.1
    assert feed.current() is first  # within the period: the same snapshot
    clock.now = 1.25
    assert feed.current().nodes == 2 and not held.queue  # the layout's budget is not spent
    clock.now = 1.0 + 0.05 / BUDGET
    feed.current()
    held.run()
    clock.now = 2.0
    assert len(feed.current().layout.keys) == 2 and feed.layouts == 2


def test_the_page_replaces_a_new_layout_and_patches_only_states_that_changed() -> None:
    cluster = Cluster()
    a, b, c, d = diamond()
    cluster.submit(a, b, c, d)
    feed, clock = feed_of(cluster)
    doc = Document()
    graph_page(doc, feed)
    nodes = doc.get_model_by_name("graph-nodes")
    edges = doc.get_model_by_name("graph-edges")
    assert nodes.data["name"] == ["a", "b", "c", "d"] and len(edges.data["x0"]) == 4
    assert nodes.data["state"] == ["PENDING_ARGS_AVAIL"] * 4
    [update] = doc.session_callbacks
    sent: list[Any] = []
    doc.on_change(sent.append)  # what the page's websocket would carry

    cluster.finish(a)
    clock.now = 1.0
    update.callback()
    [patch] = sent
    assert isinstance(patch, ColumnsPatchedEvent) and patch.model is nodes
    assert patch.patches == {"state": [(0, "FINISHED")]}  # (coloured in the browser)
    assert nodes.data["state"][0] == "FINISHED"
    sent.clear()
    cluster.submit(task("e", d))
    clock.now = 2.0
    update.callback()
    replaced = {e.model.name for e in sent if isinstance(e, ColumnDataChangedEvent)}
    assert replaced == {"graph-nodes", "graph-edges", "graph-labels"}  # (no shares: not collapsed)
    assert nodes.data["name"][-1] == "e" and len(edges.data["x0"]) == 5
    sent.clear()
    clock.now = 3.0
    update.callback()
    assert sent == []  # nothing changed: nothing sent


def test_a_page_takes_a_new_layout_at_most_so_many_nodes_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graph_page_module, "REPLACED_PER_SECOND", 2)  # (5,000 in earnest)
    cluster = Cluster()
    cluster.submit(*diamond())
    feed, clock = feed_of(cluster)
    doc = Document()
    graph_page(doc, feed)
    nodes = doc.get_model_by_name("graph-nodes")
    [update] = doc.session_callbacks
    cluster.submit(task("e"))
    clock.now = 1.0
    update.callback()  # 5 nodes: the next layout not before 1.0 + 5 / 2
    assert len(nodes.data["name"]) == 5
    cluster.submit(task("f"))
    clock.now = 2.0
    update.callback()
    assert len(nodes.data["name"]) == 5 and feed.current().nodes == 6
    clock.now = 3.5
    update.callback()
    assert len(nodes.data["name"]) == 6


def test_a_collapsed_page_shows_each_function_as_wedges_of_its_states() -> None:
    cluster = Cluster()
    loads = [task("load") for _ in range(3)]
    cluster.submit(*loads, task("add", *loads))
    cluster.finish(loads[0])
    feed, _ = feed_of(cluster, limit=3)
    doc = Document()
    graph_page(doc, feed)
    nodes = doc.get_model_by_name("graph-nodes")
    shares = doc.get_model_by_name("graph-shares")
    assert nodes.data["name"] == ["load", "add"] and list(nodes.data["tasks"]) == [3, 1]
    assert doc.get_model_by_name("graph-labels").data["text"] == ["load", "add"]
    assert nodes.data["state"][0] == "2 PENDING_ARGS_AVAIL, 1 FINISHED"
    wedges = Counter(
        zip(shares.data["name"], shares.data["state"], shares.data["tasks"], strict=True)
    )
    assert wedges == {
        ("load", "PENDING_ARGS_AVAIL", 2): 1,
        ("load", "FINISHED", 1): 1,
        ("add", "PENDING_ARGS_AVAIL", 1): 1,
    }
    angles = [s - e for s, e in zip(shares.data["end"], shares.data["start"], strict=True)]
    assert sum(angles) == pytest.approx(4 * 3.141592653589793)  # a full turn per function
