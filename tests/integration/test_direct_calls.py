"""Actor calls straight from caller to actor process, recorded by the scheduler all the same.

A client switches an actor to direct calls once it knows where the actor's
process listens and none of its calls through the scheduler is unanswered
(taskgraph/_direct.py). Each direct call is still recorded with the scheduler
by its caller and reported by the actor's process before the answer comes
(docs/architecture.md, "One road for every task"). Each test first drives the
switch, then checks that direct calls behave exactly as calls through the
scheduler do. Which way a call went is read from public counts only:
``tg.statistics()`` (this client) and ``taskgraph.util.state`` (the scheduler).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import taskgraph as tg
from conftest import goes_direct, stored, switch_to_direct, wait_for
from taskgraph.exceptions import ActorDiedError, TaskError
from taskgraph.util.state import cluster_statistics, list_tasks

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.seen = []

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def history(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def actor_id(self):
        return tg.get_runtime_context().get_actor_id()

    def big(self, n):
        return np.full(n, 3.0)

    def boxed(self, n):
        return [tg.put(np.full(n, 5.0))]

    def die(self):
        os._exit(1)

    def hold(self):
        """Never returns: the calls after it wait until the actor dies."""
        threading.Event().wait()


@tg.remote
def slowly(x, delay):
    time.sleep(delay)
    return x


# -- helpers (public state only) ----------------------------------------------------


def direct_calls() -> int:
    return tg.statistics().direct_actor_calls


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- tests --------------------------------------------------------------------------


def test_calls_go_direct_and_keep_their_order_across_the_switch():
    counter = Counter.remote()
    # Through the scheduler first, one waiting on a slow argument: the calls
    # after the switch must still run after it.
    first = counter.add.remote(slowly.remote("slow", 0.5))
    switch_to_direct(counter)  # its history() calls wait behind the slow one
    assert tg.get(first) == 1
    before = direct_calls()
    refs = [counter.add.remote(i) for i in range(50)]
    assert direct_calls() == before + 50
    assert tg.get(refs) == list(range(2, 52))
    assert tg.get(counter.history.remote()) == ["slow", *range(50)]
    tg.kill(counter)


def test_plain_answers_are_reported_through_the_report_pipe():
    """A direct call's small plain value is reported through its executor's report
    pipe (worker/reports.py), not on its stream: the daemons count what they read
    there (told in heartbeats). Switch the pipe off and this fails."""
    counter = Counter.remote()
    switch_to_direct(counter)
    before = cluster_statistics()["reports_through_pipes"]
    assert tg.get([counter.add.remote(i) for i in range(50)])[-1] >= 50
    wait_for(
        lambda: cluster_statistics()["reports_through_pipes"] >= before + 50,
        what="the daemon to count 50 reports read from the pipe",
    )
    tg.kill(counter)


def test_ref_arguments_of_direct_calls_are_fetched_by_the_actor_in_order():
    counter = Counter.remote()
    switch_to_direct(counter)
    before = len(tg.get(counter.history.remote()))
    late = slowly.remote("late", 0.3)
    calls = direct_calls()
    refs = [counter.add.remote(late), counter.add.remote("after"), counter.add.remote(tg.put(7))]
    assert direct_calls() == calls + 3
    assert tg.get(refs) == [before + 1, before + 2, before + 3]
    assert tg.get(counter.history.remote())[-3:] == ["late", "after", 7]

    @tg.remote
    def broken():
        raise ValueError("no input for you")

    with pytest.raises(TaskError, match="no input for you"):
        tg.get(counter.add.remote(broken.remote()))
    tg.kill(counter)


def test_refs_to_direct_returns_work_anywhere():
    counter = Counter.remote()
    switch_to_direct(counter)
    ref = counter.add.remote(1)

    @tg.remote
    def plus_one(x):
        return x + 1

    # Passed to a task, put inside a list, and pickled by the user: the
    # scheduler hears of the return before any of them reaches it.
    n = tg.get(ref)
    assert tg.get(plus_one.remote(counter.add.remote(2))) == n + 2
    (inner,) = tg.get(tg.put([counter.add.remote(3)]))
    assert tg.get(inner) == n + 2
    data = pickle.dumps(counter.add.remote(4))
    assert tg.get(pickle.loads(data)) == n + 3
    tg.kill(counter)


def test_large_and_ref_holding_returns_are_stored_and_freed():
    counter = Counter.remote()
    switch_to_direct(counter)
    big = counter.big.remote(500_000)  # 4 MB: in the store
    assert tg.get(big)[-1] == 3.0
    # A return holding a ref comes through the scheduler (which holds what it
    # holds): the actor only says so on the direct connection.
    before = tg.statistics()
    boxed = counter.boxed.remote(500_000)
    (inner,) = tg.get(boxed)
    after = tg.statistics()
    assert after.direct_actor_calls == before.direct_actor_calls + 1
    assert after.results_via_scheduler == before.results_via_scheduler + 1
    gc.collect()
    assert tg.get(inner)[0] == 5.0
    del big, boxed, inner
    gc.collect()
    wait_for(lambda: not stored(), what="the store to free the returns")
    wait_for(lambda: tg.statistics().awaiting_channels == 0, what="no answer to be awaited")
    tg.kill(counter)


def test_a_direct_call_that_kills_the_actor_fails_that_call_and_later_ones():
    counter = Counter.remote()
    switch_to_direct(counter)
    pid = tg.get(counter.pid.remote())
    dying = counter.die.remote()
    with pytest.raises(ActorDiedError):
        tg.get(dying, timeout=30)
    with pytest.raises(ActorDiedError):
        tg.get(counter.add.remote(1), timeout=30)
    wait_for(lambda: not _alive(pid), what="the actor's process to be gone")


def test_kill_fails_the_direct_calls_in_flight():
    counter = Counter.remote()
    switch_to_direct(counter)
    pid = tg.get(counter.pid.remote())
    late = counter.add.remote(slowly.remote(1, 0.5))  # waits in the actor for its argument
    tg.kill(counter)
    with pytest.raises(ActorDiedError):
        tg.get(late, timeout=30)
    wait_for(lambda: not _alive(pid), what="the actor's process to be gone")


def test_restartable_actors_are_called_through_the_scheduler():
    restartable = Counter.options(max_restarts=1).remote()
    plain = Counter.remote()
    went_direct = []

    def both_called() -> bool:
        before = direct_calls()
        tg.get(restartable.add.remote(0))
        went_direct.append(direct_calls() - before)
        return goes_direct(plain)

    # The plain actor switches meanwhile: long enough for the other to switch
    # too, had it been able to; and a few more rounds after that.
    wait_for(both_called, what="the plain actor to be called directly")
    for _ in range(10):
        assert both_called()
    assert not any(went_direct), went_direct
    tg.kill(restartable)
    tg.kill(plain)


# A driver of its own (the switch is read once, at import, in every process).
TURNED_OFF = """
import time
import taskgraph as tg

