"""The dashboard in a real browser (Debian's headless ``chromium``, driven by
Playwright; never ``playwright install``), and its JSON under ``/api/``.

The status page's task stream is read back from the Bokeh document in the
page: one rectangle per finished task. A failing browser test leaves a
screenshot in its temporary folder.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import taskgraph as tg
from conftest import get_json, screenshot_on_failure, wait_for

pytestmark = pytest.mark.cluster

N = 40  # tasks in the known workload

# The length of the named ColumnDataSource in the page's Bokeh document; -1: not there yet.
SOURCE_LENGTH = """name => {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    if (docs.length === 0) return -1;
    const source = docs[0].get_model_by_name(name);
    return source === null ? -1 : source.get_length();
}"""


@tg.remote
def square(i: int) -> int:
    return i * i


@tg.remote
def halve(i: int) -> float:
    return i / 2


def test_the_api_counts_tasks_by_function_and_lists_nodes_and_events(
    fresh_cluster: tg.ClusterContext,
) -> None:
    url = fresh_cluster.dashboard_url
    assert url is not None
    assert tg.get([square.remote(i) for i in range(N)]) == [i * i for i in range(N)]
    tg.get([halve.remote(i) for i in range(5)])

    def counted() -> bool:
        return get_json(f"{url}/api/status")["tasks"]["done"] == N + 5

    wait_for(counted, what="the finished tasks on /api/status")
    status = get_json(f"{url}/api/status")
    assert status["by_function"]["square"] == {"done": N, "running": 0, "waiting": 0, "failed": 0}
    assert status["by_function"]["halve"]["done"] == 5
    workers = get_json(f"{url}/api/workers")["workers"]
    assert len(workers) == 1 and workers[0]["resources"]["CPU"] == 2
    tasks = get_json(f"{url}/api/tasks?limit=3")["tasks"]
    assert [t["name"] for t in tasks] == ["halve"] * 3
    assert all(t["state"] == "FINISHED" and t["worker_pid"] for t in tasks)
    assert all(t["start_time_ms"] <= t["end_time_ms"] for t in tasks)
    with pytest.raises(urllib.error.HTTPError) as bad:
        get_json(f"{url}/api/tasks?limit=many")
    bad.value.close()
    assert bad.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as missing:
        get_json(f"{url}/api/nothing")
    missing.value.close()
    assert missing.value.code == 404


# A scheduler in a process of its own, on sockets made here (as a local cluster hands
# them over), asked for the JSON and /metrics, then for two pages at once, each
# time saying whether Bokeh has been imported; it stops itself with SIGTERM.
FRESH_SCHEDULER = r"""
import os, signal, socket, sys, threading, urllib.request
from taskgraph.scheduler import cli

tcp = socket.create_server(("127.0.0.1", 0))
http = socket.create_server(("127.0.0.1", 0))
url = f"http://127.0.0.1:{http.getsockname()[1]}"

def read(path):
    with urllib.request.urlopen(url + path, timeout=60) as reply:
        return reply.read()

def ask():
    try:
        for path in ("/api/status", "/api/workers", "/api/graph", "/api/timeline", "/metrics"):
            read(path)
        print("bokeh after the JSON and /metrics:", "bokeh" in sys.modules, flush=True)
        pages = {}
        askers = [
            threading.Thread(target=lambda p=p: pages.update({p: read(p)}))
            for p in ("/status", "/workers")
        ]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()
        print("pages made by Bokeh:", sorted(p for p, html in pages.items() if b"Bokeh" in html))
        print("bokeh after the pages:", "bokeh" in sys.modules, flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=ask).start()
cli.main(["--listen-fd", str(tcp.detach()), "--dashboard-fd", str(http.detach()),
          "--no-record", "--token", "t" * 32])
