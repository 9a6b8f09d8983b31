"""One road for every task, under attack (docs/architecture.md, "One road for every task").

Leased tasks and direct actor calls ("channel tasks") are recorded by the
scheduler from their caller's batches and reported by their executors. These
tests kill executors, actors and drivers mid-flight, cancel, shut down and pass
refs around while channel tasks run, then check what a hostile user would:
the values or the exception types, the object store, the scheduler's record
(no channel task left RUNNING, no report left waiting for its record) and the
processes. Paths are read from public counts only (``tg.statistics()``,
``taskgraph.util.state.list_tasks(limit=0)`` and ``cluster_statistics()``).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
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
    wait_settled,
)
from taskgraph.exceptions import (
    ActorDiedError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

BIG = 200_000  # int64/float64 elements: 1.6 MB, in the shared-memory store


@pytest.fixture
def lasting(monkeypatch):
    """Leases last (read by executors as they start: set before the cluster)."""
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")


# -- tasks and actors -------------------------------------------------------------


@tg.remote
def pid():
    return os.getpid()


@tg.remote
def double(x):
    return 2 * x


@tg.remote
def big(n, fill=1):
    return np.full(n, fill)


@tg.remote
def total(x):
    return int(np.asarray(x).sum())


@tg.remote
def total_boxed(box):
    return int(np.asarray(tg.get(box[0], timeout=30)).sum())


@tg.remote
def holding(n):
    return [tg.put(np.full(n, 3))]


@tg.remote(num_returns=2)
def big_then_unpicklable(n):
    return np.full(n, 1), threading.Lock()


@tg.remote
def tagged(i, n):
    return i, os.getpid(), np.full(n, i)


@tg.remote
def big_second_time(n, marker):
    """The first run writes its pid and sleeps (to be killed); a run after it returns."""
    if os.path.exists(marker):
        return np.full(n, 4)
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    time.sleep(60)
    return None


@tg.remote
def calls_then_sleeps(name, namespace, marker):
    """Call a named actor directly (big returns, unawaited), then sleep (to be cancelled)."""
    a = tg.get_actor(name, namespace=namespace)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        before = tg.statistics().direct_actor_calls
        tg.get(a.history.remote(), timeout=30)
        if tg.statistics().direct_actor_calls == before + 1:
            break
    refs = [a.big.remote(200_000, i) for i in range(5)]
    refs.append(a.holding.remote(200_000))
    with open(marker, "w") as f:
        f.write(str(tg.statistics().direct_actor_calls))
    time.sleep(60)
    return len(refs)


@tg.remote
def counted(i, path):
    with open(path, "a") as f:
        f.write("run\n")
    return i


@tg.remote
def exit_now(code):
    os._exit(code)


@tg.remote(num_cpus=0)
class Keeper:
    def __init__(self):
        self.seen = []

    def history(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def echo(self, x):
        return x

    def big(self, n, fill=1):
        return np.full(n, fill)

    def holding(self, n):
        return [tg.put(np.full(n, 5))]

    def total(self, x):
        return int(np.asarray(x).sum())

    def add_total(self, x):
        self.seen.append(int(np.asarray(x).sum()))
        return len(self.seen)

    def slow(self, x, delay):
        time.sleep(delay)
        return x

    def touch_and_sleep(self, path, seconds):
        open(path, "w").close()
        time.sleep(seconds)
        return "slept"

    @tg.method(num_returns=2)
    def big_then_unpicklable(self, n):
        return np.full(n, 1), threading.Lock()

    def die(self):
        os._exit(1)

    def relay(self, name, namespace, n, delay):
        """Call another actor (directly, once this process switched) and return the
        ref to its pending return, unawaited, inside a list."""
        other = tg.get_actor(name, namespace=namespace)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            before = tg.statistics().direct_actor_calls
            tg.get(other.history.remote(), timeout=30)
            if tg.statistics().direct_actor_calls == before + 1:
                break
        return [other.slow_big.remote(n, delay)]

    def slow_big(self, n, delay):
        time.sleep(delay)
        return np.full(n, 6)


# -- helpers ----------------------------------------------------------------------


def store_empties(before: frozenset[str] | set[str] = frozenset(), timeout: float = 10) -> None:
    gc.collect()
    wait_for(lambda: stored() <= before, timeout=timeout, what="the store to be emptied")


def cpus_free(n: float = 2.0) -> bool:
    return tg.available_resources().get("CPU") == n


# -- a driver that leaves with direct calls still in its channel -----------------------


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_a_driver_that_leaves_right_after_direct_calls_with_ref_arguments(fresh_cluster, how):
    """Calls with ref arguments wait in the caller's channel for a ping round trip
    (their records have left already); the driver leaves at once (tg.shutdown(),
    or SIGKILL). Every call it recorded must run or fail: none may stay RUNNING at
    the scheduler, holding its arguments (in the store) and the actor."""
    name = f"leaves-with-held-calls-{how}"
    keeper = Keeper.options(name=name).remote()
    tg.get(keeper.history.remote(), timeout=30)
    leave = "tg.shutdown()\n" if how == "shutdown" else "os.kill(os.getpid(), 9)\n"
    script = (
        SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace)
        + (
            "x = tg.put(np.full(200_000, 1))\n"
            # A backlog for the scheduler to read first: the ping comes back later.
            "backlog = [tg.put(bytes(90_000)) for _ in range(30)]\n"
            "for i in range(30):\n"
            "    a.add_total.remote(x)\n"
        )
        + leave
    )
    code, _, err = finish(another_driver(script))
    assert code == (0 if how == "shutdown" else -9), err
    wait_settled(timeout=5)
    store_empties(timeout=3)
    ran = tg.get(keeper.history.remote(), timeout=30)
    assert ran == [BIG] * len(ran)
    tg.kill(keeper)


# -- a return that is sealed, then the task fails ---------------------------------------


def test_a_leased_task_that_fails_after_storing_a_return_leaves_nothing_stored(
    lasting, fresh_cluster
):
    leased(pid)
    for _ in range(3):
        (a, b), went = on_lease(lambda: big_then_unpicklable.remote(BIG))
        assert went
        for r in (a, b):
            with pytest.raises(TaskError):
                tg.get(r, timeout=30)
        del a, b
    wait_settled()
    store_empties(timeout=3)


def test_a_direct_call_that_fails_after_storing_a_return_leaves_nothing_stored(fresh_cluster):
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    for _ in range(3):
        a, b = keeper.big_then_unpicklable.remote(BIG)
        for r in (a, b):
            with pytest.raises(TaskError):
                tg.get(r, timeout=30)
        del a, b
    wait_settled()
    store_empties(timeout=3)
    del keeper


# -- executors and actors that die mid-flight ---------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_a_leased_task_that_exits_its_process(lasting, fresh_cluster, code):
    """os._exit inside a leased task (exit code 0 too): the lease dies with it; the
    scheduler retries the task (it exits again) and fails it with WorkerCrashedError."""
    for retries in (0, 1):
        leased(pid)
        ref, went = on_lease(
            lambda retries=retries: exit_now.options(max_retries=retries).remote(code)
        )
        assert went
        with pytest.raises(WorkerCrashedError):
            tg.get(ref, timeout=30)
        assert [tg.get(double.remote(i), timeout=30) for i in range(4)] == [0, 2, 4, 6]
    del ref
    wait_settled()
    wait_for(lambda: cpus_free(2.0 - tg.statistics().open_leases), what="the dead leases' CPUs")


def test_a_leased_executor_killed_while_threads_take_turns_on_it(lasting, fresh_cluster):
    """Two threads await their tasks one by one (large and small returns), on a lease
    when they happen to take turns; the executor that ran the latest task (leased
    or not) is SIGKILLed again and again. Every task gives its own value (retried by the
    scheduler) or WorkerCrashedError: never another task's value, never a hang."""
    leased(pid)
    before = leased_so_far()
    errors: list[BaseException] = []
    seen: list[int] = []  # pids of the executors that ran the latest tasks
    stop = threading.Event()

    def loop(k: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                n = BIG if i % 3 == 0 else 10
                try:
                    j, where, values = tg.get(tagged.remote(1000 * k + i, n), timeout=30)
                except WorkerCrashedError:
                    continue
                assert j == 1000 * k + i and len(values) == n
                seen.append(where)
                i += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 5
        while len(killed) < 4 and time.monotonic() < deadline:
            if seen and seen[-1] not in killed:  # (on a lease, or placed as usual)
                victim = seen[-1]
                killed.add(victim)
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    assert not errors, errors[:3]
    assert killed and leased_so_far() > before, "tasks went on leases, and leases were killed"
    wait_settled()
    store_empties()
    wait_for(lambda: cpus_free(2.0 - tg.statistics().open_leases), what="the dead leases' CPUs")


@tg.remote
def slow_value(x, delay):
    time.sleep(delay)
    return x


def test_refs_to_a_direct_call_passed_on_before_its_actor_is_killed(fresh_cluster, tmp_path):
    """Refs to direct calls' returns leave the driver (to a task, to another actor
    called directly, inside a put) before their answers; the actor is SIGKILLed
    while one call runs and others wait behind it. Calls that ran keep their values
    everywhere; the others fail with ActorDiedError everywhere."""
    victim, other = Keeper.remote(), Keeper.remote()
    switch_to_direct(victim)
    switch_to_direct(other)
    victim_pid = tg.get(victim.pid.remote(), timeout=30)
    done_big = victim.big.remote(BIG, 2)
    done_small = victim.echo.remote("small")
    marker = tmp_path / "started"
    running = victim.touch_and_sleep.remote(str(marker), 60)
    queued_big = victim.big.remote(BIG, 3)
    queued_small = victim.echo.remote("never")
    refs = [done_big, done_small, running, queued_big, queued_small]
    # Passed on before any answer came.
    to_task = [total.remote(done_big), total.remote(queued_big)]
    to_actor = [other.total.remote(done_big), other.total.remote(queued_big)]
    box = tg.put(refs)
    wait_for(marker.exists, what="the actor to start its long call")
    os.kill(victim_pid, signal.SIGKILL)
    assert int(tg.get(done_big, timeout=30).sum()) == 2 * BIG
    assert tg.get(done_small, timeout=30) == "small"
    for r in (running, queued_big, queued_small):
        with pytest.raises(ActorDiedError):
            tg.get(r, timeout=30)
    assert tg.get(to_task[0], timeout=30) == 2 * BIG
    assert tg.get(to_actor[0], timeout=30) == 2 * BIG
    for r in (to_task[1], to_actor[1]):
        with pytest.raises(ActorDiedError):
            tg.get(r, timeout=30)
    inner = tg.get(box, timeout=30)
    assert tg.get(inner[1], timeout=30) == "small"
    with pytest.raises(ActorDiedError):
        tg.get(inner[4], timeout=30)
    # Later calls go through the scheduler and fail there too.
    with pytest.raises(ActorDiedError):
        tg.get(victim.echo.remote("later"), timeout=30)
    del refs, to_task, to_actor, box, inner, done_big, done_small, running, queued_big
    del queued_small
    wait_settled()
    store_empties()
    del other, victim


@pytest.mark.parametrize("force", [False, True])
def test_cancel_a_direct_call_that_waits_for_its_argument(fresh_cluster, force):
    """A direct call whose ref argument is still being computed waits on the actor's
    side (its caller's thread there); cancelled meanwhile, it never runs, the calls
    after it do, and the argument's task is untouched."""
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    for i in range(3):
        arg = slow_value.remote(i, 0.5)
        waiting = keeper.add.remote(arg)
        after = keeper.echo.remote(("after", i))
        tg.cancel(waiting, force=force)
        with pytest.raises(TaskCancelledError):
            tg.get(waiting, timeout=30)
        assert tg.get(after, timeout=30) == ("after", i)
        assert tg.get(arg, timeout=30) == i
    assert tg.get(keeper.history.remote(), timeout=30) == []
    del arg, waiting, after
    wait_settled()
    del keeper


def test_cancel_direct_calls_held_for_their_ping(fresh_cluster):
    """Calls with ref arguments are held in the caller's channel until a ping comes
    back; cancelled at once (before they leave), they are dropped or they run,
    and either way the record settles."""
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    x = tg.put(np.full(BIG, 1))
    outcomes = set()
    for _ in range(20):
        ref = keeper.add_total.remote(x)
        tg.cancel(ref)
        try:
            tg.get(ref, timeout=30)
            outcomes.add("ran")
        except TaskCancelledError:
            outcomes.add("cancelled")
    ran = tg.get(keeper.history.remote(), timeout=30)
    assert ran == [BIG] * len(ran)
    assert ("ran" in outcomes) == bool(ran)
    del x, ref
    wait_settled()
    store_empties()
    del keeper


# -- drivers that die or leave with channel tasks in flight ----------------------------------

LEASE = """
import os, signal, sys, time
import numpy as np
import taskgraph as tg

@tg.remote
def pid():
    return os.getpid()

@tg.remote
def big(n, fill=1):
    return np.full(n, fill)

@tg.remote
def holding(n):
    return [tg.put(np.full(n, 3))]

deadline = time.monotonic() + 15
while True:
    before = tg.statistics().tasks_leased
    tg.get(pid.remote())
    if tg.statistics().tasks_leased == before + 1:
        break
    if time.monotonic() > deadline:
        sys.exit("never leased")
"""


@pytest.mark.parametrize("how", ["sigkill", "shutdown"])
def test_a_second_driver_leaves_with_leased_tasks_in_flight(lasting, fresh_cluster, how):
    """Another driver on a lease sends large and ref-holding tasks one by one and
    leaves (SIGKILL, or tg.shutdown()) with one in flight, its record perhaps not
    sent yet. What its tasks stored is freed, the lease ends, the record settles."""
    leave = "os.kill(os.getpid(), signal.SIGKILL)\n" if how == "sigkill" else "tg.shutdown()\n"
    script = (
        LEASE
        + (
            "for i in range(10):\n"
            "    assert int(tg.get(big.remote(200_000, i)).sum()) == 200_000 * i\n"
            "    (inner,) = tg.get(holding.remote(200_000))\n"
            "    assert int(tg.get(inner).sum()) == 600_000\n"
            "before = tg.statistics().tasks_leased\n"
            # The first goes on the idle lease, the second ends it (or goes on it
            # too, if the first was done by then, as on a busy machine).
            "last = [big.remote(200_000), holding.remote(200_000)][0]\n"
            "assert tg.statistics().tasks_leased in (before + 1, before + 2)\n"
        )
        + leave
    )
    for _ in range(2):
        code, _, err = finish(another_driver(script))
        assert code == (-signal.SIGKILL if how == "sigkill" else 0), err
    wait_settled()
    store_empties()
    wait_for(cpus_free, what="the leases' CPUs back")


DIRECT_THEN_DIE = """
r = a.big.remote(200_000, 5)
h = a.holding.remote(200_000)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_driver_killed_right_after_direct_calls_leaves_no_early_report(fresh_cluster):
    """Records gather for 2 ms before they leave: a driver SIGKILLed right after its
    direct calls may never send them, while the actor runs and reports them. The
    reports that wait for records that never come are dropped, and what the calls
    stored is freed."""
    name = "killed-after-calls"
    keeper = Keeper.options(name=name).remote()
    tg.get(keeper.history.remote(), timeout=30)
    script = (
        "import signal\n"
        + SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace)
        + DIRECT_THEN_DIE
    )
    for _ in range(3):
        code, _, err = finish(another_driver(script))
        assert code == -signal.SIGKILL, err
    assert tg.get(keeper.echo.remote("alive"), timeout=30) == "alive"
    wait_settled()
    store_empties()
    tg.kill(keeper)


def test_a_driver_killed_right_after_a_large_put_leaves_nothing_stored(fresh_cluster):
    """A large value (an argument of a direct call, a put) is sealed in the store by
    the driver, then announced to the scheduler by the driver's flusher. A driver
    SIGKILLed in between: nobody will ever know that id, so it must be freed, as
    for an executor that dies with what it sealed but never announced."""
    script = (
        "import os, signal\n"
        "import numpy as np\n"
        "import taskgraph as tg\n"
        "x = tg.put(np.full(200_000, 1))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    for _ in range(3):
        code, _, err = finish(another_driver(script))
        assert code == -signal.SIGKILL, err
    store_empties(timeout=3)


# -- many threads, leases and direct calls at once, and a death -------------------------------


def test_threads_on_leases_and_direct_calls_while_an_actor_dies(lasting, fresh_cluster):
    """Threads await leased tasks and direct calls (large, small, ref-holding), pass
    the refs to tasks and actors, drop some unread; one actor dies (os._exit in a
    call) midway. Values are right, the dead actor's calls fail with
    ActorDiedError, and everything settles."""
    doomed, steady = Keeper.remote(), Keeper.remote()
    switch_to_direct(doomed)
    switch_to_direct(steady)
    leased(pid)
    errors: list[BaseException] = []
    died = threading.Event()

    def leasing(k: int) -> None:
        for i in range(30):
            if i % 5 == 0:
                (inner,) = tg.get(holding.remote(BIG), timeout=30)
                assert tg.get(total.remote(inner), timeout=30) == 3 * BIG
            elif i % 3 == 0:
                ref = big.remote(BIG, k)
                assert tg.get(steady.total.remote(ref), timeout=30) == k * BIG
            else:
                assert tg.get(double.remote(i), timeout=30) == 2 * i

    def calling(k: int) -> None:
        for i in range(40):
            for handle in (doomed, steady):
                try:
                    if i % 4 == 0:
                        ref = handle.big.remote(BIG, k)
                        assert int(tg.get(ref, timeout=30).sum()) == k * BIG
                    elif i % 4 == 1:
                        (inner,) = tg.get(handle.holding.remote(BIG), timeout=30)
                        assert int(tg.get(inner, timeout=30).sum()) == 5 * BIG
                    elif i % 4 == 2:
                        handle.big.remote(BIG)  # dropped unread
                    else:
                        assert tg.get(handle.echo.remote((k, i)), timeout=30) == (k, i)
                except ActorDiedError:
                    assert handle is doomed and died.is_set()
            if i == 20 and k == 1:
                died.set()
                doomed.die.remote()

    def guarded(fn, k):
        try:
            fn(k)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(leasing, 1))] + [
        threading.Thread(target=guarded, args=(calling, k)) for k in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    assert not errors, errors[:3]
    with pytest.raises(ActorDiedError):
        tg.get(doomed.echo.remote("after"), timeout=30)
    wait_settled()
    store_empties()


# -- shutdown against channel tasks in flight -------------------------------------------------


@tg.remote
def slow_big(n, delay):
    time.sleep(delay)
    return np.full(n, 1)


def test_shutdown_while_threads_wait_on_channel_tasks(lasting, fresh_cluster):
    """Threads wait on a leased task, a direct call and a held direct call (a ref
    argument) when the driver shuts down: each hears of it (an error) instead of
    hanging, and the cluster's processes, arenas and threads go (the fixture)."""
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    leased(pid)
    leased_ref, went = on_lease(lambda: slow_big.remote(BIG, 0.3))
    assert went
    direct_ref = keeper.slow.remote("late", 0.3)
    held_ref = keeper.total.remote(tg.put(np.full(BIG, 1)))
    outcomes: dict[str, object] = {}

    def waiting(name, ref):
        try:
            outcomes[name] = tg.get(ref, timeout=30)
        except BaseException as exc:  # reported below
            outcomes[name] = exc

    threads = [
        threading.Thread(target=waiting, args=(name, ref))
        for name, ref in (("leased", leased_ref), ("direct", direct_ref), ("held", held_ref))
    ]
    for t in threads:
        t.start()
    tg.shutdown()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread waits on after shutdown"
    assert set(outcomes) == {"leased", "direct", "held"}
    values = {"direct": "late", "held": BIG}
    for name, outcome in outcomes.items():
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, (ConnectionError, tg.exceptions.TaskgraphError)), outcome
        elif name == "leased":
            assert int(outcome.sum()) == BIG
        else:
            assert outcome == values[name], (name, outcome)


