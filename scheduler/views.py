"""What the scheduler shows and checks: its answers to queries, its statistics,
and ``validate()``, every invariant recomputed from scratch. Readers only:
nothing here changes the state (``state.py`` and the modules beside it own
every change).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import dispatch, listing, placement
from .actors import is_call
from .history import STATE_NAMES

if TYPE_CHECKING:
    from .records import Obj
    from .state import SchedulerState


def query(state: SchedulerState, what: str, arg: Any = None) -> Any:
    if what == "nodes":
        return [
            {
                "node_id": r.worker_id,
                "alive": True,
                "host": r.info.host,
                "address": r.info.address,
                "pid": r.info.pid,
                "peer": r.info.peer,
                "resources": dict(r.total),
                "available": {k: max(v, 0.0) for k, v in r.available.items()},
            }
            for r in state.workers.values()
        ]
    if what == "cluster_resources":
        return _sum_resources(r.total for r in state.workers.values())
    if what == "available_resources":
        return _sum_resources(
            {k: max(v, 0.0) for k, v in r.available.items()} for r in state.workers.values()
        )
    if what == "statistics":
        return state.statistics()
    if what == "ping":  # a barrier: everything the asker sent before was handled
        return None
    if what == "get_actor":
        return state.actors.get(arg)
    if what == "actors":
        return [state.actors.describe(r) for r in state.actors.actors.values()]
    if what == "memory":
        return state.memory(top=int(arg or 10))
    if what == "tasks":
        return state.task_list()
    if what == "story":
        return state.story(arg)
    if what == "list":
        return listing.listed(state, arg)
    if what == "summary":
        return listing.summary(state, arg["kind"])
    raise ValueError(f"unknown query {what!r}")


def memory(state: SchedulerState, top: int = 10) -> dict[str, Any]:
    """Objects and bytes per node, and the largest objects with who holds them."""
    nodes: dict[str, dict[str, Any]] = {
        r.worker_id: {
            "node_id": r.worker_id,
            "objects": 0,
            "bytes": 0,
            # What the worker's store said in its last heartbeat (once a second):
            "bytes_in_memory": r.store.get("bytes_in_memory", 0),
            "bytes_spilled": r.store.get("bytes_spilled", 0),
            "objects_spilled": r.store.get("objects_spilled", 0),
            "capacity": r.store.get("capacity", 0),
            "bytes_reserved": r.store.get("bytes_reserved", 0),
        }
        for r in state.workers.values()
    }
    inline = {"objects": 0, "bytes": 0}
    sized: list[tuple[int, Obj]] = []
    for obj in state.objects.values():
        if obj.location is not None:
            for loc in (obj.location, *obj.copies.values()):
                node = nodes.get(loc.worker_id)
                if node is not None:
                    node["objects"] += 1
                    node["bytes"] += loc.size
            sized.append((obj.location.size, obj))
        elif obj.data is not None:
            inline["objects"] += 1
            inline["bytes"] += len(obj.data)
            sized.append((len(obj.data), obj))
    sized.sort(key=lambda pair: pair[0], reverse=True)
    largest = []
    for size, obj in sized[:top]:
        clients = [c.client_id.hex() for c in state.clients.values() if obj.id in c.held]
        tasks = [t.spec.name for t in state.tasks.values() if obj.id in t.spec.deps]
        containers = [o.id.hex() for o in state.objects.values() if obj.id in o.contains]
        largest.append(
            {
                "object_id": obj.id.hex(),
                "size": size,
                "node_id": obj.location.worker_id if obj.location else None,
                "held_by": {"clients": clients, "tasks": tasks, "objects": containers},
            }
        )
    return {"nodes": list(nodes.values()), "inline": inline, "largest": largest}


def statistics(state: SchedulerState) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for task in state.tasks.values():
        by_state[task.state] = by_state.get(task.state, 0) + 1
    return {
        "tasks": by_state,
        "tasks_finished": state.tasks_finished,
        "tasks_finished_by_path": dict(state.history.finished_by_path),
        "reports_before_records": len(state.early_reports),
        "reports_asked_for": state.reports_asked_for,
        "reports_through_pipes": sum(rec.piped_reports for rec in state.workers.values()),
        "objects": len(state.objects),
        # Lineage (scheduler/lineage.py): tasks run again to make lost objects, and
        # records of freed objects kept to make again what was made from them.
        "tasks_rebuilt": state.tasks_rebuilt,
        "objects_released": len(state.released),
        "workers": len(state.workers),
        "clients": len(state.clients),
        "transitions": state.transition_count,
    }


def metrics(state: SchedulerState) -> dict[str, Any]:
    """What ``/metrics`` exports of the cluster (scheduler/metrics.py), as plain data:
    tasks by state and function, objects, and each node as of its last heartbeat."""
    tasks: dict[tuple[str, str], int] = {}
    for task in state.tasks.values():
        key = (STATE_NAMES[task.state], task.spec.name)
        tasks[key] = tasks.get(key, 0) + 1
    inline_objects = inline_bytes = 0
    for obj in state.objects.values():
        if obj.location is None and obj.data is not None:
            inline_objects += 1
            inline_bytes += len(obj.data)
    nodes = [
        {
            "node_id": r.worker_id,
            "running": len(r.running),
            "executors": r.executors,
            "resources": dict(r.total),
            "available": {k: max(v, 0.0) for k, v in r.available.items()},
            "store": dict(r.store),
            "system": dict(r.system),
            "transfers": dict(r.transfers),
        }
        for r in state.workers.values()
    ]
    return {
        "tasks": tasks,  # (state, name) -> count, of tasks not finished
        "finished": dict(state.history.finished_by_name),  # (name, state) -> count, ever
        "objects": len(state.objects),
        "inline_objects": inline_objects,
        "inline_bytes": inline_bytes,
        "clients": len(state.clients),
        "transitions": state.transition_count,
        "nodes": nodes,
    }


def validate(state: SchedulerState) -> None:
    """Recompute every invariant from scratch; raise AssertionError on a breach."""
    refs: dict[bytes, int] = dict.fromkeys(state.objects, 0)
    for client in state.clients.values():
        for oid in client.held:
            assert oid in state.objects, f"client holds unknown object {oid.hex()}"
            refs[oid] += 1
    for task in state.tasks.values():
        assert task.state in ("waiting", "ready", "processing"), task.state
        for oid in (*task.spec.deps, *task.spec.nested):
            if oid in refs:
                refs[oid] += 1
        if task.state == "waiting":
            assert task.waiting_on, "waiting task waits on nothing"
            for oid in task.waiting_on:
                assert state.objects[oid].state == "pending"
                assert task in state.objects[oid].dependents
        if task.state == "ready" and is_call(task.spec):
            assert task in state.actors.actors[task.spec.actor_id].calls, "ready call not queued"
        elif task.state == "ready":
            assert task in state.queues.get(task.shape, ()), "ready task not queued"
        if task.state == "processing":
            assert task.worker in state.workers, "processing on unknown worker"
            assert task.id in state.workers[task.worker].running
    for report in state.early_reports.values():
        for oid in report.held:
            refs[oid] += 1
    for obj in state.objects.values():
        for inner in obj.contains:
            if inner in refs:
                refs[inner] += 1
        if obj.state == "pending":
            assert obj.task in state.tasks, "pending object without its task"
        else:
            assert obj.refs > 0, "finished object with no holder was not freed"
            assert not obj.waiters and not obj.dependents
    _validate_lineage(state)
    state.actors.holds(refs)
    for oid, count in refs.items():
        assert state.objects[oid].refs == count, (
            f"object {oid.hex()} counts {state.objects[oid].refs} holders, has {count}"
        )
    for worker in state.workers.values():
        used: dict[str, float] = {}
        for task_id in worker.running:
            task = state.tasks[task_id]
            assert task.state == "processing" and task.worker == worker.worker_id
            for name, amount in task.need.items():
                if name == "CPU" and task.blocked:
                    continue
                used[name] = used.get(name, 0.0) + amount
        state.actors.used(worker.worker_id, used)
        for name, total in worker.total.items():
            expect = total - used.get(name, 0.0)
            got = worker.available.get(name, 0.0)
            assert abs(got - expect) < 1e-6, f"{worker.worker_id} {name}: {got} != {expect}"
        for free in worker.gpu_free:
            assert -1e-6 <= free <= 1 + 1e-6
    state.actors.validate()
    if not state.placement_due and state.workers:
        for queue in state.queues.values():
            for task in queue:
                if task.state == "ready":
                    chosen = placement.choose_worker(
                        task.need,
                        task.spec.strategy,
                        state.workers.values(),
                        {},
                        dispatch.queue_depth(state, task),
                    )
                    assert chosen is None, "a ready task fits a worker but was not placed"
                    break


def _validate_lineage(state: SchedulerState) -> None:
    """Released records are held by lineage alone; each counts the remembered
    tasks that name it (scheduler/lineage.py)."""
    named: dict[bytes, int] = {}
    for obj in (*state.objects.values(), *state.released.values()):
        if obj.lineage is not None:
            for oid in obj.lineage.deps:
                named[oid] = named.get(oid, 0) + 1
    for obj in state.released.values():
        assert obj.id not in state.objects, "an object both live and released"
        assert obj.state == "released" and obj.refs == 0, "a released object is held"
        assert obj.location is None and obj.data is None, "a released object has a value"
    for obj in (*state.objects.values(), *state.released.values()):
        assert obj.lineage_refs == named.get(obj.id, 0), (
            f"object {obj.id.hex()} counts {obj.lineage_refs} tasks naming it, has "
            f"{named.get(obj.id, 0)}"
        )


def _sum_resources(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for name, amount in part.items():
            total[name] = total.get(name, 0.0) + amount
    return total
