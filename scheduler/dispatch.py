"""The scheduler's dispatch: ready tasks leave their queues for workers with room.

A ready task waits in ``state.queues``, one queue per shape (its resources
and strategy), until ``place`` finds it a worker (``placement.py`` chooses
which) and moves it to ``processing``. ``place`` runs once at the end of
``handle`` when capacity or ready tasks changed (``state.placement_due``),
not once per event. Here too: what happens to a ready task that cannot go
yet (an argument lost meanwhile, leases in the way) and the warnings a
client gets for a task no worker could run.

Plain functions over ``SchedulerState``, pure like it; task state changes
go through ``state.transition``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskgraph import _wire as w

from . import placement

if TYPE_CHECKING:
    from .records import Task
    from .state import SchedulerState


def place(state: SchedulerState) -> None:
    """Hand each queue's ready tasks, in order, to workers while one has room."""
    state.placement_due = False
    state.stimulus = ("placement",)
    workers = list(state.workers.values())
    if not workers:
        return
    for _shape, queue in state.queues.items():
        while queue:
            task = queue[0]
            if task.state != "ready":
                queue.popleft()  # cancelled or failed while queued
                continue
            local = local_bytes(state, task)
            if local is None:  # an argument was lost since it became ready
                queue.popleft()
                _argument_lost(state, task)
                continue
            worker = placement.choose_worker(
                task.need, task.spec.strategy, workers, local, queue_depth(state, task)
            )
            if worker is None:
                if state.leases and not w.is_lease(task.spec):
                    _revoke_leases(state, task)
                break
            queue.popleft()
            gpu_ids = placement.pick_gpus(task.need.get("GPU", 0.0), worker.gpu_free) or []
            state.transition(task, "processing", worker, gpu_ids)
    state.placement_due = False


def queue_depth(state: SchedulerState, task: Task) -> float:
    """How many tasks like this one a busy worker may hold in its own queue, as
    a fraction of its CPUs (0: only as many as it has CPUs free)."""
    if state.queue_depth <= 0 or task.spec.actor is not None:
        # An actor's creation starts a process of its own at once wherever it
        # goes: queued on a busy worker, it would run beside the tasks that
        # hold those CPUs. It waits here, as in Ray, until a CPU is free.
        return 0.0
    mean = state.durations.get(task.spec.function_id)
    return placement.queue_depth_for(mean, state.queue_depth)


def local_bytes(state: SchedulerState, task: Task) -> dict[str, int] | None:
    """Bytes of the task's arguments on each worker; None if one is not ready
    (lost since the task became ready: being made again, or failed)."""
    local: dict[str, int] = {}
    for oid in task.spec.deps:
        obj = state.objects[oid]
        if obj.state != "ready":
            return None
        if obj.location is not None:
            for loc in (obj.location, *obj.copies.values()):
                local[loc.worker_id] = local.get(loc.worker_id, 0) + loc.size
    return local


def _argument_lost(state: SchedulerState, task: Task) -> None:
    """A ready task's argument was lost: it waits while the argument is made
    again (lineage.py), or fails with the argument's error."""
    args = [state.objects[oid] for oid in task.spec.deps]
    if any(obj.state == "pending" for obj in args):
        state.transition(task, "waiting")
        return
    failed = next(obj for obj in args if obj.state == "error")
    state.transition(task, "erred", failed.error)


def _revoke_leases(state: SchedulerState, waiting: Task) -> None:
    """A task waits for resources: leases held on workers that could run it end.

    A lease keeps its resources between the tasks its client sends; they
    go back when someone else needs them (its executor ends it as if idle).
    """
    for lease_id in list(state.leases):
        lease = state.tasks.get(lease_id)
        if lease is None or lease.state not in ("waiting", "ready", "processing"):
            state.leases.discard(lease_id)
            continue
        if lease.state != "processing":
            continue
        assert lease.worker is not None
        worker = state.workers.get(lease.worker)
        if worker is not None and placement.fits(waiting.need, worker.total):
            state.leases.discard(lease_id)
            state.send_worker(lease.worker, w.CancelRunning(lease_id))


# -- tasks no worker can run ---------------------------------------------------


def warn_missing_node(state: SchedulerState, task: Task, node: str) -> None:
    """Tell the task's owner, once per shape, that the node it must run on is not here."""
    client = state.clients.get(task.owner)
    if client is None or task.shape in client.warned_shapes:
        return
    client.warned_shapes.add(task.shape)
    text = (
        f"task '{task.spec.name}' ({task.id.hex()}) must run on node {node}, which is not "
        f"in the cluster; it waits until that node joins. Use soft=True to run elsewhere."
    )
    state.send_client(client.client_id, w.Notice("warning", text))


def warn_infeasible(state: SchedulerState, task: Task) -> None:
    """Tell the task's owner, once per shape, that no worker could ever run it,
    and by how much the closest one falls short."""
    client = state.clients.get(task.owner)
    if client is None or task.shape in client.warned_shapes:
        return
    client.warned_shapes.add(task.shape)
    need = ", ".join(f"{k}: {v:g}" for k, v in sorted(task.need.items()))
    if state.workers:
        best = max(
            state.workers.values(),
            key=lambda r: -sum(placement.shortfall(task.need, r.total).values()),
        )
        have = ", ".join(f"{k}: {v:g}" for k, v in sorted(best.total.items()))
        short = ", ".join(
            f"{k} by {v:g}" for k, v in sorted(placement.shortfall(task.need, best.total).items())
        )
        where = f"the closest worker has {{{have}}} (short of {short})"
    else:
        where = "no worker has joined the cluster yet"
    text = (
        f"task '{task.spec.name}' ({task.id.hex()}) cannot be scheduled now: it needs "
        f"{{{need}}} and {where}. It will run when a worker that fits joins; "
        f"otherwise lower its resource request."
    )
    state.send_client(client.client_id, w.Notice("warning", text))