# -- cancel at any moment ----------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_direct_calls_cancelled_at_any_moment_either_ran_or_never_did(fresh_cluster, force):
    """Direct calls queue behind a slow one; each is cancelled after a different
    delay (before it leaves, while it waits in the actor, after it ran). A call
    whose caller saw TaskCancelledError never ran; one that gave its value ran;
    the actor lives on, and the record settles."""
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    answered, cancelled = [], []
    for i in range(40):
        if i % 10 == 0:
            keeper.slow.remote(None, 0.02)  # a queue forms behind it
        ref = keeper.add.remote(i)
        delay = (i % 5) * 0.001
        if delay:
            time.sleep(delay)  # the moment of the cancel, not a wait for state
        tg.cancel(ref, force=force)
        try:
            tg.get(ref, timeout=30)
            answered.append(i)
        except TaskCancelledError:
            cancelled.append(i)
    ran = tg.get(keeper.history.remote(), timeout=30)
    assert ran == answered, (ran, answered, cancelled)
    assert cancelled, "some cancel came in time"
    del ref
    wait_settled()
    del keeper


# -- refs that leave before their answers, then the channel dies -------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_a_leased_ref_passed_to_a_direct_call_and_dropped_then_its_executor_dies(
    lasting, fresh_cluster, tmp_path, retries
):
    """A leased task's ref goes to an actor called directly (it fetches it), to a
    task and into a put; the driver drops its own ref; then the leased executor is
    SIGKILLed. With a retry the scheduler runs it again and every reader gets the
    value; without, every reader gets WorkerCrashedError."""
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    leased(pid)
    marker = tmp_path / "pid"
    ref, went = on_lease(
        lambda: big_second_time.options(max_retries=retries).remote(BIG, str(marker))
    )
    assert went
    by_actor = keeper.total.remote(ref)
    by_task = total.options(max_retries=0).remote(ref)
    box = tg.put([ref])
    del ref
    gc.collect()
    wait_for(marker.exists, what="the leased task to start")
    os.kill(int(marker.read_text()), signal.SIGKILL)
    if retries:
        assert tg.get(by_actor, timeout=30) == 4 * BIG
        assert tg.get(by_task, timeout=30) == 4 * BIG
        assert tg.get(total_boxed.remote(box), timeout=30) == 4 * BIG
    else:
        for r in (by_actor, by_task):
            with pytest.raises(WorkerCrashedError):
                tg.get(r, timeout=30)
        with pytest.raises(WorkerCrashedError):
            tg.get(tg.get(box)[0], timeout=30)
    assert tg.get(keeper.echo.remote("still here"), timeout=30) == "still here"
    del by_actor, by_task, box
    wait_settled()
    store_empties()
    del keeper


