"""The state API's tables: every task, actor, object, node and worker process, as rows.

``taskgraph.util.state`` (``list_tasks``, ``summarize_objects``, ...) and
``taskgraph list``/``summary`` ask the scheduler a ``list`` or ``summary``
query; this module answers it from the state, read-only: the rows of a kind
(Ray's field names, CONVENTIONS.md), kept by ``filters`` (``(key, "=", value)``
or ``"!="``), cut to ``limit``, and the counts a summary shows. A bad filter is
an answer ``{"error": ...}`` that the client raises as ``ValueError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from taskgraph._ids import is_first_return

if TYPE_CHECKING:
    from .records import Obj
    from .state import SchedulerState

KINDS = ("tasks", "actors", "objects", "nodes", "workers")
PREDICATES = ("=", "!=")
COLUMNS = {
    "tasks": (
        "task_id", "name", "state", "type", "job_id", "actor_id", "node_id", "worker_pid",
        "error_type", "attempt_number", "path",
    ),
    "actors": ("actor_id", "class_name", "name", "namespace", "state", "node_id", "pid", "job_id"),
    "objects": ("object_id", "state", "reference_type", "node_id", "task_id", "call_site"),
    "nodes": ("node_id", "state", "host", "address"),
    "workers": ("node_id", "pid", "worker_type", "state"),
}  # fmt: skip


def rows(state: SchedulerState, kind: str, detail: bool) -> Iterator[dict[str, Any]]:
    if kind == "tasks":
        for event in state.history.events(state.tasks.values()):
            yield event.record(detail)
    elif kind == "actors":
        for rec in state.actors.actors.values():
            row = state.actors.describe(rec)
            row["job_id"] = (rec.spec.job or rec.actor_id[:8]).hex()  # (made in a task: its job's)
            if not detail:
                del row["methods"]
            yield row
    elif kind == "objects":
        yield from _objects(state, detail)
    elif kind == "nodes":
        for r in state.workers.values():
            yield {
                "node_id": r.worker_id,
                "state": "ALIVE",
                "host": r.info.host,
                "address": r.info.address,
                "resources_total": dict(r.total),
                "resources_available": {k: max(v, 0.0) for k, v in r.available.items()},
                **(
                    {"pid": r.info.pid, "peer": r.info.peer, "store": dict(r.store)}
                    if detail
                    else {}
                ),
            }
    elif kind == "workers":
        for r in state.workers.values():
            yield {
                "node_id": r.worker_id,
                "pid": r.info.pid,
                "worker_type": "DAEMON",
                "state": "ALIVE",
            }
            for pid in r.executor_pids:
                yield {
                    "node_id": r.worker_id,
                    "pid": pid,
                    "worker_type": "EXECUTOR",
                    "state": "ALIVE",
                }


def _objects(state: SchedulerState, detail: bool) -> Iterator[dict[str, Any]]:
    """Each object with its size, where it is, and what keeps it (Ray's reference
    types, strongest first: a driver's or task's ref, an argument of a task not
    yet run, inside another object, an actor's handle)."""
    held: Counter[bytes] = Counter(oid for c in state.clients.values() for oid in c.held)
    pending: Counter[bytes] = Counter(
        oid
        for t in state.tasks.values()
        if t.state in ("new", "waiting", "ready")
        for oid in t.spec.deps
    )
    inside: Counter[bytes] = Counter(oid for o in state.objects.values() for oid in o.contains)
    for obj in state.objects.values():
        row: dict[str, Any] = {
            "object_id": obj.id.hex(),
            "object_size": size_of(obj),
            "state": obj.state.upper(),
            "reference_type": reference_type(
                state, obj, obj.id in held, obj.id in pending, obj.id in inside
            ),
            "node_id": obj.location.worker_id if obj.location else None,
            "task_id": obj.task.hex() if obj.task else None,
            "call_site": state.call_site(obj.id),
        }
        if detail:
            row.update(
                node_ids=[loc.worker_id for loc in _locations(obj)],
                references=obj.refs,
                held_by_clients=held[obj.id],
                pending_tasks=pending[obj.id],
                inside_objects=inside[obj.id],
            )
        yield row


def reference_type(state: SchedulerState, obj: Obj, held: bool, pending: bool, inside: bool) -> str:
    """What keeps an object, as Ray's reference types, strongest first: a client
    (``held``), a task not yet run (``pending``), another object (``inside``), an
    actor's handle (its anchor), or nothing but its pin."""
    if held:
        return "LOCAL_REFERENCE"
    if pending:
        return "USED_BY_PENDING_TASK"
    if inside:
        return "CAPTURED_IN_OBJECT"
    if obj.task in state.actors.actors and is_first_return(obj.id):
        return "ACTOR_HANDLE"
    return "PINNED_IN_MEMORY"


def size_of(obj: Obj) -> int:
    if obj.location is not None:
        return obj.location.size
    return len(obj.data) if obj.data is not None else 0


def _locations(obj: Obj) -> Iterable[Any]:
    if obj.location is not None:
        yield obj.location
        yield from obj.copies.values()


# -- filters, limits, summaries -----------------------------------------------------


def check(kind: str, filters: list[list[str]]) -> str | None:
    """What is wrong with a query, in words; None when nothing is."""
    if kind not in KINDS:
        return f"there is no list of {kind!r}: choose one of {', '.join(KINDS)}"
    for f in filters:
        if len(f) != 3:
            return f"a filter is (key, predicate, value), got {tuple(f)!r}"
        key, predicate, _ = f
        if key not in COLUMNS[kind]:
            return f"{kind} cannot be filtered by {key!r}: use one of {', '.join(COLUMNS[kind])}"
        if predicate not in PREDICATES:
            return f"a filter's predicate is '=' or '!=', got {predicate!r}"
    return None


def keep(row: dict[str, Any], filters: list[list[str]]) -> bool:
    """Values compare as text (``worker_pid`` 42 matches "42"); states ignore case."""
    for key, predicate, value in filters:
        have, want = str(row.get(key)), str(value)
        if key == "state":
            have, want = have.upper(), want.upper()
        if (have == want) != (predicate == "="):
            return False
    return True


def listed(state: SchedulerState, arg: dict[str, Any]) -> Any:
    kind, filters = arg["kind"], arg.get("filters") or []
    error = check(kind, filters)
    if error:
        return {"error": error}
    limit = arg.get("limit") or 0
    found: list[dict[str, Any]] = []
    total = 0
    for row in rows(state, kind, bool(arg.get("detail"))):
        if keep(row, filters):
            total += 1
            if not limit or len(found) < limit:
                found.append(row)
    return {"rows": found, "total": total}


def summary(state: SchedulerState, kind: str) -> Any:
    if kind == "tasks":
        by_name: dict[str, dict[str, Any]] = {}
        total = 0
        for row in rows(state, "tasks", detail=False):
            total += 1
            entry = by_name.setdefault(
                row["name"],
                {"func_or_class_name": row["name"], "type": row["type"], "state_counts": {}},
            )
            counts = entry["state_counts"]
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return {"summary": by_name, "total_tasks": total, "dropped": state.history.dropped}
    if kind == "actors":
        by_class: dict[str, dict[str, Any]] = {}
        for row in rows(state, "actors", detail=False):
            entry = by_class.setdefault(
                row["class_name"], {"class_name": row["class_name"], "state_counts": {}}
            )
            entry["state_counts"][row["state"]] = entry["state_counts"].get(row["state"], 0) + 1
        return {"summary": by_class, "total_actors": len(state.actors.actors)}
    if kind == "objects":
        by_type: dict[str, dict[str, int]] = {}
        objects = size = 0
        for row in rows(state, "objects", detail=False):
            objects += 1
            size += row["object_size"]
            entry = by_type.setdefault(row["reference_type"], {"objects": 0, "size_bytes": 0})
            entry["objects"] += 1
            entry["size_bytes"] += row["object_size"]
        return {"summary": by_type, "total_objects": objects, "total_size_bytes": size}
    return {"error": f"there is no summary of {kind!r}: choose tasks, actors or objects"}
