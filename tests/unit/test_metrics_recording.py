"""Metrics without a cluster: what a process records and sends (taskgraph/_metrics.py,
taskgraph.util.metrics), how the scheduler adds up what processes send, and what
``/metrics`` says of a ``SchedulerState`` (scheduler/metrics.py), parsed back
with ``prometheus_client.parser``."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_scheduler_state import Harness, failed, ok

from taskgraph import _metrics
from taskgraph import _wire as w
from taskgraph._metrics import Definition, Recorder
from taskgraph.scheduler import views
from taskgraph.scheduler.metrics import MAX_SERIES, UserMetrics, registry_for
from taskgraph.util.metrics import Counter, Gauge, Histogram

_names = itertools.count()


def unique(prefix: str) -> str:
    """A metric name no other test in this process defined (definitions are per process)."""
    return f"{prefix}_{next(_names)}"


def scrape(registry: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample, by sample name then labels, as Prometheus would parse it."""
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


# -- in a process: the recorder ------------------------------------------------


def counter_def(name: str, *tag_keys: str) -> Definition:
    return Definition(name, "counter", "", tag_keys)


def test_the_recorder_sends_what_changed_since_its_last_update() -> None:
    r = Recorder()
    r.define(counter_def("hits", "route"))
    r.define(Definition("depth", "gauge", "queue depth", ()))
    r.define(Definition("lat", "histogram", "", (), (1.0, 2.0)))
    r.add("hits", ("/a",), 1)
    r.add("hits", ("/a",), 2)
    r.add("hits", ("/b",), 1)
    r.set("depth", (), 5)
    r.set("depth", (), 3)
    r.observe("lat", (), 0, 0.5)
    r.observe("lat", (), 2, 7.0)
    assert r.due(now=100.0)
    update = r.take(now=100.0)
    assert update is not None
    by_name = {m.name: m for m in update.metrics}
    assert {tuple(s.tags): s.value for s in by_name["hits"].series} == {("/a",): 3, ("/b",): 1}
    assert [(s.tags, s.value) for s in by_name["depth"].series] == [([], 3)]
    [lat] = by_name["lat"].series
    assert (lat.buckets, lat.value) == ([1, 0, 1], 7.5)
    assert by_name["lat"].boundaries == [1.0, 2.0]
    assert not r.due(now=100.1) and r.take(now=100.1) is None, "nothing changed since"
    r.add("hits", ("/a",), 1)
    assert not r.due(now=100.5), "at most one update a second"
    assert r.due(now=101.0)
    update = r.take(now=101.0)
    assert update is not None
    [hits] = update.metrics
    assert [(s.tags, s.value) for s in hits.series] == [(["/a"], 1)], "only the increase"


def test_an_update_survives_the_wire() -> None:
    r = Recorder()
    r.define(counter_def("wired", "k"))
    r.add("wired", ("v",), 4)
    update = r.take()
    assert update is not None
    body = w.encode([update])[w.HEADER.size :]
    for link in (w.CLIENT_TO_SCHEDULER, w.EXECUTOR_TO_DAEMON, w.WORKER_TO_SCHEDULER):
        assert link.decode(body) == [update]


def test_one_name_is_one_metric_in_a_process() -> None:
    name = unique("same")
    a = Counter(name, tag_keys=("k",))
    b = Counter(name, "defined again, in another task", tag_keys=("k",))
    assert a.info["name"] == b.info["name"] == name
    with pytest.raises(ValueError, match="already defined in this process as a counter"):
        Gauge(name)
    with pytest.raises(ValueError, match="already defined"):
        Counter(name, tag_keys=("other",))


