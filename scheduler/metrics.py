"""What ``/metrics`` exports: the cluster's own metrics and the users'.

::

    SchedulerState ──views.metrics() at scrape time──▶ ClusterCollector ─┐
    MetricsUpdate (drivers, executors) ──shell──▶ UserMetrics ───────────┼─▶ registry ─▶ /metrics
    the IO loop's lateness ──LoopLag──▶ a Histogram ─────────────────────┘

Part of the scheduler's IO shell: the state machine never sees a user
metric, and is only read (a snapshot, ``views.metrics``) when Prometheus
scrapes. Each scheduler has its own ``CollectorRegistry``, never the global
one. The cluster's metrics are named ``taskgraph_*``; users' keep their names.

User metrics arrive as what changed in one process since its last update
(taskgraph/_metrics.py): counters' increases and histograms' observations are
added up over every process; a gauge keeps the last value any process set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from tornado.ioloop import IOLoop

from taskgraph import _wire as w
from taskgraph._metrics import Definition, Tags, check_definition

log = logging.getLogger("taskgraph.scheduler")

MAX_SERIES = 10_000  # tag combinations kept per user metric; more are dropped (and said so)
LAG_EVERY = 0.5  # seconds between the loop-lag probes
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# -- users' metrics ------------------------------------------------------------


@dataclass
class _UserMetric:
    definition: Definition
    values: dict[Tags, float] = field(default_factory=dict)  # counter sums; gauge values
    buckets: dict[Tags, list[int]] = field(default_factory=dict)  # histogram counts
    sums: dict[Tags, float] = field(default_factory=dict)  # histogram sums


class UserMetrics:
    """The users' metrics, added up over every process that sent them."""

    def __init__(self) -> None:
        self.metrics: dict[str, _UserMetric] = {}
        self.updates = 0
        self._warned: set[str] = set()

    def update(self, msg: w.MetricsUpdate) -> None:
        self.updates += 1
        for data in msg.metrics:
            d = Definition(
                data.name, data.kind, data.description, tuple(data.tag_keys), tuple(data.boundaries)
            )
            metric = self.metrics.get(d.name)
            if metric is None:
                try:
                    check_definition(d)
                except (TypeError, ValueError) as exc:
                    self._warn(d.name, f"user metric dropped: {exc}")
                    continue
                metric = self.metrics[d.name] = _UserMetric(d)
            elif not metric.definition.same_shape(d):
                self._warn(
                    d.name,
                    f"user metric {d.name!r} dropped from a process that defines it as "
                    f"{d.describe()}: it was {metric.definition.describe()} first",
                )
                continue
            self._merge(metric, data.series)

    def _merge(self, metric: _UserMetric, series: list[w.MetricSeries]) -> None:
        d = metric.definition
        for s in series:
            tags = tuple(s.tags)
            if len(tags) != len(d.tag_keys) or not math.isfinite(s.value):
                self._warn(d.name, f"user metric {d.name!r}: a malformed update was dropped")
                continue
            new = tags not in metric.values and tags not in metric.buckets
            if new and len(metric.values) + len(metric.buckets) >= MAX_SERIES:
                self._warn(
                    d.name,
                    f"user metric {d.name!r} has {MAX_SERIES} tag combinations; "
                    "further ones are dropped (use fewer distinct tag values)",
                )
                continue
            if d.kind == "counter":
                if s.value < 0:
                    continue
                metric.values[tags] = metric.values.get(tags, 0.0) + s.value
            elif d.kind == "gauge":
                metric.values[tags] = s.value
            else:
                if len(s.buckets) != len(d.boundaries) + 1 or min(s.buckets) < 0:
                    self._warn(d.name, f"user metric {d.name!r}: a malformed update was dropped")
                    continue
                counts = metric.buckets.setdefault(tags, [0] * len(s.buckets))
                for i, n in enumerate(s.buckets):
                    counts[i] += n
                metric.sums[tags] = metric.sums.get(tags, 0.0) + s.value

    def _warn(self, name: str, text: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("%s", text)

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics.values():
            d = metric.definition
            doc = d.description or d.name
            labels = list(d.tag_keys)
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if d.kind == "histogram":
                family = HistogramMetricFamily(d.name, doc, labels=labels)
                for tags, counts in metric.buckets.items():
                    family.add_metric(
                        list(tags), _cumulative(d.boundaries, counts), metric.sums[tags]
                    )
            else:
                kind = CounterMetricFamily if d.kind == "counter" else GaugeMetricFamily
                family = kind(d.name, doc, labels=labels)
                for tags, value in metric.values.items():
                    family.add_metric(list(tags), value)
            yield family


def _cumulative(boundaries: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*boundaries, math.inf), counts, strict=True):
        total += n
        buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), total))
    return buckets


# -- the cluster's own ---------------------------------------------------------


