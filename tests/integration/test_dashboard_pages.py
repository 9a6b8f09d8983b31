"""The dashboard's pages beyond the task stream, in a real browser (Debian's
headless ``chromium``, driven by Playwright): ``/actors``, ``/objects``,
``/logs``, the store memory and task phases on ``/status``, and the timeline's
download from the bar above every page.

Each test runs a known workload, reads what the page shows back from its Bokeh
document (the named sources), and checks the JSON under ``/api/`` behind it.
A failing test leaves a screenshot of the page in its temporary folder.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import taskgraph as tg
from conftest import get_json, screenshot_on_failure, start_worker, stop_process, wait_for
from taskgraph.exceptions import ActorDiedError

pytestmark = pytest.mark.cluster

# A named ColumnDataSource of the page's Bokeh document, as {column: [values]};
# null while the page has not made it yet.
COLUMNS = """name => {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    if (docs.length === 0) return null;
    const source = docs[0].get_model_by_name(name);
    if (source === null) return null;
    const data = source.data instanceof Map ? Object.fromEntries(source.data) : source.data;
    const out = {};
    for (const key of Object.keys(data)) out[key] = Array.from(data[key]);
    return out;
}"""


def columns(page: Any, name: str) -> dict[str, list[Any]]:
    return page.evaluate(COLUMNS, name) or {}


def rows(page: Any, name: str) -> list[dict[str, Any]]:
    data = columns(page, name)
    return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]


def http_error(url: str) -> int:
    with pytest.raises(urllib.error.HTTPError) as failed:
        get_json(url)
    failed.value.close()
    return failed.value.code


def line_of(text: str, function: Any) -> int:
    """The number of the line of ``function`` that begins with ``text``."""
    source, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(source) if line.strip().startswith(text))


def node_ids(url: str) -> list[str]:
    return [node["node_id"] for node in get_json(f"{url}/api/workers")["workers"]]


@pytest.fixture(scope="module")
def url(cluster: tg.ClusterContext) -> str:
    assert cluster.dashboard_url is not None
    return cluster.dashboard_url


@tg.remote
class Tally:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n

    def crash(self) -> None:
        os._exit(1)


@tg.remote
def say(text: str) -> int:
    print(text)
    return len(text)


@tg.remote
def leaf(x: int) -> int:
    return x


@tg.remote
def grow(x: int) -> int:
    return x + 1


@tg.remote
def gather(*xs: int) -> int:
    return sum(xs)


class SlowToStore:
    """A result that takes 0.2 s to pickle: its task's store phase is that long,
    wide enough to be shaded however long the stream on the page has run."""

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(0.2)  # (the workload, not a wait)
        return (SlowToStore, ())


@tg.remote
def slow_to_store() -> SlowToStore:
    return SlowToStore()


def test_the_actors_page_shows_each_actors_state_calls_and_restarts(
    url: str, browser: Any, tmp_path: Path
) -> None:
    alive = Tally.options(name="page-alive").remote()
    assert tg.get([alive.add.remote() for _ in range(3)], timeout=30) == [1, 2, 3]
    killed = Tally.options(name="page-killed").remote()
    assert tg.get(killed.add.remote(), timeout=30) == 1
    tg.kill(killed)
    restarted = Tally.options(name="page-restarted", max_restarts=1).remote()
    with pytest.raises(ActorDiedError):
        tg.get(restarted.crash.remote(), timeout=30)
    assert tg.get(restarted.add.remote(), timeout=60) == 1
    # name: (state, calls done, calls failed, restarts)
    expected = {
        "page-alive": ("ALIVE", 3, 0, 0),
        "page-killed": ("DEAD", 1, 0, 0),
        "page-restarted": ("ALIVE", 1, 1, 1),
    }

    def shown(actors: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {
            a["name"]: (a["state"], a["calls_finished"], a["calls_failed"], a["num_restarts"])
            for a in actors
            if a["name"] in expected
        }

    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/actors")
        wait_for(
            lambda: shown(rows(browser, "actors")) == expected,
            timeout=30,
            what="the three actors' states, calls and restarts on /actors",
        )
        on_page = {a["name"]: a for a in rows(browser, "actors") if a["name"] in expected}
        assert all(a["class_name"] == "Tally" for a in on_page.values())
        assert on_page["page-alive"]["node_id"] in node_ids(url)
    api = get_json(f"{url}/api/actors")
    assert shown(api["actors"]) == expected
    assert api["by_state"]["DEAD"] >= 1 and api["total"] >= 3


def test_the_objects_page_shows_a_large_object_with_its_call_site(
    url: str, browser: Any, tmp_path: Path
) -> None:
    big = tg.put(np.zeros(6 << 20, dtype=np.uint8))
    test = test_the_objects_page_shows_a_large_object_with_its_call_site
    here = f"{__file__}:{test.__name__}:{line_of('big = tg.put(', test)}"
    big_id = big.hex()

    def listed(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((o for o in objects if o["object_id"] == big_id), None)

    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/objects")
        wait_for(lambda: listed(rows(browser, "objects")) is not None, what="the object's row")
        row = listed(rows(browser, "objects"))
        assert row is not None
        assert row["call_site"] == here and row["object_size"] >= 6 << 20
        assert row["holders"].startswith("held by driver")
        assert row["reference_type"] == "LOCAL_REFERENCE" and row["node_id"] in node_ids(url)
    api = listed(get_json(f"{url}/api/objects")["largest"])
    assert api is not None and api["call_site"] == here and api["object_size"] == row["object_size"]
    # Released, it leaves the page. (Read through the page: each Playwright call takes
    # a copy of this frame's locals, big included, until the next call refreshes it.)
    del big
    with screenshot_on_failure(browser, tmp_path):
        wait_for(
            lambda: listed(rows(browser, "objects")) is None,
            what="the released object to leave /objects",
        )
    assert listed(get_json(f"{url}/api/objects")["largest"]) is None


def test_the_logs_page_shows_a_line_a_task_printed(url: str, browser: Any, tmp_path: Path) -> None:
    text = f"a line for the logs page {uuid.uuid4().hex}"
    assert tg.get(say.remote(text), timeout=30) == len(text)
    [node] = node_ids(url)

    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/logs?node={node}")
        wait_for(
            lambda: text in columns(browser, "log-lines").get("line", []),
            timeout=30,
            what="the printed line on /logs",
        )
        files = columns(browser, "log-lines")["file"]
        assert all(name.startswith("executor-") for name in files)
    answer = get_json(f"{url}/api/logs?node={node}")
    assert answer["node_id"] == node and answer["error"] is None
    assert any(text in f["lines"] for f in answer["files"])
    assert http_error(f"{url}/api/logs") == 400
    assert http_error(f"{url}/api/logs?node=no-such-node") == 404


def test_the_timeline_download_has_one_slice_per_task_of_a_known_graph(
    url: str, browser: Any, tmp_path: Path
) -> None:
    top = leaf.remote(1)
    middle = [grow.remote(top), grow.remote(top)]
    end = gather.remote(*middle)
    assert tg.get(end, timeout=30) == 4
    refs = [top, *middle, end]
    ids = {ref.hex()[:24] + "00000000" for ref in refs}  # a task's id: its first return's

    def traced(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["ph"] == "X" and e.get("cat") == "task" and e["args"]["task_id"] in ids
        ]

    wait_for(
        lambda: len(traced(get_json(f"{url}/api/timeline"))) == len(ids),
        what="the graph's tasks in /api/timeline",
    )
    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/status")
        with browser.expect_download() as download:
            browser.get_by_text("timeline (JSON)").click()
        assert download.value.suggested_filename == "timeline.json"
        events = json.loads(Path(download.value.path()).read_text())
    slices = traced(events)
    assert sorted(s["args"]["task_id"] for s in slices) == sorted(ids)  # one slice each
    assert sorted(s["name"] for s in slices) == ["gather", "grow", "grow", "leaf"]
    assert all(s["args"]["state"] == "FINISHED" and s["dur"] >= 0 for s in slices)
    named = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert all((s["pid"], s["tid"]) in named for s in slices), "each on a named executor's track"


def test_the_status_page_shows_each_nodes_store_and_the_tasks_phases(
    url: str, browser: Any, tmp_path: Path
) -> None:
    cap = 64 << 20
    second = start_worker("--num-cpus", "0", "--object-store-memory", str(cap))
    try:
        wait_for(lambda: len(node_ids(url)) == 2, what="the second node")
        nodes = set(node_ids(url))
        big = tg.put(np.ones(3 << 20, dtype=np.uint8))
        assert tg.get([leaf.remote(i) for i in range(20)], timeout=30) == list(range(20))
        assert len(tg.get([slow_to_store.remote() for _ in range(2)], timeout=30)) == 2

        def store_shown() -> bool:
            store = columns(browser, "store-memory")
            return (
                set(store.get("node_id", [])) == nodes
                and cap in store["capacity"]
                and sum(store["in_memory"]) >= 3 << 20
            )

        with screenshot_on_failure(browser, tmp_path):
            browser.goto(f"{url}/status")
            wait_for(store_shown, timeout=30, what="both nodes' store memory on /status")
            store = rows(browser, "store-memory")
            assert all(0 <= s["in_memory"] <= s["capacity"] for s in store)
            assert all(s["spilled_end"] == s["in_memory"] + s["spilled"] for s in store)
            wait_for(
                lambda: bool(columns(browser, "task-phases").get("phase")),
                what="phases drawn in the task stream",
            )
            tasks, phases = rows(browser, "task-stream"), rows(browser, "task-phases")
        assert {p["phase"] for p in phases} <= {"transfer", "arguments", "store"}
        assert sum(p["phase"] == "store" and p["duration"] >= 200 for p in phases) >= 2
        for p in phases:  # each inside a task's rectangle, on its lane
            assert any(
                t["lane"] == p["lane"] and t["left"] <= p["left"] <= p["right"] <= t["right"]
                for t in tasks
            ), p
        status = get_json(f"{url}/api/status")["store"]
        assert {s["node_id"] for s in status} == nodes
        assert cap in [s["capacity"] for s in status]
        del big
    finally:
        stop_process(second)
    wait_for(lambda: len(node_ids(url)) == 1, what="the second node to leave")
