"""Returns of direct actor calls and leased tasks, under attack.

A task sent straight to an executor (an actor called directly, a lease) is
recorded with the scheduler by its caller and reported by its executor before
that executor answers the caller (docs/architecture.md, "One road for every
task"): a large return stays in the executor's store and the report says where;
a return holding refs is not handed over (the caller asks the scheduler); when
the channel is lost the caller asks the scheduler, which has the report, retries
the task or fails it; and what a dying executor sealed in its store but never
announced is freed by its daemon. ``Client.channel_answered`` stores values
before it runs callbacks. Each test drives its calls onto the direct path or a
lease, then races refs that leave the caller, refs that are dropped, callers
and executors that die, and callbacks. Paths are read from public counts
(``tg.statistics()``).

The stored-object leak check of conftest cannot see into a fresh cluster once
it is shut down, so each test checks the store itself before it ends.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pytest

import taskgraph as tg
from conftest import (
    SWITCH_TO_DIRECT,
    another_driver,
    finish,
    leased,
    leased_so_far,
    on_lease,
    stored,
    switch_to_direct,
    wait_for,
)
from taskgraph.exceptions import ActorDiedError, ObjectLostError

HERE = os.path.dirname(os.path.abspath(__file__))  # scripts import this module

BIG = 200_000  # float64/int64 elements: 1.6 MB, well above the 100 KiB inline limit


@pytest.fixture
def lasting(monkeypatch):
    """Leases last (read by executors as they start: set before the cluster)."""
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")


@pytest.fixture
def fleeting(monkeypatch):
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "0.001")


# -- actors and tasks ---------------------------------------------------------------


@tg.remote(num_cpus=0)
class Store:
    def __init__(self):
        self.seen = []
        self.kept = []

    def history(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def big(self, n, fill=1.0):
        return np.full(n, fill)

    def slow_big(self, n, delay, fill=1.0):
        time.sleep(delay)
        return np.full(n, fill)

    @tg.method(num_returns=2)
    def small_and_big(self, x, n, delay):
        time.sleep(delay)
        return x, np.full(n, float(x))

    def big_holding(self, n, delay):
        time.sleep(delay)
        return {"array": np.full(n, 2.0), "inner": tg.put(np.full(n, 7.0)), "small": tg.put(9)}

    def sum_of(self, x):
        return float(np.asarray(x).sum())

    def touch_and_sleep(self, path, seconds):
        open(path, "w").close()
        time.sleep(seconds)

    def keep(self, box):
        self.kept.append(box)
        return len(self.kept)

    def kept_sums(self):
        return [float(tg.get(box[0], timeout=10).sum()) for box in self.kept]

    def drop_kept(self):
        self.kept.clear()
        gc.collect()


@tg.remote
def total(x):
    return float(np.asarray(x).sum())


@tg.remote
def total_boxed(box):
    return float(tg.get(box[0], timeout=30).sum())


@tg.remote
def inner_total(d):
    return float(tg.get(d["inner"], timeout=30).sum()) + float(d["array"].sum())


@tg.remote
def pid():
    return os.getpid()


@tg.remote
def wait_for_path(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    return os.path.exists(path)


@tg.remote
def slow_big(n, delay):
    time.sleep(delay)
    return np.arange(n)


@tg.remote(num_returns=2)
def small_and_big(x, n, delay):
    time.sleep(delay)
    return x, np.full(n, float(x))


@tg.remote
def big_holding(n, delay):
    time.sleep(delay)
    return {"array": np.full(n, 2.0), "inner": tg.put(np.full(n, 7.0)), "small": tg.put(9)}


# -- helpers ------------------------------------------------------------------------


def cpus_free(n=2.0) -> bool:
    return tg.available_resources().get("CPU") == n


def end_leases(n=2.0) -> None:
    """A burst lets this driver's lease go (the second task comes while the first,
    held until then, is on it); then every CPU is free again."""
    with tempfile.TemporaryDirectory() as folder:
        go = os.path.join(folder, "go")
        first = wait_for_path.remote(go)
        second = pid.remote()
        open(go, "w").close()
        assert tg.get([first, second], timeout=30)
    assert tg.statistics().open_leases == 0
    wait_for(lambda: cpus_free(n), what="every CPU back")


def direct_state_is_clean() -> bool:
    """No return of a task sent down a channel is awaited from it any more."""
    return tg.statistics().awaiting_channels == 0


def store_empties(before: frozenset[str] | set[str] = frozenset(), timeout: float = 3) -> None:
    gc.collect()
    wait_for(lambda: stored() <= before, timeout=timeout, what="the returns to be freed")


# -- 1. large returns of direct actor calls ------------------------------------------


def test_a_large_direct_return_passed_on_before_and_after_its_answer(fresh_cluster):
    """Before the answer the ref leaves for a task, a put and another actor, which
    wait for the call's report (the scheduler recorded the call); after, the
    scheduler has that report already."""
    a, b = Store.remote(), Store.remote()
    switch_to_direct(a)
    switch_to_direct(b)
    for i in range(5):
        fill = float(i + 1)
        early = a.slow_big.remote(BIG, 0.1, fill)
        # Before its answer: to a task, nested in a put, to another actor (direct).
        t = total.remote(early)
        box = tg.put([early])
        c = b.sum_of.remote(early)
        nested = total_boxed.remote([early])
        assert tg.get([t, c, nested], timeout=30) == [BIG * fill] * 3
        assert float(tg.get(tg.get(box)[0]).sum()) == BIG * fill
        # After its answer.
        late = a.big.remote(BIG, fill)
        tg.wait([late], timeout=30)
        assert tg.get([total.remote(late), b.sum_of.remote(late)], timeout=30) == [BIG * fill] * 2
        assert tg.get(late)[0] == fill
        del early, t, box, c, nested, late
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_large_direct_returns_dropped_before_and_after_their_answers(fresh_cluster):
    a = Store.remote()
    switch_to_direct(a)
    for _ in range(10):
        a.slow_big.remote(BIG, 0.01)  # dropped at once, in flight
        ref = a.slow_big.remote(BIG, 0.01)
        box = tg.put([ref])  # passed on, then both dropped while in flight
        del ref, box
        ref = a.big.remote(BIG)
        tg.wait([ref], timeout=30)
        del ref  # arrived, never read
    tg.get(a.history.remote(), timeout=30)  # everything above was answered
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_many_threads_pass_on_and_drop_large_direct_returns(fresh_cluster):
    a, b = Store.remote(), Store.remote()
    switch_to_direct(a)
    switch_to_direct(b)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(15):
                fill = float(seed * 100 + i)
                ref = a.slow_big.remote(BIG, rng.choice([0, 0.002, 0.01]), fill)
                choice = rng.randrange(5)
                if choice == 0:
                    assert tg.get(total.remote(ref), timeout=30) == BIG * fill
                elif choice == 1:
                    assert tg.get(b.sum_of.remote(ref), timeout=30) == BIG * fill
                elif choice == 2:
                    assert tg.get(ref, timeout=30)[-1] == fill
                elif choice == 3:
                    box = tg.put([ref])
                    del ref
                    assert tg.get(total_boxed.remote(box), timeout=30) == BIG * fill
                else:
                    del ref
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    tg.get([a.history.remote(), b.history.remote()], timeout=30)
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


CALLING_DRIVER = """
import numpy as np
@tg.remote
def total(x):
    return float(np.asarray(x).sum())
