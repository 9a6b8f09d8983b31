"""Process results in the order tasks finish, and stop waiting for stragglers.

``tg.wait(refs, num_returns=1)`` returns as soon as any one of the refs is
ready, so a loop over it handles each result the moment it exists rather
than in submission order. With a ``timeout``, ``wait`` returns whatever is
ready by then; the rest can be cancelled.

    python examples/wait_in_finishing_order.py
"""

from __future__ import annotations

import itertools
import time

import taskgraph as tg
from taskgraph.exceptions import TaskCancelledError

DELAYS = (0.8, 0.6, 0.4, 0.2, 0.0)  # submitted slowest first
TOLERANCE = 0.05  # seconds: finishes closer than this count as simultaneous


@tg.remote
def sleep_for(seconds: float) -> tuple[float, float]:
    time.sleep(seconds)
    return seconds, time.time()


def start_every_executor() -> None:
    # One busy task per CPU makes the worker start all its executor processes
    # now, so that process start-up does not blur the timings below.
    tg.get([sleep_for.remote(0.2) for _ in DELAYS])


def in_finishing_order() -> None:
    start = time.time()
    remaining = [sleep_for.remote(d) for d in DELAYS]
    finish_times = []
    while remaining:
        ready, remaining = tg.wait(remaining, num_returns=1)
        seconds, finished_at = tg.get(ready[0])
        finish_times.append(finished_at)
        print(f"task that slept {seconds:.1f} s finished after {finished_at - start:.2f} s")
    ordered = all(b >= a - TOLERANCE for a, b in itertools.pairwise(finish_times))
    print(f"processed in finishing order: {ordered}")


def without_stragglers() -> None:
    straggler = sleep_for.remote(60.0)
    quick = [sleep_for.remote(0.0) for _ in range(3)]
    ready, not_ready = tg.wait([straggler, *quick], num_returns=4, timeout=1.0)
    print(f"ready within 1 s: {len(ready)} of 4")
    for ref in not_ready:
        tg.cancel(ref)
    try:
        tg.get(straggler, timeout=30)
    except TaskCancelledError:
        print("cancelled the straggler")


def main() -> None:
    tg.init(num_cpus=len(DELAYS))
    try:
        start_every_executor()
        in_finishing_order()
        without_stragglers()
    finally:
        tg.shutdown()


if __name__ == "__main__":
    main()
