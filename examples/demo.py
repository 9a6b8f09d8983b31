"""`make demo`: start a local cluster, run a real task graph, print results, shut down.

A tree reduction: 64 leaves squared in parallel, summed pairwise in a
tree of tasks that each wait on two others, plus a nested task that submits
its own tasks.
"""

from __future__ import annotations

import os
import time

import taskgraph as tg


@tg.remote
def square(x: int) -> int:
    return x * x


@tg.remote
def add(a: int, b: int) -> int:
    return a + b


@tg.remote
def where() -> tuple[int, str]:
    return os.getpid(), tg.get_runtime_context().get_node_id() or "?"


@tg.remote
def fan_out(n: int) -> int:
    # A task may submit tasks and wait for them; its CPU is lent out meanwhile.
    return sum(tg.get([square.remote(i) for i in range(n)]))


def main() -> None:
    started = time.perf_counter()
    context = tg.init()
    print(f"started {context}")
    print(f"resources: {tg.cluster_resources()}")

    layer = [square.remote(i) for i in range(64)]
    while len(layer) > 1:
        layer = [add.remote(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    total = tg.get(layer[0])
    print(f"sum of squares 0..63 by a tree of {64 + 63} tasks: {total}")
    assert total == sum(i * i for i in range(64))

    print(f"nested tasks: {tg.get(fan_out.remote(10))}")
    pids = {pid for pid, _ in tg.get([where.remote() for _ in range(8)])}
    print(f"tasks ran in {len(pids)} executor process(es), none of them this one ({os.getpid()})")
    print(f"scheduler: {context.address}")
    print(f"dashboard: {context.dashboard_url}/status (metrics at {context.dashboard_url}/metrics)")
    tg.shutdown()
    print(f"shut down cleanly in {time.perf_counter() - started:.2f} s total")


if __name__ == "__main__":
    main()
