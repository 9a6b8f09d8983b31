"""This host's resources and load: what a worker offers when it starts, and the
CPU and memory use its heartbeats carry (the scheduler's /metrics)."""

from __future__ import annotations

import os
import subprocess

import psutil


def default_resources(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    custom: dict[str, float] | None = None,
) -> dict[str, float]:
    resources: dict[str, float] = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "memory": float(memory if memory is not None else psutil.virtual_memory().available * 0.7),
    }
    gpus = num_gpus if num_gpus is not None else detect_gpus()
    if gpus:
        resources["GPU"] = float(gpus)
    for name, amount in (custom or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"set {name} with --num-{name.lower()}s, not in custom resources")
        resources[name] = float(amount)
    return resources


def detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.stdout.splitlines() if line.strip()])


def system_stats() -> dict[str, float]:
    """This host's CPU and memory use, for the heartbeat (the scheduler's /metrics).

    CPU is the share used since the previous call (psutil keeps the last
    reading), so the first heartbeat says 0.
    """
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_used": float(memory.total - memory.available),
        "memory_total": float(memory.total),
    }