for i in range(20):
    ref = a.slow_big.remote(200_000, 0.002 * (i % 3), float(i))
    if i % 2:
        box = tg.put([ref])  # leaves before its answer
        assert tg.get(total.remote(ref), timeout=30) == 200_000 * i
        del box
    elif i % 4:
        del ref  # dropped in flight
        continue
    assert tg.get(ref, timeout=30)[0] == i
    del ref
tg.shutdown()
"""


def test_several_drivers_pass_on_large_returns_of_one_actor(fresh_cluster):
    name = "shared"
    a = Store.options(name=name).remote()
    switch_to_direct(a)
    before = stored()
    script = (
        SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace) + CALLING_DRIVER
    )
    procs = [another_driver(script, HERE) for _ in range(2)]
    try:
        for i in range(20):  # this driver too, meanwhile
            ref = a.slow_big.remote(BIG, 0.002, float(i))
            assert tg.get(total.remote(ref), timeout=30) == BIG * i
            del ref
    finally:
        outcomes = [finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in outcomes), outcomes
    tg.get(a.history.remote(), timeout=30)
    store_empties(before)


def test_a_small_and_a_large_direct_return_of_one_call(fresh_cluster):
    a = Store.remote()
    switch_to_direct(a)
    for i in range(5):
        small, large = a.small_and_big.remote(i, BIG, 0.05)
        # Both leave before the answer.
        boxed = tg.put([small, large])
        t = total.remote(large)
        s = total.remote(small)
        assert tg.get([t, s], timeout=30) == [BIG * i, float(i)]
        got_small, got_large = tg.get(boxed)
        assert tg.get(got_small) == i and tg.get(got_large)[0] == i
        del small, large, boxed, t, s, got_small, got_large
        # Neither leaves; the small one is read, the large one dropped unread.
        small, large = a.small_and_big.remote(i, BIG, 0)
        del large
        assert tg.get(small, timeout=30) == i
        del small
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_a_large_direct_return_that_holds_refs(fresh_cluster):
    a, keeper = Store.remote(), Store.remote()
    switch_to_direct(a)
    switch_to_direct(keeper)
    # Holding refs, it is not handed over: the actor says so, the scheduler sends it.
    before = tg.statistics()
    d = tg.get(a.big_holding.remote(BIG, 0), timeout=30)
    after = tg.statistics()
    assert after.direct_actor_calls == before.direct_actor_calls + 1
    assert after.results_via_scheduler == before.results_via_scheduler + 1
    assert after.results_direct == before.results_direct
    del d
    for _ in range(4):
        ref = a.big_holding.remote(BIG, 0.05)
        t = inner_total.remote(ref)  # leaves before the answer
        assert tg.get(t, timeout=30) == BIG * 9.0
        d = tg.get(ref, timeout=30)
        inner, small = d["inner"], d["small"]
        keeper.keep.remote([d["inner"]])  # the actor keeps an inner ref
        outer = ref.hex()
        del d, ref, t
        gc.collect()
        # The return itself is freed (the report held what it holds, until the
        # scheduler had the refs taken out of it) ...
        wait_for(lambda o=outer: o not in stored(), what="the outer return to be freed")
        # ... and what it held is still there.
        assert float(tg.get(inner, timeout=30).sum()) == BIG * 7.0
        assert tg.get(small, timeout=30) == 9
        del inner, small
    assert tg.get(keeper.kept_sums.remote(), timeout=30) == [BIG * 7.0] * 4
    tg.get(keeper.drop_kept.remote(), timeout=30)
    store_empties()


# -- 1b. callers that die -------------------------------------------------------------


# The caller reads an answer with a large return (in the executor's store) from
# its channel (an actor's connection, or a lease's), and dies before taking it in.
DIE_ON_ANSWER = """
from taskgraph._client import Client
answered = Client.channel_answered
def dying(self, oids, answer, *rest):
    if any(r.location is not None for r in answer.result.returns):
        os._exit(0)
    return answered(self, oids, answer, *rest)
