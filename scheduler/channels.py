"""Channel tasks in the scheduler's state machine: tasks that skip its dispatch.

A client may send a task straight down a channel (taskgraph/_channels.py):
to the executor of a lease it holds (taskgraph/_leases.py), or to the process
of an actor it calls directly. The task runs without being placed, but it
keeps one life story (docs/architecture.md, "One road for every task"): its
client records it here and its worker reports it, and the two arrive in
either order::

    client's record ──▶ record() ──▶ processing ──▶ (report) ──▶ memory / erred
    worker's report ──▶ report_early() ── kept ──▶ record() applies it at once

A report whose record will never come (its client left) is dropped, and
what it stored or held is freed (``drop_report``). A task whose channel ended
unreported was lost with its executor (``lease_ended``), or, a direct call,
was never sent by a caller that left (``never_sent``).

Plain functions over ``SchedulerState``, pure like it; task state changes go
through ``state.transition``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._ids import client_of
from taskgraph.exceptions import (
    ActorDiedError,
    OutOfMemoryError,
    TaskCancelledError,
    TaskgraphError,
    WorkerCrashedError,
)

from . import objects, workers
from .actors import is_call
from .records import EarlyReport, Task, WorkerRec, error_bytes

if TYPE_CHECKING:
    from .state import SchedulerState


def record(state: SchedulerState, task: Task) -> None:
    """A task its client sent straight to an executor (a lease, or an actor's
    process): record it as running there, or apply its report if it came first."""
    spec = task.spec
    early = state.early_reports.pop(task.id, None)
    if early is not None:
        worker_id: str | None = early.worker_id
    elif is_call(spec):
        rec = state.actors.actors.get(spec.actor_id)
        worker_id = rec.worker if rec is not None and rec.state == "alive" else None
    else:
        lease = state.tasks.get(spec.channel)
        worker_id = lease.worker if lease is not None and lease.state == "processing" else None
    worker = state.workers.get(worker_id or "")
    if worker is None:
        # The channel ended before we heard of the task, and nobody reported
        # it (or its worker left since): its executor died with it, or (an
        # actor) its process is gone.
        if early is not None:
            drop_report(state, early)
        if is_call(spec):
            dead = state.actors.call_error(spec) or error_bytes(
                ActorDiedError(spec.actor_id.hex(), "its process is gone")
            )
            state.transition(task, "erred", dead)
        else:
            why = WorkerCrashedError(
                "its leased executor went away",
                task_name=spec.name,
                exit_code=state.leases_ended.get(spec.channel),
            )
            workers.lost(state, task, why)
        return
    state.transition(task, "processing", worker)
    if early is not None:
        workers.task_done(state, worker, early.result)
        for oid in early.held:  # the returns hold them now
            objects.decref(state, oid)


def report_early(state: SchedulerState, worker: WorkerRec, result: w.TaskResult) -> None:
    """A channel task's report before its record: kept (with what its returns
    hold) for the record to apply, unless its client is gone."""
    report = EarlyReport(worker.worker_id, result, [])
    if client_of(result.task_id) in state.clients_gone:
        drop_report(state, report)  # nobody will record it
        return
    for ret in result.returns:
        for inner in ret.contains:
            if inner in state.objects:
                state.objects[inner].refs += 1
                report.held.append(inner)
    state.early_reports[result.task_id] = report


def drop_report(state: SchedulerState, report: EarlyReport) -> None:
    """Forget a report no record will apply: what it stored and held is nobody's."""
    stored = [r.object_id for r in report.result.returns if r.location is not None]
    if stored and report.worker_id in state.workers:
        state.send_worker(report.worker_id, w.FreeObjects(stored))
    for oid in report.held:
        objects.decref(state, oid)


def lease_ended(state: SchedulerState, lease: Task, result: w.TaskResult) -> None:
    """Tasks still running on a lease that ended were never reported: its
    executor died (or was killed to cancel one of them)."""
    worker = state.workers[lease.worker or ""]
    exit_code = result.exit_code if result.failure in ("crashed", "oom") else None
    for task_id in state.lease_tasks.pop(lease.id, ()):
        task = state.tasks[task_id]
        worker.running.discard(task_id)
        why: TaskgraphError
        if result.failure == "oom":  # the memory monitor killed the lease's executor
            why = OutOfMemoryError(task.spec.name, node=worker.worker_id, task_id=task.id.hex())
        else:
            why = WorkerCrashedError(
                "its leased executor went away", task_name=task.spec.name, exit_code=exit_code
            )
        workers.lost(state, task, why)


def never_sent(
    state: SchedulerState, client_id: bytes, actor_id: bytes, in_flight: set[bytes]
) -> None:
    """Calls a departed caller recorded but never sent (held for a ping when it
    left): they will not run, and let go of what they hold."""
    rec = state.actors.actors.get(actor_id)
    if rec is None:
        return
    for task in list(rec.running.values()):
        if task.spec.channel and client_of(task.id) == client_id and task.id not in in_flight:
            worker = state.workers.get(task.worker or "")
            if worker is not None:
                state.release_resources(worker, task)
            task.worker = None
            why = TaskCancelledError(task.spec.name, task.id.hex())
            state.transition(task, "cancelled", error_bytes(why))
