"""Task leases (taskgraph/_leases.py, worker/channel.py): tasks awaited one by one
go straight to a leased executor, and behave exactly as they would have through
the scheduler, which records and hears the report of every one of them.

Tests see the path a task took through public state only: the driver's
``tg.statistics()`` (``tasks_leased`` grows as a task goes down a lease;
``open_leases``), and the scheduler's ``list_tasks(limit=0)`` and
``cluster_statistics()`` (a lease is itself a task named "lease", RUNNING while
it serves the driver).

Most tests here make leases last (``TASKGRAPH_LEASE_IDLE``, read by the
cluster's executors when they start), so that a lease does not end between two
steps of a test on a slow machine; one test checks the idle end itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import taskgraph as tg
from conftest import leased, leased_so_far, start_worker, stop_process, wait_for
from taskgraph import _wire as w
from taskgraph._leases import lease_shape
from taskgraph._transport import BlockingConnection, digest
from taskgraph.exceptions import TaskCancelledError, TaskError, WorkerCrashedError
from taskgraph.util.state import cluster_statistics, list_tasks


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


@tg.remote
def dies_first(marker, how):
    """The first run writes its pid and dies (``exit``: os._exit(3); ``kill``: waits
    for the test's SIGKILL; ``unreported``: runs to the end, then its executor
    dies as it reports); a run after that returns its pid."""
    if os.path.exists(marker):
        return os.getpid()
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)  # the pid is in it once it exists
    if how == "exit":
        os._exit(3)
    if how == "kill":
        time.sleep(60)
    # The task's work is done; its executor dies before anyone hears of it. (An
    # executor runs as ``python -m taskgraph.worker.executor``: its class is __main__'s.)
    sys.modules["__main__"].Executor.report = lambda self, *args: os._exit(4)
    return os.getpid()


ONE_CPU = (("CPU", 1.0),)  # the shape of most tasks here


def running_leases() -> set[str]:
    """The leases the scheduler has running (a lease is a task named "lease")."""
    return {
        t["task_id"]
        for t in list_tasks(limit=0)
        if t["name"] == "lease" and t["state"] == "RUNNING"
    }


def the_lease() -> str:
    """The one lease serving this driver: its task id at the scheduler."""
    assert tg.statistics().open_leases == 1
    (lease_id,) = running_leases()
    return lease_id


def settled() -> None:
    """Wait until the scheduler heard the report of every task sent down a lease
    (none was retried or lost): an executor answers the driver right after its
    report, which its daemon may hold a moment to batch."""
    wait_for(lambda: finished_by_lease() == leased_so_far(), what="every leased task's report")


def task_id(ref) -> str:
    """The id of the task that returns ``ref`` (a return's id is its task's with an index)."""
    return (ref.id[:12] + b"\0\0\0\0").hex()


def task_record(tid: str) -> dict | None:
    return next((t for t in list_tasks(limit=0) if t["task_id"] == tid), None)


def state_of(tid: str) -> str | None:
    record = task_record(tid)
    return record["state"] if record is not None else None


def finished_by_lease() -> int:
    return cluster_statistics()["tasks_finished_by_path"]["lease"]


def test_tasks_awaited_one_by_one_go_on_a_lease(lasting, fresh_cluster):
    leased(pid)
    lease_id, before = the_lease(), leased_so_far()
    pids = {tg.get(pid.remote()) for _ in range(30)}
    assert leased_so_far() == before + 30, "every one went on the lease"
    assert the_lease() == lease_id, "the same lease"
    assert len(pids) == 1, "one executor ran them all"
    assert [tg.get(double.remote(i)) for i in range(20)] == [2 * i for i in range(20)]
    # A leased task's return may be passed on, like any ref.
    ref = double.remote(21)
    assert leased_so_far() == before + 51
    assert tg.get(double.remote(ref)) == 84


def test_a_thousand_leased_tasks_are_on_the_schedulers_record(lasting, fresh_cluster):
    by_lease, leased_before = finished_by_lease(), leased_so_far()
    ids = []
    for i in range(1000):
        ref = double.remote(i)
        assert tg.get(ref, timeout=30) == 2 * i
        ids.append(task_id(ref))
    leased = leased_so_far() - leased_before
    # Each was recorded by the driver and reported by its executor.
    wait_for(
        lambda: finished_by_lease() - by_lease == leased, what="the scheduler to count them all"
    )
    assert cluster_statistics()["reports_before_records"] == 0
    records = {t["task_id"]: t for t in list_tasks(limit=0)}
    node = tg.nodes()[0]["node_id"]
    for tid in ids:
        record = records[tid]
        assert record["state"] == "FINISHED", record
        assert 0 < record["start_time_ms"] <= record["end_time_ms"], record
        assert record["node_id"] == node and record["name"] == "double", record
    # The first few went the usual way while the lease they asked for came; then
    # every one went on it.
    paths = [records[tid]["path"] for tid in ids]
    first = paths.index("lease")
    assert first < 100 and set(paths[first:]) == {"lease"}, paths[: first + 1]
    assert set(paths[:first]) <= {"scheduled"} and leased == 1000 - first


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
    leased(pid)
    before = leased_so_far()
    ref = double.remote(tg.put(4))
    assert tg.get(ref) == 8
    assert leased_so_far() == before
    wait_for(lambda: state_of(task_id(ref)) == "FINISHED", what="its record")
    assert task_record(task_id(ref))["path"] == "scheduled"


def test_failures_on_a_lease_are_the_tasks_own(lasting, fresh_cluster):
    leased(pid)
    lease_id, before = the_lease(), leased_so_far()
    ref = fails.remote("boom")
    with pytest.raises(ValueError, match="boom") as info:
        tg.get(ref)
    assert isinstance(info.value, TaskError)
    assert leased_so_far() == before + 1
    assert the_lease() == lease_id, "a failed task does not end the lease"
    assert tg.get(double.remote(1)) == 2
    wait_for(lambda: state_of(task_id(ref)) == "FAILED", what="the scheduler to see it fail")


def test_a_crash_on_a_lease_fails_the_task_or_retries_it(lasting, fresh_cluster, tmp_path):
    leased(pid)
    with pytest.raises(WorkerCrashedError, match="exit code 3"):
        tg.get(crash.remote(), timeout=60)
    leased(pid)
    assert tg.get(crash_once.remote(str(tmp_path / "marker")), timeout=60) == "second try"
    assert (tmp_path / "marker").exists()
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("how", ["exit", "kill", "unreported"])
def test_the_scheduler_retries_a_task_whose_leased_executor_died(
    lasting, fresh_cluster, tmp_path, how
):
    """``exit``: the task ends its process; ``kill``: SIGKILL while it runs;
    ``unreported``: its executor dies after running it, before its report."""
    leased(pid)
    marker = tmp_path / "pid"
    before = leased_so_far()
    ref = dies_first.options(max_retries=1).remote(str(marker), how)
    assert leased_so_far() == before + 1, "it went on the lease"
    wait_for(marker.exists, what="the first run to start")
    first = int(marker.read_text())
    if how == "kill":
        os.kill(first, signal.SIGKILL)
    second = tg.get(ref, timeout=60)
    assert second != first, "run again, by another executor"
    wait_for(lambda: state_of(task_id(ref)) == "FINISHED", what="the scheduler's record")
    # The driver goes on, on a lease again.
    leased(pid)
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(("how", "code"), [("exit", 3), ("kill", -9), ("unreported", 4)])
def test_a_task_whose_leased_executor_died_fails_without_retries(
    lasting, fresh_cluster, tmp_path, how, code
):
    leased(pid)
    marker = tmp_path / "pid"
    before = leased_so_far()
    ref = dies_first.options(max_retries=0).remote(str(marker), how)
    assert leased_so_far() == before + 1, "it went on the lease"
    wait_for(marker.exists, what="the task to start")
    if how == "kill":
        os.kill(int(marker.read_text()), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match=f"exit code {code}") as info:
        tg.get(ref, timeout=60)
    assert info.value.exit_code == code
    wait_for(lambda: state_of(task_id(ref)) == "FAILED", what="the scheduler's record")
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("force", [False, True])
def test_cancel_reaches_a_leased_task(lasting, fresh_cluster, force, tmp_path):
    leased(sleep, 0)
    settled()
    lease_id, before, by_lease = the_lease(), leased_so_far(), finished_by_lease()
    marker = tmp_path / "started"
    ref = sleep.remote(60, str(marker))
    assert leased_so_far() == before + 1, "it runs on the lease"
    wait_for(marker.exists, what="the task to start")
    wait_for(lambda: state_of(task_id(ref)) == "RUNNING", what="the scheduler to record it")
    tg.cancel(ref, force=force)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=30)
    # The scheduler cancelled it: its record says so, and it counts as a leased task.
    wait_for(lambda: state_of(task_id(ref)) == "FAILED", what="the scheduler's record")
    assert task_record(task_id(ref))["path"] == "lease"
    assert finished_by_lease() == by_lease + 1
    if not force:
        assert the_lease() == lease_id, "the lease goes on"
    else:
        wait_for(lambda: lease_id not in running_leases(), what="the killed lease to end")
    assert tg.get(double.remote(3)) == 6


def test_large_results_and_refs_inside_come_back_from_a_lease(lasting, fresh_cluster):
    leased(pid)
    before = leased_so_far()
    arr = tg.get(big.remote(1_000_000))
    assert arr[-1] == 999_999
    del arr
    via_scheduler = tg.statistics().results_via_scheduler
    (inner,) = tg.get(holding.remote(5))
    # A return holding a ref is read from the scheduler, which knows the ref.
    assert tg.statistics().results_via_scheduler > via_scheduler
    assert tg.get(inner) == 5
    ref = big.remote(10)
    assert tg.get(double.remote(ref)).tolist() == [2 * i for i in range(10)]
    assert leased_so_far() == before + 3
    del inner, ref  # the no_leaks check sees the store empty again


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_leased_task_that_waits_lends_its_cpu(lasting, fresh_cluster):
    leased(nested, 1)
    before = leased_so_far()
    # The lease holds the only CPU; the inner task gets it while the outer waits.
    assert [tg.get(nested.remote(i), timeout=60) for i in range(5)] == [0, 2, 4, 6, 8]
    assert leased_so_far() == before + 5


@tg.remote
def double_once_open(x, gate):
    """``2 * x``, once the file ``gate`` exists."""
    while not os.path.exists(gate):
        time.sleep(0.001)
    return 2 * x


def test_a_burst_of_tasks_ends_the_lease(lasting, fresh_cluster, tmp_path):
    leased(pid)
    before = leased_so_far()
    gate = str(tmp_path / "open")
    refs = [double_once_open.remote(i, gate) for i in range(100)]
    # The first goes on the idle lease, the next ends it while it runs (it runs
    # until the gate opens: a busy machine sending the burst slowly changes
    # nothing). The lease is over, and the rest of the burst went the usual way.
    assert tg.statistics().open_leases == 0 and leased_so_far() == before + 1
    open(gate, "w").close()
    assert tg.get(refs, timeout=60) == [2 * i for i in range(100)]
    wait_for(lambda: tg.available_resources().get("CPU") == 2, what="every CPU free")


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_task_that_needs_the_leased_cpu_gets_it(lasting, fresh_cluster):
    leased(pid)
    lease_id = the_lease()
    # A ref argument: the usual way, where it waits for the CPU the lease holds.
    assert tg.get(double.remote(tg.put(2)), timeout=30) == 4
    assert tg.statistics().open_leases == 0, "the lease was taken back"
    wait_for(lambda: state_of(lease_id) == "FINISHED", what="the lease to end")
    # Another client's work needs the CPU: no new lease for a while.
    before = leased_so_far()
    assert [tg.get(double.remote(i)) for i in range(5)] == [0, 2, 4, 6, 8]
    assert tg.statistics().open_leases == 0 and leased_so_far() == before


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2, "resources": {"R": 1}}], indirect=True)
def test_a_task_waiting_at_the_scheduler_for_a_leased_resource_gets_it(lasting, fresh_cluster):
    with_r = double.options(resources={"R": 1})
    leased(with_r, 1)
    lease_id = the_lease()
    # Custom resources wait at the scheduler, which takes the lease back.
    assert tg.get(with_r.remote(tg.put(3)), timeout=30) == 6
    assert tg.statistics().open_leases == 0
    wait_for(lambda: state_of(lease_id) == "FINISHED", what="the lease to end")


def test_no_lease_is_asked_of_a_worker_that_could_not_hold_it(lasting, fresh_cluster):
    far = double.options(resources={"far": 1})
    worker = start_worker("--num-cpus", "1", "--resources", '{"far": 1}')
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the second worker")
        # The local worker (the driver's, which leases) has no "far": the tasks
        # go the usual way, to the other worker, with no warning about a lease.
        before = leased_so_far()
        assert [tg.get(far.remote(i), timeout=60) for i in range(10)] == [2 * i for i in range(10)]
        assert leased_so_far() == before and tg.statistics().open_leases == 0
        assert not running_leases()
        assert not [n for n in tg._api.client().notices if "lease" in n]
    finally:
        stop_process(worker)
    wait_for(lambda: len(tg.nodes()) == 1, what="the second worker to leave")


def test_threads_awaiting_tasks_at_once_get_their_own_results(lasting, fresh_cluster):
    leased(pid)
    before = leased_so_far()
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
    assert leased_so_far() > before, "some went on a lease"
    assert tg.statistics().awaiting_channels == 0


def test_an_idle_lease_ends_and_frees_its_cpu(fresh_cluster):
    leased(pid)  # executors end a lease after 50 ms idle (the default)
    wait_for(lambda: tg.statistics().open_leases == 0, what="the lease to end")
    wait_for(lambda: not running_leases(), what="the scheduler to see it end")
    wait_for(lambda: tg.available_resources().get("CPU") == 2, what="its CPU back")
    # The next tasks awaited one by one get a lease again.
    leased(pid)


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
    conn.send([w.ChannelReady(b"n" * 16)])
    with pytest.raises(ConnectionError):
        conn.recv()  # closed on us
    conn.close()
    assert tg.get(double.remote(2)) == 4
    assert tg.statistics().open_leases == 0


def test_leases_can_be_turned_off(tmp_path):
    script = tmp_path / "off.py"
    script.write_text(
        "import time\n"
        "import taskgraph as tg\n"
        "from taskgraph.util.state import cluster_statistics\n"
        "tg.init(num_cpus=1)\n"
        "f = tg.remote(lambda x: x + 1)\n"
        "assert [tg.get(f.remote(i)) for i in range(50)] == list(range(1, 51))\n"
        "stats = tg.statistics()\n"
        "assert stats.tasks_submitted == 50, stats\n"
        "assert stats.tasks_leased == 0 and stats.open_leases == 0, stats\n"
        "deadline = time.monotonic() + 30\n"
        "while (by_path := cluster_statistics()['tasks_finished_by_path'])['scheduled'] < 50:\n"
        "    assert time.monotonic() < deadline, by_path\n"
        "    time.sleep(0.01)\n"
        "assert by_path == {'scheduled': 50, 'lease': 0, 'actor_direct': 0}, by_path\n"
        "tg.shutdown()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "TASKGRAPH_TASK_LEASES": "0"}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
