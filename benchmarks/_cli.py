"""``python -m benchmarks``: run the groups, system by system, and print the table.

::

    orchestrator (this process, a child subreaper on Linux)
      for each group (tasks, objects, large, transfer, startup, actors, graph):
        for each system (taskgraph, ray, dask, limit):
          python -m benchmarks._child ──JSON events on a pipe──▶ results
            └─ that system's cluster, started and stopped inside it

Systems take turns group by group, so slow drift in the machine touches every
column alike, and only one cluster is ever up. A benchmark that overruns its
time limit has its process tree killed, is recorded as a timeout, and the
group goes on in a fresh process. Processes left behind are reported and
killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import _catalog, _report
from benchmarks._catalog import Benchmark
from benchmarks._measure import Settings
from benchmarks._report import Cell, Results

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0  # a cold Ray start on a loaded 2-core machine can take a while
STOP_TIMEOUT = 60.0
PEER_MODULES = {"ray": ("ray",), "dask": ("dask", "distributed")}
PEERS_HELP = (
    "python3 -m venv .venv-peers && .venv-peers/bin/pip install ray dask distributed "
    "&& .venv-peers/bin/pip install -e . && .venv-peers/bin/python -m benchmarks --vs ray,dask"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="taskgraph microbenchmarks, optionally side by side with Ray and Dask.",
    )
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--vs", default="", help="peers to compare with: ray, dask or ray,dask")
    parser.add_argument("--json", type=Path, help="also write all samples to this file")
    parser.add_argument("--quick", action="store_true", help="small sizes, short repetitions")
    parser.add_argument("--repeat", type=int, help="timed repetitions per benchmark (default 5)")
    parser.add_argument("--no-limit", action="store_true", help="skip the physical-limit column")
    parser.add_argument(
        "--graph-vs-ray", action="store_true", help="also run Ray on the tree and map workloads"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "logs",
        help="where each benchmark process's output goes",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for bench in _catalog.BENCHMARKS:
            labels = "; ".join(row.label for row in bench.rows)
            print(f"{bench.key:20} {bench.group:8} {labels}")
        return 0
    try:
        selected = _catalog.select(args.only)
    except ValueError as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2
    settings = Settings.make(args.quick, args.repeat)
    results = Results(systems=["taskgraph"])
    for peer in [p.strip() for p in args.vs.split(",") if p.strip()]:
        if peer not in _catalog.PEERS:
            print(f"python -m benchmarks: unknown peer {peer!r}; use ray, dask", file=sys.stderr)
            return 2
        missing = [m for m in PEER_MODULES[peer] if importlib.util.find_spec(m) is None]
        if missing:
            message = (
                f"{peer}: not importable from {sys.executable} (missing {', '.join(missing)}); "
                f"its column is skipped. To compare, run: {PEERS_HELP}"
            )
            print(message, file=sys.stderr)
            results.notes.append(message)
        elif peer not in results.systems:
            results.systems.append(peer)
    if not args.no_limit:
        results.systems.append("limit")

    info = _report.machine()
    print(f"machine: {_report.machine_text(info)}", flush=True)
    _become_subreaper()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for group in _catalog.GROUP_ORDER:
        benches = [b for b in selected if b.group == group]
        for system in results.systems:
            runnable = [b for b in benches if _runs_on(b, system, args, results)]
            if runnable:
                _run_group(system, group, runnable, settings, args.log_dir, results)
    elapsed = time.monotonic() - started

    print("\n" + _report.table(results))
    verdicts = _report.targets(results)
    if verdicts:
        print("\nTargets (issue 5 unless marked):\n" + _report.targets_text(verdicts))
    print(f"\n({elapsed:.0f} s; {'quick' if settings.quick else 'full'} mode)", file=sys.stderr)
    if args.json:
        document = {
            "machine": info,
            "command": [Path(sys.executable).name, "-m", "benchmarks", *(argv or sys.argv[1:])],
            "settings": settings.to_dict(),
            "elapsed_s": elapsed,
            "results": _report.to_json(results),
            "targets": verdicts,
            "notes": results.notes,
            "background_cpu_share": results.background,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _runs_on(bench: Benchmark, system: str, args: argparse.Namespace, results: Results) -> bool:
    if system == "taskgraph":
        return True
    if system == "limit":
        return bench.limit
    if system in bench.peers or (system == "ray" and args.graph_vs_ray and bench.group == "graph"):
        return True
    for row in bench.rows:
        results.set(row.key, system, Cell("skip", note=bench.why_no_peer or "not run"))
    return False


# -- one group on one system --------------------------------------------------------------


def _run_group(
    system: str,
    group: str,
    benches: list[Benchmark],
    settings: Settings,
    log_dir: Path,
    results: Results,
) -> None:
    remaining = list(benches)
    attempt = 0
    while remaining:
        attempt += 1
        log_path = log_dir / f"{group}-{system}{'' if attempt == 1 else f'-{attempt}'}.log"
        done = _run_child(system, group, remaining, settings, log_path, results)
        if not done:
            # The cluster did not even start; every benchmark left in the group shares that fate.
            note = f"{system} failed before its first benchmark (log {log_path})"
            for bench in remaining:
                _record(results, bench, system, Cell("error", note=note))
            return
        remaining = [b for b in remaining if b.key not in done]


def _run_child(
    system: str,
    group: str,
    benches: list[Benchmark],
    settings: Settings,
    log_path: Path,
    results: Results,
) -> set[str]:
    """Run benches in one process; return the keys that got an outcome."""
    by_key = {b.key: b for b in benches}
    config = {
        "system": system,
        "group": group,
        "benchmarks": [b.key for b in benches],
        "settings": settings.to_dict(),
    }
    meter = _CpuMeter()
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", json.dumps(config), str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    os.close(write_fd)
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(read_fd, events), daemon=True)
    reader.start()

    done: set[str] = set()
    current: Benchmark | None = None
    rep_started: float | None = None
    rep_ops: float | None = None
    deadline = time.monotonic() + START_TIMEOUT
    phase = f"starting {system}"
    finished = timed_out = False
    while True:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            event = {"event": "timeout"}
        if event is None:  # the child closed its end: exited or crashed
            break
        kind = event["event"]
        now = time.monotonic()
        if kind == "timeout":
            limit = settings.timeout(current) if current is not None else START_TIMEOUT
            timed_out = True
            _kill_tree(proc)
            if current is not None:
                bound = None
                if rep_started is not None and rep_ops is not None and now > rep_started:
                    bound = rep_ops / (now - rep_started)
                note = f"timed out: no result within {limit:.0f} s (process tree killed; log {log_path})"
                _record(results, current, system, Cell("timeout", note=note, upper_bound=bound))
                done.add(current.key)
                _progress(group, system, current, "TIMEOUT")
            else:
                results.notes.append(f"{system} ({group}): timed out while {phase}; log {log_path}")
            break
        if kind == "ready":
            phase = "between benchmarks"
            deadline = now + STOP_TIMEOUT
        elif kind == "start":
            current = by_key[event["key"]]
            rep_started = rep_ops = None
            deadline = now + settings.timeout(current)
        elif kind == "rep":
            rep_started, rep_ops = now, event.get("ops")
        elif kind in ("result", "skip", "error"):
            bench = by_key[event["key"]]
            if kind == "result":
                for row_key, samples in event["samples"].items():
                    results.set(row_key, system, Cell("ok", samples=samples))
            else:
                note = event["note"] + (f" (log {log_path})" if kind == "error" else "")
                _record(results, bench, system, Cell(kind, note=note))
            done.add(bench.key)
            _progress(group, system, bench, _summary(results, bench, system))
            current = None
            phase = "stopping the cluster" if len(done) == len(benches) else "between benchmarks"
            deadline = now + STOP_TIMEOUT
        elif kind == "leak":
            results.notes.append(f"{group}: {event['note']}")
        elif kind == "done":
            finished = True
    code = _reap(proc)
    if not finished and current is not None and current.key not in done:
        note = f"the benchmark process exited with code {code} (log {log_path})"
        _record(results, current, system, Cell("error", note=note))
        done.add(current.key)
        _progress(group, system, current, "CRASHED")
    elif not finished and code != 0 and not timed_out:
        results.notes.append(
            f"{system} ({group}): exited with code {code} while {phase}; log {log_path}"
        )
    _sweep_leftovers(results, f"{system} ({group})")
    reader.join(timeout=5)
    others = meter.others_share()
    results.background[f"{group}/{system}"] = others
    if others >= BUSY_WARNING:
        print(
            f"[{group}] {system:9} other processes used {others:.0%} of the machine meanwhile",
            file=sys.stderr,
        )
    return done


def _read_events(fd: int, events: queue.Queue[dict[str, Any] | None]) -> None:
    with os.fdopen(fd, "r") as channel:
        for line in channel:
            events.put(json.loads(line))
    events.put(None)


def _record(results: Results, bench: Benchmark, system: str, cell: Cell) -> None:
    for row in bench.rows:
        results.set(row.key, system, cell)


def _summary(results: Results, bench: Benchmark, system: str) -> str:
    parts = []
    for row in bench.rows:
        cell = results.get(row.key, system)
        if cell is None:
            continue
        if cell.median is not None:
            parts.append(f"{row.key} {_report.fmt(cell.median)} {row.unit}")
        else:
            parts.append(f"{row.key} {cell.status}: {cell.note}")
    return "; ".join(parts)


def _progress(group: str, system: str, bench: Benchmark, text: str) -> None:
    print(f"[{group}] {system:9} {bench.key:20} {text}", file=sys.stderr, flush=True)


# -- the machine ----------------------------------------------------------------------------

BUSY_WARNING = 0.05


class _CpuMeter:
    """How much of the machine's CPU processes other than ours used over a span.

    Ours: this process and every descendant it (or they) reaped, which is all
    of a cluster once it has shut down cleanly.
    """

    def __init__(self) -> None:
        self.machine = self._machine_busy()
        self.ours = self._our_cpu()
        self.started = time.monotonic()

    def others_share(self) -> float:
        wall = time.monotonic() - self.started
        busy = self._machine_busy() - self.machine
        ours = self._our_cpu() - self.ours
        return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        # guest time is already part of user time, so it is not added.
        parts = ("user", "nice", "system", "irq", "softirq", "steal")
        return sum(getattr(t, name, 0.0) for name in parts)

    @staticmethod
    def _our_cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


# -- processes ------------------------------------------------------------------------------


def _become_subreaper() -> None:
    """Adopt orphans of our children (Linux), so nothing a cluster leaves escapes the sweep."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_child_subreaper = 36
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _reap(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        return proc.wait()


def _sweep_leftovers(results: Results, who: str, grace: float = 5.0) -> None:
    """Processes still here after a benchmark process ended were left behind by it."""
    deadline = time.monotonic() + grace
    while True:
        left = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    p.wait(0)
                else:
                    left.append(p)
            except psutil.Error:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not left:
        return
    names = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"pid {p.pid} ({' '.join(p.cmdline()[:4])})")
            p.kill()
    psutil.wait_procs(left, timeout=5)
    results.notes.append(f"{who} left processes behind after it exited: {', '.join(names)}")
