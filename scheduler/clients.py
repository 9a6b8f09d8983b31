"""Clients in the scheduler's state machine: what each message a client sends does.

A client is a driver, or an executor's task or actor (relayed through its
worker, ``FromClient``). ``message`` hands each of its messages to the one
handler the table ``_HANDLERS`` names for that type; a message missing from it
is refused. A client submits tasks (``submit``: its returns are born pending,
held by it, and the task waits for its arguments, or is recorded at once when
sent down a channel, ``channels.py``), puts, holds, releases and waits for
objects, cancels tasks, says when a task blocks in ``get``, asks questions
(``views.py``) and creates and kills actors (``actors.py``). When it leaves
(``left``) what it held is released and what it sealed unheard of is freed;
when a driver leaves, its job's tasks are dropped or cancelled (``_end_job``).

Plain functions over ``SchedulerState``, pure like it; task state changes go
through ``state.transition``, objects' through ``objects.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph._ids import client_of, generator_item_id, return_ids, task_of
from taskgraph.exceptions import ObjectLostError, TaskCancelledError

from . import channels, lineage, objects
from .actors import is_call
from .records import ClientRec, Obj, Task, error_bytes

if TYPE_CHECKING:
    from .state import SchedulerState

CLIENTS_GONE = 10_000  # clients remembered as gone (a late report of theirs is dropped)
MAX_SITES = 10_000  # call sites kept per client (its CallSite messages past that are ignored)


def message(state: SchedulerState, client: ClientRec, msg: Any) -> None:
    handler = _HANDLERS.get(type(msg))
    if handler is None:
        raise TypeError(f"a client may not send {type(msg).__name__}")
    state.stimulus = (type(msg).__name__, "client", client.client_id)
    handler(state, client, msg)


def _on_export(state: SchedulerState, client: ClientRec, msg: w.ExportFunction) -> None:
    state.functions.setdefault(msg.function_id, msg.payload)


def _on_submit(state: SchedulerState, client: ClientRec, msg: w.SubmitTasks) -> None:
    for spec in msg.tasks:
        submit(state, client, spec)


def submit(state: SchedulerState, client: ClientRec, spec: w.TaskSpec) -> None:
    """Record a task and its returns (held by ``client``); it holds its arguments."""
    need = dict(spec.resources)
    task = Task(spec=spec, owner=client.client_id, need=need, retries_left=spec.max_retries)
    task.submitted = state.now + state.clock_offset
    task.shape = (tuple(sorted(need.items())), spec.strategy)
    state.tasks[spec.task_id] = task
    if w.is_lease(spec):
        state.leases.add(spec.task_id)
    if spec.parent:
        state.children.setdefault(spec.parent, set()).add(spec.task_id)
    site = client.sites.get(spec.site, "") if spec.site else ""
    for oid in return_ids(spec.task_id, spec.num_returns):
        made = objects.new(state, oid, spec.task_id)
        made.refs, made.site = 1, site
        client.held.add(oid)
    missing = None
    failed: Obj | None = None
    for oid in spec.deps:
        obj = state.objects.get(oid)
        if obj is None:
            missing = oid
            continue
        obj.refs += 1
        if obj.state == "pending" and not spec.channel:  # (a channel's executor waits)
            task.waiting_on.add(oid)
            obj.dependents.append(task)
            objects.awaited(state, obj)
        elif failed is None and obj.state == "error":
            failed = obj
    for oid in spec.nested:
        obj = state.objects.get(oid)
        if obj is not None:
            obj.refs += 1
    if spec.channel:
        channels.record(state, task)
        return
    if spec.actor is not None:
        state.actors.created(task)
    elif is_call(spec):
        dead = state.actors.call_error(spec)
        if dead is not None:
            state.transition(task, "erred", dead)
            return
        state.actors.call_submitted(task)
    if missing is not None:
        err = ObjectLostError(missing.hex(), "it was freed before the task that needs it ran")
        state.transition(task, "erred", error_bytes(err))
        return
    if failed is not None:
        state.transition(task, "erred", failed.error)
    elif task.waiting_on:
        state.transition(task, "waiting")
    else:
        state.transition(task, "ready")


def _on_create_named_actor(
    state: SchedulerState, client: ClientRec, msg: w.CreateNamedActor
) -> None:
    reply = state.actors.create_named(client.client_id, msg)
    if "error" not in reply and not reply.get("existing"):
        submit(state, client, msg.spec)
    # With an existing actor the caller borrows its anchor with an AcquireRefs.
    state.send_client(client.client_id, w.QueryReply(msg.request_id, reply))


def _on_kill_actor(state: SchedulerState, client: ClientRec, msg: w.KillActor) -> None:
    state.actors.kill(msg)


def _on_put(state: SchedulerState, client: ClientRec, msg: w.PutObject) -> None:
    if msg.object_id in state.objects:
        return  # ids are fresh: a second put of one is a client's bug, and ignored
    if msg.error is not None:
        obj = objects.new(state, msg.object_id, None)
        obj.refs = 1
        client.held.add(msg.object_id)
        objects.failed(state, obj, msg.error)
        return
    obj = objects.new(state, msg.object_id, None, "ready")
    obj.data, obj.location, obj.refs = msg.data, msg.location, 1
    if msg.site:
        obj.site = client.sites.get(msg.site, "")
    client.held.add(msg.object_id)
    if msg.location is not None:
        worker = state.workers.get(msg.location.worker_id)
        if worker is not None:
            worker.segments[msg.object_id] = msg.location.store
    objects.hold_contained(state, obj, msg.contains)


def _on_acquire(state: SchedulerState, client: ClientRec, msg: w.AcquireRefs) -> None:
    for oid in msg.object_ids:
        obj = state.objects.get(oid)
        if obj is not None and oid not in client.held:
            client.held.add(oid)
            obj.refs += 1


def _on_release(state: SchedulerState, client: ClientRec, msg: w.ReleaseRefs) -> None:
    for oid in msg.object_ids:
        if oid in client.held:
            client.held.discard(oid)
            objects.decref(state, oid)


def _on_want(state: SchedulerState, client: ClientRec, msg: w.WantObjects) -> None:
    values = []
    for oid in msg.object_ids:
        obj = state.objects.get(oid)
        if obj is None:
            obj = objects.generator_placeholder(state, oid)
        if obj is None:
            err = ObjectLostError(oid.hex(), "no holder was left, so it was freed")
            values.append(w.Value(oid, error=error_bytes(err)))
        elif obj.state == "pending":
            obj.waiters.add(client.client_id)
            objects.awaited(state, obj)
        else:
            values.append(obj.as_value())
    if values:
        state.send_client(client.client_id, w.ObjectsReady(values))


def _on_unreadable(state: SchedulerState, client: ClientRec, msg: w.ObjectUnreadable) -> None:
    obj = state.objects.get(msg.object_id)
    if obj is not None:
        lineage.copy_unreadable(state, obj, msg.worker_id)


def _on_generator_item(state: SchedulerState, client: ClientRec, msg: w.GeneratorItem) -> None:
    task = state.tasks.get(msg.task_id)
    if task is None or task.state != "processing" or not task.spec.generator:
        return
    oid = generator_item_id(task.id, msg.index)
    value = msg.value
    obj = state.objects.get(oid)
    if obj is None:
        obj = objects.new(state, oid, task.id)
        task.items.append(oid)
    elif obj.state != "pending":
        return  # a retried generator yields its items again; keep the first
    owner = state.clients.get(task.owner)
    if owner is None:
        return  # nobody can ever read it; the task's end frees the placeholder
    objects.set_state(state, obj, "ready")
    obj.data, obj.location = value.data, value.location
    owner.held.add(oid)
    obj.refs += 1
    if value.location is not None and task.worker in state.workers:
        state.workers[task.worker].segments[oid] = value.location.store
    objects.hold_contained(state, obj, value.contains)
    objects.done(state, obj)


def _on_cancel(state: SchedulerState, client: ClientRec, msg: w.CancelTasks) -> None:
    for oid in msg.object_ids:
        obj = state.objects.get(oid)
        if obj is not None and obj.task is not None:
            _cancel(state, obj.task, msg.force, msg.recursive)
        elif msg.recursive:
            # A task we never saw (a leased one, taskgraph/_leases.py): the
            # tasks it submitted name it as their parent all the same.
            _cancel(state, task_of(oid), msg.force, msg.recursive)


def _cancel(state: SchedulerState, task_id: bytes, force: bool, recursive: bool) -> None:
    task = state.tasks.get(task_id)
    if recursive:
        for child in list(state.children.get(task_id, ())):
            _cancel(state, child, force, recursive)
    if task is None:
        return
    if task.state in ("waiting", "ready"):
        err = TaskCancelledError(task.spec.name, task_id.hex())
        state.transition(task, "cancelled", error_bytes(err))
    elif task.state == "processing" and not task.cancel_requested:
        task.cancel_requested = True
        assert task.worker is not None
        # A call goes to its actor's process; a channel task to the executor serving it.
        channel = task.spec.channel or task.spec.actor_id
        state.send_worker(task.worker, w.CancelRunning(task_id, force, channel))


def _on_blocked(state: SchedulerState, client: ClientRec, msg: w.TaskBlocked) -> None:
    task = state.tasks.get(msg.task_id)
    if task is None or task.state != "processing" or task.blocked:
        return
    task.blocked = True
    assert task.worker is not None
    worker = state.workers[task.worker]
    worker.give_back({"CPU": task.need.get("CPU", 0.0)}, [])
    state.wake_placement()


def _on_unblocked(state: SchedulerState, client: ClientRec, msg: w.TaskUnblocked) -> None:
    task = state.tasks.get(msg.task_id)
    if task is None or task.state != "processing" or not task.blocked:
        return
    task.blocked = False
    assert task.worker is not None
    worker = state.workers[task.worker]
    # May go below zero for a moment: the task runs again at once, and no
    # new task is placed there until the CPU is back.
    worker.reserve({"CPU": task.need.get("CPU", 0.0)}, [])


def _on_query(state: SchedulerState, client: ClientRec, msg: w.Query) -> None:
    arg: Any = None
    if msg.what == "get_actor":
        arg = {"name": msg.name, "namespace": msg.namespace}
    elif msg.what == "memory":
        arg = msg.top
    elif msg.what == "story":
        arg = msg.key
    elif msg.what in ("list", "summary"):
        arg = {"kind": msg.kind, "filters": msg.filters, "limit": msg.limit, "detail": msg.detail}
    result = state.query(msg.what, arg)
    state.send_client(client.client_id, w.QueryReply(msg.request_id, result))


def _on_call_site(state: SchedulerState, client: ClientRec, msg: w.CallSite) -> None:
    if len(client.sites) < MAX_SITES:
        client.sites[msg.number] = msg.text


def _on_caller_left(state: SchedulerState, client: ClientRec, msg: w.CallerLeft) -> None:
    """An actor's process lost a direct caller's connection. Decided once that
    caller is gone (all its records read): until then it may still record."""
    caller = state.clients.get(msg.client_id)
    if caller is not None:
        caller.channels_closed.setdefault(msg.actor_id, set()).update(msg.in_flight)
    else:
        channels.never_sent(state, msg.client_id, msg.actor_id, set(msg.in_flight))


def _on_goodbye(state: SchedulerState, client: ClientRec, msg: w.Goodbye) -> None:
    left(state, client.client_id)


_HANDLERS: dict[type, Callable[..., None]] = {
    w.ExportFunction: _on_export,
    w.SubmitTasks: _on_submit,
    w.PutObject: _on_put,
    w.AcquireRefs: _on_acquire,
    w.ReleaseRefs: _on_release,
    w.WantObjects: _on_want,
    w.ObjectUnreadable: _on_unreadable,
    w.CancelTasks: _on_cancel,
    w.GeneratorItem: _on_generator_item,
    w.TaskBlocked: _on_blocked,
    w.TaskUnblocked: _on_unblocked,
    w.Query: _on_query,
    w.CreateNamedActor: _on_create_named_actor,
    w.KillActor: _on_kill_actor,
    w.CallerLeft: _on_caller_left,
    w.CallSite: _on_call_site,
    w.Goodbye: _on_goodbye,
}


def left(state: SchedulerState, client_id: bytes) -> None:
    """The client is gone (it said goodbye, its connection dropped, or its
    worker left): what it held and what it sealed unheard of are let go."""
    client = state.clients.pop(client_id, None)
    if client is None:
        return
    state.clients_gone[client_id] = None
    if len(state.clients_gone) > CLIENTS_GONE:
        del state.clients_gone[next(iter(state.clients_gone))]
    for task_id in [t for t in state.early_reports if client_of(t) == client_id]:
        # Its record will never come.
        channels.drop_report(state, state.early_reports.pop(task_id))
    for oid in client.held:
        objects.decref(state, oid)
    client.held.clear()
    for worker_id, sealed in state.sealed_by_leaving.pop(client_id, ()):
        free_unheard_of(state, worker_id, sealed)
    for actor_id, in_flight in client.channels_closed.items():
        channels.never_sent(state, client_id, actor_id, in_flight)
    for obj in state.objects.values():
        obj.waiters.discard(client_id)
    if client.via_worker is None:
        _end_job(state, client_id)


def _end_job(state: SchedulerState, job: bytes) -> None:
    """A driver left (said goodbye, was killed, or its connection was lost): as in
    Ray, its job's tasks, its tasks' tasks included, go with it. Those not
    started are dropped, running ones cancelled. Actors are not tasks here: an
    actor lives while a handle to it does (a detached one, for good), and so do
    the calls it was sent; leases end as their driver goes (channels.py)."""
    for task in list(state.tasks.values()):
        spec = task.spec
        if spec.actor_id or spec.actor is not None or w.is_lease(spec):
            continue
        if (spec.job or client_of(spec.task_id)) == job:
            _cancel(state, task.id, force=False, recursive=False)


def free_unheard_of(state: SchedulerState, worker_id: str, sealed: list[bytes]) -> None:
    """A client that is gone sealed these in a worker's store: those it never
    told us of are nobody's."""
    unheard = [oid for oid in sealed if oid not in state.objects]
    if unheard:
        state.send_worker(worker_id, w.FreeObjects(unheard))
