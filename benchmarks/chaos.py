"""A map -> reduce graph while worker daemons are SIGKILLed under it (issue 15).

Three worker daemons on this machine: the local cluster's own and two more.
``--maps`` tasks each make an array of ``--mb`` MiB (after ``--map-ms`` of
work); ``--reduces`` tasks each
take ``maps / reduces`` of them and return the sum of their first elements.
While the graph runs, every ``--kill-every`` seconds one of the two extra
daemons is SIGKILLed and a new one started in its place, for ``--for``
seconds (``--kill-every 0``: none; ``--kill-once``: one daemon killed once,
a second into the run). Objects lost with a daemon are made again from their
lineage; every result is checked.

    python -m benchmarks.chaos                      # 10k maps -> 500 reduces, kills every 5 s for 60 s
    python -m benchmarks.chaos --map-ms 15         # a graph that outlasts the 60 s of kills
    python -m benchmarks.chaos --kill-once
    python -m benchmarks.chaos --kill-every 0       # no kills: how many map outputs live at once

Prints the wall time, whether every result was right, the tasks run again to
make lost objects (the scheduler's ``tasks_rebuilt``), the daemons killed,
and the most map outputs alive at once (from the task records: a map's
output lives from its map's end to its reduce's end).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

import taskgraph as tg
from taskgraph.util.state import cluster_statistics, list_tasks


@tg.remote(max_retries=10)
def make_block(i: int, n: int, busy_s: float) -> np.ndarray:
    until = time.perf_counter() + busy_s
    while time.perf_counter() < until:
        pass
    return np.full(n, i, dtype=np.int64)


@tg.remote(max_retries=10)
def first_elements_sum(*blocks: np.ndarray) -> int:
    return int(sum(int(b[0]) for b in blocks))


class Daemons:
    """The extra worker daemons, killed and started again on a timer."""

    def __init__(self, count: int, cpus: int) -> None:
        runtime = tg._api._runtime
        assert runtime is not None and runtime.cluster is not None
        self.address = runtime.address
        self.env = dict(os.environ, TASKGRAPH_TOKEN=runtime.cluster.token)
        self.cpus = cpus
        self.procs = [self._start() for _ in range(count)]
        self.killed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskgraph.worker.cli",
                self.address,
                "--num-cpus",
                str(self.cpus),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_one(self) -> None:
        slot = self.killed % len(self.procs)
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()
        self.killed += 1
        self.procs[slot] = self._start()

    def keep_killing(self, every: float, seconds: float, first: float | None = None) -> None:
        def run() -> None:
            end = time.monotonic() + seconds
            wait = every if first is None else first
            while not self._stop.wait(wait) and time.monotonic() < end:
                self.kill_one()
                wait = every

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def build(
    maps: int, reduces: int, n: int, busy_s: float = 0.0
) -> tuple[list[tg.ObjectRef], list[int]]:
    """Each reduce with its maps, submitted in that order (as a program would)."""
    per = maps // reduces
    refs, expected = [], []
    for r in range(reduces):
        seeds = range(r * per, (r + 1) * per)
        refs.append(first_elements_sum.remote(*[make_block.remote(i, n, busy_s) for i in seeds]))
        expected.append(sum(seeds))
    return refs, expected


def peak_live_outputs(records: list[dict[str, Any]]) -> int:
    """The most map outputs alive at once: each from its map's end to its reduce's end."""
    events: list[tuple[float, int]] = []

    def ends(name: str) -> list[float]:
        return sorted(
            r["end_time_ms"]
            for r in records
            if r["name"].endswith(name) and r["state"] == "FINISHED" and r["end_time_ms"]
        )

    reduce_ends, map_ends = ends("first_elements_sum"), ends("make_block")
    if not reduce_ends or not map_ends:
        return 0
    per = max(1, round(len(map_ends) / len(reduce_ends)))
    events += [(t, 1) for t in map_ends]
    events += [(t, -per) for t in reduce_ends]
    live = peak = 0
    for _, change in sorted(events):
        live += change
        peak = max(peak, live)
    return peak


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TASKGRAPH_TASK_EVENTS", str(args.maps + args.reduces + 1000))
    tg.init(num_cpus=args.cpus, include_dashboard=False)
    daemons = Daemons(2, args.cpus)
    try:
        while len(tg.nodes()) < 3:
            time.sleep(0.05)
        rebuilt_before = cluster_statistics()["tasks_rebuilt"]
        began = time.perf_counter()
        refs, expected = build(
            args.maps, args.reduces, int(args.mb * (1 << 20)) // 8, args.map_ms / 1000
        )
        if args.kill_once:
            daemons.keep_killing(every=3600, seconds=2, first=1.0)
        elif args.kill_every > 0:
            daemons.keep_killing(every=args.kill_every, seconds=args.seconds)
        got = tg.get(refs, timeout=args.timeout)
        wall = time.perf_counter() - began
        daemons.stop()
        records = list_tasks(limit=0, detail=False)
        return {
            "wall_s": wall,
            "correct": got == expected,
            "tasks_rebuilt": cluster_statistics()["tasks_rebuilt"] - rebuilt_before,
            "daemons_killed": daemons.killed,
            "peak_live_map_outputs": peak_live_outputs(records),
        }
    finally:
        daemons.stop()
        tg.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maps", type=int, default=10_000)
    parser.add_argument("--reduces", type=int, default=500)
    parser.add_argument("--mb", type=float, default=1.0, help="MiB per map output")
    parser.add_argument("--map-ms", type=float, default=0.0, help="CPU time each map spends")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per worker daemon")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds; 0: no kills")
    parser.add_argument("--for", dest="seconds", type=float, default=60.0)
    parser.add_argument("--kill-once", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    report = run(args)
    for key, value in report.items():
        print(f"{key:24} {value:.1f}" if isinstance(value, float) else f"{key:24} {value}")
    return 0 if report["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