Client.channel_answered = dying
"""


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_a_caller_that_dies_as_a_large_direct_answer_reaches_it(fresh_cluster, passed_on):
    """The actor stored and reported the return; the caller dies as the answer comes.
    With ``passed_on``, a ref to it left the caller first (in a put)."""
    name = f"dying-caller-{passed_on}"
    actor = Store.options(name=name).remote()
    tg.get(actor.history.remote())
    before = stored()
    script = (
        SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace)
        + DIE_ON_ANSWER
        + "ref = a.slow_big.remote(200_000, 0.5)\n"
        + ("box = tg.put([ref])\n" if passed_on else "")
        + "tg.cluster_resources()\n"  # a round trip: what was sent is at the scheduler
        + "tg.get(ref, timeout=30)\n"
        + "sys.exit('not reached')\n"
    )
    code, _, err = finish(another_driver(script, HERE))
    assert code == 0, err
    tg.get(actor.history.remote(), timeout=30)  # runs after slow_big answered
    store_empties(before)


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_a_caller_killed_at_various_points_of_large_direct_answers(fresh_cluster, passed_on):
    name = f"killed-caller-{passed_on}"
    actor = Store.options(name=name).remote()
    tg.get(actor.history.remote())
    before = stored()
    loop = (
        "print('ready', flush=True)\n"
        "refs = []\n"
        "while True:\n"
        "    refs.append(a.big.remote(200_000))\n"
        + ("    box = tg.put([refs[-1]])\n" if passed_on else "")
        + "    if len(refs) > 4:\n"
        "        tg.wait([refs.pop(0)])\n"  # a few in flight at any time
        "        print('answered', flush=True)\n"
    )
    script = SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace) + loop
    for answered in (0, 3, 20):  # killed after that many answers (a few more in flight)
        proc = another_driver(script, HERE)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                pytest.fail(f"the driver did not start: {proc.communicate()[1]}")
            for _ in range(answered):
                if proc.stdout.readline().strip() != "answered":
                    pytest.fail(f"the driver stopped: {proc.communicate()[1]}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    tg.get(actor.history.remote(), timeout=30)
    store_empties(before)


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_kill_with_a_large_direct_answer_sent_but_unread(fresh_cluster, passed_on, tmp_path):
    """The actor stored, reported and sent a large return; the caller's reader is
    busy in a slow callback of an earlier answer when ``tg.kill`` lets the channel
    go, so it does not read that answer. The call ran and was reported before the
    kill: its value comes from the scheduler; the call that was running fails.
    With ``passed_on`` the ref left first (in a put)."""
    a = Store.remote()
    switch_to_direct(a)
    assert tg.statistics().direct_actors == 1
    killing = threading.Event()

    def slow_callback(_):
        # On the channel's reader thread: it reads nothing more until the kill has
        # let the channel go (a slow callback, as a user may write one).
        killing.wait(30)
        deadline = time.monotonic() + 30
        while tg.statistics().direct_actors and time.monotonic() < deadline:
            time.sleep(0.01)

    marker = tmp_path / "started"
    first = a.big.remote(16)
    first.future().add_done_callback(slow_callback)
    large = a.slow_big.remote(BIG, 0.2)
    box = tg.put([large]) if passed_on else None
    last = a.touch_and_sleep.remote(str(marker), 60)
    # The actor answers a call before it starts the next: the large one was sent.
    wait_for(marker.exists, what="the actor to start its last call")
    killing.set()
    tg.kill(a)
    assert tg.get(large, timeout=30)[-1] == 1.0
    if passed_on:
        assert tg.get(total.remote(tg.get(box)[0]), timeout=30) == BIG * 1.0
    with pytest.raises(ActorDiedError):
        tg.get(last, timeout=30)
    del first, large, box, last, a
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


# -- 2. leases: large returns, returns holding refs, and the lease's end -------------


def test_large_leased_returns_passed_on_before_their_answers(lasting, fresh_cluster):
    for _ in range(5):
        leased(pid)
        ref, went = on_lease(lambda: slow_big.remote(BIG, 0.05))
        assert went
        box = tg.put([ref])  # leaves before the answer: the put waits for its report
        t = total.options(scheduling_strategy="SPREAD").remote(ref)
        assert tg.get(t, timeout=30) == float(sum(range(BIG)))
        assert tg.get(tg.get(box)[0])[-1] == BIG - 1
        del ref, box, t
    store_empties()
    end_leases()


def test_a_small_and_a_large_leased_return(lasting, fresh_cluster):
    leased(pid)
    for i in range(5):
        (small, large), went = on_lease(lambda i=i: small_and_big.remote(i, BIG, 0.02))
        assert went
        boxed = tg.put([small])  # only the small one leaves
        assert tg.get(large, timeout=30)[0] == i
        assert tg.get(tg.get(boxed)[0]) == i
        del small, large, boxed
        leased(pid)
        small, large = small_and_big.remote(i, BIG, 0.02)
        boxed = tg.put([large])  # only the large one leaves
        assert tg.get(small, timeout=30) == i
        assert tg.get(tg.get(boxed)[0])[0] == i
        del small, large, boxed
        leased(pid)
    store_empties()
    end_leases()


def test_large_leased_returns_holding_refs_as_leases_end_by_idle(fleeting, fresh_cluster):
    """Returns holding refs come through the scheduler (the executor's report holds
    what they hold); with a 1 ms idle limit each lease ends before the driver has
    asked the scheduler for them."""
    lost = []
    for i in range(30):
        d = tg.get(big_holding.options(max_retries=0).remote(BIG, 0), timeout=30)
        inner, small = d["inner"], d["small"]
        del d
        try:
            assert float(tg.get(inner, timeout=30).sum()) == BIG * 7.0
            assert tg.get(small, timeout=30) == 9
        except ObjectLostError as exc:
            lost.append((i, exc))
        del inner, small
    assert not lost, lost[:2]
    wait_for(cpus_free, what="every lease to end")
    store_empties()


def test_a_burst_ends_a_lease_whose_ref_holding_return_is_still_coming(lasting, fresh_cluster):
    """A burst ends the lease from the driver's side while a large, ref-holding return
    is on its way through the scheduler: the lease must still end and free its CPU."""
    for _ in range(3):
        leased(pid)
        first, went = on_lease(lambda: big_holding.remote(BIG, 0.05))
        assert went
        before = leased_so_far()
        burst = [slow_big.remote(BIG, 0) for _ in range(4)]  # ends the lease
        assert leased_so_far() == before and tg.statistics().open_leases == 0
        assert tg.get(inner_total.remote(first), timeout=30) == BIG * 9.0
        assert [tg.get(r)[-1] for r in burst] == [BIG - 1] * 4
        del first, burst
        # The lease lasts 60 s idle: only the driver's end lets its CPU go.
        wait_for(cpus_free, what="the lease to end")
    store_empties()


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_revoked_lease_with_a_ref_holding_return_gives_its_cpu_back(lasting, fresh_cluster):
    """One CPU: a task that cannot be leased (SPREAD) needs the leased CPU just as the
    lease answered a large, ref-holding return (which the driver asks the scheduler for)."""
    for _ in range(3):
        leased(pid)
        ref, went = on_lease(lambda: big_holding.remote(BIG, 0))
        assert went
        other = total.options(scheduling_strategy="SPREAD").remote(1.0)  # revokes the lease
        d = tg.get(ref, timeout=30)
        assert tg.get(other, timeout=30) == 1.0
        assert float(tg.get(d["inner"], timeout=30).sum()) == BIG * 7.0
        del ref, d, other
    wait_for(lambda: cpus_free(1.0), what="the CPU back")
    store_empties()


DRIVER_ON_A_LEASE = (
    """
