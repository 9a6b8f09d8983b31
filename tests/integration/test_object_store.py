"""The object store's cap: spilling, restoring, fullness, and values that outlive refs."""

from __future__ import annotations

import gc
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import taskgraph as tg
from conftest import stored, wait_for
from taskgraph import config
from taskgraph.exceptions import ObjectStoreFullError

MB = 1 << 20


def random_array(seed: int, size: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng(seed).bytes(size), np.uint8)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(array).hexdigest()


def spill_dir() -> Path:
    (node,) = tg.nodes()
    (record,) = [r for r in config.records("daemon") if r.get("worker_id") == node["node_id"]]
    return Path(record["spill_dir"])


def _sizes(node: dict) -> list[str]:
    """The in-memory, spilled and cap columns `taskgraph memory` prints for a node."""
    from taskgraph._cli_text import size as _bytes

    columns = (node["bytes_in_memory"], node["bytes_spilled"], node["capacity"])
    return " ".join(_bytes(n) for n in columns).split()


@tg.remote
def checksum(array):
    return hashlib.sha256(array).hexdigest()


@pytest.mark.parametrize(
    "fresh_cluster", [{"num_cpus": 1, "object_store_memory": 200 * MB}], indirect=True
)
def test_a_gigabyte_of_live_objects_spills_under_a_200_mb_cap(fresh_cluster):
    refs, sums = [], []
    for seed in range(10):  # 10 x 100 MB, every ref alive
        array = random_array(seed, 100 * MB)
        sums.append(digest(array))
        refs.append(tg.put(array))
        del array
    files = list(spill_dir().iterdir())
    assert len(files) >= 8, "at most two 100 MB objects fit under the cap"

    def settled() -> dict | None:
        """The node once its heartbeat counts every byte put (the store changes no more:
        an earlier one, sent during the last put, says less was spilled)."""
        node = tg.object_store_stats()["nodes"][0]
        counted = node["bytes_in_memory"] + node["bytes_spilled"]
        return node if node["objects"] == 10 and counted == node["bytes"] else None

    wait_for(settled, what="the worker's heartbeat to count every object put")
    node = settled()
    assert node is not None
    assert node["capacity"] == 200 * MB and node["bytes_reserved"] <= 200 * MB
    assert node["bytes_in_memory"] <= 200 * MB and node["bytes_spilled"] >= 800 * MB
    assert node["objects_spilled"] >= 8
    runtime = tg._api._runtime
    memory = subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", "memory", "--address", runtime.address,
         "--token", runtime.cluster.token],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert memory.returncode == 0, memory.stderr
    (line,) = [x for x in memory.stdout.splitlines() if x.split()[:1] == [node["node_id"]]]
    assert line.split()[1:] == ["10", *_sizes(node)], memory.stdout

    # Read back in the driver (one at a time: a value pins its object while alive)...
    for ref, expected in zip(refs, sums, strict=True):
        value = tg.get(ref)
        assert digest(value) == expected
        del value
    # ...and in tasks, which restore spilled objects on their own.
    assert tg.get([checksum.remote(ref) for ref in refs], timeout=120) == sums

    del refs, ref
    gc.collect()
    wait_for(lambda: not stored(), what="the store to free every object")
    wait_for(lambda: not any(spill_dir().glob("*")), what="the spill files to be removed")


