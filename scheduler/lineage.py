"""Lineage: objects lost with their node are made again by running their tasks again.

A task's result remembers the task that made it (``Obj.lineage``, its spec),
so that when its every copy is lost (its worker left, or a reader found its
holder gone) the task runs again, and the result becomes pending until it
has. The task's own arguments may be gone by then too: their values freed
once nothing held them, or lost with the same node. So the record of every
argument of a remembered task outlives its value (``Obj.lineage_refs``
counts the remembered tasks that name it; at no holder its value is freed
and the record moves to ``state.released``), and rebuilding walks down to
them and runs their tasks first, as deep as it must.

What cannot be made again fails: a ``put()`` object (``ObjectLostError``
naming the node: its only copy was there), a task's result whose task may
not run again (an actor's method, a generator's item, ``max_retries=0``) or
has used its retries (``ObjectReconstructionFailedError`` with the reason).
Each rebuild takes one of the task's retries, as Ray's reconstruction does.

Rebuilding is eager: a lost object is rebuilt as soon as it is found lost,
if anything holds it (a client, a task waiting for it, an object that
contains it). Its readers then wait for it as for any pending object.

Plain functions over ``SchedulerState``, pure like it; task state changes go
through ``state.transition``, objects' through ``objects.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.exceptions import ObjectLostError, ObjectReconstructionFailedError

from . import objects
from .records import Obj, Task, error_bytes

if TYPE_CHECKING:
    from .state import SchedulerState

# Why a task's results are not made again (Obj.no_rebuild).
ACTOR_CALL = "it is an actor method's result: the actor's state may have changed since"
ACTOR_CREATION = "it is an actor's handle"
GENERATOR = "it is an item of a generator task"
LEASE = "it is a lease's"
NO_RETRIES = "its task has max_retries=0; give it max_retries > 0 to have it made again"


def remember(state: SchedulerState, task: Task, obj: Obj) -> None:
    """``obj`` was just made by ``task``: keep how to make it again."""
    spec = task.spec
    if obj.lineage is not None:  # made again: its arguments are counted already
        obj.rebuilds_left = task.retries_left
        return
    why = _not_repeatable(spec)
    if why:
        obj.no_rebuild = why
        return
    obj.lineage = spec
    obj.rebuilds_left = task.retries_left
    for oid in spec.deps:
        dep = state.objects.get(oid)
        if dep is not None:
            dep.lineage_refs += 1


def _not_repeatable(spec: w.TaskSpec) -> str:
    if spec.actor is not None:
        return ACTOR_CREATION
    if spec.actor_id:
        return ACTOR_CALL
    if spec.generator:
        return GENERATOR
    if w.is_lease(spec):
        return LEASE
    if spec.max_retries == 0:
        return NO_RETRIES
    return ""


def released(state: SchedulerState, obj: Obj) -> None:
    """No holder is left of ``obj``, a finished object whose value was just freed
    (``objects.free``): keep its record while a remembered task names it, else
    forget it, and what only its own task's record kept with it."""
    if obj.lineage_refs > 0:
        objects.set_state(state, obj, "released")
        obj.data = obj.error = None
        obj.location = None
        obj.copies = {}
        obj.contains = []
        state.released[obj.id] = obj
        return
    doomed = [obj]
    while doomed:  # (a worklist: chains may be thousands of tasks long)
        gone = doomed.pop()
        if gone.lineage is None:
            continue
        for oid in gone.lineage.deps:
            dep = state.objects.get(oid) or state.released.get(oid)
            if dep is None:
                continue
            dep.lineage_refs -= 1
            if dep.lineage_refs == 0 and dep.id in state.released:
                del state.released[dep.id]
                doomed.append(dep)


def lost(
    state: SchedulerState, lost_objects: list[Obj], node: str, unreadable: bool = False
) -> None:
    """These objects' every copy was on ``node``, gone (or, ``unreadable``, a
    reader could not read it there): make them again, or fail them."""
    if not lost_objects:
        return
    failures: dict[bytes, bytes] = {}
    again: list[Obj] = []  # objects whose task must run again
    seen: set[bytes] = set()
    stack = list(lost_objects)
    # First, every object to make again becomes pending (inputs of their tasks
    # included, as deep as they are gone), so that whatever order the tasks are
    # then submitted in, each waits for the ones it needs.
    while stack:
        obj = stack.pop()
        if obj.id in seen:
            continue
        seen.add(obj.id)
        error = _cannot(state, obj, node, unreadable)
        if error is not None:
            if obj.id in state.released:
                failures[obj.id] = error  # (nothing holds it: its rebuilders fail)
            else:
                obj.location = None
                obj.copies = {}
                objects.failed(state, obj, error)
            continue
        if state.released.pop(obj.id, None) is not None:
            state.objects[obj.id] = obj
        objects.set_state(state, obj, "pending")
        obj.data = None
        obj.location = None
        obj.copies = {}
        if obj.task in state.tasks:
            continue  # its task runs already (a sibling return's rebuild)
        again.append(obj)
        assert obj.lineage is not None
        for oid in obj.lineage.deps:
            dep = state.objects.get(oid) or state.released.get(oid)
            if dep is not None and _gone(state, dep):
                stack.append(dep)
    for obj in again:
        if obj.task not in state.tasks:
            _run_again(state, obj, failures)


