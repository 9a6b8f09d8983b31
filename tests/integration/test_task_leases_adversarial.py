"""Task leases under attack: races between the lease and the scheduler, cancels,
crashes, shutdowns and refs that leave the driver while a leased task runs.

Each test drives its client onto a lease (tasks awaited one by one), then checks
that the tasks behave as they would have through the scheduler, which records
and hears the report of every leased task. Tests see the path a task took
through public state only: the driver's ``tg.statistics()`` (``tasks_leased``
grows as a task goes down a lease; ``open_leases``; ``awaiting_channels``) and
the scheduler's ``list_tasks(limit=0)`` (a lease is itself a task named "lease",
RUNNING while it serves the driver). Unless a test says otherwise, leases are made to last (``TASKGRAPH_LEASE_IDLE``, read by the
cluster's executors when they start), so that one does not end between two
steps of a test on a slow machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import taskgraph as tg
from conftest import another_driver, leased, leased_so_far, on_lease, stored, wait_for
from taskgraph.exceptions import ObjectLostError, TaskCancelledError, WorkerCrashedError
from taskgraph.util.state import list_tasks


@pytest.fixture
def lasting(monkeypatch):
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")


@pytest.fixture
def fleeting(monkeypatch):
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "0.001")


# -- tasks ----------------------------------------------------------------------


@tg.remote
def pid(x=None):
    return os.getpid()


@tg.remote
def double(x):
    return 2 * x


@tg.remote(num_returns=2)
def pair(x):
    return x, x + 1


@tg.remote(num_returns=2)
def pair_fails(message):
    raise ValueError(message)


@tg.remote
def context():
    ctx = tg.get_runtime_context()
    return ctx.get_task_id(), tg.get_runtime_context().get_node_id()


@tg.remote
def count_to(n):
    yield from range(n)


@tg.remote
def add_all(xs):
    return sum(tg.get(xs))


@tg.remote
def total(boxed):
    return int(tg.get(boxed[0]).sum())


@tg.remote
def slow_big(n, delay):
    time.sleep(delay)
    return np.arange(n)


@tg.remote
def slow_holding(x, delay):
    time.sleep(delay)
    return [tg.put(x)]


@tg.remote
def big_holding(n):
    return [tg.put(np.arange(n))]


@tg.remote
def sleep(seconds, marker=None):
    if marker is not None:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@tg.remote
def sleep_first(marker):
    """The first run writes its pid and sleeps (to be killed); a run after it returns."""
    if os.path.exists(marker):
        return "again"
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)  # the pid is in it once it exists
    time.sleep(60)
    return "slept"


@tg.remote
def child(seconds, folder):
    open(os.path.join(folder, "child-started"), "w").close()
    try:
        time.sleep(seconds)
    finally:
        open(os.path.join(folder, "child-ended"), "w").close()
    return "child done"


@tg.remote
def parent(seconds, folder):
    return tg.get(child.remote(seconds, folder))


@tg.remote
class Named:
    def value(self):
        return "here"


@tg.remote
def look_up(name, namespace):
    return tg.get(tg.get_actor(name, namespace=namespace).value.remote(), timeout=30)


# -- helpers --------------------------------------------------------------------


def open_leases() -> int:
    return tg.statistics().open_leases


def running_leases() -> set[str]:
    """The leases the scheduler has running (a lease is a task named "lease")."""
    return {
        t["task_id"]
        for t in list_tasks(limit=0)
        if t["name"] == "lease" and t["state"] == "RUNNING"
    }


def the_lease() -> str:
    """The one lease serving this driver: its task id at the scheduler."""
    assert open_leases() == 1
    (lease_id,) = running_leases()
    return lease_id


def dead(p: int) -> bool:
    try:
        return psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cpus_free(n=2.0) -> bool:
    return tg.available_resources().get("CPU") == n


# -- ordering: what the driver told the scheduler, seen from a leased task -------


def test_a_named_actor_made_just_before_is_found_by_a_leased_task(lasting, fresh_cluster):
    namespace = tg._api._runtime.namespace
    leased(pid)
    handles, went = [], 0
    for i in range(5):
        handles.append(Named.options(name=f"named-{i}").remote())
        ref, leased_now = on_lease(lambda i=i: look_up.remote(f"named-{i}", namespace))
        went += leased_now
        assert tg.get(ref, timeout=30) == "here"
    assert went, "look-ups went on a lease"
    for h in handles:
        tg.kill(h)


def test_a_put_captured_by_a_leased_task_is_there_when_it_runs(lasting, fresh_cluster):
    """The put goes to the scheduler, the task straight to the executor: the put must
    be known before the task asks for it, even behind a backlog of other messages."""
    leased(pid)
    before = leased_so_far()
    for i in range(15):
        backlog = [tg.put(bytes(90_000)) for _ in range(30)]  # ~2.7 MB ahead of the put
        ref = tg.put(f"value-{i}")
        reader = tg.remote(lambda: tg.get(ref, timeout=10))  # noqa: B023 - captured on purpose
        assert tg.get(reader.remote(), timeout=30) == f"value-{i}"
        del backlog
    assert leased_so_far() > before, "the readers went on a lease"


# -- cancel ------------------------------------------------------------------------


def test_recursive_cancel_of_a_leased_task_reaches_the_task_it_started(
    lasting, fresh_cluster, tmp_path
):
    # Through the scheduler (SPREAD is never leased) the child is cancelled too.
    spread = tmp_path / "spread"
    spread.mkdir()
    ref = parent.options(scheduling_strategy="SPREAD").remote(60, str(spread))
    wait_for((spread / "child-started").exists, what="the child to start")
    tg.cancel(ref)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=30)
    wait_for((spread / "child-ended").exists, what="the child of a scheduled parent to end")
    # The same parent on a lease.
    leased(pid)
    on = tmp_path / "leased"
    on.mkdir()
    ref, leased_now = on_lease(lambda: parent.remote(60, str(on)))
    assert leased_now
    wait_for((on / "child-started").exists, what="the child to start")
    tg.cancel(ref)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=30)
    wait_for((on / "child-ended").exists, timeout=10, what="the child of a leased parent to end")


def test_cancel_of_finished_leased_tasks_keeps_their_values(lasting, fresh_cluster):
    leased(pid)
    lease_id, before = the_lease(), leased_so_far()
    for i in range(20):
        ref = double.remote(i)
        assert tg.get(ref) == 2 * i
        tg.cancel(ref)
        tg.cancel(ref, force=True)
        assert tg.get(ref) == 2 * i
        a, b = pair.remote(i)
        assert tg.get(b) == i + 1
        tg.cancel(a, force=True)
        assert tg.get([a, b]) == [i, i + 1]
    assert the_lease() == lease_id, "no cancel touched the lease"
    assert leased_so_far() == before + 40, "they all went on it"
    assert tg.get(double.remote(tg.put(5))) == 10  # the refs are good for other tasks too


def test_cancel_right_after_submit_either_cancels_or_answers(lasting, fresh_cluster):
    """A cancel may catch a leased task before it starts; the next task of the same
    function must still run. (A new function each time: its code travels with its
    first task on a lease.)"""
    leased(pid)
    outcomes = set()
    for i in range(30):
        fn = tg.remote(lambda x, k=i: 2 * x + k)
        ref = fn.remote(i)
        tg.cancel(ref)
        try:
            assert tg.get(ref, timeout=30) == 3 * i
            outcomes.add("value")
        except TaskCancelledError:
            outcomes.add("cancelled")
        # Whatever the cancel hit, the next task is untouched.
        assert tg.get(fn.options(max_retries=0).remote(i), timeout=30) == 3 * i
    assert outcomes


def test_force_cancel_then_more_tasks_at_once(lasting, fresh_cluster, tmp_path):
    for k in range(3):
        leased(pid)
        marker = tmp_path / f"started-{k}"
        ref, leased_now = on_lease(lambda marker=marker: sleep.remote(60, str(marker)))
        assert leased_now
        wait_for(marker.exists, what="the task to start")
        tg.cancel(ref, force=True)
        # At once, before the driver saw the executor die: tasks that cannot be retried.
        later = [double.options(max_retries=0).remote(j) for j in range(3)]
        assert tg.get(later, timeout=30) == [0, 2, 4]
        with pytest.raises(TaskCancelledError):
            tg.get(ref, timeout=30)
        assert [tg.get(double.options(max_retries=0).remote(j)) for j in range(5)] == [
            0,
            2,
            4,
            6,
            8,
        ]
    # No killed lease kept its CPU: only a lease alive now holds one.
    wait_for(
        lambda: tg.available_resources().get("CPU") == 2.0 - open_leases(),
        what="the CPUs of the killed leases back",
    )


# -- refs that leave the driver, and what leased tasks return ------------------------


def test_refs_inside_a_leased_result_survive_a_burst_that_ends_the_lease(lasting, fresh_cluster):
    """A return holding a ref is read from the scheduler (the executor reports it
    first); a burst ends the lease from the driver's side while that task still runs."""
    for i in range(10):
        leased(pid)
        ref, leased_now = on_lease(lambda i=i: slow_holding.remote(i, 0.05))
        assert leased_now
        other = double.remote(i)  # a second task while one runs: the lease ends
        assert open_leases() == 0
        (inner,) = tg.get(ref, timeout=30)
        assert tg.get(inner, timeout=30) == i
        assert tg.get(other) == 2 * i
        del inner, ref
    wait_for(lambda: not stored(), what="the objects to be freed")