def test_a_leased_task_force_cancelled_with_its_direct_calls_in_flight(
    lasting, fresh_cluster, tmp_path
):
    """A task on a lease calls an actor directly (large and ref-holding returns it
    never waits for) and is force-cancelled (its process SIGKILLed) while those
    calls run; their records may never have left it. The actor goes on, and what
    its calls stored for a caller that is gone is freed."""
    name = "called-from-a-lease"
    keeper = Keeper.options(name=name).remote()
    tg.get(keeper.history.remote(), timeout=30)
    namespace = tg._api._runtime.namespace
    leased(pid)
    for k in range(2):
        marker = tmp_path / f"called-{k}"
        ref, went = on_lease(lambda m=marker: calls_then_sleeps.remote(name, namespace, str(m)))
        assert went
        wait_for(
            lambda m=marker: m.exists() and m.read_text(),  # (created, then written)
            what="the leased task to make its calls",
        )
        assert int(marker.read_text()) >= 7, "the leased task called the actor directly"
        tg.cancel(ref, force=True)
        with pytest.raises(TaskCancelledError):
            tg.get(ref, timeout=30)
        leased(pid)
    assert tg.get(keeper.echo.remote("alive"), timeout=30) == "alive"
    del ref
    wait_settled()
    store_empties()
    tg.kill(keeper)