# -- the user's API: Ray's checks --------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Counter(""), ValueError, "Empty name"),
        (lambda: Counter("has space"), ValueError, "not valid"),
        (lambda: Counter("1st"), ValueError, "not valid"),
        (lambda: Counter("taskgraph_mine"), ValueError, "taskgraph's own"),
        (lambda: Counter("ok_name", tag_keys="route"), TypeError, "tuple of str"),
        (lambda: Counter("ok_name", tag_keys=("bad-key",)), ValueError, "tag key 'bad-key'"),
        (lambda: Counter("ok_name", tag_keys=("__x",)), ValueError, "tag key '__x'"),
        (lambda: Counter("ok_name", tag_keys=("a", "a")), ValueError, "twice"),
        (lambda: Counter("ok_name", tag_keys=(1,)), TypeError, "tag keys must be str"),
        (lambda: Histogram("h_name"), ValueError, "boundaries argument should be provided"),
        (lambda: Histogram("h_name", boundaries=[0, 1]), ValueError, "index 0"),
        (lambda: Histogram("h_name", boundaries=[2, 1]), ValueError, "must increase"),
        (lambda: Histogram("h_name", boundaries=[1], tag_keys=("le",)), ValueError, "'le'"),
    ],
)
def test_a_bad_definition_says_what_is_wrong(make: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_bad_tags_and_values_say_what_is_wrong() -> None:
    counter = Counter(unique("requests"), tag_keys=("route", "method"))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        counter.inc(tags={"route": "/a"})
    with pytest.raises(ValueError, match="Unrecognized tag key 'colour'"):
        counter.inc(tags={"route": "/a", "method": "GET", "colour": "red"})
    with pytest.raises(TypeError, match="tag values must be str"):
        counter.inc(tags={"route": "/a", "method": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="value must be >0"):
        counter.inc(0, tags={"route": "/a", "method": "GET"})
    with pytest.raises(ValueError, match="Unrecognized tag key"):
        counter.set_default_tags({"nope": "x"})
    with pytest.raises(TypeError, match="must be a number"):
        Gauge(unique("g")).set("high")  # type: ignore[arg-type]


def test_default_tags_fill_in_and_metrics_pickle() -> None:
    name = unique("served")
    counter = Counter(name, tag_keys=("route", "method")).set_default_tags({"method": "GET"})
    assert counter.info["default_tags"] == {"method": "GET"}
    counter.inc(tags={"route": "/a"})
    again = pickle.loads(pickle.dumps(counter))  # as a task captures one made in the driver
    again.inc(2, tags={"route": "/a", "method": "POST"})
    update = _metrics.RECORDER.take()
    assert update is not None
    [data] = [m for m in update.metrics if m.name == name]
    assert {tuple(s.tags): s.value for s in data.series} == {("/a", "GET"): 1, ("/a", "POST"): 2}


# -- at the scheduler: adding up ------------------------------------------------------


def update_of(*metrics: w.MetricData) -> w.MetricsUpdate:
    return w.MetricsUpdate(list(metrics))


def series(tags: list[str], value: float, buckets: list[int] | None = None) -> w.MetricSeries:
    return w.MetricSeries(tags, value, buckets or [])


def test_counters_add_up_gauges_keep_the_last_histograms_merge_by_bucket() -> None:
    users = UserMetrics()
    registry = registry_for(lambda: views.metrics(Harness().state), users)
    for process in range(2):
        users.update(
            update_of(
                w.MetricData(
                    "jobs",
                    "counter",
                    [series(["x"], 3), series(["y"], process + 1)],
                    "jobs done",
                    ["kind"],
                ),
                w.MetricData("temp", "gauge", [series([], 20 + process)]),
                w.MetricData(
                    "size", "histogram", [series(["x"], 11.0, [1, 2, 0])], "", ["kind"], [1.0, 5.0]
                ),
            )
        )
    samples = scrape(registry)
    assert samples["jobs_total"] == {(("kind", "x"),): 6, (("kind", "y"),): 3}
    assert samples["temp"] == {(): 21}
    buckets = samples["size_bucket"]
    assert buckets[(("kind", "x"), ("le", "1.0"))] == 2
    assert buckets[(("kind", "x"), ("le", "5.0"))] == 6
    assert buckets[(("kind", "x"), ("le", "+Inf"))] == 6
    assert samples["size_count"] == {(("kind", "x"),): 6}
    assert samples["size_sum"] == {(("kind", "x"),): 22.0}


def test_what_the_scheduler_cannot_export_is_dropped_and_logged(caplog: Any) -> None:
    users = UserMetrics()
    users.update(update_of(w.MetricData("n", "counter", [series([], 1)])))
    users.update(
        update_of(
            w.MetricData("n", "gauge", [series([], 5)]),  # another process: another kind
            w.MetricData("bad name", "counter", [series([], 1)]),
            w.MetricData("n2", "counter", [series(["too", "many"], 1)], "", ["one"]),
            w.MetricData("h", "histogram", [series([], 1.0, [1])], "", [], [1.0]),
        )
    )
    assert users.metrics["n"].values == {(): 1}
    assert "bad name" not in users.metrics
    assert users.metrics["n2"].values == {}
    assert users.metrics["h"].buckets == {}
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "it was a counter" in said and "not valid" in said and "malformed" in said


def test_tag_combinations_are_bounded() -> None:
    users = UserMetrics()
    many = [series([str(i)], 1) for i in range(MAX_SERIES + 5)]
    users.update(update_of(w.MetricData("wide", "counter", many, "", ["i"])))
    assert len(users.metrics["wide"].values) == MAX_SERIES


# -- at the scheduler: the cluster's own -------------------------------------------------


def test_the_cluster_s_metrics_come_from_the_state() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    a, b, c = h.spec("load"), h.spec("load"), h.spec("save")
    h.submit(b"c1", a, b, c)
    h.done("w1", ok(a))
    h.from_worker(
        "w1",
        w.Heartbeat(
            store={"objects": 2, "bytes_in_memory": 300, "bytes_spilled": 50, "capacity": 1000},
            system={"cpu_percent": 12.5, "memory_percent": 40.0},
            transfers={"pulled": 1, "pulled_bytes": 64, "served": 0, "served_bytes": 0},
        ),
    )
    h.done("w1", failed(b))
    registry = registry_for(lambda: views.metrics(h.state), UserMetrics())
    s = scrape(registry)
    finished = s["taskgraph_tasks_finished_total"]
    assert finished[(("name", "load"), ("state", "FINISHED"))] == 1
    assert finished[(("name", "load"), ("state", "FAILED"))] == 1
    assert s["taskgraph_tasks"] == {(("name", "save"), ("state", "RUNNING")): 1}
    node = (("node", "w1"),)
    assert s["taskgraph_node_cpu_percent"][node] == 12.5
    assert s["taskgraph_object_store_bytes"][node] == 300
    assert s["taskgraph_object_store_spilled_bytes"][node] == 50
    assert s["taskgraph_transfers_in_bytes_total"][node] == 64
    assert s["taskgraph_node_running_tasks"][node] == 1
    assert s["taskgraph_node_resources"][(("node", "w1"), ("resource", "CPU"))] == 1
    assert s["taskgraph_nodes"] == {(): 1}
    assert s["taskgraph_objects"][()] == len(h.state.objects)