"""


def test_a_fresh_scheduler_imports_bokeh_only_when_a_page_is_asked_for() -> None:
    """Bokeh costs a scheduler half a second of CPU at its start: it is imported when the
    first page is asked for, never for the JSON or /metrics."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_SCHEDULER], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if not line.startswith("taskgraph-")]
    assert said == [
        "bokeh after the JSON and /metrics: False",
        "pages made by Bokeh: ['/status', '/workers']",
        "bokeh after the pages: True",
    ], done.stderr


def test_the_root_redirects_to_the_status_page(fresh_cluster: tg.ClusterContext) -> None:
    with urllib.request.urlopen(f"{fresh_cluster.dashboard_url}/", timeout=10) as reply:
        assert reply.geturl().endswith("/status")
        assert b"Bokeh" in reply.read()


def test_the_status_page_streams_one_rectangle_per_finished_task(
    fresh_cluster: tg.ClusterContext, browser: Any, tmp_path: Path
) -> None:
    url = fresh_cluster.dashboard_url
    assert url is not None
    with screenshot_on_failure(browser, tmp_path):
        see_the_pages(url, browser)


def see_the_pages(url: str, browser: Any) -> None:
    browser.goto(f"{url}/status")
    wait_for(lambda: browser.evaluate(SOURCE_LENGTH, "task-stream") == 0, what="an empty stream")
    assert tg.get([square.remote(i) for i in range(N)]) == [i * i for i in range(N)]
    wait_for(
        lambda: browser.evaluate(SOURCE_LENGTH, "task-stream") == N,
        timeout=30,
        what=f"{N} rectangles in the page's task stream",
    )
    lanes = browser.evaluate(
        """() => new Set(Bokeh.documents[0].get_model_by_name('task-stream').data.lane).size"""
    )
    assert 1 <= lanes <= 2  # two CPUs: at most two executors ran them
    wait_for(
        lambda: browser.evaluate(SOURCE_LENGTH, "progress") == 1,
        what="the progress bars' one function",
    )

    browser.goto(f"{url}/workers")
    wait_for(lambda: browser.evaluate(SOURCE_LENGTH, "workers") == 1, what="one node's row")


def test_a_burst_of_tasks_reaches_an_open_page_a_rectangle_each(
    fresh_cluster: tg.ClusterContext, browser: Any, tmp_path: Path
) -> None:
    """Rows pouring in reach the page in fewer, larger updates, none lost."""
    url = fresh_cluster.dashboard_url
    burst = 1_500  # (a page holds the newest 2,000)
    with screenshot_on_failure(browser, tmp_path):
        browser.goto(f"{url}/status")
        wait_for(
            lambda: browser.evaluate(SOURCE_LENGTH, "task-stream") == 0, what="an empty stream"
        )
        refs = [square.remote(i) for i in range(burst)]
        tg.get(refs, timeout=60)
        wait_for(
            lambda: browser.evaluate(SOURCE_LENGTH, "task-stream") == burst,
            timeout=30,
            what=f"{burst} rectangles in the page's task stream",
        )
        shown = browser.evaluate(
            "() => Array.from(Bokeh.documents[0].get_model_by_name('task-stream')"
            ".get_column('task_id'))"
        )
    assert sorted(shown) == sorted(ref.hex()[:24] + "00000000" for ref in refs)  # (a task's id)


def test_a_request_naming_another_host_is_refused(cluster: tg.ClusterContext) -> None:
    """A page that rebinds its own name to 127.0.0.1 sends that name as the Host: it
    cannot read the JSON, the metrics or the graph, though the port is on loopback."""
    url = cluster.dashboard_url
    assert url is not None
    port = int(url.rsplit(":", 1)[1])

    def status_of(path: str, host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            return conn.getresponse().status
        finally:
            conn.close()

    for path in ("/api/status", "/api/graph", "/metrics"):
        assert status_of(path, f"rebound.example:{port}") == 403, path
        assert status_of(path, f"127.0.0.1:{port}") == 200, path
        assert status_of(path, f"localhost:{port}") == 200, path
