"""Objects in the scheduler's state machine: their states, who waits on them, who holds them.

An object is a task's return value or a ``put`` value. Its state changes only
through ``set_state``, checked against ``OBJECT_TRANSITIONS`` and logged
(``story.py``). When it becomes ready or fails, ``done`` tells the clients
that wait for it and moves on the tasks that take it as an argument.

Each object counts its holders (``refs``): clients holding a ref, unfinished
tasks that take it as an argument, and stored objects that contain it. At
zero holders a finished object is freed, its bytes in workers' stores with
it, and what it contains loses a holder in turn (its record may stay a
while, to make again what was made from it: ``lineage.py``).

Plain functions over ``SchedulerState``, pure like it: they read and change
its records and speak only through its outbox (``send_client``,
``send_worker``). Task state changes are not made here: a dependent that can
run goes through ``state.transition``; one whose argument failed joins
``state.failing``, failed once the event is handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._ids import is_first_return, task_of

from . import lineage
from .records import Obj
from .story import OBJECT_TRANSITIONS, check

if TYPE_CHECKING:
    from .state import SchedulerState


# -- states ------------------------------------------------------------------


def new(state: SchedulerState, oid: bytes, task: bytes | None, initial: str = "pending") -> Obj:
    obj = state.objects[oid] = Obj(oid, task, state=initial)
    state.changes.log.append(("object", oid, "", initial, state.stimulus, state.now))
    return obj


def set_state(state: SchedulerState, obj: Obj, finish: str) -> None:
    """Move an object to ``finish`` (a pair missing from OBJECT_TRANSITIONS raises;
    staying is no change: a restarted actor's creation makes its anchor again)."""
    start = obj.state
    if start == finish:
        return
    if (start, finish) not in OBJECT_TRANSITIONS:
        check(OBJECT_TRANSITIONS, "object", obj.id, start, finish)  # (raises)
    state.changes.log.append(("object", obj.id, start, finish, state.stimulus, state.now))
    obj.state = finish


def done(state: SchedulerState, obj: Obj) -> None:
    """The object is ready or failed: tell who waits, move its dependents on."""
    value = obj.as_value()
    for client_id in obj.waiters:
        state.send_client(client_id, w.ObjectsReady([value]))
    obj.waiters.clear()
    dependents, obj.dependents = obj.dependents, []
    for task in dependents:
        task.waiting_on.discard(obj.id)
        if obj.state == "error":
            # A worklist, not recursion: a failure may cross a chain of
            # thousands of dependent tasks.
            state.failing.append((task, obj.error))
        elif not task.waiting_on and task.state == "waiting":
            state.transition(task, "ready")


def failed(state: SchedulerState, obj: Obj, error: bytes | None) -> None:
    set_state(state, obj, "error")
    obj.error = error
    obj.data = None
    done(state, obj)


def awaited(state: SchedulerState, obj: Obj) -> None:
    """Something waits on a pending object that a channel task makes. Its
    report may be gathering in its worker (in its executor's report pipe,
    read lazily): ask for it the moment it is in. (Other tasks' reports
    gather for at most a millisecond there: not worth a message each.)"""
    task = state.tasks.get(obj.task) if obj.task is not None else None
    if (
        task is not None
        and task.spec.channel
        and task.state == "processing"
        and task.worker is not None
        and not task.awaited
    ):
        task.awaited = True
        state.reports_asked_for += 1
        state.send_worker(task.worker, w.ReadReports([task.id]))


def generator_placeholder(state: SchedulerState, oid: bytes) -> Obj | None:
    """A pending object for an item a running generator task has not yielded yet."""
    task = state.tasks.get(task_of(oid))
    if task is None or not task.spec.generator:
        return None
    obj = new(state, oid, task.id)
    task.items.append(oid)
    return obj


# -- holders -----------------------------------------------------------------


def hold_contained(state: SchedulerState, obj: Obj, contains: list[bytes]) -> None:
    for inner in contains:
        inner_obj = state.objects.get(inner)
        if inner_obj is not None:
            inner_obj.refs += 1
            obj.contains.append(inner)


def decref(state: SchedulerState, oid: bytes) -> None:
    obj = _drop_ref(state, oid)
    if obj is not None:
        free(state, obj)


def _drop_ref(state: SchedulerState, oid: bytes) -> Obj | None:
    """Count one holder less; return the object if that was its last holder."""
    obj = state.objects.get(oid)
    if obj is None:
        return None
    obj.refs -= 1
    if obj.refs < 0:
        raise RuntimeError(f"object {oid.hex()} released more often than held")
    return obj if obj.refs == 0 and obj.state != "pending" else None


def free(state: SchedulerState, obj: Obj) -> None:
    # A worklist, not recursion: objects may nest thousands deep.
    doomed = [obj]
    while doomed:
        obj = doomed.pop()
        del state.objects[obj.id]
        if is_first_return(obj.id) and task_of(obj.id) in state.actors.actors:
            state.actors.anchor_freed(obj.id)
        places = (obj.location, *obj.copies.values()) if obj.location is not None else ()
        for loc in places:
            worker = state.workers.get(loc.worker_id)
            if worker is not None:
                worker.segments.pop(obj.id, None)
                state.send_worker(worker.worker_id, w.FreeObjects([obj.id]))
        for inner in obj.contains:
            freed = _drop_ref(state, inner)
            if freed is not None:
                doomed.append(freed)
        lineage.released(state, obj)