def test_a_large_leased_result_dropped_in_a_done_callback_is_freed(lasting, fresh_cluster):
    """The future holds the only ref; it drops it as the value arrives, and a
    callback keeps the delivering thread busy a while."""
    leased(pid)
    for _ in range(3):
        fut = slow_big.remote(200_000, 0.3).future()
        called = threading.Event()

        def slow_callback(_, called=called):
            time.sleep(0.3)
            called.set()

        fut.add_done_callback(slow_callback)
        assert fut.result(timeout=30)[-1] == 199_999
        wait_for(called.is_set, what="the callback")
        del fut
    wait_for(lambda: not stored(), timeout=10, what="the unread arrays to be freed")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_pending_leased_ref_passed_on_then_its_executor_is_killed(
    lasting, fresh_cluster, tmp_path, retries
):
    leased(pid)
    marker = tmp_path / "pid"
    ref, leased_now = on_lease(lambda: sleep_first.options(max_retries=retries).remote(str(marker)))
    assert leased_now
    dependent = double.remote(ref)  # the ref leaves the driver before its value is there
    boxed = tg.put([ref])
    wait_for(marker.exists, what="the leased task to start")
    os.kill(int(marker.read_text()), signal.SIGKILL)
    if retries:
        # The scheduler runs it again (not the 60 s sleep: the marker is there),
        # and what waited for it gets that value.
        assert tg.get(ref, timeout=30) == "again"
        assert tg.get(dependent, timeout=30) == "againagain"
        assert tg.get(tg.get(boxed)[0], timeout=30) == "again"
    else:
        # It fails, and so does what waited for it, at once (not after the 60 s sleep).
        with pytest.raises(WorkerCrashedError):
            tg.get(ref, timeout=30)
        with pytest.raises(WorkerCrashedError):
            tg.get(dependent, timeout=30)
        with pytest.raises(WorkerCrashedError):
            tg.get(tg.get(boxed)[0], timeout=30)
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]
    del ref, dependent, boxed
    wait_for(lambda: not stored(), what="the objects to be freed")


