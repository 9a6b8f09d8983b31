"""Workers in the scheduler's state machine: joining, leaving, and what they tell it.

A worker joins with its resources and leaves when its connection drops or
its heartbeats stop (``check_heartbeats`` on each ``Tick``). What ran there
is lost with it: a running task is retried while it may be (``lost``), an
object whose only copy was there is made again by running its task again
(``lineage.py``) or fails, and the clients it relayed (its executors) leave
with it.

What a worker sends: task reports (``task_done``: a result, a failure or a
crash, decided here), copies of objects it pulled, its actors' starts and
deaths, heartbeats with its store's numbers, and its executors' client
messages (``FromClient``: handled as any client's, ``clients.py``).

Plain functions over ``SchedulerState``, pure like it; task state changes go
through ``state.transition``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from taskgraph import _wire as w
from taskgraph.exceptions import (
    NodeDiedError,
    TaskCancelledError,
    TaskgraphError,
    WorkerCrashedError,
)

from . import channels, clients, lineage
from .actors import is_call
from .records import ClientRec, Task, WorkerRec, error_bytes

if TYPE_CHECKING:
    from .state import SchedulerState

LEASES_ENDED = 10_000  # ended leases remembered (a late record of their tasks)


def joined(state: SchedulerState, info: w.WorkerInfo) -> None:
    state.workers_changed()
    if info.worker_id in state.workers:
        # A worker restarted under its old id before its old connection was
        # seen to drop: what ran and was stored there is gone all the same.
        left(state, info.worker_id, "it joined again")
    total = dict(info.resources)
    gpus = int(total.get("GPU", 0))
    state.workers[info.worker_id] = WorkerRec(
        info.worker_id, info, total, dict(total), [1.0] * gpus, last_seen=state.now
    )
    state.wake_placement()


def message(state: SchedulerState, worker: WorkerRec, msg: Any) -> None:
    state.stimulus = (type(msg).__name__, "worker", worker.worker_id)
    if isinstance(msg, w.TasksDone):
        for result in msg.results:
            task_done(state, worker, result)
    elif isinstance(msg, w.FromClient):
        if msg.client_id not in state.clients:
            host = worker.info.host  # an executor's: its worker's
            state.clients[msg.client_id] = ClientRec(msg.client_id, worker.worker_id, "", host)
        client = state.clients[msg.client_id]
        for inner in msg.messages:
            clients.message(state, client, inner)
    elif isinstance(msg, w.ClientGone):
        clients.left(state, msg.client_id)
    elif isinstance(msg, w.StoreClientGone):
        if msg.client_id in state.clients:  # what it sent us may still be on the way
            state.sealed_by_leaving.setdefault(msg.client_id, []).append(
                (worker.worker_id, msg.object_ids)
            )
        else:
            clients.free_unheard_of(state, worker.worker_id, msg.object_ids)
    elif isinstance(msg, w.ObjectCopied):
        obj = state.objects.get(msg.object_id)
        if obj is None or obj.location is None:
            # Freed while it travelled: the copy has no holder either.
            state.send_worker(worker.worker_id, w.FreeObjects([msg.object_id]))
        elif msg.location.worker_id != obj.location.worker_id:
            obj.copies[worker.worker_id] = msg.location
            worker.segments[msg.object_id] = msg.location.store
    elif isinstance(msg, w.ActorDied):
        state.actors.died(msg, worker.worker_id)
    elif isinstance(msg, w.ActorStarted):
        state.actors.started(msg)
    elif isinstance(msg, w.Heartbeat):
        worker.executors = msg.executors
        worker.executor_pids = msg.executor_pids
        worker.piped_reports = msg.piped_reports
        if msg.store is not None:
            worker.store = msg.store
        if msg.system is not None:
            worker.system = msg.system
        if msg.transfers is not None:
            worker.transfers = msg.transfers
    else:
        raise TypeError(f"a worker may not send {type(msg).__name__}")


def task_done(state: SchedulerState, worker: WorkerRec, result: w.TaskResult) -> None:
    task = state.tasks.get(result.task_id)
    if task is None and result.channel:
        channels.report_early(state, worker, result)
        return
    if task is None or task.state != "processing" or task.worker != worker.worker_id:
        return  # stale report of a task that moved on (e.g. retried elsewhere)
    if result.started:
        task.started, task.ended = result.started, result.started + result.duration
    task.pid, task.phases, task.error_type = result.pid, result.phases, result.error_type
    if w.is_lease(task.spec):
        # Its tasks' records may still come (they gather in the client): they
        # are then lost with the same cause (the exit code of a crash).
        state.leases_ended[task.id] = (
            result.exit_code if result.failure in ("crashed", "oom") else None
        )
        if len(state.leases_ended) > LEASES_ENDED:
            del state.leases_ended[next(iter(state.leases_ended))]
    if task.id in state.lease_tasks:
        channels.lease_ended(state, task, result)
    if task.spec.actor is not None:
        state.actors.creation_done(worker, task, result)
        return
    state.release_resources(worker, task)
    if not result.failure:
        if result.duration > 0:
            fid = task.spec.function_id
            mean = state.durations.get(fid)
            # A moving mean: recent tasks count most, one outlier does not swing it.
            state.durations[fid] = (
                result.duration if mean is None else 0.8 * mean + 0.2 * result.duration
            )
        state.transition(task, "memory", result)
        return
    if result.failure == "input" and not task.cancel_requested:
        _input_lost(state, task, result)
        return
    if result.failure == "cancelled" or task.cancel_requested:
        err = result.error or error_bytes(TaskCancelledError(task.spec.name, task.id.hex()))
        state.transition(task, "cancelled", err)
    elif task.retries_left > 0 and (
        result.failure in ("crashed", "oom")  # (oom: the memory monitor killed it)
        or (task.spec.retry_exceptions and not result.no_retry and not task.spec.channel)
    ):
        task.retries_left -= 1
        state.transition(task, "ready")
    else:
        error = result.error
        if error is None:
            error = error_bytes(
                WorkerCrashedError(f"task '{task.spec.name}' failed without an error")
            )
        elif result.failure == "crashed" and 0 < task.spec.max_retries < w.FOREVER:
            # The daemon's error tells of this try alone: say that all were used.
            error = error_bytes(
                WorkerCrashedError(
                    f"its last try ran in executor {result.pid or '?'} of worker {worker.worker_id}",
                    task_name=task.spec.name,
                    exit_code=result.exit_code,
                    attempts=task.spec.max_retries + 1,
                )
            )
        state.transition(task, "erred", error)


def _input_lost(state: SchedulerState, task: Task, result: w.TaskResult) -> None:
    """The task could not read an argument: its copy is gone (its holder left,
    maybe before we heard). The task waits while it is made again, runs again
    where another copy is, or fails as the argument did. Not a retry of its own."""
    obj = state.objects.get(result.lost)
    if obj is None or result.lost not in task.spec.deps or is_call(task.spec):
        # (an actor's call fails: its place in the actor's order cannot wait)
        state.transition(task, "erred", result.error)
        return
    task.worker = None
    if task.spec.channel:  # it came down a lease: from now on it is placed as any task
        running = state.lease_tasks.get(task.spec.channel)
        if running is not None:
            running.discard(task.id)
        task.spec = msgspec.structs.replace(task.spec, channel=b"")
        task.need = dict(task.spec.resources)
    # (a late report may name a copy that is gone already, the object made again since)
    lineage.copy_unreadable(state, obj, result.lost_from)
    if obj.state == "pending":
        state.transition(task, "waiting")
    elif obj.state == "ready":
        state.transition(task, "ready")
    else:
        state.transition(task, "erred", obj.error)


def left(state: SchedulerState, worker_id: str, reason: str) -> None:
    state.workers_changed()
    worker = state.workers.pop(worker_id, None)
    if worker is None:
        return
    # Actors first: a client leaving with the worker may drop an actor's last
    # handle, and the actor must by then hold nothing on this worker.
    state.actors.worker_left(worker)
    for client_id in [c.client_id for c in state.clients.values() if c.via_worker == worker_id]:
        clients.left(state, client_id)
    for task_id in list(worker.running):
        task = state.tasks.get(task_id)
        if task is None:
            continue  # a lease's task, dealt with as its lease ended
        why = NodeDiedError(
            f"the worker {worker_id} running task '{task.spec.name}' left the cluster ({reason})"
        )
        lost(state, task, why)
    gone = []
    for oid in list(worker.segments):
        obj = state.objects.get(oid)
        if obj is None:
            continue
        obj.copies.pop(worker_id, None)
        if obj.location is None or obj.location.worker_id != worker_id:
            continue
        if obj.copies:  # another worker pulled a copy: it becomes the original
            obj.location = obj.copies.pop(next(iter(obj.copies)))
            continue
        obj.location = None
        gone.append(obj)
    lineage.lost(state, gone, worker_id)  # made again, or failed
    state.wake_placement()


def lost(state: SchedulerState, task: Task, why: TaskgraphError) -> None:
    """A running task lost with its process or its node: cancelled if that was
    asked, else retried while it may be (the usual way, a channel's too), else
    failed with ``why``."""
    running = state.lease_tasks.get(task.spec.channel)
    if running is not None:
        running.discard(task.id)
    task.worker = None
    task.blocked = False
    if task.cancel_requested:
        err = TaskCancelledError(task.spec.name, task.id.hex())
        state.transition(task, "cancelled", error_bytes(err))
    elif task.retries_left > 0:
        task.retries_left -= 1
        if task.spec.channel:
            task.spec = msgspec.structs.replace(task.spec, channel=b"")
            task.need = dict(task.spec.resources)
        state.transition(task, "ready")
    else:
        state.transition(task, "erred", error_bytes(why))


def check_heartbeats(state: SchedulerState) -> None:
    """A worker silent for longer than ``worker_timeout`` is gone (its host may be)."""
    for worker in list(state.workers.values()):
        if state.now - worker.last_seen > state.worker_timeout:
            silent = state.now - worker.last_seen
            state.send_worker(worker.worker_id, w.Shutdown(f"silent for {silent:.0f} s"))
            left(state, worker.worker_id, f"no heartbeat for {silent:.0f} s")
