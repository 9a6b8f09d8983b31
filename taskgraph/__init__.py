"""taskgraph: Ray's API for distributed Python on a Dask-style engine.

import taskgraph as tg

@tg.remote
def square(x):
    return x * x

print(sum(tg.get([square.remote(i) for i in range(100)])))
"""

from typing import Any as _Any

import cloudpickle  # re-exported as Ray does: tg.cloudpickle.dumps(...)

from taskgraph import actor, exceptions
from taskgraph._api import (
    ClusterContext,
    RuntimeContext,
    as_completed,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    object_store_stats,
    put,
    shutdown,
    statistics,
    wait,
)
from taskgraph._executor import Executor
from taskgraph._object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from taskgraph._remote_function import RemoteFunction
from taskgraph._task_stream import task_stream
from taskgraph._timeline import timeline
from taskgraph.actor import ActorClass, ActorHandle, get_actor, kill, method
from taskgraph.progress import progress

__version__ = "0.1.0"


def remote(*args: _Any, **options: _Any) -> _Any:
    """Make a function a remote function: ``@tg.remote`` or ``@tg.remote(num_cpus=2, ...)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "@remote takes either no arguments or keyword options, e.g. @remote(num_cpus=2)"
        )

    def decorator(target: _Any) -> _Any:
        return _make_remote(target, options)

    return decorator


def _make_remote(target: _Any, options: dict[str, _Any]) -> _Any:
    if isinstance(target, type):
        return ActorClass(target, options)
    return RemoteFunction(target, options)


__all__ = [
    "ActorClass",
    "ActorHandle",
    "ClusterContext",
    "DynamicObjectRefGenerator",
    "Executor",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "actor",
    "as_completed",
    "available_resources",
    "cancel",
    "cloudpickle",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "object_store_stats",
    "progress",
    "put",
    "remote",
    "shutdown",
    "statistics",
    "task_stream",
    "timeline",
    "wait",
]
