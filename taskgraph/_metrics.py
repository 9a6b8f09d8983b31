"""User metrics inside one process: what ``taskgraph.util.metrics`` records, gathered
until the client's flusher takes it.

::

    Counter.inc / Gauge.set / Histogram.observe ──▶ RECORDER (per process, locked)
    client flusher, at most once a second ──take()──▶ MetricsUpdate ──▶ scheduler

An update carries what changed since the last one: counters' increases and
histograms' new observations (the scheduler adds them up across processes)
and gauges' latest values (the scheduler keeps the last one it hears). The
names and tags rules live here too, for the scheduler checks what peers send
with the same ones. Knows nothing of sockets or threads beyond its lock.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Literal, get_args

from taskgraph import _wire as w

SEND_EVERY = 1.0  # seconds: at most one update per process this often
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
TAG_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_PREFIX = "taskgraph_"  # the cluster's own metrics
Kind = Literal["counter", "gauge", "histogram"]
KINDS = get_args(Kind)


@dataclass(frozen=True)
class Definition:
    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def same_shape(self, other: Definition) -> bool:
        return (self.kind, self.tag_keys, self.boundaries) == (
            other.kind,
            other.tag_keys,
            other.boundaries,
        )

    def describe(self) -> str:
        text = f"a {self.kind} with tag_keys={self.tag_keys}"
        return text + (f" and boundaries={list(self.boundaries)}" if self.boundaries else "")


def check_definition(d: Definition) -> None:
    """Raise ValueError (TypeError for a value of the wrong type) on a definition
    Prometheus could not export."""
    if not isinstance(d.name, str):
        raise TypeError(f"a metric name must be a str, got {d.name!r}")
    if not d.name:
        raise ValueError("Empty name is not allowed. Please provide a metric name.")
    if not NAME.match(d.name):
        raise ValueError(
            f"metric name {d.name!r} is not valid: use letters, digits, '_' and ':', "
            "not starting with a digit (Prometheus' rule)"
        )
    if d.name.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"metric name {d.name!r} starts with {RESERVED_PREFIX!r}, which taskgraph's own "
            "metrics use; choose another name"
        )
    if d.kind not in KINDS:
        raise ValueError(f"unknown metric kind {d.kind!r}")
    for key in d.tag_keys:
        if not isinstance(key, str):
            raise TypeError(f"tag keys must be str, got {key!r} in tag_keys={d.tag_keys!r}")
        if not TAG_KEY.match(key) or key.startswith("__"):
            raise ValueError(
                f"tag key {key!r} of metric {d.name!r} is not valid: use letters, digits "
                "and '_', not starting with a digit or '__'"
            )
        if d.kind == "histogram" and key == "le":
            raise ValueError(f"histogram {d.name!r} cannot have a tag named 'le' (its buckets')")
    if len(set(d.tag_keys)) != len(d.tag_keys):
        raise ValueError(f"metric {d.name!r} names a tag key twice: {d.tag_keys!r}")
    if d.kind == "histogram":
        if not d.boundaries:
            raise ValueError(
                "boundaries argument should be provided when using the Histogram class. "
                "e.g., Histogram('latency', boundaries=[0.1, 1.0])"
            )
        for i, bound in enumerate(d.boundaries):
            if not isinstance(bound, int | float) or isinstance(bound, bool):
                raise TypeError(f"boundaries must be numbers, got {bound!r} at index {i}")
            if not bound > 0 or math.isinf(bound):
                raise ValueError(
                    f"Invalid `boundaries` argument at index {i}, {bound}. "
                    "Use positive, finite values for the arguments."
                )
        if any(a >= b for a, b in zip(d.boundaries, d.boundaries[1:], strict=False)):
            raise ValueError(f"boundaries must increase, got {list(d.boundaries)}")
    elif d.boundaries:
        raise ValueError(f"only a histogram takes boundaries, not a {d.kind}")


Tags = tuple[str, ...]  # tag values, in the definition's tag_keys order


class Recorder:
    """One process's metrics since its last update, by name and tags."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.definitions: dict[str, Definition] = {}
        self._values: dict[str, dict[Tags, float]] = {}  # counter increases; gauge values
        self._histograms: dict[str, dict[Tags, tuple[list[int], list[float]]]] = {}
        self.changed = False  # read without the lock by the flusher: a hint
        self._sent_at = -SEND_EVERY

    def define(self, d: Definition) -> None:
        check_definition(d)
        with self._lock:
            known = self.definitions.get(d.name)
            if known is None:
                self.definitions[d.name] = d
            elif not known.same_shape(d):
                raise ValueError(
                    f"metric {d.name!r} is already defined in this process as "
                    f"{known.describe()}; this one is {d.describe()}"
                )

    def add(self, name: str, tags: Tags, value: float) -> None:
        with self._lock:
            series = self._values.setdefault(name, {})
            series[tags] = series.get(tags, 0.0) + value
            self.changed = True

    def set(self, name: str, tags: Tags, value: float) -> None:
        with self._lock:
            self._values.setdefault(name, {})[tags] = value
            self.changed = True

    def observe(self, name: str, tags: Tags, bucket: int, value: float) -> None:
        with self._lock:
            series = self._histograms.setdefault(name, {})
            counts, total = series.get(tags) or series.setdefault(
                tags, ([0] * (len(self.definitions[name].boundaries) + 1), [0.0])
            )
            counts[bucket] += 1
            total[0] += value
            self.changed = True

    def due(self, now: float | None = None) -> bool:
        """Something changed and the last update went out long enough ago."""
        if not self.changed:
            return False
        return (time.monotonic() if now is None else now) - self._sent_at >= SEND_EVERY

    def take(self, now: float | None = None) -> w.MetricsUpdate | None:
        """What changed since the last update, as one message (None: nothing)."""
        with self._lock:
            if not self.changed:
                return None
            values, self._values = self._values, {}
            histograms, self._histograms = self._histograms, {}
            self.changed = False
            self._sent_at = time.monotonic() if now is None else now
            definitions = self.definitions
        metrics: list[w.MetricData] = []
        for name, series in values.items():
            d = definitions[name]
            metrics.append(
                _data(d, [w.MetricSeries(list(tags), value) for tags, value in series.items()])
            )
        for name, hseries in histograms.items():
            d = definitions[name]
            metrics.append(
                _data(
                    d,
                    [
                        w.MetricSeries(list(tags), total[0], counts)
                        for tags, (counts, total) in hseries.items()
                    ],
                )
            )
        return w.MetricsUpdate(metrics) if metrics else None


def _data(d: Definition, series: list[w.MetricSeries]) -> w.MetricData:
    return w.MetricData(d.name, d.kind, series, d.description, list(d.tag_keys), list(d.boundaries))


RECORDER = Recorder()
