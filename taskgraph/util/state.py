"""What the cluster knows about its tasks, as Ray's ``ray.util.state`` shows it.

Records are dicts with Ray's field names (``task_id``, ``name``, ``state``,
``node_id``, ``start_time_ms``, ``end_time_ms``) plus ``path``: how the task
travelled (``scheduled``; ``lease``: sent straight to a leased executor;
``actor_direct``: an actor call sent straight to the actor's process). Every
task is on record, whichever way it went.
"""

from __future__ import annotations

from typing import Any

from taskgraph import _api


def list_tasks() -> list[dict[str, Any]]:
    """The last 10,000 tasks that finished (oldest first), then those not finished."""
    tasks: list[dict[str, Any]] = _api.client().query("tasks")
    return tasks


def list_actors() -> list[dict[str, Any]]:
    """Every actor on record: ``actor_id``, ``class_name``, ``name``, ``namespace``,
    ``state`` (``PENDING``, ``ALIVE``, ``RESTARTING``, ``DEAD``), ``node_id``, ``pid``."""
    actors: list[dict[str, Any]] = _api.client().query("actors")
    return actors


def cluster_statistics() -> dict[str, Any]:
    """The scheduler's counts: tasks by state, finished tasks by path, objects, workers."""
    stats: dict[str, Any] = _api.client().query("statistics")
    return stats