def test_large_leased_results_dropped_unread_are_freed(lasting, fresh_cluster):
    leased(pid)
    for _ in range(3):
        ref, leased_now = on_lease(lambda: slow_big.remote(200_000, 0.05))
        assert leased_now
        del ref  # while it runs
        wait_for(lambda: tg.statistics().awaiting_channels == 0, what="the result to arrive")
    for _ in range(3):
        ref = slow_big.remote(200_000, 0)
        tg.wait([ref], timeout=30)
        del ref  # arrived, never read
    # A ref to a large object the task put, inside a return dropped unread.
    outer, leased_now = on_lease(lambda: big_holding.remote(200_000))
    assert leased_now
    tg.wait([outer], timeout=30)
    del outer
    wait_for(lambda: tg.statistics().awaiting_channels == 0, what="the result to arrive")
    # One passed on while it runs, then dropped everywhere.
    ref = slow_big.remote(200_000, 0.05)
    length = tg.get(total.options(scheduling_strategy="SPREAD").remote([ref]), timeout=30)
    assert length == sum(range(200_000))
    del ref
    wait_for(lambda: not stored(), what="the arrays to be freed")


# -- leases that end by idling while tasks come -------------------------------------


def test_leases_ending_by_idle_as_tasks_are_sent_lose_nothing(fleeting, fresh_cluster):
    """With a 1 ms idle limit leases end between (and during the sending of) tasks."""
    before = leased_so_far()
    for i in range(150):
        ref = double.options(max_retries=0).remote(i)
        assert tg.get(ref, timeout=30) == 2 * i
        if i % 10 == 0:
            a, b = pair.options(max_retries=0).remote(i)
            assert tg.get([a, b], timeout=30) == [i, i + 1]
    assert leased_so_far() - before > 10, "tasks went on leases"
    wait_for(cpus_free, what="every CPU back")


