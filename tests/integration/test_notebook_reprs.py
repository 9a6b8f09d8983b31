"""What a notebook shows of a live cluster: the context's card, refs, actor
handles, ``tg.nodes()``, and ``tg.task_stream()``'s page and picture (the
markup itself is tested in tests/unit/test_notebook_html.py; the stream inside
JupyterLab in test_notebook_browser.py)."""

from __future__ import annotations

import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest

import taskgraph as tg
from conftest import wait_for

pytestmark = pytest.mark.cluster


@tg.remote
def square(i: int) -> int:
    return i * i


@tg.remote
def fail() -> None:
    raise ValueError("on purpose")


@tg.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n


@tg.remote
def echo(handle: object) -> object:
    return handle


def test_the_context_card_shows_the_cluster_and_then_that_it_is_gone(
    fresh_cluster: tg.ClusterContext,
) -> None:
    card = fresh_cluster._repr_html_()
    assert "<b>taskgraph</b> local cluster" in card
    assert '>Nodes</th><td style="text-align: left; padding: 1px 12px 1px 0">1</td>' in card
    assert '>CPUs</th><td style="text-align: left; padding: 1px 12px 1px 0">2</td>' in card
    url = fresh_cluster.dashboard_url
    assert url is not None and f'<a href="{url}" target="_blank">' in card
    assert "dashboard_url=" in repr(fresh_cluster)  # the plain text as it was

    tg.shutdown()
    started = time.monotonic()
    card = fresh_cluster._repr_html_()
    assert time.monotonic() - started < 1  # no query to a cluster that is gone
    assert "unknown (not connected" in card
    assert not tg.is_initialized()  # a repr never starts a cluster


def test_a_ref_shows_what_this_process_knows_without_asking(
    fresh_cluster: tg.ClusterContext,
) -> None:
    ref, bad = square.remote(3), fail.remote()
    html = ref._repr_html_()
    assert f"<code>{ref.hex()}</code>" in html
    assert tg.get(ref) == 9
    assert ref._repr_html_().endswith("<i>ready</i></span>")
    with pytest.raises(ValueError):
        tg.get(bad)
    assert bad._repr_html_().endswith("<i>failed</i></span>")
    assert repr(ref) == f"ObjectRef({ref.hex()})"


def test_an_actor_handle_shows_its_class_id_and_escaped_name(
    fresh_cluster: tg.ClusterContext,
) -> None:
    plain = Counter.remote()
    assert "<code>Counter</code>" in plain._repr_html_()
    assert ">Name</th>" not in plain._repr_html_()

    named = Counter.options(name="<counter & co>").remote()
    assert tg.get(named.add.remote()) == 1
    for handle in (named, tg.get_actor("<counter & co>"), tg.get(echo.remote(named))):
        html = handle._repr_html_()
        assert f"<code>{named._actor_id.hex()}</code>" in html
        assert "<code>&lt;counter &amp; co&gt;</code>" in html
        assert repr(handle) == repr(named)
    tg.kill(named)
    del plain


def test_nodes_are_a_list_of_dicts_with_a_table(fresh_cluster: tg.ClusterContext) -> None:
    nodes = tg.nodes()
    assert isinstance(nodes, list) and nodes == [dict(n) for n in nodes]
    assert len(nodes) == 1 and nodes[0]["resources"]["CPU"] == 2
    table = nodes._repr_html_()  # type: ignore[attr-defined]
    assert f"<code>{nodes[0]['node_id']}</code>" in table


def test_the_task_stream_is_a_page_on_the_dashboard_and_a_picture_of_its_rows(
    fresh_cluster: tg.ClusterContext,
) -> None:
    stream = tg.task_stream(height=300)
    assert stream.url == f"{fresh_cluster.dashboard_url}/individual-task-stream"
    assert f'<iframe src="{stream.url}"' in stream._repr_html_()
    with urllib.request.urlopen(stream.url, timeout=10) as reply:
        assert "<title>taskgraph: task stream</title>" in reply.read().decode()

    n = 12
    assert tg.get([square.remote(i) for i in range(n)]) == [i * i for i in range(n)]
    wait_for(lambda: len(stream.tasks()) == n, what=f"{n} tasks on /api/tasks")
    picture = stream.picture()
    svg = ET.fromstring(picture._repr_svg_())
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "task"]
    assert len(bars) == n and repr(picture) == f"TaskStreamPicture({n} tasks)"


@pytest.mark.parametrize(
    "fresh_cluster", [{"num_cpus": 1, "include_dashboard": False}], indirect=True
)
def test_no_dashboard_no_task_stream(fresh_cluster: tg.ClusterContext) -> None:
    with pytest.raises(RuntimeError, match="serves no dashboard"):
        tg.task_stream()
    assert '>Dashboard</th><td style="text-align: left; padding: 1px 12px 1px 0">none' in (
        fresh_cluster._repr_html_()
    )
