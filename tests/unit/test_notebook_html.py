"""What notebooks show (taskgraph/_html.py) and the embeddable task stream page
(scheduler/pages_single.py): pure, no cluster, no browser."""

from __future__ import annotations

import json
import pickle
import xml.etree.ElementTree as ET
from typing import Any

from bokeh.document import Document
from test_dashboard_feed import feed_for, finished

from taskgraph import _html, _task_stream
from taskgraph._api import NodeList
from taskgraph.scheduler import feed as feed_module
from taskgraph.scheduler import pages, pages_single
from taskgraph.scheduler.feed import color_of
from taskgraph.scheduler.history import TaskHistory

SVG = "{http://www.w3.org/2000/svg}"


def node(node_id: str, host: str = "host-a", **resources: float) -> dict[str, Any]:
    total = {"CPU": 4.0, "memory": 8 * 2**30, **resources}
    return {
        "node_id": node_id,
        "alive": True,
        "host": host,
        "address": f"tcp://{host}:1234",
        "pid": 99,
        "resources": total,
        "available": {**total, "CPU": 3.0},
    }


def test_a_cluster_card_sums_its_nodes_and_links_the_dashboard() -> None:
    card = _html.cluster(
        kind="cluster",
        address="tcp://10.0.0.1:8786",
        namespace="ns",
        dashboard_url="http://10.0.0.1:8686",
        nodes=[node("n1", GPU=2.0), node("n2", special=1.0)],
        version="9.9",
    )
    assert ">Nodes</th><td " in card and ">2</td>" in card
    assert "8 (6 free)" in card  # CPUs: 4 + 4, one busy on each
    assert "16.0 GiB" in card and ">special</th>" in card
    assert '<a href="http://10.0.0.1:8686" target="_blank">' in card
    assert "<summary>2 nodes</summary>" in card and "<code>n2</code>" in card


def test_a_cluster_card_says_why_it_has_no_nodes() -> None:
    card = _html.cluster(
        kind="local cluster",
        address="tcp://127.0.0.1:1",
        namespace="ns",
        dashboard_url=None,
        nodes=None,
        why_no_nodes="not <connected>",
    )
    assert "unknown (not &lt;connected&gt;)" in card
    assert ">Dashboard</th><td " in card and "<a " not in card and "<details>" not in card


def test_everything_the_user_named_is_escaped() -> None:
    evil = "<script>alert('x')</script>"
    card = _html.cluster(
        kind="cluster",
        address=evil,
        namespace=evil,
        dashboard_url='http://h:1/"><script>',
        nodes=[node(evil, host=evil, **{evil: 1.0})],
    )
    actor = _html.actor(evil, "ab" * 8, name=evil, namespace=evil)
    ref = _html.object_ref(evil, evil)
    frame = _html.task_stream_frame('http://h:1/x"><script>', 300)
    for markup in (card, actor, ref, frame):
        assert "<script>" not in markup
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in actor
    assert 'src="http://h:1/x&quot;&gt;&lt;script&gt;"' in frame and 'height="300"' in frame


def test_an_actor_card_names_its_class_and_shows_a_name_only_when_it_has_one() -> None:
    named = _html.actor("Counter", "ab" * 8, name="counter", namespace="team")
    assert "<code>Counter</code>" in named and "<code>" + "ab" * 8 + "</code>" in named
    assert ">Name</th>" in named and "<code>team</code>" in named
    assert ">Name</th>" not in _html.actor("Counter", "ab" * 8)


def test_nodes_are_still_a_plain_list_of_dicts() -> None:
    plain = [node("n1"), node("n2")]
    nodes = NodeList(plain)
    assert isinstance(nodes, list) and nodes == plain and plain == nodes
    assert repr(nodes) == repr(plain)
    assert json.loads(json.dumps(nodes)) == plain
    assert pickle.loads(pickle.dumps(nodes)) == plain
    table = nodes._repr_html_()
    assert table.count("<tr>") == 3 and "<code>n2</code>" in table and "4 (3 free)" in table


def row(
    name: str, node_id: str, pid: int, start: float, end: float, state: str = "FINISHED"
) -> dict[str, Any]:
    """A row as /api/tasks gives it, times in ms after a start."""
    return {
        "name": name,
        "node_id": node_id,
        "worker_pid": pid,
        "start_time_ms": 1_000_000 + start,
        "end_time_ms": 1_000_000 + end,
        "state": state,
    }


def test_the_picture_draws_a_bar_per_task_on_a_lane_per_process() -> None:
    tasks = [
        row("square", "n1", 10, 0, 100),
        row("square", "n1", 11, 0, 150),
        row("add", "n1", 10, 100, 180),
        row("<b>oops</b>", "n2", 12, 50, 60, state="FAILED"),
    ]
    svg = ET.fromstring(_html.task_stream_svg(tasks))  # well-formed XML
    bars = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "task"]
    assert len(bars) == 4
    assert [b.get("fill") for b in bars] == [color_of("square")] * 2 + [color_of("add"), "#000000"]
    tips = [b.find(f"{SVG}title").text for b in bars]  # type: ignore[union-attr]
    assert tips[3] == "<b>oops</b>: 10.0 ms on n2/12 (FAILED)"  # escaped in the file, read back
    lanes = {float(b.get("y", 0)) for b in bars}
    assert len(lanes) == 3  # n1/10, n1/11, n2/12
    assert max(float(b.get("x", 0)) + float(b.get("width", 0)) for b in bars) <= _html.WIDTH
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "0 s" in labels and "4 tasks on 3 lanes" in labels
    # The first lane at the bottom, as on the dashboard.
    assert float(bars[0].get("y", 0)) > float(bars[1].get("y", 0))


def test_the_picture_of_no_tasks_says_so() -> None:
    svg = ET.fromstring(_html.task_stream_svg([]))
    assert [t.text for t in svg.iter(f"{SVG}text")] == ["Task stream", "no tasks yet"]


def test_time_ticks_are_round_and_about_six() -> None:
    assert _html._ticks(1.0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert _html._ticks(30.0) == [0, 5, 10, 15, 20, 25, 30]
    assert _html._ticks(0.001)[:2] == [0, 0.0002]


def test_the_picture_asks_for_every_row_the_dashboard_keeps() -> None:
    assert _task_stream.KEEP == feed_module.KEEP


def test_the_embeddable_page_is_served_and_streams_only_new_rows() -> None:
    history = TaskHistory()
    feed, clock = feed_for(history)
    assert "/individual-task-stream" in pages.applications(feed)
    history.finished(finished("square", pid=1))
    doc = Document()
    pages_single.task_stream_page(doc, feed)
    (plot,) = doc.roots
    source = doc.get_model_by_name("task-stream")
    assert plot.sizing_mode == "stretch_both" and source.data["name"] == ["square"]
    assert plot.yaxis[0].major_label_overrides == {0.4: "node-a/1"}

    history.finished(finished("add", pid=2))
    history.finished(finished("add", pid=1))
    clock.now = 1.0
    (update,) = doc.session_callbacks
    update.callback()
    assert source.data["name"] == ["square", "add", "add"]
    assert list(source.data["top"]) == [0.8, 1.8, 0.8]
    assert plot.yaxis[0].major_label_overrides == {0.4: "node-a/1", 1.4: "node-a/2"}
    update.callback()  # the same snapshot: nothing new
    assert len(source.data["name"]) == 3
