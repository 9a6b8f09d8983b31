"""Placement policy: which worker runs a task. Pure functions over snapshots.

Order of preference (DESIGN.md, decision 6): workers that could ever run the
task, then those with the resources free now, then the most input bytes
already local, then the least loaded. Nothing here mutates state or knows
about messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

EPSILON = 1e-9


class WorkerView(Protocol):
    worker_id: str
    total: dict[str, float]
    available: dict[str, float]
    gpu_free: list[float]


def fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    for name, amount in need.items():
        if amount > 0 and have.get(name, 0.0) + EPSILON < amount:
            return False
    return True


def gpus_fit(num_gpus: float, gpu_free: list[float]) -> bool:
    return pick_gpus(num_gpus, gpu_free) is not None


def pick_gpus(num_gpus: float, gpu_free: list[float]) -> list[int] | None:
    """GPU ids for a task: whole GPUs for whole numbers, a share of one otherwise."""
    if num_gpus <= 0:
        return []
    if num_gpus >= 1:
        whole = [i for i, free in enumerate(gpu_free) if free >= 1 - EPSILON]
        count = round(num_gpus)
        return whole[:count] if len(whole) >= count else None
    for i, free in enumerate(gpu_free):
        if free + EPSILON >= num_gpus:
            return [i]
    return None


def shortfall(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, float]:
    return {
        name: amount - have.get(name, 0.0)
        for name, amount in need.items()
        if amount > 0 and have.get(name, 0.0) + EPSILON < amount
    }


def feasible(need: Mapping[str, float], workers: Iterable[WorkerView]) -> bool:
    return any(fits(need, w.total) for w in workers)


def queueable(need: Mapping[str, float], strategy: str) -> bool:
    """Tasks that need nothing but CPUs may wait in a busy worker's own queue."""
    return strategy == "DEFAULT" and all(k == "CPU" for k, v in need.items() if v > 0)


# How much work, in seconds, a busy CPU may hold in its worker's own queue.
# A queued task saves a round trip to the scheduler (about a millisecond) but
# cannot move to a worker that frees up or joins, so short tasks queue deep
# and long ones not at all.
QUEUE_SECONDS = 0.02


def queue_depth_for(mean_duration: float | None, max_depth: float) -> float:
    """How many CPU-only tasks per CPU a busy worker may queue, given how long they take.

    ``mean_duration`` is what this function's tasks have taken so far (None:
    none has finished yet, so queue one per CPU until we know).
    """
    if mean_duration is None:
        return min(1.0, max_depth)
    return min(max_depth, QUEUE_SECONDS / max(mean_duration, 1e-6))


def choose_worker(
    need: Mapping[str, float],
    strategy: str,
    workers: Iterable[WorkerView],
    local_bytes: Mapping[str, int],
    queue_depth: float = 0.0,
) -> WorkerView | None:
    """The worker that should run the task now, or None if none has room.

    ``local_bytes`` maps worker id to the bytes of the task's inputs already
    stored there. ``strategy`` is "DEFAULT", "SPREAD", "node:<id>" (hard
    affinity) or "node?:<id>" (soft affinity: that node if it has room,
    else anywhere).
    """
    num_gpus = need.get("GPU", 0.0)
    workers = list(workers)
    candidates = [
        w
        for w in workers
        if fits(need, w.available) and (num_gpus <= 0 or gpus_fit(num_gpus, w.gpu_free))
    ]
    if not candidates and queue_depth > 0 and queueable(need, strategy):
        # Every worker is busy: queue a little on the least loaded one, so its
        # executors find their next task without a round trip to us.
        cpus = need.get("CPU", 0.0)
        candidates = [
            w
            for w in workers
            if w.total.get("CPU", 0.0) + EPSILON >= cpus
            and w.available.get("CPU", 0.0) + queue_depth * w.total.get("CPU", 0.0) + EPSILON
            >= cpus
        ]
    if not candidates:
        return None
    if strategy.startswith("node:") or strategy.startswith("node?:"):
        target = strategy.split(":", 1)[1]
        for w in candidates:
            if w.worker_id == target:
                return w
        if strategy.startswith("node:"):
            return None
    if strategy == "SPREAD":
        return min(candidates, key=lambda w: (_load(w), w.worker_id))
    return min(
        candidates,
        key=lambda w: (-local_bytes.get(w.worker_id, 0), _load(w), w.worker_id),
    )


def _load(w: WorkerView) -> float:
    total = w.total.get("CPU", 0.0)
    if total <= 0:
        return 0.0
    return (total - w.available.get("CPU", 0.0)) / total
