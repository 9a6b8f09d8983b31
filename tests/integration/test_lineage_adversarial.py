"""Lineage under attack: worker daemons SIGKILLed at awkward moments, hostile
readers, and graphs shaped to stress what lineage keeps (scheduler/lineage.py).

Extra worker daemons join the module's local cluster, tasks are placed on them
(soft node affinity), and they are SIGKILLed. A daemon started with a
``TASKGRAPH_HOST_ID`` of its own acts as another host: tasks on this host that
read its objects pull copies into this host's store.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from taskgraph.util.state import cluster_statistics

MB = 1 << 20
BLOCK = MB // 8  # int64 elements in a 1 MiB block (over the inline limit: stored)


def nodes_up() -> int:
    return len(tg.nodes())


@contextmanager
def extra_daemon(
    cpus: int = 2, host: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One more worker daemon (another host if ``host``): its node id and process."""
    before = nodes_up()
    proc = start_worker("--num-cpus", str(cpus), env={"TASKGRAPH_HOST_ID": host} if host else None)
    try:
        wait_for(lambda: nodes_up() == before + 1, what="the extra daemon to join")
        [node] = [n["node_id"] for n in tg.nodes() if n["pid"] == proc.pid]
        yield node, proc
    finally:
        stop_process(proc)
    wait_for(lambda: nodes_up() == before, what="the extra daemon to be dropped")


def kill(*procs: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemons, then wait until the scheduler has dropped them."""
    before = nodes_up()
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)
    wait_for(lambda: nodes_up() == before - len(procs), what="the killed daemons to be dropped")


def on(node: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=True)


def rebuilt() -> int:
    return int(cluster_statistics()["tasks_rebuilt"])


def released_records() -> int:
    return int(cluster_statistics()["objects_released"])


@tg.remote(num_returns=2, max_retries=2)
def pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(BLOCK, seed, dtype=np.int64), np.full(BLOCK, seed + 1, dtype=np.int64)


@tg.remote(max_retries=2)
def first(block: np.ndarray) -> int:
    return int(block[0])


def test_a_lost_return_is_made_again_beside_its_sibling_s_live_copy(cluster) -> None:
    """pair() runs on another host; a task here reads its second return (a copy
    of it lands in this host's store). That host dies: the second return lives
    on in its copy, the first is made again by running pair() again, here,
    where the copy of the second already is. Both values stay readable."""
    here = next(n["node_id"] for n in tg.nodes())
    with extra_daemon(host="lineage-other-host") as (node, proc):
        a, b = pair.options(scheduling_strategy=on(node)).remote(40)
        assert tg.get(first.options(scheduling_strategy=on(here)).remote(b), timeout=60) == 41
        before = rebuilt()
        kill(proc)
        assert int(tg.get(a, timeout=60)[0]) == 40
        assert int(tg.get(b, timeout=60)[0]) == 41
        assert rebuilt() == before + 1
    del a, b
    wait_for(lambda: released_records() == 0, what="lineage records to go")
