"""Checking ``@remote(...)`` and ``.options(...)`` arguments, in the caller, with clear errors."""

from __future__ import annotations

import math
import numbers
from typing import Any

from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy

TASK_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "scheduling_strategy",
    "name",
    "max_calls",
    "accelerator_type",
}
DEFAULT_MAX_RETRIES = 3  # as in Ray: a crashed worker process is retried
# Ray's num_returns for generators: "streaming" returns an ObjectRefGenerator
# (a generator function's default), "dynamic" one ref to a DynamicObjectRefGenerator.
GENERATOR_RETURNS = ("streaming", "dynamic")
# accelerator_type="A100" asks for this much of the resource "accelerator_type:A100",
# which a worker with such a GPU offers (1), as in Ray.
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_SHARE = 0.001


def _non_negative(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a non-negative number, finite, got {value!r}")
    return float(value)


def validate(options: dict[str, Any], allowed: set[str] = TASK_OPTIONS) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; valid options are "
            f"{', '.join(sorted(allowed))}"
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        if options.get(key) is not None:
            _non_negative(key, options[key])
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and float(gpus) != int(gpus):
        raise ValueError(f"num_gpus above 1 must be a whole number, got {options['num_gpus']!r}")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict of name to amount, got {resources!r}")
        for name, amount in resources.items():
            if not isinstance(name, str):
                raise TypeError(f"resource names must be strings, got {name!r}")
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(
                    f"use num_cpus=/num_gpus=/memory= instead of resources={{'{name}': ...}}"
                )
            _non_negative(f"resources[{name!r}]", amount)
    if "num_returns" in options:
        n = options["num_returns"]
        if n not in GENERATOR_RETURNS and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(
                f"num_returns must be an integer >= 0, 'streaming' or 'dynamic', got {n!r}"
            )
    if "max_retries" in options:
        n = options["max_retries"]
        if isinstance(n, bool) or not isinstance(n, int) or n < -1:
            raise ValueError(f"max_retries must be an integer >= -1 (-1: forever), got {n!r}")
    if "retry_exceptions" in options:
        retry = options["retry_exceptions"]
        if not isinstance(retry, bool) and not (
            isinstance(retry, list | tuple)
            and all(isinstance(c, type) and issubclass(c, BaseException) for c in retry)
        ):
            raise TypeError(
                "retry_exceptions must be True, False or a list of exception classes, "
                f"got {retry!r}"
            )
    if options.get("max_calls") is not None:
        n = options["max_calls"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_calls must be an integer >= 0 (0: no limit), got {n!r}")
    if options.get("accelerator_type") is not None:
        kind = options["accelerator_type"]
        if not isinstance(kind, str) or not kind:
            raise TypeError(
                "accelerator_type must be a name such as "
                f"taskgraph.util.accelerators.NVIDIA_A100 ('A100'), got {kind!r}"
            )
    if "scheduling_strategy" in options:
        strategy_string(options["scheduling_strategy"])
    if "name" in options and options["name"] is not None and not isinstance(options["name"], str):
        raise TypeError(f"name must be a string, got {options['name']!r}")
    return options


def strategy_string(strategy: Any) -> str:
    if strategy is None:
        return "DEFAULT"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return strategy.encode()
    if strategy in ("DEFAULT", "SPREAD"):
        return str(strategy)
    raise ValueError(
        f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a "
        f"NodeAffinitySchedulingStrategy, got {strategy!r}"
    )


def task_resources(options: dict[str, Any], default_cpus: float = 1.0) -> dict[str, float]:
    num_cpus = options.get("num_cpus")
    resources = {"CPU": float(default_cpus if num_cpus is None else num_cpus)}
    if options.get("num_gpus"):
        resources["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        resources["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        resources[name] = float(amount)
    if options.get("accelerator_type"):
        # As in Ray: a sliver of the resource a worker with that accelerator
        # offers (1 of it), so any number of such tasks fit there.
        resources[ACCELERATOR_PREFIX + options["accelerator_type"]] = ACCELERATOR_SHARE
    return {k: v for k, v in resources.items() if v > 0}


def default_max_calls(options: dict[str, Any]) -> int:
    """How many tasks of a function one executor runs before it exits (0: no limit).

    As in Ray: unlimited, but 1 for a task that uses GPUs, so that what a
    library holds on the GPU until its process ends (TensorFlow's memory, a
    CUDA context) is given back after each task. ``max_calls=0`` keeps the
    process, and its GPU state, for the next task.
    """
    given = options.get("max_calls")
    if given is not None:
        return int(given)
    return 1 if options.get("num_gpus") else 0
