"""The dashboard's ``/graph`` page in a real browser (Debian's headless ``chromium``),
and ``/api/graph``: a small ``.bind()`` graph, drawn node for node and edge for edge.

The page's nodes and edges are read back from the Bokeh document in the page
(its ``graph-nodes`` and ``graph-edges`` sources). A failing browser test
leaves a screenshot in its temporary folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import taskgraph as tg
from conftest import get_json, screenshot_on_failure, wait_for

pytestmark = pytest.mark.cluster

# What the page's Bokeh document holds: its nodes and edges, as plain arrays;
# null until the document and its sources are there.
GRAPH = """() => {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    if (docs.length === 0) return null;
    const nodes = docs[0].get_model_by_name('graph-nodes');
    const edges = docs[0].get_model_by_name('graph-edges');
    if (nodes === null || edges === null) return null;
    const columns = (source, names) =>
        Object.fromEntries(names.map(name => [name, Array.from(source.data[name])]));
    // The nodes are coloured in the page, from their state: the colour of each.
    const fill = docs[0].get_model_by_name('graph-node-circles').glyph.fill_color.transform;
    const colors = Array.from(nodes.data.state).map(s => fill.palette[fill.factors.indexOf(s)]);
    return {
        nodes: {...columns(nodes, ['key', 'name', 'state', 'x', 'y']), color: colors},
        edges: columns(edges, ['x0', 'y0', 'x1', 'y1']),
    };
}"""


@tg.remote
def load(i: int) -> int:
    return i


@tg.remote
def add(a: int, b: int) -> int:
    return a + b


@tg.remote
def total(*parts: int) -> int:
    return sum(parts)


def diamonds() -> Any:
    """load x3 -> add x2 (one each side of the middle load) -> total: 6 tasks, 6 edges."""
    a, b, c = load.bind(1), load.bind(2), load.bind(3)
    return total.bind(add.bind(a, b), add.bind(b, c))


NAMES = {"load": 3, "add": 2, "total": 1}
LAYER = {"load": 0, "add": 1, "total": 2}  # each function's generation


def drawn(page: Any) -> dict[str, Any] | None:
    graph: dict[str, Any] | None = page.evaluate(GRAPH)
    return graph


def all_finished(graph: dict[str, Any] | None) -> bool:
    """The whole graph is drawn, every task finished (nodes and edges come in
    messages of their own: both are waited for)."""
    return (
        graph is not None
        and len(graph["nodes"]["key"]) == sum(NAMES.values())
        and len(graph["edges"]["x0"]) == 6
        and set(graph["nodes"]["state"]) == {"FINISHED"}
    )


def test_the_graph_page_draws_a_small_bind_graph_node_for_node(
    fresh_cluster: tg.ClusterContext, browser: Any, tmp_path: Path
) -> None:
    url = fresh_cluster.dashboard_url
    assert url is not None
    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/graph")
        wait_for(lambda: drawn(browser) is not None, what="the page's graph sources")
        empty = drawn(browser)
        assert empty is not None and empty["nodes"]["key"] == [] and empty["edges"]["x0"] == []

        assert tg.get(diamonds().execute(), timeout=30) == (1 + 2) + (2 + 3)
        wait_for(
            lambda: all_finished(drawn(browser)),
            timeout=30,
            what="six finished nodes and six edges in the open page",
        )
        check_drawn(drawn(browser))

        browser.reload()  # a fresh document, made from the graph as it is now
        wait_for(lambda: all_finished(drawn(browser)), what="the same after a reload")
        check_drawn(drawn(browser))


def check_drawn(graph: dict[str, Any] | None) -> None:
    assert graph is not None
    nodes, edges = graph["nodes"], graph["edges"]
    assert Counter(nodes["name"]) == NAMES
    assert set(nodes["color"]) == {"#2ca02c"}  # finished: green
    # Each function in its own column, left to right in dependency order.
    x_of = {
        name: {x for n, x in zip(nodes["name"], nodes["x"], strict=True) if n == name}
        for name in NAMES
    }
    assert all(len(xs) == 1 for xs in x_of.values()), x_of
    order = sorted(NAMES, key=lambda name: min(x_of[name]))
    assert order == sorted(NAMES, key=LAYER.__getitem__)
    # Six edges, each from a node to one a generation to its right.
    at = {(x, y): name for name, x, y in zip(nodes["name"], nodes["x"], nodes["y"], strict=True)}
    pairs = Counter(
        (at[x0, y0], at[x1, y1])
        for x0, y0, x1, y1 in zip(edges["x0"], edges["y0"], edges["x1"], edges["y1"], strict=True)
    )
    assert pairs == {("load", "add"): 4, ("add", "total"): 2}


def test_the_graph_api_lists_nodes_and_edges_by_task(fresh_cluster: tg.ClusterContext) -> None:
    url = fresh_cluster.dashboard_url
    assert url is not None
    assert tg.get(diamonds().execute(), timeout=30) == 8

    def laid_out() -> bool:  # (a result may reach us before its report reaches the scheduler)
        graph = get_json(f"{url}/api/graph")
        states = {node["state"] for node in graph["nodes"]}
        return len(graph["nodes"]) == 6 and len(graph["edges"]) == 6 and states == {"FINISHED"}

    wait_for(laid_out, what="the graph's six finished nodes on /api/graph")
    graph = get_json(f"{url}/api/graph")
    assert graph["collapsed"] is False and graph["tasks"] == 6
    nodes = graph["nodes"]
    assert Counter(n["name"] for n in nodes) == NAMES
    assert {n["state"] for n in nodes} == {"FINISHED"}
    assert all(len(bytes.fromhex(n["task_id"])) == 16 for n in nodes)
    # The middle load feeds both adds; each add feeds the total.
    name_of = {n["task_id"]: n["name"] for n in nodes}
    ends = Counter((name_of[e["source"]], name_of[e["target"]]) for e in graph["edges"])
    assert ends == {("load", "add"): 4, ("add", "total"): 2}
    fan_out = Counter(e["source"] for e in graph["edges"] if name_of[e["source"]] == "load")
    assert sorted(fan_out.values()) == [1, 1, 2]