@tg.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, x):
        self.n += x
        return self.n

@tg.remote
def call_from_a_task(counter, n):
    out = [tg.get(counter.add.remote(1)) for _ in range(n)]
    return out, tg.statistics().direct_actor_calls

tg.init(num_cpus=2)
counter = Counter.remote()
results = []
deadline = time.monotonic() + 1.5  # long enough to switch if it could (see the control)
while time.monotonic() < deadline and tg.statistics().direct_actor_calls == 0:
    results.append(tg.get(counter.add.remote(1)))
from_task, task_direct = tg.get(call_from_a_task.remote(counter, 20))
stats = tg.statistics()
ok = results == list(range(1, len(results) + 1)) and from_task == list(
    range(len(results) + 1, len(results) + 21)
)
print("RESULT", ok, len(results), stats.direct_actor_calls, stats.direct_actors, task_direct)
tg.shutdown()
"""


@pytest.mark.parametrize("setting", ["0", "1"], ids=["off", "on-control"])
def test_direct_calls_can_be_turned_off(setting):
    env = {**os.environ, "TASKGRAPH_DIRECT_ACTOR_CALLS": setting}
    out = subprocess.run(
        [sys.executable, "-c", TURNED_OFF], capture_output=True, text=True, timeout=90, env=env
    )
    assert out.returncode == 0, out.stderr
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    _, ok, made, direct, direct_actors, _task_direct = line.split()
    assert ok == "True", out.stdout  # every result arrived, in order
    assert int(made) > 0
    if setting == "0":
        assert (direct, direct_actors) == ("0", "0"), out.stdout
    else:  # the same driver switches well within its time when it may
        assert int(direct) > 0, out.stdout


@pytest.mark.parametrize("how", ["kill", "sigkill"])
def test_a_burst_of_large_returns_from_an_actor_killed_mid_burst_leaves_nothing_stored(how):
    counter = Counter.remote()
    switch_to_direct(counter)
    pid = tg.get(counter.pid.remote())
    refs = [counter.big.remote(20_000) for _ in range(100)]  # 160 KB each: in the store
    held = counter.hold.remote()  # (so that the kill lands mid-burst on any machine)
    refs += [counter.big.remote(20_000) for _ in range(100)]
    tg.wait(refs, num_returns=3, timeout=30)  # mid-burst: some answered, most not
    if how == "kill":
        tg.kill(counter)
    else:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        tg.get(held, timeout=30)
    outcomes = []
    for ref in refs:
        try:
            assert tg.get(ref, timeout=30)[-1] == 3.0
            outcomes.append("ok")
        except ActorDiedError:
            outcomes.append("died")
    assert outcomes.count("ok") >= 3 and "died" in outcomes, outcomes
    # Calls run in order: once one failed, none after it ran.
    assert "ok" not in outcomes[outcomes.index("died") :], outcomes
    wait_for(lambda: not _alive(pid), what="the actor's process to be gone")
    del refs, ref, held
    gc.collect()
    wait_for(lambda: not stored(), what="every return the actor stored to be freed")
    wait_for(lambda: tg.statistics().awaiting_channels == 0, what="no answer to be awaited")


def test_the_scheduler_records_every_direct_call():
    made = direct_calls()
    counter = Counter.remote()
    switch_to_direct(counter)
    actor_id = tg.get(counter.actor_id.remote())
    to_counter = direct_calls() - made  # the switch's calls and actor_id()

    def finished_direct() -> int:
        return cluster_statistics()["tasks_finished_by_path"]["actor_direct"]

    def finished(name: str = "") -> list[dict]:
        return [
            t
            for t in list_tasks(limit=0)
            if t["actor_id"] == actor_id
            and t["path"] == "actor_direct"
            and t["state"] == "FINISHED"
            and name in t["name"]
        ]

    # (A plain value is answered first; its report follows with the next ones.)
    wait_for(lambda: len(finished()) == to_counter, what="the switch's calls to be reported")
    before = finished_direct()
    refs = [counter.add.remote(i) for i in range(1000)]
    assert direct_calls() == made + to_counter + 1000
    assert tg.get(refs, timeout=60) == list(range(1, 1001))
    seen = []
    wait_for(
        lambda: seen.append(finished_direct() - before) or seen[-1] >= 1000,
        what="every call to be reported",
    )
    assert seen[-1] == 1000, seen[-5:]
    adds = finished(".add")
    assert len(adds) == 1000
    assert all(0 < t["start_time_ms"] <= t["end_time_ms"] for t in adds)
    assert all(t["node_id"] for t in adds)
    tg.kill(counter)