def test_refs_inside_leased_results_survive_leases_ending_by_idle(fleeting, fresh_cluster):
    """A return holding a ref is read from the scheduler; with a 1 ms idle limit the
    lease ends before the driver asks for it. Another thread of the driver puts
    data meanwhile (what the driver tells the scheduler queues up)."""
    before = leased_so_far()
    stop = threading.Event()

    def putting():
        while not stop.is_set():
            refs = [tg.put(bytes(90_000)) for _ in range(10)]
            del refs
            tg.available_resources()  # a round trip: the backlog stays bounded

    putter = threading.Thread(target=putting)
    putter.start()
    lost = []
    try:
        for i in range(100):
            (inner,) = tg.get(slow_holding.options(max_retries=0).remote(i, 0), timeout=30)
            try:
                assert tg.get(inner, timeout=30) == i
            except ObjectLostError as exc:
                lost.append((i, exc))
            del inner
    finally:
        stop.set()
        putter.join(30)
    assert leased_so_far() - before > 5, "tasks went on leases"
    assert not lost, f"{len(lost)} of 100 inner objects were freed: {lost[:2]}"
    wait_for(lambda: not stored(), what="the objects to be freed")


# -- what may not be leased, and other shapes ---------------------------------------


def test_a_leased_task_sees_its_own_id_and_its_errors_fill_every_return(lasting, fresh_cluster):
    leased(pid)
    lease_id, before = the_lease(), leased_so_far()
    ref = context.remote()
    task_id, node = tg.get(ref)
    assert task_id == (ref.id[:12] + b"\0\0\0\0").hex()
    assert node is not None
    a, b = pair_fails.remote("both")
    for r in (a, b):
        with pytest.raises(ValueError, match="both"):
            tg.get(r, timeout=30)
    assert the_lease() == lease_id and leased_so_far() == before + 2


def test_generators_and_ref_arguments_bypass_a_held_lease(lasting, fresh_cluster):
    def leased_by(submit) -> int:
        before = leased_so_far()
        submit()
        return leased_so_far() - before

    start = leased_so_far()
    leased(pid)
    for _ in range(3):
        assert leased_by(lambda: [tg.get(r) for r in count_to.remote(4)] == [0, 1, 2, 3]) == 0
        assert leased_by(lambda: tg.get(double.remote(tg.put(4))) == 8) == 0
        # The inner one may be leased (it is sent first), the outer may not.
        assert leased_by(lambda: tg.get(double.remote(double.remote(1))) == 4) <= 1
        assert leased_by(lambda: tg.get(add_all.remote([tg.put(1), tg.put(2)])) == 3) == 0
        leased(pid)  # (a lease may be taken back while tasks wait for its CPU)
    # A generator function with a fixed number of returns is a plain task.
    first, second = count_to.options(num_returns=2).remote(2)
    assert tg.get([first, second]) == [0, 1]
    assert leased_so_far() > start, "tasks went on leases"


