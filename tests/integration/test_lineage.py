"""Objects lost with a worker daemon are made again from their lineage.

A second worker daemon joins the local cluster; tasks are placed on it (soft
node affinity), then it is SIGKILLed. What the driver still holds, and what
its tasks need, is made again on the worker that is left; what cannot be made
again fails with an error that says why.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph.exceptions import ObjectLostError, ObjectReconstructionFailedError
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from taskgraph.util.state import cluster_statistics

MB = 1 << 20


@pytest.fixture
def doomed(fresh_cluster) -> Iterator[tuple[str, object]]:
    """A second worker daemon and its node id; the test kills it."""
    proc = start_worker("--num-cpus", "2")
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the second worker to join")
        [node] = [n["node_id"] for n in tg.nodes() if n["pid"] == proc.pid]
        yield node, proc
    finally:
        stop_process(proc)
    wait_for(lambda: len(tg.nodes()) == 1, what="the second worker to be dropped")


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: len(tg.nodes()) == 1, what="the scheduler to drop the killed worker")


def on(node: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=True)


@tg.remote(max_retries=2)
def make(seed: int) -> np.ndarray:
    return np.full(MB // 8, seed, dtype=np.int64)


@tg.remote(max_retries=2)
def grow(block: np.ndarray) -> np.ndarray:
    return block + 1


@tg.remote(max_retries=0)
def make_once(seed: int) -> np.ndarray:
    return np.full(MB // 8, seed, dtype=np.int64)


def test_a_chain_whose_every_copy_died_is_made_again(doomed) -> None:
    node, proc = doomed
    first = make.options(scheduling_strategy=on(node)).remote(7)
    last = grow.options(scheduling_strategy=on(node)).remote(first)
    tg.wait([last], timeout=60)
    del first  # its value is freed; how to make it again is kept
    rebuilt_before = cluster_statistics()["tasks_rebuilt"]
    kill(proc)
    block = tg.get(last, timeout=60)
    assert block.shape == (MB // 8,) and (block == 8).all()
    assert cluster_statistics()["tasks_rebuilt"] - rebuilt_before == 2, "both ran again"
    assert tg.get(grow.remote(last), timeout=60)[0] == 9


def test_a_value_the_driver_was_told_of_but_could_not_read_is_made_again(doomed) -> None:
    """The driver heard where the value is, then its holder died before it read it."""
    node, proc = doomed
    ref = make.options(scheduling_strategy=on(node)).remote(3)
    ready, _ = tg.wait([ref], timeout=60, fetch_local=False)
    assert ready == [ref]
    kill(proc)
    read_again = tg.statistics().values_read_again
    assert (tg.get(ref, timeout=60) == 3).all()
    assert tg.statistics().values_read_again == read_again + 1


def test_a_put_whose_only_copy_died_fails_naming_the_node(doomed) -> None:
    node, proc = doomed

    @tg.remote(scheduling_strategy=on(node))
    def put_there():
        return [tg.put(np.zeros(MB // 8))]

    [inner] = tg.get(put_there.remote(), timeout=60)
    kill(proc)
    with pytest.raises(ObjectLostError) as caught:
        tg.get(inner, timeout=60)
    assert not isinstance(caught.value, ObjectReconstructionFailedError)
    assert "put()" in str(caught.value) and node in str(caught.value)


def test_a_result_that_may_not_run_again_fails_saying_why(doomed) -> None:
    node, proc = doomed
    ref = make_once.options(scheduling_strategy=on(node)).remote(1)
    tg.wait([ref], timeout=60)
    kill(proc)
    with pytest.raises(ObjectReconstructionFailedError, match="max_retries=0"):
        tg.get(ref, timeout=60)
