"""The worker daemon's memory monitor on a real cluster (issue 15).

Host memory is never filled: the worker's running tasks are capped together
at 250 MiB (``TASKGRAPH_TASK_MEMORY_LIMIT``), which a task holding 400 MiB
crosses; the monitor measures the executors' own memory as it does for the
host's limit, and the same choice and error follow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import _checked_cluster, wait_for
from taskgraph.exceptions import OutOfMemoryError

CAP = 250 << 20
HOG = 400 << 20


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> Iterator[tg.ClusterContext]:
    monkeypatch.setenv("TASKGRAPH_TASK_MEMORY_LIMIT", str(CAP))
    yield from _checked_cluster(num_cpus=2)


@pytest.fixture
def unwatched(monkeypatch: pytest.MonkeyPatch) -> Iterator[tg.ClusterContext]:
    monkeypatch.setenv("TASKGRAPH_TASK_MEMORY_LIMIT", str(CAP))
    monkeypatch.setenv("TASKGRAPH_MEMORY_MONITOR_REFRESH_MS", "0")
    yield from _checked_cluster(num_cpus=2)


@tg.remote(max_retries=0)
def hog(hold: float, runs: str = "") -> int:
    if runs:
        with open(runs, "a") as f:
            f.write(f"{os.getpid()}\n")
    data = b"\x01" * HOG  # every page touched: resident, the process's own
    time.sleep(hold)
    return len(data)


@tg.remote
def small(hold: float) -> str:
    time.sleep(hold)
    return tg.get_runtime_context().get_node_id() or ""


def the_node() -> str:
    [node] = tg.nodes()
    return str(node["node_id"])


def test_the_hog_fails_with_out_of_memory_and_its_neighbour_and_node_live_on(
    capped: tg.ClusterContext,
) -> None:
    node = the_node()
    beside = small.remote(3.0)
    began = time.monotonic()
    with pytest.raises(OutOfMemoryError) as caught:
        tg.get(hog.remote(60.0), timeout=45)
    assert time.monotonic() - began < 45, "killed, not waited out"
    err = caught.value
    assert err.task_name.endswith("hog") and "hog" in str(err)
    assert err.node == node and f"node {node}" in str(err)
    # (killed as it crossed the cap, maybe before it had all it asked for)
    assert CAP // 2 < err.memory <= err.used, "the task's own memory, measured"
    assert err.total == CAP and err.used > CAP

    assert tg.get(beside, timeout=30) == node, "the small task beside it finished"
    wait_for(
        lambda: tg.available_resources().get("CPU") == tg.cluster_resources()["CPU"],
        what="the CPUs to come back",
    )
    [after] = tg.nodes()
    assert after["node_id"] == node and after["alive"]
    assert tg.get([small.remote(0.0) for _ in range(4)], timeout=30) == [node] * 4


def test_a_retriable_hog_runs_max_retries_more_times_then_fails_with_out_of_memory(
    capped: tg.ClusterContext, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(OutOfMemoryError) as caught:
        tg.get(hog.options(max_retries=2).remote(60.0, str(runs)), timeout=90)
    assert len(runs.read_text().split()) == 3, "the first run and its two retries"
    assert caught.value.node == the_node()
    assert tg.get(small.remote(0.0), timeout=30) == the_node()


def test_with_the_monitor_off_the_hog_completes(unwatched: tg.ClusterContext) -> None:
    assert tg.get(hog.remote(1.0), timeout=60) == HOG
