"""Lineage under attack: worker daemons SIGKILLed at awkward moments, hostile
readers, and graphs shaped to stress what lineage keeps (scheduler/lineage.py).

Extra worker daemons join the module's local cluster, tasks are placed on them
(soft node affinity), and they are SIGKILLed. A daemon started with a
``TASKGRAPH_HOST_ID`` of its own acts as another host: tasks on this host that
read its objects pull copies into this host's store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import taskgraph as tg
from conftest import another_driver, finish, start_worker, stop_process, wait_for
from taskgraph.exceptions import (
    GetTimeoutError,
    ObjectReconstructionFailedError,
    TaskCancelledError,
)
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from taskgraph.util.state import cluster_statistics, list_objects
from taskgraph.worker.store import sweep_dead_daemons

MB = 1 << 20
BLOCK = MB // 8  # int64 elements in a 1 MiB block (over the inline limit: stored)


def node_pids() -> set[int]:
    return {n["pid"] for n in tg.nodes()}


@contextmanager
def extra_daemon(
    cpus: int = 2, host: str = "", resources: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One more worker daemon (another host if ``host``): its node id and process."""
    args = ["--num-cpus", str(cpus), *(["--resources", resources] if resources else [])]
    proc = start_worker(*args, env={"TASKGRAPH_HOST_ID": host} if host else None)
    try:
        wait_for(lambda: proc.pid in node_pids(), what="the extra daemon to join")
        [node] = [n["node_id"] for n in tg.nodes() if n["pid"] == proc.pid]
        yield node, proc
    finally:
        stop_process(proc)
    wait_for(lambda: proc.pid not in node_pids(), what="the extra daemon to be dropped")