def _gone(state: SchedulerState, obj: Obj) -> bool:
    """No value anywhere: released, or ready with no copy left."""
    if obj.id in state.released:
        return True
    return obj.state == "ready" and obj.data is None and obj.location is None


def _cannot(state: SchedulerState, obj: Obj, node: str, unreadable: bool) -> bytes | None:
    """Why ``obj`` cannot be made again (a pickled error), or None."""
    oid = obj.id.hex()
    if obj.task is None:
        if obj.id in state.released:
            return error_bytes(
                ObjectReconstructionFailedError(
                    oid,
                    f"it was put() and freed when nothing held it, and an object made from it "
                    f"was lost with node {node}; keep a reference to the put() object to have "
                    f"what is made from it rebuilt",
                )
            )
        where = (
            f"its only copy, on node {node}, could not be read (a reader said so)"
            if unreadable  # (the node may well live on)
            else f"its only copy was on node {node}, which is gone"
        )
        return error_bytes(ObjectLostError(oid, f"it was put() and {where}"))
    if obj.lineage is None:
        return error_bytes(
            ObjectReconstructionFailedError(
                oid,
                f"its only copy was on node {node}, and it cannot be made again: "
                f"{obj.no_rebuild or 'its task is not known'}",
            )
        )
    if obj.rebuilds_left <= 0:
        spec = obj.lineage
        return error_bytes(
            ObjectReconstructionFailedError(
                oid,
                f"its only copy was on node {node}, and task '{spec.name}' that made it has no "
                f"retries left (max_retries={spec.max_retries})",
            )
        )
    return None


def _run_again(state: SchedulerState, obj: Obj, failures: dict[bytes, bytes]) -> None:
    """Submit ``obj``'s task again: it holds its arguments and waits for the pending ones."""
    spec = obj.lineage
    assert spec is not None
    if spec.channel:  # (it came down a lease: now it is placed as any task)
        spec = msgspec.structs.replace(spec, channel=b"")
    node = spec.strategy.removeprefix("node:")
    if node != spec.strategy and node not in state.workers:
        # Its node is gone (with the object, likely): made again anywhere else.
        spec = msgspec.structs.replace(spec, strategy=f"node?:{node}")
    retries = obj.rebuilds_left - 1
    for oid in return_ids(spec.task_id, spec.num_returns):
        sibling = state.objects.get(oid) or state.released.get(oid)
        if sibling is not None:
            sibling.rebuilds_left = retries
    task = Task(spec=spec, owner=b"", need=dict(spec.resources), retries_left=retries)
    task.submitted = state.now + state.clock_offset
    task.shape = (tuple(sorted(task.need.items())), spec.strategy)
    state.tasks[spec.task_id] = task
    state.tasks_rebuilt += 1
    error: bytes | None = None
    for oid in spec.deps:
        dep = state.objects.get(oid)
        if dep is None:
            if error is None:
                error = failures.get(oid) or error_bytes(
                    ObjectReconstructionFailedError(
                        obj.id.hex(), f"its task's argument {oid.hex()} was freed"
                    )
                )
            continue
        dep.refs += 1
        if dep.state == "pending":
            task.waiting_on.add(oid)
            dep.dependents.append(task)
        elif dep.state == "error" and error is None:
            error = dep.error
    for oid in spec.nested:
        nested = state.objects.get(oid)
        if nested is not None:
            nested.refs += 1
    if error is not None:
        state.transition(task, "erred", error)
    elif task.waiting_on:
        state.transition(task, "waiting")
    else:
        state.transition(task, "ready")


def copy_unreadable(state: SchedulerState, obj: Obj, worker_id: str) -> None:
    """A reader could not read ``obj``'s copy on ``worker_id`` (its holder is
    gone, though we may not have heard yet): that copy counts as lost. Another
    copy takes its place, or the object is made again."""
    if obj.state != "ready" or obj.location is None:
        return
    if worker_id != obj.location.worker_id and worker_id not in obj.copies:
        return  # (no copy we know of: a late word, or a wrong one)
    worker = state.workers.get(worker_id)
    if worker is not None:  # (it may live on: what it keeps of the object is nobody's)
        worker.segments.pop(obj.id, None)
        state.send_worker(worker_id, w.FreeObjects([obj.id]))
    if obj.location.worker_id != worker_id:
        del obj.copies[worker_id]
        return
    if obj.copies:
        obj.location = obj.copies.pop(next(iter(obj.copies)))
        return
    obj.location = None
    lost(state, [obj], worker_id, unreadable=True)