class ClusterCollector(Collector):
    """The cluster's metrics, from a snapshot of the scheduler's state at each scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        tasks = GaugeMetricFamily(
            "taskgraph_tasks",
            "Tasks not finished yet, by state (Ray's state names) and function name",
            labels=["state", "name"],
        )
        for (state, name), n in sorted(s["tasks"].items()):
            tasks.add_metric([state, name], n)
        yield tasks
        finished = CounterMetricFamily(
            "taskgraph_tasks_finished",
            "Tasks that finished (FINISHED) or failed or were cancelled (FAILED), by function name",
            labels=["state", "name"],
        )
        for (name, state), n in sorted(s["finished"].items()):
            finished.add_metric([state, name], n)
        yield finished
        yield GaugeMetricFamily(
            "taskgraph_objects", "Objects the scheduler tracks", value=s["objects"]
        )
        yield GaugeMetricFamily(
            "taskgraph_inline_objects",
            "Small objects held by the scheduler itself, not in a store",
            value=s["inline_objects"],
        )
        yield GaugeMetricFamily(
            "taskgraph_inline_bytes",
            "Bytes of the objects held by the scheduler itself",
            value=s["inline_bytes"],
        )
        yield GaugeMetricFamily("taskgraph_nodes", "Worker nodes in the cluster", len(s["nodes"]))
        yield GaugeMetricFamily(
            "taskgraph_clients", "Drivers and task processes connected", value=s["clients"]
        )
        yield CounterMetricFamily(
            "taskgraph_scheduler_transitions",
            "Task state changes the scheduler made",
            value=s["transitions"],
        )
        yield from _node_families(s["nodes"])


# (metric, help, where in a node's snapshot, key there, kind)
_PER_NODE: list[tuple[str, str, str, str, str]] = [
    ("taskgraph_node_running_tasks", "Tasks running on the node", "", "running", "gauge"),
    ("taskgraph_node_executors", "Executor processes on the node", "", "executors", "gauge"),
    ("taskgraph_node_cpu_percent", "CPU use of the node's host", "system", "cpu_percent", "gauge"),
    (
        "taskgraph_node_memory_percent",
        "Memory use of the node's host",
        "system",
        "memory_percent",
        "gauge",
    ),
    (
        "taskgraph_node_memory_used_bytes",
        "Memory in use on the node's host",
        "system",
        "memory_used",
        "gauge",
    ),
    (
        "taskgraph_node_memory_total_bytes",
        "Memory of the node's host",
        "system",
        "memory_total",
        "gauge",
    ),
    (
        "taskgraph_object_store_objects",
        "Objects in the node's store (in memory or spilled)",
        "store",
        "objects",
        "gauge",
    ),
    (
        "taskgraph_object_store_bytes",
        "Bytes of objects in the node's store memory",
        "store",
        "bytes_in_memory",
        "gauge",
    ),
    (
        "taskgraph_object_store_capacity_bytes",
        "Size of the node's store",
        "store",
        "capacity",
        "gauge",
    ),
    (
        "taskgraph_object_store_spilled_bytes",
        "Bytes of the node's objects spilled to disk now",
        "store",
        "bytes_spilled",
        "gauge",
    ),
    (
        "taskgraph_object_store_spilled_objects",
        "The node's objects spilled to disk now",
        "store",
        "objects_spilled",
        "gauge",
    ),
    (
        "taskgraph_object_store_spills",
        "Objects the node ever spilled to disk",
        "store",
        "spilled_total",
        "counter",
    ),
    (
        "taskgraph_object_store_restores",
        "Spilled objects the node ever read back",
        "store",
        "restored_total",
        "counter",
    ),
    (
        "taskgraph_transfers_in",
        "Objects the node pulled from other nodes",
        "transfers",
        "pulled",
        "counter",
    ),
    (
        "taskgraph_transfers_in_bytes",
        "Bytes the node pulled from other nodes",
        "transfers",
        "pulled_bytes",
        "counter",
    ),
    (
        "taskgraph_transfers_out",
        "Objects the node served to other nodes",
        "transfers",
        "served",
        "counter",
    ),
    (
        "taskgraph_transfers_out_bytes",
        "Bytes the node served to other nodes",
        "transfers",
        "served_bytes",
        "counter",
    ),
]


def _node_families(nodes: list[dict[str, Any]]) -> Iterator[Metric]:
    for name, doc, part, key, kind in _PER_NODE:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = cls(name, doc + " (as of its last heartbeat)", labels=["node"])
        for node in nodes:
            source = node[part] if part else node
            if key in source:
                family.add_metric([node["node_id"]], source[key])
        yield family
    for name, doc, key in (
        ("taskgraph_node_resources", "Resources the node has", "resources"),
        ("taskgraph_node_resources_available", "Resources free on the node", "available"),
    ):
        family = GaugeMetricFamily(name, doc, labels=["node", "resource"])
        for node in nodes:
            for resource, amount in sorted(node[key].items()):
                family.add_metric([node["node_id"], resource], amount)
        yield family


# -- the scheduler's loop --------------------------------------------------------


class LoopLag:
    """How late a callback asked for every ``LAG_EVERY`` s runs: the time the
    scheduler's loop was busy (handling frames, or stuck) when it was due."""

    def __init__(self, registry: CollectorRegistry, every: float = LAG_EVERY) -> None:
        self.every = every
        self.histogram = Histogram(
            "taskgraph_scheduler_loop_lag_seconds",
            "How late the scheduler's event loop ran a callback due every "
            f"{every} s (its busy or stuck time)",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._loop: IOLoop | None = None
        self._handle: object | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = IOLoop.current()
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.every
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        self.histogram.observe(max(0.0, self._loop.time() - self._due))
        self._schedule()

    def stop(self) -> None:
        if self._loop is not None and self._handle is not None:
            self._loop.remove_timeout(self._handle)
        self._handle = None


def registry_for(snapshot: Callable[[], dict[str, Any]], users: UserMetrics) -> CollectorRegistry:
    """A registry of its own for one scheduler: the cluster's and the users' metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(snapshot))
    registry.register(_Users(users))
    return registry


class _Users(Collector):
    def __init__(self, users: UserMetrics) -> None:
        self.users = users

    def collect(self) -> Iterator[Metric]:
        return self.users.collect()