def kill(*procs: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemons, then wait until the scheduler has dropped them."""
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)
    pids = {proc.pid for proc in procs}
    wait_for(lambda: not pids & node_pids(), what="the killed daemons to be dropped")
    # What the next daemon on this host (or the cluster's shutdown) would do: the
    # killed daemons' arenas go (this module's cluster outlives the test).
    sweep_dead_daemons()


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


def test_futures_and_await_of_objects_whose_copy_died_read_them_again(cluster) -> None:
    """The driver knows where x and y are (it waited for them), then their daemon
    dies. Like get(), a ref's future and ``await ref`` read them again once they
    are made again, instead of failing with the copy they were told of."""
    with extra_daemon(2) as (node, proc):
        x, y = (make.options(scheduling_strategy=on(node)).remote(i) for i in (6, 7))
        tg.wait([x, y], num_returns=2, timeout=60, fetch_local=False)
        kill(proc)
        assert (x.future().result(timeout=60) == 6).all()

        async def read(ref: tg.ObjectRef) -> np.ndarray:
            return await ref

        assert (asyncio.run(asyncio.wait_for(read(y), 60)) == 7).all()
    del x, y
    wait_for(lambda: released_records() == 0, what="lineage records to go")


# -- tasks that know how often they ran, and wait on a gate when run again ------------


def runs_so_far(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@tg.remote(max_retries=2)
def counted(log: str, gate: str = "") -> np.ndarray:
    """A block of its run number (1, 2, ...). A run after the first says it started,
    then waits until the file ``gate`` exists (the test opens it)."""
    with open(log, "a") as f:
        f.write("run\n")
    runs = runs_so_far(Path(log))
    if runs > 1 and gate:
        with open(log + ".started", "a") as f:
            f.write(f"{runs}\n")
        while not os.path.exists(gate):
            time.sleep(0.01)
    return np.full(BLOCK, runs, dtype=np.int64)


@tg.remote(max_retries=2)
def grow(block: np.ndarray) -> np.ndarray:
    return block + 1


def started_again(log: Path, count: int = 1) -> bool:
    started = Path(str(log) + ".started")
    return started.exists() and len(started.read_text().splitlines()) >= count


def test_a_daemon_killed_while_it_makes_an_object_again(cluster, tmp_path: Path) -> None:
    """x is made on daemon A; A is SIGKILLed; x's task runs again on daemon B (the
    only other one with the resource it needs), and B is SIGKILLed mid-run. The
    rebuild is retried (its last retry) on daemon C. One rebuild, three runs."""
    log, gate = tmp_path / "x.log", tmp_path / "gate"
    spot = '{"spot": 1}'
    with (
        extra_daemon(1, resources=spot) as (a_node, a),
        extra_daemon(1, resources=spot) as (_, b),
    ):
        x = counted.options(resources={"spot": 1}, scheduling_strategy=on(a_node)).remote(
            str(log), str(gate)
        )
        assert int(tg.get(x, timeout=60)[0]) == 1
        before = rebuilt()
        kill(a)
        wait_for(lambda: started_again(log), what="x's task to run again on B")
        kill(b)
        gate.touch()
        with extra_daemon(1, resources=spot):
            assert int(tg.get(x, timeout=60)[0]) == 3, "made by its third run"
            assert rebuilt() == before + 1, "a retry of the rebuild is not a rebuild"
            del x
            wait_for(lambda: released_records() == 0, what="lineage records to go")


def test_two_daemons_killed_at_once_under_a_chain_that_crosses_them(cluster) -> None:
    """a -> b -> c -> d alternate between two daemons; only d is held. Both die at
    once: all four run again, in order, on the daemon that is left."""
    with extra_daemon(1) as (one, p1), extra_daemon(1) as (two, p2):
        ref = make.options(scheduling_strategy=on(one)).remote(10)
        for node in (two, one, two):
            ref = grow.options(scheduling_strategy=on(node)).remote(ref)
        tg.wait([ref], timeout=60)
        assert released_records() == 3
        before = rebuilt()
        kill(p1, p2)
        block = tg.get(ref, timeout=60)
        assert (block == 13).all()
        assert rebuilt() == before + 4
    del ref, block
    wait_for(lambda: released_records() == 0, what="lineage records to go")


@tg.remote(max_retries=2)
def make(seed: int) -> np.ndarray:
    return np.full(BLOCK, seed, dtype=np.int64)


@tg.remote(max_retries=1)
def step(block: np.ndarray) -> np.ndarray:
    return block + 1


def test_a_chain_of_200_with_every_intermediate_freed_is_made_again(cluster) -> None:
    """200 chained tasks on a daemon, each intermediate freed as the next is made
    (the driver keeps only the newest). The daemon dies: all 200 run again."""
    with extra_daemon(2) as (node, proc):
        there = on(node)
        ref = make.options(scheduling_strategy=there).remote(0)
        for _ in range(199):
            ref = step.options(scheduling_strategy=there).remote(ref)
        tg.wait([ref], timeout=120)
        wait_for(lambda: released_records() == 199, what="199 records kept, values freed")
        before = rebuilt()
        kill(proc)
        assert (tg.get(ref, timeout=120) == 199).all()
        assert rebuilt() == before + 200
    del ref
    wait_for(lambda: released_records() == 0, what="lineage records to go")


def test_a_held_return_is_made_again_once_beside_a_freed_one_a_held_object_needs(
    cluster,
) -> None:
    """pair() -> (a, b); the driver keeps a and grow(b), not b. The daemon dies:
    pair() runs again once (for a, and for b which grow(b) needs), then grow."""
    with extra_daemon(2) as (node, proc):
        a, b = pair.options(scheduling_strategy=on(node)).remote(5)
        c = grow.options(scheduling_strategy=on(node)).remote(b)
        tg.wait([a, c], num_returns=2, timeout=60)
        del b
        wait_for(lambda: released_records() == 1, what="b's record kept, its value freed")
        before = rebuilt()
        kill(proc)
        assert (tg.get(a, timeout=60) == 5).all() and (tg.get(c, timeout=60) == 7).all()
        assert rebuilt() == before + 2
    del a, c
    wait_for(lambda: released_records() == 0, what="lineage records to go")


@tg.remote(max_retries=2)
def with_a_put_inside(seed: int) -> tuple[np.ndarray, tg.ObjectRef]:
    return np.full(BLOCK, seed, dtype=np.int64), tg.put(f"put by the run of {seed}")


def test_a_stored_object_holding_a_ref_made_again_holds_its_new_ref(cluster) -> None:
    """The task returns (a block, tg.put(text)): stored, it is lost with its
    daemon; its task runs again and puts anew. The scheduler then holds the new
    put for the value that names it (and lets the old one go), so it reads."""
    with extra_daemon(2) as (node, proc):
        before = {o["object_id"] for o in list_objects(limit=0)}
        outer = with_a_put_inside.options(scheduling_strategy=on(node)).remote(3)
        tg.wait([outer], timeout=60, fetch_local=False)
        [first_put] = {o["object_id"] for o in list_objects(limit=0)} - before - {outer.hex()}
        kill(proc)
        # The old put is named by no value once the container is made again.
        wait_for(
            lambda: first_put not in {o["object_id"] for o in list_objects(limit=0)},
            what="the first run's put to be let go",
        )
        block, inner = tg.get(outer, timeout=60)
        assert int(block[0]) == 3 and inner.hex() != first_put
        assert tg.get(inner, timeout=60) == "put by the run of 3"
    del outer, block, inner
    wait_for(lambda: released_records() == 0, what="lineage records to go")


def test_a_pending_rebuild_times_get_and_wait_out_cancels_a_reader_and_is_not_deterministic(
    cluster, tmp_path: Path
) -> None:
    """While x is being made again: get() with a timeout raises GetTimeoutError,
    wait() says not ready, a task that reads x can be cancelled. Then x comes,
    and a later get() reads it. x's task is not deterministic (it returns its run
    number): the value made again differs from the first, as it would in Ray."""
    log, gate = tmp_path / "x.log", tmp_path / "gate"
    try:
        with extra_daemon(2) as (node, proc):
            x = counted.options(scheduling_strategy=on(node)).remote(str(log), str(gate))
            assert int(tg.get(x, timeout=60)[0]) == 1
            kill(proc)
            wait_for(lambda: started_again(log), what="x's task to run again")
            with pytest.raises(GetTimeoutError):
                tg.get(x, timeout=0.3)
            assert tg.wait([x], timeout=0.3) == ([], [x])
            reader = grow.remote(x)
            tg.cancel(reader)
            with pytest.raises(TaskCancelledError):
                tg.get(reader, timeout=60)
            gate.touch()
            assert int(tg.get(x, timeout=60)[0]) == 2, "the second run's value"
            assert tg.wait([x], timeout=60) == ([x], [])
    finally:
        gate.touch()
    del x
    wait_for(lambda: released_records() == 0, what="lineage records to go")


@tg.remote
def numbers(n: int):
    for i in range(n):
        yield np.full(BLOCK, i, dtype=np.int64)


@tg.remote
class Keeper:
    def block(self, seed: int) -> np.ndarray:
        return np.full(BLOCK, seed, dtype=np.int64)


@tg.remote(max_retries=-1)
def forever(seed: int) -> np.ndarray:
    return np.full(BLOCK, seed, dtype=np.int64)


def test_what_may_not_run_again_fails_saying_why_and_max_retries_minus_1_is_made_again(
    cluster,
) -> None:
    with extra_daemon(2) as (node, proc):
        there = on(node)
        [item] = list(numbers.options(scheduling_strategy=there).remote(1))
        keeper = Keeper.options(scheduling_strategy=there).remote()
        method = keeper.block.remote(4)
        again = forever.options(scheduling_strategy=there).remote(9)
        tg.wait([item, method, again], num_returns=3, timeout=60, fetch_local=False)
        kill(proc)
        with pytest.raises(ObjectReconstructionFailedError):  # (why: see test_lineage_fuzz)
            tg.get(item, timeout=60)
        with pytest.raises(ObjectReconstructionFailedError, match="actor method"):
            tg.get(method, timeout=60)
        assert int(tg.get(again, timeout=60)[0]) == 9
    del item, keeper, method, again
    wait_for(lambda: released_records() == 0, what="lineage records to go")


# A driver that makes x -> y on a node, keeps only y, and once the node is gone
# asks for y (its rebuild is held up: x's task waits on a gate) and exits.
LEAVES_MID_REBUILD = """
import os, sys, time
import numpy as np
import taskgraph as tg
from taskgraph.exceptions import GetTimeoutError
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy

