"""This host's resources and load: what a worker offers when it starts, and the
CPU and memory use its heartbeats carry (the scheduler's /metrics)."""

from __future__ import annotations

import functools
import os
import re
import subprocess

import psutil

from taskgraph._options import ACCELERATOR_PREFIX

# Ray's reading of an NVIDIA GPU's name: the first all-capitals word after the
# maker ("Tesla V100-SXM2-16GB" -> "V100", "NVIDIA H100 80GB HBM3" -> "H100").
_GPU_MODEL = re.compile(r"\w+\s+([A-Z0-9]+)")


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
        names = _gpu_names()
        kind = accelerator_type_of(names[0]) if names else None
        if kind:  # as Ray's workers do: accelerator_type="A100" runs here
            resources[ACCELERATOR_PREFIX + kind] = 1.0
    for name, amount in (custom or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"set {name} with --num-{name.lower()}s, not in custom resources")
        resources[name] = float(amount)
    return resources


def detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len(_gpu_names())


@functools.cache
def _gpu_names() -> list[str]:
    """The names of this host's NVIDIA GPUs (one nvidia-smi run); [] without any."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def accelerator_type_of(gpu_name: str) -> str | None:
    """The accelerator type a GPU's name says, as Ray reads it (``NVIDIA_A100``'s "A100");
    a name without such a word (a GeForce card) gives its words joined by hyphens."""
    match = _GPU_MODEL.match(gpu_name)
    if match and len(match.group(1)) > 1:
        return match.group(1)
    cleaned = re.sub(r"^NVIDIA\s+", "", gpu_name).strip()
    return cleaned.replace(" ", "-") or None


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
