"""Objects move between worker daemons on different hosts, worker to worker.

Two daemons on this machine are told they are on different hosts
(``TASKGRAPH_HOST_ID``), so they cannot share /dev/shm and must move objects
over TCP through their peer servers, as two real hosts would.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy

SIZE = 5_000_000  # float64s: 40 MB, several streaming chunks


@tg.remote(resources={"far": 1})
def produce(seed):
    return np.random.default_rng(seed).random(SIZE)


@tg.remote
def digest(array):
    return hashlib.sha256(array.tobytes()).hexdigest(), tg.get_runtime_context().get_node_id()


def expected(seed: int) -> str:
    return hashlib.sha256(np.random.default_rng(seed).random(SIZE).tobytes()).hexdigest()


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_an_object_moves_between_daemons_on_different_hosts(fresh_cluster):
    near = tg.nodes()[0]["node_id"]
    far_worker = start_worker(
        "--num-cpus", "1", "--resources", '{"far": 1}', env={"TASKGRAPH_HOST_ID": "far-away"}
    )
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the far worker")
        far = next(n for n in tg.nodes() if n["node_id"] != near)
        assert far["peer"].startswith("tcp://127.0.0.1:")

        ref = produce.remote(7)
        on_near = NodeAffinitySchedulingStrategy(near)
        checksum, ran_on = tg.get(digest.options(scheduling_strategy=on_near).remote(ref))
        assert ran_on == near and checksum == expected(7)

        stats = tg.object_store_stats()
        holders = {n["node_id"]: n["objects"] for n in stats["nodes"]}
        assert holders == {near: 1, far["node_id"]: 1}, "the near worker keeps a copy"

        again, _ = tg.get(digest.options(scheduling_strategy=on_near).remote(ref))
        assert again == checksum
        after = {n["node_id"]: (n["objects"], n["bytes"]) for n in tg.object_store_stats()["nodes"]}
        assert after == {n["node_id"]: (n["objects"], n["bytes"]) for n in stats["nodes"]}, (
            "pulled once, not twice"
        )

        # The driver reads the original from the far host's peer server too.
        far_ref = produce.remote(8)
        array = tg.get(far_ref)
        assert hashlib.sha256(array.tobytes()).hexdigest() == expected(8)
        del array, far_ref

        # The copy outlives the host that made the original.
        stop_process(far_worker)
        wait_for(lambda: len(tg.nodes()) == 1, what="the far worker to leave")
        local = tg.get(ref)
        assert hashlib.sha256(local.tobytes()).hexdigest() == checksum
        del local, ref
    finally:
        stop_process(far_worker)


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2}], indirect=True)
def test_several_objects_come_from_one_peer_at_once(fresh_cluster):
    near = tg.nodes()[0]["node_id"]
    far_worker = start_worker(
        "--num-cpus", "1", "--resources", '{"far": 1}', env={"TASKGRAPH_HOST_ID": "far-away"}
    )
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the far worker")
        refs = [produce.remote(seed) for seed in range(4)]
        tg.wait(refs, num_returns=4, timeout=60)
        on_near = NodeAffinitySchedulingStrategy(near)
        # Two executors on the near worker pull at the same time, over two connections.
        results = tg.get([digest.options(scheduling_strategy=on_near).remote(r) for r in refs])
        assert [checksum for checksum, _ in results] == [expected(seed) for seed in range(4)]
        assert {node for _, node in results} == {near}
        del refs
    finally:
        stop_process(far_worker)