node, log, gate = {node!r}, {log!r}, {gate!r}

@tg.remote(max_retries=2)
def gated(log, gate):
    with open(log, "a") as f:
        f.write("run\\n")
    runs = len(open(log).read().splitlines())
    if runs > 1:
        with open(log + ".started", "a") as f:
            f.write(f"{{runs}}\\n")
        while not os.path.exists(gate):
            time.sleep(0.01)
    return np.zeros({block})

@tg.remote(max_retries=2)
def grow(block):
    return block + 1

there = NodeAffinitySchedulingStrategy(node, soft=True)
y = grow.options(scheduling_strategy=there).remote(
    gated.options(scheduling_strategy=there).remote(log, gate)
)
tg.wait([y], timeout=60, fetch_local=False)
print("made", flush=True)
while node in [n["node_id"] for n in tg.nodes()]:
    time.sleep(0.01)
try:
    tg.get(y, timeout=0.5)
except GetTimeoutError:
    print("timed out, leaving", flush=True)
"""


def test_a_driver_that_leaves_while_its_objects_are_made_again_leaves_nothing_behind(
    cluster, tmp_path: Path
) -> None:
    """The rebuild goes on without the driver; once it ends, nothing holds what it
    made: every object and lineage record goes (processes, arenas and stores are
    checked by the leak fixtures)."""
    log, gate = tmp_path / "x.log", tmp_path / "gate"
    try:
        with extra_daemon(2) as (node, proc):
            script = LEAVES_MID_REBUILD.format(node=node, log=str(log), gate=str(gate), block=BLOCK)
            driver = another_driver(script)
            assert driver.stdout is not None
            assert driver.stdout.readline() == "made\n"
            kill(proc)
            code, out, err = finish(driver)
            assert code == 0 and "timed out, leaving" in out, err
            wait_for(lambda: started_again(log), what="the rebuild to go on without the driver")
            gate.touch()
    finally:
        gate.touch()
    wait_for(lambda: cluster_statistics()["objects"] == 0, what="every object to go")
    assert released_records() == 0
