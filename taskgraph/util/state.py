"""What the cluster knows about its tasks, actors, objects, nodes and processes, as
Ray's ``ray.util.state`` shows it.

Records are dicts with Ray's field names (CONVENTIONS.md). Every task and
actor call is on record, whichever way it went; tasks add ``path``: how the
task travelled (``scheduled``; ``lease``: sent straight to a leased executor;
``actor_direct``: an actor call sent straight to the actor's process). The
scheduler remembers the last ``TASKGRAPH_TASK_EVENTS`` finished tasks (10,000
by default) besides those not finished.

``filters`` are ``(key, predicate, value)`` with ``"="`` or ``"!="``, all of
which must hold (values compare as text; states ignore case). ``limit`` cuts
the list (Ray's default, 100), with a warning saying how many matched;
``detail=True`` adds every field (a task's state changes with their times
and its phases: ``fetch_s``, ``deserialize_s``, ``run_s``, ``store_s``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from taskgraph import _api
from taskgraph._ids import BASE

DEFAULT_LIMIT = 100
Filters = Sequence[tuple[str, str, Any]]


def list_tasks(
    filters: Filters | None = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Tasks and actor calls: the last ones that finished (oldest first), then those
    not finished: ``task_id``, ``name``, ``state`` (``PENDING_ARGS_AVAIL``,
    ``PENDING_NODE_ASSIGNMENT``, ``RUNNING``, ``FINISHED``, ``FAILED``), ``type``,
    ``job_id``, ``actor_id``, ``node_id``, ``worker_pid``, ``error_type``,
    ``attempt_number``, ``start_time_ms``, ``end_time_ms``, ``path``."""
    return _list("tasks", filters, limit, detail)


def list_actors(
    filters: Filters | None = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Every actor on record: ``actor_id``, ``class_name``, ``name``, ``namespace``,
    ``state`` (``PENDING``, ``ALIVE``, ``RESTARTING``, ``DEAD``), ``node_id``,
    ``pid``, ``job_id``."""
    return _list("actors", filters, limit, detail)


def list_objects(
    filters: Filters | None = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Every object someone holds: ``object_id``, ``object_size`` (bytes),
    ``state`` (``PENDING``, ``READY``, ``ERROR``), ``reference_type``
    (``LOCAL_REFERENCE``: a driver or task holds a ref; ``USED_BY_PENDING_TASK``;
    ``CAPTURED_IN_OBJECT``; ``ACTOR_HANDLE``; ``PINNED_IN_MEMORY``), ``node_id``
    (None: small, kept by the scheduler), ``task_id`` (the task that makes it;
    None for a put) and ``call_site`` (``file.py:function:line`` of the user's
    code that made it)."""
    return _list("objects", filters, limit, detail)


def list_nodes(
    filters: Filters | None = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Every worker node: ``node_id``, ``state``, ``host``, ``address``,
    ``resources_total``, ``resources_available``."""
    return _list("nodes", filters, limit, detail)


def list_workers(
    filters: Filters | None = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Every worker process: each node's daemon (``worker_type`` ``DAEMON``) and the
    executors that run tasks and actors (``EXECUTOR``), with ``node_id`` and ``pid``."""
    return _list("workers", filters, limit, detail)


def get_task(task_id: str) -> dict[str, Any] | None:
    """One task in detail, by its id or the id of one of its refs (``ref.hex()``);
    None when it is not on record."""
    key = _hex(task_id, "task_id")
    if len(key) != 32:
        raise ValueError(f"task_id is a 32-digit hex id (ref.hex()), got {task_id!r}")
    task = key[: 2 * BASE] + "00000000"  # a task's id: its refs' with index 0
    found = _list("tasks", [("task_id", "=", task)], 0, True)
    return found[-1] if found else None


def get_actor(actor_id: str) -> dict[str, Any] | None:
    """One actor in detail, by its id; None when it is not on record."""
    found = _list("actors", [("actor_id", "=", _hex(actor_id, "actor_id"))], 1, True)
    return found[0] if found else None


def summarize_tasks() -> dict[str, Any]:
    """Tasks counted by name and state: ``{"summary": {name: {"func_or_class_name",
    "type", "state_counts"}}, "total_tasks", "dropped"}`` (``dropped``: finished
    tasks no longer remembered)."""
    return _summary("tasks")


def summarize_actors() -> dict[str, Any]:
    """Actors counted by class and state: ``{"summary": {class: {"class_name",
    "state_counts"}}, "total_actors"}``."""
    return _summary("actors")


def summarize_objects() -> dict[str, Any]:
    """Objects and bytes by reference type: ``{"summary": {type: {"objects",
    "size_bytes"}}, "total_objects", "total_size_bytes"}``."""
    return _summary("objects")


def cluster_statistics() -> dict[str, Any]:
    """The scheduler's counts: tasks by state, finished tasks by path, objects, workers."""
    stats: dict[str, Any] = _api.client().query("statistics")
    return stats


# -- asking ---------------------------------------------------------------------


def _list(kind: str, filters: Filters | None, limit: int, detail: bool) -> list[dict[str, Any]]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a whole number >= 0 (0: no limit), got {limit!r}")
    arg = {"kind": kind, "filters": _filters(filters), "limit": limit, "detail": bool(detail)}
    answer = _api.client().query("list", arg)
    if "error" in answer:
        raise ValueError(answer["error"])
    rows: list[dict[str, Any]] = answer["rows"]
    if limit and answer["total"] > len(rows):
        warnings.warn(
            f"{answer['total']} {kind} match; showing the first {len(rows)} "
            "(pass limit= for more, 0 for all)",
            stacklevel=3,
        )
    return rows


def _summary(kind: str) -> dict[str, Any]:
    answer: dict[str, Any] = _api.client().query("summary", {"kind": kind})
    return answer


def _filters(filters: Filters | None) -> list[list[str]]:
    if filters is None:
        return []
    if isinstance(filters, str | bytes) or not isinstance(filters, Sequence):
        raise TypeError(f"filters is a list of (key, predicate, value), got {filters!r}")
    checked = []
    for f in filters:
        if not isinstance(f, Sequence) or isinstance(f, str) or len(f) != 3:
            raise TypeError(
                f"a filter is (key, predicate, value), e.g. ('state', '=', 'RUNNING'); got {f!r}"
            )
        checked.append([str(f[0]), str(f[1]), str(f[2])])
    return checked


def _hex(text: str, what: str) -> str:
    try:
        bytes.fromhex(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is a hex id (ref.hex()), got {text!r}") from None
    return text.lower()