@pytest.mark.parametrize("cpus", [0.5, 2])
def test_leases_of_other_cpu_shapes(lasting, fresh_cluster, cpus):
    fn = pid.options(num_cpus=cpus)
    leased(fn)
    lease_id, before = the_lease(), leased_so_far()
    pids = {tg.get(fn.remote()) for _ in range(10)}
    assert len(pids) == 1 and the_lease() == lease_id and leased_so_far() == before + 10
    # One-CPU tasks still run (the lease is revoked or fits beside them).
    assert tg.get([double.remote(i) for i in range(10)], timeout=30) == [2 * i for i in range(10)]
    a, b = pair.options(num_cpus=cpus).remote(1)
    assert tg.get([a, b], timeout=30) == [1, 2]


# -- many threads, wait, futures, asyncio ------------------------------------------


def test_threads_mixing_get_wait_futures_and_await_on_leased_refs(lasting, fresh_cluster):
    leased(pid)
    errors = []

    def sync_loop(k):
        for i in range(40):
            assert tg.get(double.remote(1000 * k + i), timeout=30) == 2 * (1000 * k + i)

    def wait_loop(k):
        for i in range(40):
            ref = double.remote(1000 * k + i)
            ready, _ = tg.wait([ref], timeout=30)
            assert ready == [ref] and tg.get(ref) == 2 * (1000 * k + i)

    def future_loop(k):
        for i in range(40):
            assert double.remote(1000 * k + i).future().result(30) == 2 * (1000 * k + i)

    def async_loop(k):
        async def main():
            for i in range(40):
                assert await double.remote(1000 * k + i) == 2 * (1000 * k + i)
            refs = [double.remote(i) for i in range(10)]
            assert await asyncio.gather(*refs) == [2 * i for i in range(10)]

        asyncio.run(main())

    def burst_loop(k):
        for _ in range(5):
            refs = [double.remote(1000 * k + j) for j in range(20)]
            assert tg.get(refs, timeout=30) == [2 * (1000 * k + j) for j in range(20)]

    def guarded(fn, k):
        try:
            fn(k)
        except BaseException as exc:  # reported below
            errors.append((fn.__name__, exc))

    loops = [sync_loop, sync_loop, wait_loop, future_loop, async_loop, burst_loop]
    threads = [threading.Thread(target=guarded, args=(fn, k)) for k, fn in enumerate(loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    assert not errors, errors
    assert tg.statistics().awaiting_channels == 0, "every leased return was answered"


def test_a_thread_adding_task_shapes_while_others_get_leased_results(lasting, fresh_cluster):
    """get() looks through the client's lease routes, one per task shape, while
    another thread may add a route (a task of a new shape, here a memory request)."""
    ready = double.remote(1)
    assert tg.get(ready) == 2
    errors = []
    stop = threading.Event()

    def getting():
        try:
            while not stop.is_set():
                assert tg.get(ready) == 2
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=getting) for _ in range(2)]
    refs = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave often
    try:
        for t in threads:
            t.start()
        # Tasks of ever new shapes: they never run (no worker has that much memory).
        refs.extend(double.options(memory=10**15 + k).remote(k) for k in range(2000))
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for t in threads:
            t.join(30)
    # The scheduler warns once per shape that it cannot place it: let those
    # warnings all arrive before the cluster stops.
    client, shapes = tg._api.client(), len(refs)
    wait_for(lambda: len(client.notices) >= shapes, what="the scheduler's warnings")
    assert not errors, errors


# -- deaths: the leased executor, the driver, the cluster --------------------------


