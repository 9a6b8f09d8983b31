"""``python -m benchmarks.profile``: where taskgraph's time goes under a benchmark's load.

Starts a local cluster, warms the workload up, then samples every process of
the cluster with py-spy (``record --nonblocking --gil``: only the thread that
holds the GIL, so only CPU spent running Python) while this process, the
driver, runs the workload in a loop:

    driver (this process)  ──▶ scheduler ──▶ worker daemon ──▶ executors
      py-spy record --pid …       each sampled by its own py-spy, same window

It prints, per process, the functions with the most samples: *self* (the
function itself was on top of the stack) and *total* (anywhere on the
stack), as shares of that process's busy samples. The raw stacks are kept
(collapsed format: ``flamegraph.pl`` or speedscope read them).

Needs py-spy (``pip install py-spy``) and permission to ptrace the cluster.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks._raylike import RayLikeEngine
from benchmarks._report import fmt

ROOT = Path(__file__).resolve().parent.parent
ROLES = (
    ("scheduler", "taskgraph.scheduler.cli"),
    ("worker daemon", "taskgraph.worker.cli"),
    ("executor", "taskgraph.worker.executor"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--workload", default="tasks_async", help="a rate benchmark's key")
    parser.add_argument("--size", type=int, default=1000, help="items per iteration")
    parser.add_argument("--seconds", type=float, default=15.0, help="sampling window")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12, help="functions shown per process")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile")
    args = parser.parse_args(argv)

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for role, _marker in (("driver", ""), *ROLES):
        for old in args.out.glob(f"{role.replace(' ', '_')}-[0-9]*.txt"):
            old.unlink()  # an earlier run's stacks: keep only this run's

    engine = RayLikeEngine("taskgraph")
    engine.start()
    try:
        work = engine.workload(args.workload, args.size)
        _loop(work.run, 1.0)
        targets = [("driver", os.getpid()), *_cluster_processes()]
        recorders = []
        for role, pid in targets:
            raw = args.out / f"{role.replace(' ', '_')}-{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate)]
            command += ["--duration", str(int(args.seconds)), "--format", "raw"]
            # --gil: only the thread holding the GIL, i.e. where Python spends CPU.
            # Without it, threads blocked in SimpleQueue.get or a lock count as busy.
            command += ["--output", str(raw), "--nonblocking", "--gil"]
            recorders.append(
                (
                    role,
                    pid,
                    raw,
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                )
            )
        time.sleep(0.5)  # let the samplers attach before the measured window
        before = _cpu_seconds(targets)
        started = time.perf_counter()
        iterations = _loop(work.run, args.seconds + 1.0)
        elapsed = time.perf_counter() - started
        after = _cpu_seconds(targets)
        rate = iterations * work.ops / elapsed
        scheduler = next((pid for role, pid in targets if role == "scheduler"), None)
        if scheduler is not None:
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(scheduler), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            (args.out / "scheduler-dump.txt").write_text(dump.stdout + dump.stderr)
        for _role, _pid, _raw, proc in recorders:
            proc.wait(timeout=args.seconds + 60)
    finally:
        engine.stop()

    print(f"# Profile: {args.workload} (size {args.size}), {args.seconds:.0f} s at {args.rate} Hz")
    print(f"\nthroughput while sampled: {fmt(rate)} per second (ops of the workload)\n")
    print(_cpu_table(targets, before, after, elapsed, iterations * work.ops))
    for role, pid, raw, proc in recorders:
        if proc.returncode != 0 or not raw.exists():
            error = proc.stderr.read().decode() if proc.stderr else ""
            print(f"## {role} (pid {pid}): py-spy failed: {error.strip()}\n")
            continue
        print(_summary(role, pid, raw, args.rate, args.seconds, args.top, rate))
    print(f"raw stacks: {args.out}")
    return 0


def _loop(run: object, seconds: float) -> int:
    assert callable(run)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        run()
        count += 1
    return count


def _cpu_seconds(targets: list[tuple[str, int]]) -> dict[int, float]:
    """User + system CPU seconds of each process so far (all threads, GIL held or not)."""
    out = {}
    for _role, pid in targets:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def _cpu_table(
    targets: list[tuple[str, int]],
    before: dict[int, float],
    after: dict[int, float],
    elapsed: float,
    ops: float,
) -> str:
    """CPU each process spent in the window, as the kernel counts it (psutil)."""
    lines = [
        "CPU per process over the window (psutil: all threads, system calls included; "
        "py-spy's --gil samples below see only Python holding the GIL)\n",
        "| process | pid | share of one core | CPU per op |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = 0.0
    for role, pid in targets:
        if pid not in before or pid not in after:
            continue
        spent = after[pid] - before[pid]
        total += spent
        lines.append(f"| {role} | {pid} | {spent / elapsed:.0%} | {spent / ops * 1e6:.0f} us |")
    lines.append(f"| **all** | | **{total / elapsed:.0%}** | **{total / ops * 1e6:.0f} us** |")
    return "\n".join(lines) + "\n"


def _cluster_processes() -> list[tuple[str, int]]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for role, marker in ROLES:
            if marker in cmdline:
                found.append((role, proc.pid))
    return found


def _summary(
    role: str, pid: int, raw: Path, rate: int, seconds: float, top: int, throughput: float
) -> str:
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    busy = total / (rate * seconds)
    per_op = busy / throughput * 1e6 if throughput > 0 else float("nan")
    lines = [
        f"## {role} (pid {pid}): {total} samples holding the GIL, {busy:.0%} of the window, "
        f"{per_op:.0f} us per op\n"
    ]
    if not total:
        return "\n".join(lines)
    lines += ["| self % | function |", "| ---: | --- |"]
    lines += [f"| {n / total * 100:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| total % | function |", "| ---: | --- |"]
    lines += [f"| {n / total * 100:.1f} | `{name}` |" for name, n in anywhere.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file/relative.py)``, lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


if __name__ == "__main__":
    sys.exit(main())