@pytest.mark.parametrize("kill_inner", [False, True])
def test_an_actor_returns_a_ref_to_its_own_direct_call_still_running(fresh_cluster, kill_inner):
    """Actor A calls actor B directly and returns the ref to B's pending large
    return, unawaited. The driver reads it (and passes it to a task) while B still
    runs; with ``kill_inner`` B is SIGKILLed first and every reader gets
    ActorDiedError."""
    name = f"inner-{kill_inner}"
    inner_actor = Keeper.options(name=name).remote()
    inner_pid = tg.get(inner_actor.pid.remote(), timeout=30)
    outer = Keeper.remote()
    switch_to_direct(outer)
    namespace = tg._api._runtime.namespace
    for _ in range(3):
        (inner,) = tg.get(outer.relay.remote(name, namespace, BIG, 0.3), timeout=30)
        by_task = total.remote(inner)
        if kill_inner:
            os.kill(inner_pid, signal.SIGKILL)
            for r in (inner, by_task):
                with pytest.raises(ActorDiedError):
                    tg.get(r, timeout=30)
            break
        assert int(tg.get(inner, timeout=30).sum()) == 6 * BIG
        assert tg.get(by_task, timeout=30) == 6 * BIG
    del inner, by_task
    wait_settled()
    store_empties()
    if not kill_inner:
        tg.kill(inner_actor)
    del outer


