"""Returns of direct actor calls and leased tasks, under attack.

Three mechanisms: a large return left in the executor's store is registered
with the scheduler by the executor itself (``register_stored``, held until the
caller's ``DirectAck``); a lease's end waits for those acks
(``LeaseChannel._shut_when_done``); ``Client.direct_answered`` stores values
and clears ``_direct`` before it runs callbacks. Each test drives its calls
onto the direct path or a lease, then races refs that leave the caller,
refs that are dropped, callers and executors that die, and callbacks.

The stored-object leak check of conftest cannot see into a fresh cluster once
it is shut down, so each test checks the store itself before it ends.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import taskgraph as tg
from conftest import stored, switch_to_direct, wait_for
from taskgraph.exceptions import ActorDiedError, ObjectLostError

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


ONE_CPU = (("CPU", 1.0),)


def lease(shape=ONE_CPU):
    r = tg._api.client().leases.routes.get(shape)
    return r.channel if r is not None else None


def leased(fn=pid, *args, shape=ONE_CPU):
    """Await ``fn`` one call at a time until its calls go on a lease; return the lease."""
    wait_for(
        lambda: tg.get(fn.remote(*args), timeout=30) is not None and lease(shape), what="a lease"
    )
    return lease(shape)


def on_lease(ref, channel) -> bool:
    return ref.id[:12] + b"\0\0\0\0" in channel.in_flight


def cpus_free(n=2.0) -> bool:
    return tg.available_resources().get("CPU") == n


def direct_state_is_clean() -> bool:
    c = tg._api.client()
    with c._lock:
        return not c._direct and not c._unregistered and not c._promised


def store_empties(before: frozenset[str] | set[str] = frozenset(), timeout: float = 3) -> None:
    gc.collect()
    wait_for(lambda: stored() <= before, timeout=timeout, what="the returns to be freed")


def driver(script: str) -> subprocess.Popen[str]:
    """Another driver process on this cluster (the caller kills it in a finally)."""
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    env = dict(
        os.environ,
        TASKGRAPH_ADDRESS=runtime.address,
        TASKGRAPH_TOKEN=runtime.cluster.token,
        PYTHONPATH=os.path.dirname(os.path.abspath(__file__)),
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


# -- 1. register_stored: direct actor calls -------------------------------------------


def test_a_large_direct_return_passed_on_before_and_after_its_answer(fresh_cluster):
    """Before the answer the ref leaves as a promise (the executor's registration is
    then ignored and the caller's put keeps the promise); after, it is registered."""
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
        box = tg.put([ref])  # promised, then both dropped while in flight
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
        box = tg.put([ref])  # leaves before its answer (a promise)
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
    script = SWITCH.format(name=name, namespace=tg._api._runtime.namespace) + CALLING_DRIVER
    procs = [driver(script) for _ in range(2)]
    try:
        for i in range(20):  # this driver too, meanwhile
            ref = a.slow_big.remote(BIG, 0.002, float(i))
            assert tg.get(total.remote(ref), timeout=30) == BIG * i
            del ref
    finally:
        outcomes = [finish(p) for p in procs]
    assert all(code == 0 for code, _ in outcomes), outcomes
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
        # The return itself is freed (the executor's hold went with the ack) ...
        wait_for(lambda o=outer: o not in stored(), what="the outer return to be freed")
        # ... and what it held is still there.
        assert float(tg.get(inner, timeout=30).sum()) == BIG * 7.0
        assert tg.get(small, timeout=30) == 9
        del inner, small
    assert tg.get(keeper.kept_sums.remote(), timeout=30) == [BIG * 7.0] * 4
    tg.get(keeper.drop_kept.remote(), timeout=30)
    store_empties()


# -- 1b. callers that die -------------------------------------------------------------


SWITCH = """
import os, sys, time
import numpy as np
import taskgraph as tg
from taskgraph import _wire as w
a = tg.get_actor({name!r}, namespace={namespace!r})
deadline = time.monotonic() + 15
while True:
    tg.get(a.history.remote())
    route = tg._api.client()._routes.get(a._actor_id)
    if route is not None and route.channel is not None:
        break
    if time.monotonic() > deadline:
        sys.exit("never went direct")
    time.sleep(0.01)
"""

DIE_ON_DIRECT_ANSWER = """
from taskgraph._direct import DirectChannel
answered = DirectChannel._answered
def dying(self, result, needs_ack, registered):
    if any(r.location is not None for r in result.returns):
        os._exit(0)  # the answer is read, the caller dies before acting on it
    return answered(self, result, needs_ack, registered)
DirectChannel._answered = dying
"""


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_a_caller_that_dies_as_a_large_direct_answer_reaches_it(fresh_cluster, passed_on):
    """The actor stored and registered the return; the caller dies as the answer comes.
    With ``passed_on``, a ref to it left the caller first (a promise)."""
    name = f"dying-caller-{passed_on}"
    actor = Store.options(name=name).remote()
    tg.get(actor.history.remote())
    before = stored()
    script = (
        SWITCH.format(name=name, namespace=tg._api._runtime.namespace)
        + DIE_ON_DIRECT_ANSWER
        + "ref = a.slow_big.remote(200_000, 0.5)\n"
        + ("box = tg.put([ref])\n" if passed_on else "")
        + "tg.cluster_resources()\n"  # a round trip: what was sent is at the scheduler
        + "tg.get(ref, timeout=30)\n"
        + "sys.exit('not reached')\n"
    )
    code, err = finish(driver(script))
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
    )
    script = SWITCH.format(name=name, namespace=tg._api._runtime.namespace) + loop
    for delay in (0.0, 0.05, 0.2):
        proc = driver(script)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                pytest.fail(f"the driver did not start: {proc.communicate()[1]}")
            time.sleep(delay)  # lets it run for a while (not a wait for state)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    tg.get(actor.history.remote(), timeout=30)
    store_empties(before)