import os, sys, time
import numpy as np
import taskgraph as tg

@tg.remote
def pid():
    return os.getpid()

@tg.remote
def slow_big(n, delay):
    time.sleep(delay)
    return np.arange(n)

tg.init()
deadline = time.monotonic() + 15
while True:
    before = tg.statistics().tasks_leased
    tg.get(pid.remote())
    if tg.statistics().tasks_leased == before + 1:
        break
    if time.monotonic() > deadline:
        sys.exit("no lease")
"""
    + DIE_ON_ANSWER
    + """
before = tg.statistics().tasks_leased
ref = slow_big.remote(200_000, 0.5)
assert tg.statistics().tasks_leased == before + 1
"""
)


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_a_driver_that_dies_as_a_large_leased_answer_reaches_it(lasting, fresh_cluster, passed_on):
    before = stored()
    script = (
        DRIVER_ON_A_LEASE
        + ("box = tg.put([ref])\n" if passed_on else "")
        + "tg.cluster_resources()\n"
        + "tg.get(ref, timeout=30)\n"
        + "sys.exit('not reached')\n"
    )
    code, _, err = finish(another_driver(script, HERE))
    assert code == 0, err
    wait_for(cpus_free, what="the dead driver's lease to end")
    store_empties(before)


# -- executors that die with a large return sealed in their store ------------------


CRASH_AT_REPORTING = """
def crash_at_reporting(client, after, linger_pidfile):
    from taskgraph.worker import channel

    # An executor runs as ``python -m taskgraph.worker.executor``: its class is
    # __main__'s (patching it there is patching taskgraph.worker.executor's).
    Executor = sys.modules["__main__"].Executor

    def large(result):
        return any(r.location is not None for r in result.returns)

    def die():
        if linger_pidfile and os.fork() == 0:
            # A child that keeps only our connection to the worker daemon open
            # for a second: the daemon (so the scheduler) hears of our death
            # after the caller does.
            keep = client.conn.sock.fileno()
            for fd in range(3, 4096):
                if fd != keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            with open(linger_pidfile, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(1)
            os._exit(0)
        if linger_pidfile:
            while not os.path.exists(linger_pidfile):
                time.sleep(0.001)
        os._exit(1)

    if after:
        # Reported (a stored return's report is sent before the answer: Executed
        # is on our stream to the daemon), its caller not answered.
        answer = channel.Channel.answer

        def answer_or_die(self, result):
            if large(result):
                die()
            return answer(self, result)

        channel.Channel.answer = answer_or_die
    else:
        # Sealed in our store, never announced: not reported.
        report = Executor.report

        def report_or_die(self, result, *args, **kwargs):
            if large(result):
                die()
            return report(self, result, *args, **kwargs)

        Executor.report = report_or_die
"""


def crash_at_reporting(after: bool, linger_pidfile: str = "") -> None:
    """Make this executor die with its next large return sealed in its store: just
    before its report (``after=False``) or just after it, before answering the
    caller. A crash at that point, injected. With ``linger_pidfile``, the
    scheduler hears of the death a second after the caller."""
    namespace = {"os": os, "sys": sys, "time": time}
    exec(CRASH_AT_REPORTING, namespace)
    namespace["crash_at_reporting"](tg._api.client(), after, linger_pidfile)


def lingerer_gone(pidfile) -> None:
    wait_for(pidfile.exists, what="the lingering child to start")
    p = int(pidfile.read_text() or 0) or None
    wait_for(
        lambda: p is None or not psutil.pid_exists(p) or psutil.Process(p).status() == "zombie",
        what="the lingering child to exit",
    )


@tg.remote(max_retries=1)
def big_then_crash(n, marker, runs, after, pidfile):
    """Returns a large array; the first time, its executor dies with it sealed in its
    store, before or after the report (before the driver hears of it)."""
    with open(runs, "a") as f:
        f.write("run\n")
    if not os.path.exists(marker):
        open(marker, "w").close()
        crash_at_reporting(after, pidfile)
    return np.arange(n)


@pytest.mark.parametrize("after", [False, True], ids=["before-report", "after-report"])
def test_a_leased_executor_that_dies_with_a_large_return_sealed(
    lasting, fresh_cluster, tmp_path, after
):
    """Not reported: the scheduler runs it again (it has a retry left), and the rerun
    makes the same return id that the dead executor sealed (and its daemon freed).
    Reported: the scheduler has its value; it does not run again."""
    leased(pid)
    marker, runs, pidfile = tmp_path / "crashed", tmp_path / "runs", tmp_path / "lingerer"
    ref, went = on_lease(
        lambda: big_then_crash.remote(BIG, str(marker), str(runs), after, str(pidfile))
    )
    assert went
    try:
        assert tg.get(ref, timeout=30)[-1] == BIG - 1
        assert marker.exists()
        assert tg.get(total.remote(ref), timeout=30) == float(sum(range(BIG)))
    finally:
        lingerer_gone(pidfile)
    assert runs.read_text().count("run") == (1 if after else 2)
    del ref
    wait_for(lambda: cpus_free(2.0 - tg.statistics().open_leases), what="dead leases' CPUs")
    store_empties()


@tg.remote(num_cpus=0)
class Crashing:
    def history(self):
        return []

    def arm(self, after, pidfile=""):
        crash_at_reporting(after, pidfile)

    def big(self, n):
        return np.full(n, 4.0)


@pytest.mark.parametrize("after", [False, True], ids=["before-report", "after-report"])
def test_an_actor_that_dies_with_a_large_direct_return_sealed(fresh_cluster, tmp_path, after):
    """Not reported: the call fails, and the daemon frees what the actor sealed.
    Reported: the call ran; its value comes from the scheduler."""
    a = Crashing.remote()
    switch_to_direct(a)
    pidfile = tmp_path / "lingerer"
    tg.get(a.arm.remote(after, str(pidfile)))
    calls = tg.statistics().direct_actor_calls
    ref = a.big.remote(BIG)
    assert tg.statistics().direct_actor_calls == calls + 1
    try:
        if after:
            assert tg.get(ref, timeout=30)[-1] == 4.0
            assert tg.get(total.remote(ref), timeout=30) == BIG * 4.0
        else:
            with pytest.raises(ActorDiedError):
                tg.get(ref, timeout=30)
            # Passed on after the failure: what a task sees is what the driver saw.
            with pytest.raises(ActorDiedError):
                tg.get(total.remote(ref), timeout=30)
            # Sealed in the store and never announced: freed with the actor's process.
            store_empties()
    finally:
        lingerer_gone(pidfile)
    del ref, a
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


# -- 3. channel_answered: values, then callbacks ----------------------------------------


def test_futures_and_callbacks_that_drop_large_direct_refs(fresh_cluster):
    a, b = Store.remote(), Store.remote()
    switch_to_direct(a)
    switch_to_direct(b)
    results: list[object] = []
    done = threading.Event()
    n = 20

    def callback(fut, i):
        try:
            # On the delivering thread: the value is here, the ref is gone (the
            # future held the only one), and it may pass on other refs.
            results.append((i, float(fut.result().sum())))
            ref = a.big.remote(16, float(i))  # a new direct call from the callback
            results.append(("again", ref))
        except BaseException as exc:
            results.append(exc)
        if len(results) >= 2 * n:
            done.set()

    inners: list[object] = []
    holding = threading.Event()

    def keep_inner(fut):
        try:
            inners.append(fut.result()["inner"])  # the outer ref dies with the future
        except BaseException as exc:
            inners.append(exc)
        holding.set()

    b.big_holding.remote(BIG, 0.01).future().add_done_callback(keep_inner)
    for i in range(n):
        fut = a.slow_big.remote(BIG, 0.002, float(i)).future()  # no ref kept
        fut.add_done_callback(lambda f, i=i: callback(f, i))
        del fut
    assert done.wait(30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    sums = sorted(r for r in results if isinstance(r, tuple) and r[0] != "again")
    assert sums == [(i, BIG * float(i)) for i in range(n)]
    again = [r[1] for r in results if isinstance(r, tuple) and r[0] == "again"]
    assert sorted(float(x[0]) for x in tg.get(again, timeout=30)) == [float(i) for i in range(n)]
    assert holding.wait(30)
    (inner,) = inners
    gc.collect()
    assert float(tg.get(inner, timeout=30).sum()) == BIG * 7.0  # outlives the outer return
    del again, results[:], inner, inners[:]
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_asyncio_awaits_large_direct_and_leased_returns(lasting, fresh_cluster):
    a = Store.remote()
    switch_to_direct(a)
    leased(slow_big, 10, 0)
    leased_before = leased_so_far()

    async def main():
        out = []
        for _ in range(10):
            direct_refs = [a.slow_big.remote(BIG, 0.001, float(j)) for j in range(3)]
            arrays = await asyncio.gather(*direct_refs)
            out.append([float(x[0]) for x in arrays])
            # Passed on while awaited.
            ref = a.slow_big.remote(BIG, 0.02, 5.0)
            summed, arr = await asyncio.gather(total.remote(ref), ref)
            out.append([summed, float(arr[0])])
            leased_arr = await slow_big.remote(BIG, 0)
            out.append([float(leased_arr[-1])])
        return out

    out = asyncio.run(main())
    expected = []
    for _ in range(10):
        expected += [[0.0, 1.0, 2.0], [BIG * 5.0, 5.0], [float(BIG - 1)]]
    assert out == expected
    assert leased_so_far() > leased_before
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_leased_callbacks_drop_refs_and_submit_the_next_leased_task(lasting, fresh_cluster):
    """A future's callback runs on the lease's delivery thread: it drops the only ref to
    the large return and sends the next task (maybe on the same lease)."""
    leased(pid)
    finished = threading.Event()
    seen: list[object] = []
    remaining = [15]

    def chain(fut):
        try:
            seen.append(int(fut.result()[-1]))
        except BaseException as exc:
            seen.append(exc)
            finished.set()
            return
        remaining[0] -= 1
        if remaining[0] == 0:
            finished.set()
            return
        nxt = slow_big.remote(BIG, 0).future()
        nxt.add_done_callback(chain)

    slow_big.remote(BIG, 0).future().add_done_callback(chain)
    assert finished.wait(30), seen
    assert seen == [BIG - 1] * 15
    store_empties()
    end_leases()
