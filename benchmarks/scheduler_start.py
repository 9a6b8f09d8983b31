"""What starting a local cluster costs: ``tg.init(); tg.shutdown()``'s wall time, and
the scheduler process's CPU seconds (read just before ``shutdown()``: its start-up,
imports included, and the driver's and worker's handshakes).

The CPU figure hardly moves with the host's load, the wall time does; on a shared
host read the CPU. (Issue 14: the dashboard's Bokeh, imported at every start,
was most of it.)

    python -m benchmarks.scheduler_start [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

import taskgraph as tg


def one() -> tuple[float, float]:
    """(wall seconds, the scheduler's CPU seconds) of one start and stop."""
    start = time.perf_counter()
    tg.init(num_cpus=1, logging_level="warning")
    try:
        [scheduler] = [
            p
            for p in psutil.Process().children(recursive=True)
            if "taskgraph.scheduler.cli" in p.cmdline()
        ]
        cpu = scheduler.cpu_times()
    finally:
        tg.shutdown()
    return time.perf_counter() - start, cpu.user + cpu.system


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="starts and stops")
    args = parser.parse_args()
    walls, cpus = zip(*(one() for _ in range(args.runs)), strict=True)
    print(f"tg.init(); tg.shutdown(): {statistics.median(walls):.3f} s wall (median), "
          f"{min(walls):.3f}-{max(walls):.3f}")  # fmt: skip
    print(f"the scheduler's CPU     : {statistics.median(cpus):.3f} s (median), "
          f"{min(cpus):.3f}-{max(cpus):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