@pytest.mark.parametrize("passed_on", [False, True], ids=["kept", "passed-on"])
def test_kill_with_a_large_direct_answer_sent_but_unread(fresh_cluster, passed_on, tmp_path):
    """The actor stored, registered and sent a large return; the caller's reader is
    busy in a slow callback of an earlier answer when ``tg.kill`` closes the channel,
    so it never reads that answer. With ``passed_on`` the ref left first (a promise)."""
    a = Store.remote()
    switch_to_direct(a)
    channel = tg._api.client()._routes[a._actor_id].channel
    killing = threading.Event()

    def slow_callback(_):
        # On the channel's reader thread: it reads nothing more until the kill has
        # closed the channel (a slow callback, as a user may write one).
        killing.wait(30)
        deadline = time.monotonic() + 30
        while not channel.conn._rfile.closed and time.monotonic() < deadline:
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
    for ref in (large, last):
        with pytest.raises(ActorDiedError):
            tg.get(ref, timeout=30)
    del first, large, box, last, ref, a
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


# -- 2. leases: registered returns and the lease's end -------------------------------


def test_large_leased_returns_passed_on_before_their_answers(lasting, fresh_cluster):
    for _ in range(5):
        channel = leased()
        ref = slow_big.remote(BIG, 0.05)
        assert on_lease(ref, channel)
        box = tg.put([ref])  # a promise: the executor's registration is then ignored
        t = total.options(scheduling_strategy="SPREAD").remote(ref)
        assert tg.get(t, timeout=30) == float(sum(range(BIG)))
        assert tg.get(tg.get(box)[0])[-1] == BIG - 1
        del ref, box, t
    store_empties()
    tg._api.client().leases.close()
    wait_for(cpus_free, what="every CPU back")


def test_a_small_and_a_large_leased_return(lasting, fresh_cluster):
    channel = leased()
    for i in range(5):
        small, large = small_and_big.remote(i, BIG, 0.02)
        assert on_lease(small, channel)
        boxed = tg.put([small])  # only the small one leaves
        assert tg.get(large, timeout=30)[0] == i
        assert tg.get(tg.get(boxed)[0]) == i
        del small, large, boxed
        small, large = small_and_big.remote(i, BIG, 0.02)
        boxed = tg.put([large])  # only the large one leaves
        assert tg.get(small, timeout=30) == i
        assert tg.get(tg.get(boxed)[0])[0] == i
        del small, large, boxed
        channel = leased()
    store_empties()


def test_large_leased_returns_holding_refs_as_leases_end_by_idle(fleeting, fresh_cluster):
    """The executor keeps what the returns hold, and the returns it stored, until the
    driver's acks; with a 1 ms idle limit each lease ends before those come."""
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


def test_a_lease_ends_with_acks_outstanding_from_a_burst(lasting, fresh_cluster):
    """A burst ends the lease from the driver's side while several large, ref-holding
    answers wait for their acks: the lease must still end and free its CPU."""
    for _ in range(3):
        channel = leased()
        first = big_holding.remote(BIG, 0.05)
        assert on_lease(first, channel)
        burst = [slow_big.remote(BIG, 0) for _ in range(4)]  # ends the lease
        assert channel.ending
        assert tg.get(inner_total.remote(first), timeout=30) == BIG * 9.0
        assert [tg.get(r)[-1] for r in burst] == [BIG - 1] * 4
        del first, burst
        wait_for(lambda ch=channel: ch._shut, what="the driver's side of the lease to close")
    tg._api.client().leases.close()
    wait_for(cpus_free, what="every CPU back")
    store_empties()


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_revoked_lease_with_acks_outstanding_gives_its_cpu_back(lasting, fresh_cluster):
    """One CPU: a task that cannot be leased (SPREAD) needs the leased CPU just as the
    lease answered large, ref-holding returns whose acks are on their way."""
    for _ in range(3):
        channel = leased()
        ref = big_holding.remote(BIG, 0)
        assert on_lease(ref, channel)
        other = total.options(scheduling_strategy="SPREAD").remote(1.0)  # revokes the lease
        d = tg.get(ref, timeout=30)
        assert tg.get(other, timeout=30) == 1.0
        assert float(tg.get(d["inner"], timeout=30).sum()) == BIG * 7.0
        del ref, d, other
    tg._api.client().leases.close()
    wait_for(lambda: cpus_free(1.0), what="the CPU back")
    store_empties()


