"""Object transfer between two worker daemons, next to loopback TCP (issue 3's "≥ 1 GB/s").

The suite's ``transfer_gigabytes`` row on its own, at any size, taskgraph only:
two daemons on this machine told they are different hosts
(``TASKGRAPH_HOST_ID``), an array of ones made on the far one, a task pinned
to the near one that touches it; the time of that task is the pull (plus one
task's overhead). The physical limit is one socket's throughput on loopback.

    python -m benchmarks.transfer [--mb 800] [--repeat 3]

``python -m benchmarks --only transfer_gigabytes --vs ray,dask`` runs the same
workload side by side with Ray and Dask.
"""

from __future__ import annotations

import argparse

from benchmarks import _limit
from benchmarks._measure import timed
from benchmarks._raylike import RayLikeEngine


def daemons_gbps(nbytes: int, repeat: int) -> list[float]:
    engine = RayLikeEngine("taskgraph", two_hosts=True)
    engine.start()
    try:
        work = engine.workload("transfer_gigabytes", nbytes // 8)
        return [work.ops / timed(work) for _ in range(repeat)]
    finally:
        engine.stop()


def loopback_gbps(nbytes: int) -> float:
    work = _limit.loopback_workload(nbytes)
    return work.ops / timed(work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nbytes = args.mb * 1024 * 1024
    rates = daemons_gbps(nbytes, args.repeat)
    limit = max(loopback_gbps(nbytes) for _ in range(args.repeat))
    best = max(rates)
    print(f"daemon to daemon : {best:.2f} GB/s best of {args.repeat} ({args.mb} MiB)")
    print(
        f"loopback TCP     : {limit:.2f} GB/s best of {args.repeat} ({100 * best / limit:.0f}% of it)"
    )


if __name__ == "__main__":
    main()