@pytest.mark.parametrize("retries", [0, 1])
def test_a_leased_task_that_answered_is_not_undone_by_the_next_one_crashing(
    lasting, fresh_cluster, tmp_path, retries
):
    """A leased task answers its plain value first and reports it lazily; the next
    task on the lease kills the executor at once. The first task finished: its value
    must be the same for the driver and for the tasks it is passed to, and it must
    not run again (it did not fail; the next one did)."""
    runs = tmp_path / "runs"
    wrong = []
    for i in range(4):
        leased(pid)
        ref, went = on_lease(lambda i=i: counted.options(max_retries=retries).remote(i, str(runs)))
        assert went
        assert tg.get(ref, timeout=30) == i
        crash, went = on_lease(lambda: exit_now.options(max_retries=0).remote(1))
        assert went
        with pytest.raises(WorkerCrashedError):
            tg.get(crash, timeout=30)
        try:
            assert tg.get(double.remote(ref), timeout=30) == 2 * i
        except WorkerCrashedError as exc:
            wrong.append((i, exc))
    assert not wrong, (
        f"{len(wrong)} of 4 finished leased tasks were failed by the scheduler after "
        f"their driver got their values: {wrong[0]}"
    )
    wait_for(lambda: runs.read_text().count("run") >= 4, what="the runs")
    assert runs.read_text().count("run") == 4, "a leased task that finished ran again"
    del ref, crash
    wait_settled()


def test_a_direct_call_that_answered_is_not_undone_by_the_next_one_crashing(fresh_cluster):
    """The same for an actor called directly: a call answered its value, the next
    call kills the actor's process. The first call must keep its value for whoever
    reads its ref (not ActorDiedError)."""
    wrong = []
    for i in range(3):
        keeper = Keeper.remote()
        switch_to_direct(keeper)
        ref = keeper.echo.remote(i)
        assert tg.get(ref, timeout=30) == i
        crash = keeper.die.remote()
        with pytest.raises(ActorDiedError):
            tg.get(crash, timeout=30)
        try:
            assert tg.get(double.remote(ref), timeout=30) == 2 * i
        except ActorDiedError as exc:
            wrong.append((i, exc))
    assert not wrong, (
        f"{len(wrong)} of 3 answered direct calls were failed by the scheduler after "
        f"their caller got their values: {wrong[0]}"
    )
    del ref, crash, keeper
    wait_settled()