DRIVER_ON_A_LEASE = """
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
routes = tg._api.client().leases.routes
deadline = time.monotonic() + 15
while routes.get((("CPU", 1.0),)) is None or routes[(("CPU", 1.0),)].channel is None:
    tg.get(pid.remote())
    if time.monotonic() > deadline:
        sys.exit("no lease")
from taskgraph import _wire as w
from taskgraph._deliveries import DeliveryListener
handle = DeliveryListener._handle
def dying(self, sock, msgs):
    for m in msgs:
        if isinstance(m, w.DirectResult) and any(r.location for r in m.result.returns):
            os._exit(0)  # read the answer, die before acting on it
    return handle(self, sock, msgs)
DeliveryListener._handle = dying
ref = slow_big.remote(200_000, 0.5)
assert routes[(("CPU", 1.0),)].channel.in_flight
"""


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
    code, err = finish(driver(script))
    assert code == 0, err
    wait_for(cpus_free, what="the dead driver's lease to end")
    store_empties(before)


# -- executors that die right after registering a return ------------------------------


CRASH_AT_REGISTERING = """
def crash_at_registering(module, after, linger_pidfile):
    original = module.register_stored
    def register_and_die(client, result):
        if not any(r.location is not None for r in result.returns):
            return original(client, result)
        holds = original(client, result) if after else []  # (kept: our hold on the returns)
        if holds:
            client.query("ping")  # the scheduler has the registration
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
    module.register_stored = register_and_die
"""


def crash_at_registering(module, after: bool, linger_pidfile: str = "") -> None:
    """Make this executor die as it registers its next stored return: just before
    (the return is sealed in the store, unregistered) or just after (registered,
    the caller not answered). A crash at that point, injected. With
    ``linger_pidfile``, the scheduler hears of the death a second after the caller."""
    namespace = {"os": os, "time": time}
    exec(CRASH_AT_REGISTERING, namespace)
    namespace["crash_at_registering"](module, after, linger_pidfile)


def lingerer_gone(pidfile) -> None:
    wait_for(pidfile.exists, what="the lingering child to start")
    p = int(pidfile.read_text() or 0) or None
    wait_for(
        lambda: p is None or not psutil.pid_exists(p) or psutil.Process(p).status() == "zombie",
        what="the lingering child to exit",
    )


@tg.remote(max_retries=1)
def big_then_crash(n, marker, pidfile):
    """Returns a large array; the first time, its executor dies right after registering
    it with the scheduler (before the driver hears of it)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        from taskgraph.worker import lease as lease_module

        crash_at_registering(lease_module, after=True, linger_pidfile=pidfile)
    return np.arange(n)


def test_a_leased_executor_that_dies_after_registering_a_large_return(
    lasting, fresh_cluster, tmp_path
):
    """The driver resends the task the usual way (it has a retry left); the rerun
    makes the same return id that the dead executor registered and stored."""
    channel = leased()
    marker, pidfile = tmp_path / "crashed", tmp_path / "lingerer"
    ref = big_then_crash.remote(BIG, str(marker), str(pidfile))
    assert on_lease(ref, channel)
    try:
        assert tg.get(ref, timeout=30)[-1] == BIG - 1
        assert marker.exists()
        assert tg.get(total.remote(ref), timeout=30) == float(sum(range(BIG)))
    finally:
        lingerer_gone(pidfile)
    del ref
    wait_for(lambda: cpus_free(1.0 if lease() is not None else 2.0), what="dead leases' CPUs")
    store_empties()


@tg.remote(num_cpus=0)
class Crashing:
    def history(self):
        return []

    def arm(self, after, pidfile=""):
        from taskgraph.worker import direct as direct_module

        # reply() looks register_stored up in its module: patched there.
        crash_at_registering(direct_module, after, pidfile)

    def big(self, n):
        return np.full(n, 4.0)


def test_an_actor_that_dies_after_registering_a_large_direct_return(fresh_cluster, tmp_path):
    a = Crashing.remote()
    switch_to_direct(a)
    pidfile = tmp_path / "lingerer"
    tg.get(a.arm.remote(True, str(pidfile)))
    ref = a.big.remote(BIG)
    try:
        with pytest.raises(ActorDiedError):
            tg.get(ref, timeout=30)
        # Passed on after the failure: what a task sees is what the driver saw.
        with pytest.raises(ActorDiedError):
            tg.get(total.remote(ref), timeout=30)
    finally:
        lingerer_gone(pidfile)
    del ref, a
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


# -- 3. direct_answered: values, then _direct cleared, then callbacks -----------------


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
    store_empties()
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")


def test_leased_callbacks_drop_refs_and_submit_the_next_leased_task(lasting, fresh_cluster):
    """A future's callback runs on the lease's delivery thread: it drops the only ref to
    the large return and sends the next task (maybe on the same lease)."""
    leased()
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
    tg._api.client().leases.close()
    wait_for(cpus_free, what="every CPU back")
