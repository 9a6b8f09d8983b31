"""The dashboard's tables beside the task stream: the actors, and the largest
objects with what holds them. The ``Feed`` (scheduler/feed.py) makes them on
demand, at most once a period each, for ``/actors``, ``/objects`` and their JSON.

Pure: the state in, read only, rows of plain data out, in the state API's field
names (CONVENTIONS.md) plus the dashboard's own (an actor's calls and restarts,
an object's holders). What each costs, whatever the cluster's size:

- actors: one pass over the actors and a sort; rows for the first ``limit``
  (alive ones first), counts for all.
- objects: one pass over the objects, keeping a heap of the ``top`` largest;
  then, to name who holds those few, one pass over the clients' held sets (an
  intersection each), over the live tasks' arguments, and over the objects
  that contain others (noted in the first pass). Both passes go in steps of
  ``CHUNK`` (``object_steps``, a generator): a million objects cost the loop
  about a second in all, but never more than a few milliseconds at a time.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskgraph._ids import is_first_return

from .listing import reference_type

if TYPE_CHECKING:
    from .actors import ActorRec
    from .records import ClientRec, Obj
    from .state import SchedulerState

ACTOR_ROWS = 1_000  # actors listed, at most (all are counted)
OBJECT_ROWS = 100  # the largest objects listed
CHUNK = 10_000  # objects or tasks looked at in one step (about 10 ms), the loop running between
HOLDERS_SHOWN = 5  # holders named per object; the rest are counted
ACTOR_ORDER = {"ALIVE": 0, "RESTARTING": 1, "PENDING": 2, "DEAD": 3}
PENDING = ("new", "waiting", "ready")


@dataclass(frozen=True, slots=True)
class ActorTable:
    taken: float = 0.0  # wall-clock seconds
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "time": self.taken,
            "total": self.total,
            "by_state": self.by_state,
            "actors": self.rows,
        }


@dataclass(frozen=True, slots=True)
class ObjectTable:
    taken: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # the largest, largest first
    total_objects: int = 0
    total_bytes: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "time": self.taken,
            "total_objects": self.total_objects,
            "total_bytes": self.total_bytes,
            "largest": self.rows,
        }


def actor_table(state: SchedulerState, taken: float, limit: int = ACTOR_ROWS) -> ActorTable:
    recs = list(state.actors.actors.values())
    by_state = Counter(rec.state.upper() for rec in recs)
    recs.sort(key=lambda rec: ACTOR_ORDER.get(rec.state.upper(), len(ACTOR_ORDER)))
    rows = [actor_row(state, rec) for rec in recs[:limit]]
    return ActorTable(taken, rows, len(recs), dict(by_state))


def actor_row(state: SchedulerState, rec: ActorRec) -> dict[str, Any]:
    row = state.actors.describe(rec)
    del row["methods"]
    row.update(
        num_restarts=rec.actor.max_restarts - rec.restarts_left,
        calls_finished=rec.calls_finished,
        calls_failed=rec.calls_failed,
        calls_running=len(rec.running),
        calls_queued=len(rec.calls),
    )
    return row


def object_table(state: SchedulerState, taken: float, top: int = OBJECT_ROWS) -> ObjectTable:
    """The table at once (``object_steps`` run to its end), for small states and tests."""
    steps = object_steps(state, taken, top)
    while True:
        try:
            next(steps)
        except StopIteration as made:
            table: ObjectTable = made.value
            return table


def object_steps(
    state: SchedulerState, taken: float, top: int = OBJECT_ROWS, chunk: int = CHUNK
) -> Generator[None, None, ObjectTable]:
    """The table, made in steps of at most ``chunk`` objects or tasks each (the Feed
    lets the loop run between them), over copies of the state's tables taken at the
    start; the objects freed meanwhile are left out at the end."""
    objects = list(state.objects.values())
    heap: list[tuple[int, int, Obj]] = []  # (size, its place in the table, obj): a min-heap
    containers: list[Obj] = []
    total_bytes = 0
    for i, obj in enumerate(objects):
        if i % chunk == chunk - 1:
            yield
        loc = obj.location  # (size_of, inline: this loop is the table's cost)
        size = loc.size if loc is not None else len(obj.data) if obj.data is not None else 0
        total_bytes += size
        if obj.contains:
            containers.append(obj)
        if len(heap) < top:
            heapq.heappush(heap, (size, i, obj))
        elif size > heap[0][0]:
            heapq.heapreplace(heap, (size, i, obj))
    found = {obj.id: _Holders() for _, _, obj in heap}
    wanted = set(found)
    for client in state.clients.values():
        for oid in client.held & wanted:  # (a set's & goes over the smaller one)
            found[oid].clients.append(_client_label(client))
    for i, task in enumerate(list(state.tasks.values())):
        if i % chunk == chunk - 1:
            yield
        for oid in task.spec.deps:
            if oid in found:
                names = found[oid].pending if task.state in PENDING else found[oid].running
                names.append(task.spec.name)
    for container in containers:
        for oid in container.contains:
            if oid in found:
                found[oid].inside.append(container.id.hex())
    largest = sorted(heap, key=lambda entry: (-entry[0], entry[1]))
    rows = [
        _object_row(state, obj, size, found[obj.id])
        for size, _, obj in largest
        if state.objects.get(obj.id) is obj
    ]
    return ObjectTable(taken, rows, len(objects), total_bytes)


@dataclass(slots=True)
class _Holders:
    clients: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # tasks not yet run
    running: list[str] = field(default_factory=list)
    inside: list[str] = field(default_factory=list)  # objects that contain it


def _client_label(client: ClientRec) -> str:
    if client.via_worker is None:
        return f"driver {client.client_id.hex()[:8]}"
    return f"worker process on {client.via_worker}"


def _object_row(state: SchedulerState, obj: Obj, size: int, held: _Holders) -> dict[str, Any]:
    labels = [f"held by {c}" for c in held.clients]
    labels += [f"argument of waiting task {n}" for n in held.pending]
    labels += [f"argument of running task {n}" for n in held.running]
    labels += [f"inside object {oid}" for oid in held.inside]
    actor = state.actors.actors.get(obj.task or b"")
    if actor is not None and is_first_return(obj.id):
        labels.append(f"handle of actor {actor.actor.class_name}")
    if len(labels) > HOLDERS_SHOWN:
        labels[HOLDERS_SHOWN:] = [f"and {len(labels) - HOLDERS_SHOWN} more"]
    return {
        "object_id": obj.id.hex(),
        "object_size": size,
        "state": obj.state.upper(),
        "reference_type": reference_type(
            state, obj, bool(held.clients), bool(held.pending), bool(held.inside)
        ),
        "node_id": obj.location.worker_id if obj.location else None,
        "copies": sorted(obj.copies),
        "call_site": obj.site or None,
        "task_id": obj.task.hex() if obj.task else None,
        "references": obj.refs,
        "holders": labels,
    }
