"""Ray's GPU task options, as Ray documents them (issue 16): max_calls=1 by
default for GPU tasks, and accelerator_type with taskgraph.util.accelerators'
names, offered by workers given the resource or detecting their GPUs."""

from __future__ import annotations

import os
import stat

import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph.util import accelerators


@tg.remote(num_cpus=0.5, num_gpus=1)
def gpu_pid():
    return os.getpid()


@tg.remote(num_cpus=0.5, accelerator_type=accelerators.NVIDIA_TESLA_V100)
def on_a_v100():
    return tg.get_runtime_context().get_node_id()


@tg.remote(num_cpus=0.5)
class OnAnA100:
    def node(self):
        return tg.get_runtime_context().get_node_id()


FAKE_NVIDIA_SMI = """#!/bin/sh
echo "NVIDIA A100-SXM4-80GB"
"""


@pytest.mark.parametrize(
    "fresh_cluster",
    [{"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:V100": 1}}],
    indirect=True,
)
def test_gpu_tasks_and_accelerator_types(fresh_cluster, tmp_path):
    # A GPU task gets a process of its own by default (Ray's max_calls=1 for GPU
    # tasks); max_calls=0 keeps the process for the next one.
    fresh = [tg.get(gpu_pid.remote(), timeout=60) for _ in range(3)]
    assert len(set(fresh)) == 3
    kept = [tg.get(gpu_pid.options(max_calls=0).remote(), timeout=60) for _ in range(3)]
    assert len(set(kept)) == 1

    # accelerator_type: a sliver of "accelerator_type:<name>", which a worker offers.
    assert tg.cluster_resources()["accelerator_type:V100"] == 1
    first_node = tg.nodes()[0]["node_id"]
    assert tg.get([on_a_v100.remote() for _ in range(3)], timeout=60) == [first_node] * 3
    wait_for(
        lambda: tg.available_resources()["accelerator_type:V100"] == 1,
        what="the tasks' share of the V100 to be given back",
    )

    # A worker that detects an A100 (its nvidia-smi says so) offers it; an actor
    # that asks for one waits for it, then lives there.
    actor = OnAnA100.options(accelerator_type=accelerators.NVIDIA_A100).remote()
    where = actor.node.remote()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    nvidia_smi = fake_bin / "nvidia-smi"
    nvidia_smi.write_text(FAKE_NVIDIA_SMI)
    nvidia_smi.chmod(nvidia_smi.stat().st_mode | stat.S_IEXEC)
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    worker = start_worker("--num-cpus", "1", "--num-gpus", "1", env={"PATH": path})
    try:
        second_node = tg.get(where, timeout=60)
        assert second_node != first_node
        resources = {n["node_id"]: n["resources"] for n in tg.nodes()}
        assert resources[second_node]["accelerator_type:A100"] == 1
        assert "accelerator_type:A100" not in resources[first_node]
        del actor, where
    finally:
        stop_process(worker)
    wait_for(lambda: len(tg.nodes()) == 1, what="the A100 worker to leave")
