"""Resources: custom resources, the seed's unschedulable warning, GPUs, memory."""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for

SEED_RESOURCES = {"num_cpus": 2, "resources": {"CustomResource1": 1, "CustomResource2": 4}}


@tg.remote(resources={"CustomResource1": 2})
def needs_two_of_resource_1(x):
    return x


@tg.remote(resources={"CustomResource2": 3})
def needs_three_of_resource_2(x):
    return x * x


@pytest.mark.parametrize("fresh_cluster", [SEED_RESOURCES], indirect=True)
def test_custom_resources_and_the_unschedulable_warning(fresh_cluster, caplog):
    caplog.set_level(logging.WARNING, logger="taskgraph")
    assert tg.cluster_resources()["CustomResource2"] == 4
    assert tg.get(needs_three_of_resource_2.remote(2), timeout=30) == 4

    pending = [needs_two_of_resource_1.remote(i) for i in range(3)]
    wait_for(lambda: any("cannot be scheduled" in r.message for r in caplog.records))
    ready, _ = tg.wait(pending, timeout=0.2)
    assert ready == []
    warnings = [r.message for r in caplog.records if "cannot be scheduled" in r.message]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "needs_two_of_resource_1" in text
    assert "CustomResource1: 2" in text and "CustomResource1 by 1" in text

    worker = start_worker("--num-cpus", "1", "--resources", '{"CustomResource1": 2}')
    try:
        assert tg.get(pending, timeout=60) == [0, 1, 2]
        assert len(tg.nodes()) == 2
    finally:
        stop_process(worker)
    wait_for(lambda: len(tg.nodes()) == 1, what="the extra worker to leave")


@tg.remote(resources={"slot": 1})
def hold_slot(seconds):
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


@pytest.mark.parametrize(
    "fresh_cluster", [{"num_cpus": 2, "resources": {"slot": 1}}], indirect=True
)
def test_no_worker_runs_more_than_its_resources_allow(fresh_cluster):
    spans = sorted(tg.get([hold_slot.remote(0.2) for _ in range(3)], timeout=60))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, "two tasks held the single slot at once"


@tg.remote(num_gpus=1)
def gpu_task():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), tg.get_gpu_ids()


@tg.remote(num_gpus=0.5)
def half_gpu_task():
    time.sleep(0.2)
    return tg.get_gpu_ids()


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2, "num_gpus": 2}], indirect=True)
def test_gpu_ids_are_assigned_and_visible(fresh_cluster):
    assert tg.cluster_resources()["GPU"] == 2
    results = tg.get([gpu_task.remote() for _ in range(4)], timeout=60)
    for visible, ids in results:
        assert len(ids) == 1 and visible == str(ids[0])
    shares = tg.get([half_gpu_task.remote() for _ in range(2)], timeout=60)
    assert all(len(ids) == 1 for ids in shares)


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2, "memory": 10**9}], indirect=True)
def test_memory_is_a_resource(fresh_cluster):
    assert tg.cluster_resources()["memory"] == 10**9

    @tg.remote(memory=6 * 10**8)
    def big():
        return tg.get_runtime_context().get_assigned_resources()["memory"]

    assert tg.get(big.remote(), timeout=30) == 6 * 10**8
