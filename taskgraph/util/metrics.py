"""User metrics, as Ray's ``ray.util.metrics``: ``Counter``, ``Gauge`` and ``Histogram``
with tags, exported with the cluster's own on the scheduler's ``/metrics``.

Use them in the driver, in tasks and in actors::

    requests = Counter("requests", "requests served", tag_keys=("route",))
    requests.inc(tags={"route": "/a"})

Each process adds up what it records and sends it to the scheduler at most
once a second (``taskgraph/_metrics.py``). On ``/metrics`` a counter is the
sum over every process that incremented it, a histogram's buckets likewise; a
gauge shows the last value set anywhere in the cluster for those tags.
A metric object holds only its definition: it pickles, so one made in the
driver can be used in tasks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from taskgraph._metrics import RECORDER, Definition, Kind, Tags

__all__ = ["Counter", "Gauge", "Histogram", "Metric"]


class Metric:
    """What the three kinds share: a name, a description, tag keys and default tags."""

    _kind: Kind  # each kind's

    def __init__(
        self,
        name: str,
        description: str = "",
        tag_keys: Sequence[str] | None = None,
        *,
        _boundaries: Sequence[float] = (),
    ) -> None:
        if tag_keys is None:
            tag_keys = ()
        if isinstance(tag_keys, str) or not isinstance(tag_keys, Sequence):
            raise TypeError(
                f"tag_keys should be a tuple of str, got {type(tag_keys).__name__}: "
                f"{tag_keys!r} (one key: tag_keys=({tag_keys!r},))"
            )
        if not isinstance(description, str):
            raise TypeError(f"description must be a str, got {description!r}")
        self._definition = Definition(
            name, self._kind, description, tuple(tag_keys), tuple(_boundaries)
        )
        RECORDER.define(self._definition)
        self._default_tags: dict[str, str] = {}

    @property
    def info(self) -> dict[str, Any]:
        """The metric's name, description, tag keys and default tags (as Ray's)."""
        d = self._definition
        return {
            "name": d.name,
            "description": d.description,
            "tag_keys": d.tag_keys,
            "default_tags": dict(self._default_tags),
        }

    def set_default_tags(self, default_tags: Mapping[str, str]) -> Metric:
        """Tag values used when a call does not give them; returns the metric."""
        self._check_tags(default_tags)
        self._default_tags = dict(default_tags)
        return self

    def _tags(self, tags: Mapping[str, str] | None) -> Tags:
        keys = self._definition.tag_keys
        if tags:
            self._check_tags(tags)
            final = {**self._default_tags, **tags}
        else:
            final = self._default_tags
        if len(final) != len(keys):
            missing = [k for k in keys if k not in final]
            raise ValueError(
                f"Missing value for tag key(s): {','.join(missing)} (metric "
                f"{self._definition.name!r}); pass them in tags= or set_default_tags()"
            )
        return tuple(final[k] for k in keys)

    def _check_tags(self, tags: Mapping[str, str]) -> None:
        if not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a dict of str to str, got {tags!r}")
        keys = self._definition.tag_keys
        for key, value in tags.items():
            if key not in keys:
                raise ValueError(
                    f"Unrecognized tag key {key!r} for metric {self._definition.name!r}; "
                    f"its tag_keys are {keys!r}"
                )
            if not isinstance(value, str):
                raise TypeError(
                    f"tag values must be str: {key}={value!r} (metric {self._definition.name!r})"
                )

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self._definition, self._default_tags))

    def __repr__(self) -> str:
        d = self._definition
        return f"{type(self).__name__}({d.name!r}, tag_keys={d.tag_keys!r})"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{what} must not be NaN")
    return float(value)


class Counter(Metric):
    """A count that only goes up: ``inc(value=1, tags=None)``."""

    _kind: Kind = "counter"

    def __init__(
        self, name: str, description: str = "", tag_keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)

    def inc(self, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        value = _number(value, "value")
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        RECORDER.add(self._definition.name, self._tags(tags), value)


class Gauge(Metric):
    """A value that goes up and down: ``set(value, tags=None)``."""

    _kind: Kind = "gauge"

    def __init__(
        self, name: str, description: str = "", tag_keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)

    def set(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        RECORDER.set(self._definition.name, self._tags(tags), _number(value, "value"))


class Histogram(Metric):
    """Observations counted in buckets: ``observe(value, tags=None)``.

    ``boundaries`` are the buckets' upper bounds, positive and increasing;
    one more bucket takes what is above the last.
    """

    _kind: Kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: Sequence[float] | None = None,
        tag_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name, description, tag_keys, _boundaries=tuple(boundaries or ()))

    def observe(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        value = _number(value, "value")
        bucket = bisect.bisect_left(self._definition.boundaries, value)  # le: value <= bound
        RECORDER.observe(self._definition.name, self._tags(tags), bucket, value)


def _rebuild(cls: type[Metric], definition: Definition, default_tags: dict[str, str]) -> Metric:
    metric = cls.__new__(cls)
    RECORDER.define(definition)
    metric._definition = definition
    metric._default_tags = default_tags
    return metric
