"""``/metrics`` on the scheduler's HTTP port, scraped as Prometheus would and parsed
with ``prometheus_client.parser``: the cluster's own metrics for a known workload,
user metrics recorded in tasks, an actor and the driver, and where the port is."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskgraph as tg
from conftest import another_driver, finish, wait_for
from taskgraph.util.metrics import Counter, Gauge, Histogram

pytestmark = pytest.mark.cluster

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str | None) -> Samples:
    assert url is not None
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def sample(url: str | None, name: str, **labels: str) -> float | None:
    return scrape(url).get(name, {}).get(tuple(sorted(labels.items())))


ITEMS = Counter("test_items", "items handled", tag_keys=("stage",))
SIZES = Histogram("test_item_sizes", "item sizes", boundaries=[2, 8], tag_keys=("stage",))


@tg.remote
def handle(i: int) -> int:
    ITEMS.inc(tags={"stage": "square"})
    SIZES.observe(i, tags={"stage": "square"})
    return i * i


@tg.remote
class Queue:
    def __init__(self) -> None:
        self.depth = Gauge("test_queue_depth", "items waiting", tag_keys=("queue",))
        self.depth.set_default_tags({"queue": "main"})

    def put(self, n: int) -> None:
        self.depth.set(n)


def test_metrics_show_a_known_workload_and_user_metrics(fresh_cluster):
    url = fresh_cluster.dashboard_url
    assert tg.get([handle.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    queue = Queue.remote()
    tg.get([queue.put.remote(3), queue.put.remote(7)])
    Counter("test_driver_runs", "runs of this driver").inc(2)

    def everything_in() -> bool:
        s = scrape(url)
        return (
            s.get("test_items_total", {}).get((("stage", "square"),)) == 10
            and s.get("test_queue_depth", {}).get((("queue", "main"),)) == 7
            and s.get("test_driver_runs_total", {}).get(()) == 2
            and s["taskgraph_tasks_finished_total"].get((("name", "handle"), ("state", "FINISHED")))
            == 10
        )

    wait_for(everything_in, what="the workload's metrics on /metrics")
    s = scrape(url)
    square = (("stage", "square"),)
    buckets = {dict(labels)["le"]: n for labels, n in s["test_item_sizes_bucket"].items()}
    assert buckets == {"2.0": 3, "8.0": 9, "+Inf": 10}  # 0-2, 3-8, 9
    assert s["test_item_sizes_sum"][square] == sum(range(10))
    assert s["taskgraph_nodes"][()] == 1
    assert s["taskgraph_scheduler_loop_lag_seconds_count"][()] >= 0
    [node] = tg.nodes()
    assert s["taskgraph_node_resources"][(("node", node["node_id"]), ("resource", "CPU"))] == 2
    wait_for(
        lambda: (
            (sample(url, "taskgraph_node_memory_total_bytes", node=node["node_id"]) or 0)
            == psutil.virtual_memory().total
        ),
        what="the node's heartbeat with its memory",
    )


@tg.remote
def define_badly(name: str) -> None:
    Counter(name)


def test_a_bad_metric_name_raises_in_a_task_and_in_the_driver(fresh_cluster):
    with pytest.raises(ValueError, match="not valid"):
        tg.get(define_badly.remote("no spaces please"))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        ITEMS.inc()


def test_the_context_says_where_the_dashboard_is(fresh_cluster):
    cluster = fresh_cluster
    assert cluster.dashboard_url is not None
    assert cluster.dashboard_url.startswith("http://127.0.0.1:")
    assert f"dashboard_url={cluster.dashboard_url!r}" in repr(cluster)
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    assert cluster.dashboard_url == runtime.cluster.dashboard_url
    joined = another_driver("import taskgraph as tg\nprint(tg.init().dashboard_url)\ntg.shutdown()")
    code, out, err = finish(joined)
    assert code == 0, err
    assert out.strip() == cluster.dashboard_url, "a driver joining by address asks the scheduler"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def test_a_taken_dashboard_port_falls_back_to_a_free_one(taken_port, caplog):
    caplog.set_level(logging.WARNING, logger="taskgraph")
    context = tg.init(num_cpus=1, dashboard_port=taken_port, configure_logging=False)
    try:
        assert context.dashboard_url is not None
        assert not context.dashboard_url.endswith(f":{taken_port}")
        assert sample(context.dashboard_url, "taskgraph_nodes") is not None
    finally:
        tg.shutdown()
    assert any(f"dashboard_port={taken_port} is taken" in r.getMessage() for r in caplog.records)


def listening_ports(pid: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.mark.parametrize(
    "fresh_cluster", [{"num_cpus": 1, "include_dashboard": False}], indirect=True
)
def test_include_dashboard_false_serves_no_http_port(fresh_cluster):
    assert fresh_cluster.dashboard_url is None
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    cluster_port = int(runtime.address.rsplit(":", 1)[1])
    assert listening_ports(runtime.cluster.scheduler.pid) == {cluster_port}


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def test_the_scheduler_cli_serves_metrics_and_falls_back_from_a_taken_port(taken_port, tmp_path):
    env: dict[str, Any] = dict(os.environ, TASKGRAPH_STATE_DIR=str(tmp_path))
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskgraph.scheduler.cli",
            "--port",
            "0",
            "--no-record",
            "--dashboard-port",
            str(taken_port),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening at tcp://" in read_line(scheduler)
        line = read_line(scheduler)
        assert line.startswith("taskgraph-scheduler dashboard at http://127.0.0.1:"), line
        url = line.split()[-1].removesuffix("/status")
        assert not url.endswith(f":{taken_port}")
        assert sample(url, "taskgraph_nodes") == 0
    finally:
        scheduler.terminate()
        _, err = scheduler.communicate(timeout=30)
    assert f"port {taken_port} is taken" in err
