"""Objects lost with a worker daemon are made again from their lineage.

A second worker daemon joins the local cluster; tasks are placed on it (soft
node affinity), then it is SIGKILLed. What the driver still holds, and what
its tasks need, is made again on the worker that is left; what cannot be made
again fails with an error that says why.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph.exceptions import ObjectLostError, ObjectReconstructionFailedError
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from taskgraph.util.state import cluster_statistics, list_objects

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


# -- chaos: a map -> reduce graph while daemons are killed under it -------------------------


@tg.remote(max_retries=5)
def block_of(i: int) -> np.ndarray:
    return np.full(MB // 32, i, dtype=np.int64)


@tg.remote(max_retries=5)
def sum_block(*blocks: np.ndarray) -> np.ndarray:
    return np.full(MB // 32, sum(int(b[0]) for b in blocks), dtype=np.int64)


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_map_reduce_graph_survives_daemons_killed_under_it(fresh_cluster) -> None:
    """600 maps (256 KiB each, spread over three daemons) -> 30 reduces (256 KiB
    each, kept by the driver, made on the two extra daemons in turn). One extra
    daemon is SIGKILLed after 5 reduces are done and a new one started, then the
    other after 15: the reduces done there are made again from their maps, which
    are made again first (their values were freed). Every result is right."""
    daemons = [start_worker("--num-cpus", "1") for _ in range(2)]
    try:
        wait_for(lambda: len(tg.nodes()) == 3, what="three daemons")
        by_pid = {n["pid"]: n["node_id"] for n in tg.nodes()}
        extra = [by_pid[proc.pid] for proc in daemons]
        spread = [*extra, next(n for n in by_pid.values() if n not in extra)]
        rebuilt_before = cluster_statistics()["tasks_rebuilt"]
        refs, expected = [], []
        for r in range(30):
            seeds = range(r * 20, (r + 1) * 20)
            maps = [
                block_of.options(scheduling_strategy=on(spread[i % 3])).remote(i) for i in seeds
            ]
            there = on(extra[r % 2])
            refs.append(sum_block.options(scheduling_strategy=there).remote(*maps))
            expected.append(sum(seeds))
        lost_reduces = 0
        for done in (5, 15):
            tg.wait(refs, num_returns=done, timeout=120)
            # The extra daemon holding the most finished reduces dies (where a
            # loaded machine placed them all elsewhere, either one does).
            reduces = {ref.hex() for ref in refs}
            held = Counter(dict.fromkeys(extra, 0))
            for o in list_objects(limit=0):
                if o["object_id"] in reduces and o["node_id"] in held:
                    held[o["node_id"]] += 1
            victim, count = held.most_common(1)[0]
            lost_reduces += count
            slot = extra.index(victim)
            daemons[slot].send_signal(signal.SIGKILL)
            daemons[slot].wait(timeout=10)
            daemons[slot] = start_worker("--num-cpus", "1")
            wait_for(lambda: len(tg.nodes()) == 3, what="the new daemon to join")
            extra[slot] = next(n["node_id"] for n in tg.nodes() if n["pid"] == daemons[slot].pid)
        assert [int(b[0]) for b in tg.get(refs, timeout=120)] == expected
        # The finished reduces lost were made again (and their maps, freed by then).
        assert cluster_statistics()["tasks_rebuilt"] - rebuilt_before >= lost_reduces
    finally:
        for proc in daemons:
            stop_process(proc)
    wait_for(lambda: len(tg.nodes()) == 1, what="the extra daemons to leave")