def test_the_leased_executor_killed_while_idle(lasting, fresh_cluster):
    leased(pid)
    lease_id = the_lease()
    executor, leased_now = on_lease(lambda: tg.get(pid.remote()))
    assert leased_now and the_lease() == lease_id
    os.kill(executor, signal.SIGKILL)
    # At once: a task sent on the dying lease is run again the usual way.
    assert tg.get(double.remote(1), timeout=30) == 2
    wait_for(lambda: lease_id not in running_leases(), what="the scheduler to see the lease go")
    # Tasks that may not be retried do not go near the dead executor.
    assert [tg.get(double.options(max_retries=0).remote(i)) for i in range(10)] == [
        2 * i for i in range(10)
    ]
    assert executor not in {tg.get(pid.remote()) for _ in range(5)}
    wait_for(
        lambda: tg.available_resources().get("CPU") == 2.0 - open_leases(),
        what="the dead lease's CPU back",
    )


def test_shutdown_while_a_leased_task_runs(lasting, fresh_cluster, tmp_path):
    leased(pid)
    marker = tmp_path / "started"
    ref, leased_now = on_lease(lambda: sleep.remote(60, str(marker)))
    assert leased_now
    # (the file exists a moment before the pid is in it)
    wait_for(lambda: marker.exists() and marker.read_text(), what="the leased task to start")
    executor = int(marker.read_text())
    tg.shutdown()  # the fixture then checks that processes, arenas and threads are gone
    wait_for(lambda: dead(executor), what="the leased executor to end")
    del ref


SECOND_DRIVER = """
import os, sys, time
import numpy as np
import taskgraph as tg

@tg.remote
def pid():
    return os.getpid()

@tg.remote
def big_when_told(n, folder):
    open(os.path.join(folder, "started"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)
    return np.arange(n)

tg.init()
deadline = time.monotonic() + 15
while tg.statistics().open_leases == 0:
    tg.get(pid.remote())
    if time.monotonic() > deadline:
        sys.exit("no lease")
"""


def test_a_driver_killed_while_its_leased_task_runs(lasting, fresh_cluster, tmp_path):
    script = SECOND_DRIVER + (
        "leased = tg.statistics().tasks_leased\n"
        f"ref = big_when_told.remote(200_000, {str(tmp_path)!r})\n"
        "stats = tg.statistics()\n"
        "assert stats.tasks_leased == leased + 1 and stats.awaiting_channels == 1, stats\n"
        "time.sleep(60)\n"
    )
    driver = another_driver(script)
    try:
        wait_for(
            lambda: (tmp_path / "started").exists() or driver.poll() is not None,
            what="the second driver's leased task to start",
        )
        assert driver.poll() is None, driver.communicate()
    finally:
        driver.kill()
        driver.communicate()
    (tmp_path / "go").touch()  # its 1.6 MB return is made for nobody
    wait_for(cpus_free, what="the dead driver's lease to end")
    wait_for(lambda: not stored(), timeout=10, what="the orphaned return to be freed")
    leased(pid)  # this driver still gets a lease


def test_a_driver_that_dies_as_a_leased_result_reaches_it(lasting, fresh_cluster, tmp_path):
    """The executor sent a large return (it is in the store); the driver dies before
    it could tell the scheduler about it."""
    script = SECOND_DRIVER + (
        "from taskgraph import _wire as w\n"
        "from taskgraph._channels import Channel\n"
        "received = Channel.received\n"
        "def dying(self, msg):\n"
        "    if isinstance(msg, w.DirectResult):\n"
        "        os._exit(0)\n"
        "    return received(self, msg)\n"
        "Channel.received = dying\n"
        f"open(os.path.join({str(tmp_path)!r}, 'go'), 'w').close()\n"
        f"tg.get(big_when_told.remote(200_000, {str(tmp_path)!r}))\n"
        "sys.exit('not reached')\n"
    )
    driver = another_driver(script)
    try:
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 0, err
    assert (tmp_path / "started").exists()
    wait_for(cpus_free, what="the dead driver's lease to end")
    wait_for(lambda: not stored(), timeout=10, what="the orphaned return to be freed")
