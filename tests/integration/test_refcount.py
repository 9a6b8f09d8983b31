"""Objects live exactly as long as something holds them."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import taskgraph as tg
from conftest import stored, wait_for

pytestmark = pytest.mark.usefixtures("cluster")

BIG = 400_000  # float64s: 3.2 MB, above the inline limit


def objects() -> int:
    return tg._api.client().query("statistics")["objects"]


def test_dropped_refs_are_freed_everywhere():
    baseline = objects()
    ref = tg.put(np.ones(BIG))
    assert stored() == {ref.hex()}
    assert objects() == baseline + 1
    del ref
    gc.collect()
    wait_for(lambda: not stored(), what="the store to free the object")
    wait_for(lambda: objects() == baseline, what="the scheduler to forget the object")


@tg.remote
def make_big():
    return np.full(BIG, 7.0)


def test_large_task_results_are_freed_when_dropped():
    ref = make_big.remote()
    assert tg.get(ref)[0] == 7.0
    assert stored() == {ref.hex()}
    del ref
    gc.collect()
    wait_for(lambda: not stored(), what="the store to free the result")


def test_a_ref_inside_a_put_list_keeps_its_object_alive():
    inner = tg.put(np.arange(BIG))
    outer = tg.put([inner])
    inner_id = inner.hex()
    del inner
    gc.collect()
    (again,) = tg.get(outer)
    assert again.hex() == inner_id
    assert tg.get(again)[-1] == BIG - 1
    del again, outer
    gc.collect()
    wait_for(lambda: not stored(), what="inner object to be freed with its container")


def test_arguments_stay_alive_until_the_task_ran():
    @tg.remote
    def total(a):
        return float(a.sum())

    ref = total.remote(tg.put(np.ones(BIG)))  # the only holder of the put is the task
    gc.collect()
    assert tg.get(ref) == BIG


def test_object_store_stats_and_the_memory_command():
    import subprocess
    import sys

    ref = tg.put(np.ones(BIG))
    stats = tg.object_store_stats()
    (node,) = stats["nodes"]
    assert node["objects"] == 1 and node["bytes"] >= BIG * 8
    (largest, *_) = stats["largest"]
    assert largest["object_id"] == ref.hex() and largest["node_id"] == node["node_id"]
    assert largest["held_by"]["clients"] == [tg._api.client().client_id.hex()]

    runtime = tg._api._runtime
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskgraph.cli",
            "memory",
            "--address",
            runtime.address,
            "--token",
            runtime.cluster.token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ref.hex() in out.stdout and node["node_id"] in out.stdout

    del ref
    gc.collect()
    wait_for(lambda: tg.object_store_stats()["nodes"][0]["objects"] == 0)


@tg.remote
def read_all(array):
    import psutil

    total = float(array.sum())  # touches every page of the mapping
    # Anonymous memory is what a copy would take; the shared mapping is not.
    anonymous = sum(m.anonymous for m in psutil.Process().memory_maps())
    return total, anonymous


def test_four_readers_of_a_200_mb_array_share_one_copy():
    array = np.ones(25_000_000)  # 200 MB
    ref = tg.put(array)
    del array
    results = tg.get([read_all.remote(ref) for _ in range(4)], timeout=120)
    for total, anonymous in results:
        assert total == 25_000_000
        # A copy would add 200 MB of private memory to each reader.
        assert anonymous < 120 * 2**20, f"{anonymous / 2**20:.0f} MiB of private memory"
    del ref


@tg.remote
def arrow_total(table):
    import psutil
    import pyarrow.compute as pc

    total = pc.sum(table.column("x")).as_py() + pc.sum(table.column("y")).as_py()
    anonymous = sum(m.anonymous for m in psutil.Process().memory_maps())
    return total, anonymous, type(table).__name__


def test_an_arrow_table_round_trips_without_a_copy():
    import pyarrow as pa

    n = 10_000_000  # two 80 MB columns
    table = pa.table({"x": np.arange(n), "y": np.ones(n)})
    ref = tg.put(table)
    total, anonymous, kind = tg.get(arrow_total.remote(ref), timeout=120)
    assert kind == "Table" and total == n * (n - 1) // 2 + n
    assert anonymous < 100 * 2**20, f"{anonymous / 2**20:.0f} MiB of private memory"
    back = tg.get(ref)
    assert back.equals(table)
    del ref, back


def test_an_arrow_record_batch_round_trips_without_a_copy():
    import pyarrow as pa

    n = 10_000_000  # two 80 MB columns
    batch = pa.record_batch({"x": np.arange(n), "y": np.ones(n)})
    ref = tg.put(batch)
    total, anonymous, kind = tg.get(arrow_total.remote(ref), timeout=120)
    assert kind == "RecordBatch" and total == n * (n - 1) // 2 + n
    # A copy would add 160 MB of private memory to the task's process.
    assert anonymous < 100 * 2**20, f"{anonymous / 2**20:.0f} MiB of private memory"
    back = tg.get(ref)
    assert isinstance(back, pa.RecordBatch) and back.equals(batch)
    del ref, back
