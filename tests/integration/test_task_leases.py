"""Task leases (taskgraph/_leases.py, worker/lease.py): tasks awaited one by one
skip the scheduler, and behave exactly as they would have through it.

Most tests here make leases last (``TASKGRAPH_LEASE_IDLE``, read by the
cluster's executors when they start), so that a lease does not end between
two steps of a test on a slow machine; one test checks the idle end itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import taskgraph as tg
from conftest import start_worker, stop_process, wait_for
from taskgraph import _wire as w
from taskgraph._leases import lease_shape
from taskgraph._transport import BlockingConnection, digest
from taskgraph.exceptions import TaskCancelledError, TaskError, WorkerCrashedError


@pytest.fixture
def lasting(monkeypatch):
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")


@tg.remote
def pid(x=None):
    return os.getpid()


@tg.remote
def double(x):
    return 2 * x


@tg.remote
def big(n):
    return np.arange(n)


@tg.remote
def holding(x):
    return [tg.put(x)]


@tg.remote
def fails(message):
    raise ValueError(message)


@tg.remote
def crash():
    os._exit(3)


@tg.remote(max_retries=1)
def crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "second try"


@tg.remote
def sleep(seconds, marker=None):
    if marker is not None:
        open(marker, "w").close()
    time.sleep(seconds)
    return "slept"


@tg.remote
def nested(x):
    return tg.get(double.remote(x))


ONE_CPU = (("CPU", 1.0),)  # the shape of most tasks here


def lease(shape=ONE_CPU):
    route = tg._api.client().leases.routes.get(shape)
    return route.channel if route is not None else None


def leased(fn=pid, *args, shape=ONE_CPU):
    """Await ``fn`` one call at a time until its calls go on a lease; return the lease."""
    wait_for(
        lambda: tg.get(fn.remote(*args), timeout=30) is not None and lease(shape), what="a lease"
    )
    return lease(shape)


def test_tasks_awaited_one_by_one_go_on_a_lease(lasting, fresh_cluster):
    channel = leased()
    runs = channel.runs
    pids = {tg.get(pid.remote()) for _ in range(30)}
    assert lease() is channel and channel.runs == runs + 30, "every one went on the lease"
    assert len(pids) == 1, "one executor ran them all"
    assert [tg.get(double.remote(i)) for i in range(20)] == [2 * i for i in range(20)]
    # A leased task's return may be passed on, like any ref.
    ref = double.remote(21)
    assert channel.runs == runs + 51
    assert tg.get(double.remote(ref)) == 84


def test_leases_are_only_for_plain_tasks(lasting, fresh_cluster):
    spec = w.TaskSpec(b"t" * 16, b"f", "f", b"", [], resources={"CPU": 1.0})
    assert lease_shape(spec) == (("CPU", 1.0),)
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [b"d" * 16])) is None
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [], nested=[b"n" * 16])) is None
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [], generator=True)) is None
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [], retry_exceptions=True)) is None
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [], strategy="SPREAD")) is None
    assert lease_shape(w.TaskSpec(b"t" * 16, b"f", "f", b"", [], resources={"GPU": 1})) is None
    # A ref argument goes the usual way, even with a lease held.
    channel = leased()
    runs = channel.runs
    assert tg.get(double.remote(tg.put(4))) == 8
    assert channel.runs == runs


def test_failures_on_a_lease_are_the_tasks_own(lasting, fresh_cluster):
    leased()
    with pytest.raises(ValueError, match="boom") as info:
        tg.get(fails.remote("boom"))
    assert isinstance(info.value, TaskError)
    assert lease() is not None, "a failed task does not end the lease"
    assert tg.get(double.remote(1)) == 2


def test_a_crash_on_a_lease_fails_the_task_or_retries_it(lasting, fresh_cluster, tmp_path):
    leased()
    with pytest.raises(WorkerCrashedError, match="exit code 3"):
        tg.get(crash.remote(), timeout=60)
    leased()
    assert tg.get(crash_once.remote(str(tmp_path / "marker")), timeout=60) == "second try"
    assert (tmp_path / "marker").exists()
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("force", [False, True])
def test_cancel_reaches_a_leased_task(lasting, fresh_cluster, force, tmp_path):
    channel = leased(sleep, 0)
    marker = tmp_path / "started"
    ref = sleep.remote(60, str(marker))
    assert ref.id[:12] + b"\0\0\0\0" in channel.in_flight, "it runs on the lease"
    wait_for(marker.exists, what="the task to start")
    tg.cancel(ref, force=force)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=30)
    if not force:
        assert lease() is channel, "the lease goes on"
    assert tg.get(double.remote(3)) == 6


def test_large_results_and_refs_inside_come_back_from_a_lease(lasting, fresh_cluster):
    channel = leased()
    runs = channel.runs
    arr = tg.get(big.remote(1_000_000))
    assert arr[-1] == 999_999
    del arr
    (inner,) = tg.get(holding.remote(5))
    assert tg.get(inner) == 5
    ref = big.remote(10)
    assert tg.get(double.remote(ref)).tolist() == [2 * i for i in range(10)]
    assert channel.runs == runs + 3
    del inner, ref  # the no_leaks check sees the store empty again


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_leased_task_that_waits_lends_its_cpu(lasting, fresh_cluster):
    leased(nested, 1)
    channel = lease()
    runs = channel.runs
    # The lease holds the only CPU; the inner task gets it while the outer waits.
    assert [tg.get(nested.remote(i), timeout=60) for i in range(5)] == [0, 2, 4, 6, 8]
    assert channel.runs == runs + 5


def test_a_burst_of_tasks_ends_the_lease(lasting, fresh_cluster):
    channel = leased()
    refs = [double.remote(i) for i in range(100)]
    assert lease() is None and channel.ending
    assert tg.get(refs) == [2 * i for i in range(100)]
    wait_for(lambda: tg.available_resources().get("CPU") == 2, what="every CPU free")


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_task_that_needs_the_leased_cpu_gets_it(lasting, fresh_cluster):
    channel = leased()
    # A ref argument: the usual way, where it waits for the CPU the lease holds.
    assert tg.get(double.remote(tg.put(2)), timeout=30) == 4
    assert channel.ending and lease() is not channel, "the scheduler took the lease back"
    # Another client's work needs the CPU: no new lease for a while.
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]
    assert lease() is None


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2, "resources": {"R": 1}}], indirect=True)
def test_a_task_waiting_at_the_scheduler_for_a_leased_resource_gets_it(lasting, fresh_cluster):
    with_r = double.options(resources={"R": 1})
    channel = leased(with_r, 1, shape=(("CPU", 1.0), ("R", 1.0)))
    # Custom resources wait at the scheduler, which takes the lease back.
    assert tg.get(with_r.remote(tg.put(3)), timeout=30) == 6
    assert channel.ending


def test_no_lease_is_asked_of_a_worker_that_could_not_hold_it(lasting, fresh_cluster):
    far = double.options(resources={"far": 1})
    worker = start_worker("--num-cpus", "1", "--resources", '{"far": 1}')
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the second worker")
        # The local worker (the driver's, which leases) has no "far": the tasks
        # go the usual way, to the other worker, with no warning about a lease.
        assert [tg.get(far.remote(i), timeout=60) for i in range(10)] == [2 * i for i in range(10)]
        assert lease((("CPU", 1.0), ("far", 1.0))) is None
        assert not [n for n in tg._api.client().notices if "lease" in n]
    finally:
        stop_process(worker)
    wait_for(lambda: len(tg.nodes()) == 1, what="the second worker to leave")


def test_threads_awaiting_tasks_at_once_get_their_own_results(lasting, fresh_cluster):
    leased()
    errors = []

    def loop(k):
        try:
            for i in range(40):
                assert tg.get(double.remote(1000 * k + i), timeout=60) == 2 * (1000 * k + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_an_idle_lease_ends_and_frees_its_cpu(fresh_cluster):
    leased()  # executors end a lease after 50 ms idle (the default)
    wait_for(lambda: lease() is None, what="the lease to end")
    wait_for(lambda: tg.available_resources().get("CPU") == 2, what="its CPU back")
    # The next tasks awaited one by one get a lease again.
    assert leased() is not None


def test_a_lease_nobody_asked_for_is_refused(lasting, fresh_cluster):
    client = tg._api.client()
    address = client.deliveries.address.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    conn = BlockingConnection(sock)
    [challenge] = conn.recv()
    conn.send([w.Hello("executor", digest(client.token, challenge.nonce), b"x" * 8)])
    [welcome] = conn.recv()
    assert isinstance(welcome, w.Welcome)
    conn.send([w.LeaseReady(b"n" * 16)])
    with pytest.raises(ConnectionError):
        conn.recv()  # closed on us
    conn.close()
    assert tg.get(double.remote(2)) == 4


def test_leases_can_be_turned_off(tmp_path):
    script = tmp_path / "off.py"
    script.write_text(
        "import taskgraph as tg\n"
        "tg.init(num_cpus=1)\n"
        "f = tg.remote(lambda x: x + 1)\n"
        "assert [tg.get(f.remote(i)) for i in range(20)] == list(range(1, 21))\n"
        "assert tg._api.client().leases is None\n"
        "tg.shutdown()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "TASKGRAPH_TASK_LEASES": "0"}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