@pytest.mark.parametrize(
    "fresh_cluster", [{"num_cpus": 1, "object_store_memory": 64 * MB}], indirect=True
)
def test_put_raises_object_store_full_only_when_nothing_can_spill(fresh_cluster):
    first = tg.get(tg.put(random_array(1, 30 * MB)))  # values held: their objects are pinned
    second = tg.get(tg.put(random_array(2, 30 * MB)))
    with pytest.raises(ObjectStoreFullError) as info:
        tg.put(random_array(3, 30 * MB))
    err = info.value
    assert err.needed > 30 * MB and err.capacity == 64 * MB and err.used >= 60 * MB
    assert "cannot fit 30.0 MiB: 60.0 MiB of 64.0 MiB is in use" in str(err)

    with pytest.raises(ObjectStoreFullError, match="cannot fit"):
        tg.put(random_array(4, 65 * MB))  # larger than the whole store: no waiting

    # Nothing was lost, and once a value is dropped its object may spill.
    assert digest(first) == digest(random_array(1, 30 * MB))
    del first
    gc.collect()
    third = tg.put(random_array(3, 30 * MB))
    assert tg.get(checksum.remote(third)) == digest(random_array(3, 30 * MB))
    assert digest(second) == digest(random_array(2, 30 * MB))
    del second, third


def test_a_value_outlives_its_ref_while_it_is_in_use(fresh_cluster):
    ref = tg.put(random_array(5, 20 * MB))
    value = tg.get(ref)
    oid = ref.hex()
    del ref
    gc.collect()
    wait_for(
        lambda: oid not in [o["object_id"] for o in tg.object_store_stats()["largest"]],
        what="the scheduler to forget the object",
    )
    # The cluster let go, but the store keeps the bytes while our array maps them:
    # a new object cannot take their place.
    other = tg.put(random_array(6, 20 * MB))
    assert oid in stored()
    assert digest(value) == digest(random_array(5, 20 * MB))
    del value
    gc.collect()
    wait_for(lambda: oid not in stored(), what="the last view to unpin the object")
    del other


def test_a_ref_pickled_by_the_user_keeps_its_object_alive(fresh_cluster):
    # A cluster of its own: the pin lasts until this client disconnects.
    ref = tg.put(random_array(7, 2 * MB))
    oid = ref.hex()
    data = pickle.dumps(ref)
    nested = cloudpickle.dumps({"inside": [ref]})
    del ref
    gc.collect()
    back = pickle.loads(data)
    assert digest(tg.get(back)) == digest(random_array(7, 2 * MB))
    assert cloudpickle.loads(nested)["inside"][0].hex() == oid
    assert oid in stored(), "kept while this client is connected, as in Ray"
    del back


def test_object_store_memory_is_checked_where_it_is_given():
    with pytest.raises(ValueError, match="at least 1 MiB"):
        tg.init(object_store_memory=1000)
    with pytest.raises(ValueError, match="whole number of bytes"):
        tg.init(object_store_memory=1.5e9)
    assert not tg.is_initialized()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskgraph.worker.cli",
            "tcp://127.0.0.1:1",
            "--object-store-memory",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "too small for an object store" in out.stderr


def test_a_killed_workers_arena_and_spill_files_do_not_survive_shutdown():
    import psutil

    from conftest import alive, descendants, segments

    tg.init(num_cpus=1, object_store_memory=8 * MB)
    try:
        refs = [tg.put(random_array(seed, 3 * MB)) for seed in range(4)]  # two spill
        folder = spill_dir()
        assert len(list(folder.iterdir())) >= 2 and segments()
        processes = descendants()
        psutil.Process(tg.nodes()[0]["pid"]).kill()
        wait_for(lambda: tg.nodes() == [], what="the scheduler to notice the dead worker")
        assert folder.exists() and segments(), "a killed daemon cannot clean up after itself"
        del refs
    finally:
        tg.shutdown()
    wait_for(lambda: not alive(processes), what="the cluster's processes to exit")
    assert not folder.exists() and not segments()


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_reading_from_a_dead_workers_store_is_object_lost(fresh_cluster):
    import psutil

    from taskgraph.exceptions import ObjectLostError

    ref = tg.put(random_array(9, 2 * MB))
    assert digest(tg.get(ref)) == digest(random_array(9, 2 * MB))  # connects to its store
    psutil.Process(tg.nodes()[0]["pid"]).kill()
    wait_for(lambda: tg.nodes() == [], what="the scheduler to notice the dead worker")
    with pytest.raises(ObjectLostError):
        tg.get(ref, timeout=30)
    del ref
