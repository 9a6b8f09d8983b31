"""Direct actor calls under stress: threads, nesting, deaths, and refs that travel.

Each test first drives its client (or a task's, or an actor's) onto the
direct path, then checks that the calls behave as they do through the
scheduler. The later sections pin races, hangs and losses that review
found, all fixed since. Which way calls went is read from public counts
(``tg.statistics()``: in a task or an actor, that process's client).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import psutil
import pytest

import taskgraph as tg
from conftest import SWITCH_TO_DIRECT, stored, wait_for
from taskgraph import _direct as direct_module
from taskgraph._channels import Channel
from taskgraph._direct import ActorRoute
from taskgraph.exceptions import ActorDiedError, GetTimeoutError, TaskError
from taskgraph.util import ActorPool
from taskgraph.util.state import list_tasks

# -- actors and tasks used below ---------------------------------------------------


@tg.remote(num_cpus=0)
class Log:
    def __init__(self):
        self.seen = []
        self.kept = []

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def history(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x

    def slow(self, x, delay):
        time.sleep(delay)
        return x

    def big(self, n):
        return np.full(n, 3.0)

    def slow_big(self, n, delay):
        time.sleep(delay)
        return np.full(n, 1.0)

    def boxed(self, n):
        return [tg.put(np.full(n, 5.0))]

    def fail(self, message):
        raise ValueError(message)

    @tg.method(num_returns=2)
    def pair(self, x):
        return x, x + 1

    @tg.method(num_returns=0)
    def note(self, x):
        self.seen.append(x)

    def triple(self, x):
        return x, x * 2, x * 3

    def keep(self, box):
        self.kept.append(box)  # a list holding refs: the actor now holds them too
        return len(self.kept)

    def read_kept(self):
        return [tg.get(box[0], timeout=10) for box in self.kept]

    def drop_kept(self):
        self.kept.clear()
        gc.collect()

    def leave(self):
        tg.actor.exit_actor()

    def die(self):
        os._exit(1)

    def call_other(self, other, n):
        """Call another actor n times from here; report whether every call went direct."""
        before = tg.statistics().direct_actor_calls
        refs = [other.add.remote(i) for i in range(n)]
        out = tg.get(refs)
        return out, tg.statistics().direct_actor_calls == before + n

    def other_total(self, other, n):
        """Pass refs to direct returns of one call on to the next, all to ``other``."""
        acc = other.echo.remote(0)
        for i in range(n):
            acc = other.plus.remote(acc, i)
        return tg.get(acc)

    def plus(self, a, b):
        return a + b


@tg.remote(num_cpus=0, max_concurrency=4)
class Gate:
    """A threaded actor: calls run on 4 threads; one may wait for another."""

    def __init__(self):
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def wait(self):
        return "opened" if self.opened.wait(timeout=20) else "timed out"

    def open(self):
        self.opened.set()

    def work(self, x):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return x * 10

    def peak_concurrency(self):
        return self.peak

    def history(self):
        return []


@tg.remote(num_cpus=0)
class AsyncBox:
    def __init__(self):
        self.event = None

    async def add_one(self, x):
        await asyncio.sleep(0.001)
        return x + 1

    async def total(self, box):
        """Await refs handed in a list (nested: the actor gets the refs themselves)."""
        return sum([await r for r in box])

    async def call_other(self, other, n):
        refs = [other.add.remote(i) for i in range(n)]
        return [await r for r in refs]

    async def history(self):
        return []


@tg.remote
def slowly(x, delay):
    time.sleep(delay)
    return x


@tg.remote
def plus_one(x):
    return x + 1


@tg.remote
def total_of(box):
    return sum(tg.get(list(box)))


def goes_direct(handle) -> bool:
    """Make one call (``history``) and say whether it went straight to the actor
    (this process's client counts its direct calls)."""
    before = tg.statistics().direct_actor_calls
    tg.get(handle.history.remote(), timeout=30)
    return tg.statistics().direct_actor_calls == before + 1


def reach_directly(handle, timeout: float = 15.0) -> bool:
    """Call the actor until this process calls it directly (False at the deadline).
    Runs in tasks and actors too: the client asks where the actor listens every
    0.1 s while its calls go through the scheduler."""
    deadline = time.monotonic() + timeout
    while not goes_direct(handle):
        if time.monotonic() > deadline:
            return False
    return True


def switch_to_direct(handle) -> None:
    assert reach_directly(handle), "this client never called the actor directly"


@tg.remote
def call_from_a_task(actor, n):
    """Switch this task's process to direct calls, then call n times."""
    switched = reach_directly(actor)
    before = tg.statistics().direct_actor_calls
    results = tg.get([actor.add.remote(("task", i)) for i in range(n)])
    went_direct = switched and tg.statistics().direct_actor_calls == before + n
    return went_direct, results


@tg.remote
def direct_refs_from_a_task(actor):
    """Return refs to direct returns, top-level and boxed."""
    assert reach_directly(actor)
    before = tg.statistics().direct_actor_calls
    refs = [actor.echo.remote(41), actor.big.remote(50_000)]
    assert tg.statistics().direct_actor_calls == before + 2
    return refs


@tg.remote
def hand_back_a_call(actor, box):
    """Call the actor from here (a fresh client: through the scheduler) and hand back the ref."""
    return [actor.add.remote(box[0])]


# -- helpers -------------------------------------------------------------------------


def alive_log() -> tg.ActorHandle:
    """A new Log, returned once it is alive (so it takes direct calls: its process
    tells the scheduler where it listens before it reports its creation), and
    not yet called by this client."""
    known = {t["task_id"] for t in list_tasks(limit=0)}
    handle = Log.remote()
    wait_for(
        lambda: any(
            t["task_id"] not in known and t["name"] == "Log.__init__" and t["state"] == "FINISHED"
            for t in list_tasks(limit=0)
        ),
        what="the actor to be alive",
    )
    return handle


def listening(pid: int) -> list[str]:
    """The Unix socket addresses a process has bound (a listening socket's)."""
    try:
        return sorted({c.laddr for c in psutil.Process(pid).net_connections("unix") if c.laddr})
    except psutil.NoSuchProcess:
        return []


def round_trip() -> None:
    """One query answered by the scheduler: the answers to what this client asked
    before (where an actor listens) have come and been taken in."""
    tg.cluster_resources()


def open_the_channel(handle) -> None:
    """Have an alive actor's process open its channel to this client, without switching
    yet: its first call goes through the scheduler, with an offer."""
    before = tg.statistics().direct_actor_calls
    tg.get(handle.history.remote())  # answered: no call through the scheduler is pending
    round_trip()
    assert tg.statistics().direct_actor_calls == before, "switched already"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_and_wait(*handles) -> None:
    """Kill actors and wait until calls on them fail."""
    for handle in handles:
        tg.kill(handle)
    for handle in handles:
        wait_for(lambda h=handle: _fails(h), what="calls on the killed actor to fail")


def _fails(handle) -> bool:
    try:
        tg.get(handle.history.remote(), timeout=30)
    except ActorDiedError:
        return True
    return False


def direct_state_is_clean() -> bool:
    """No return of a direct call is awaited from a channel any more."""
    return tg.statistics().awaiting_channels == 0


def second_driver(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in another driver process connected to this cluster."""
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    env = dict(
        os.environ,
        TASKGRAPH_ADDRESS=runtime.address,
        TASKGRAPH_TOKEN=runtime.cluster.token,
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env
    )


pytestmark = pytest.mark.usefixtures("cluster")


# -- behaviour that holds (kept as regression tests) ---------------------------------


def test_calls_from_several_threads_all_return_the_right_results():
    log = Log.remote()
    switch_to_direct(log)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def caller(t: int) -> None:
        try:
            refs = [log.echo.remote((t, i)) for i in range(150)]
            results[t] = [i for (_, i) in tg.get(refs, timeout=30)]
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    before = tg.statistics().direct_actor_calls
    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert results == {t: list(range(150)) for t in range(4)}
    assert tg.statistics().direct_actor_calls == before + 600
    tg.kill(log)


def test_a_task_switches_to_direct_calls_and_keeps_its_order():
    log = Log.remote()
    switch_to_direct(log)
    went_direct, results = tg.get(call_from_a_task.remote(log, 200), timeout=60)
    assert went_direct
    assert results == sorted(results)
    history = tg.get(log.history.remote())
    assert [x for x in history if isinstance(x, tuple)] == [("task", i) for i in range(200)]
    tg.kill(log)


def test_an_actor_calls_another_actor_directly():
    caller, callee = Log.remote(), Log.remote()
    switch_to_direct(caller)
    # The first batch goes through the scheduler; the actor learns the way meanwhile.
    out, _ = tg.get(caller.call_other.remote(callee, 20))
    assert out == list(range(1, 21))
    wait_for(
        lambda: tg.get(caller.call_other.remote(callee, 5))[1],
        what="the caller actor to call the other directly",
    )
    out, went_direct = tg.get(caller.call_other.remote(callee, 50))
    assert went_direct
    assert out == sorted(out) and len(set(out)) == 50
    assert tg.get(caller.other_total.remote(callee, 30)) == sum(range(30))
    kill_and_wait(caller, callee)


def test_threaded_actor_runs_direct_calls_concurrently():
    gate = Gate.remote()
    switch_to_direct(gate)
    assert tg.get([gate.work.remote(i) for i in range(16)]) == [i * 10 for i in range(16)]
    assert tg.get(gate.peak_concurrency.remote()) > 1
    # A call that blocks does not hold up the ones after it.
    waiting = gate.wait.remote()
    tg.get(gate.open.remote(), timeout=10)
    assert tg.get(waiting, timeout=10) == "opened"
    tg.kill(gate)


def test_async_actor_awaits_refs_over_the_direct_path():
    box, log = AsyncBox.remote(), Log.remote()
    switch_to_direct(box)
    switch_to_direct(log)
    assert tg.get([box.add_one.remote(i) for i in range(50)]) == list(range(1, 51))
    # Refs to direct returns of another actor, to a task, and to a put, awaited inside.
    refs = [log.echo.remote(1), plus_one.remote(1), tg.put(3), box.add_one.remote(3)]
    assert tg.get(box.total.remote(refs), timeout=30) == 1 + 2 + 3 + 4
    # Passed as top-level arguments, the actor fetches them first.
    assert tg.get(box.add_one.remote(log.echo.remote(9)), timeout=30) == 10
    tg.get(box.call_other.remote(log, 3))
    wait_for(lambda: tg.get(box.call_other.remote(log, 3)) is not None, what="a warm-up")
    del refs
    kill_and_wait(box, log)


def test_actor_pool_over_direct_actors():
    actors = [Log.remote() for _ in range(3)]
    for actor in actors:
        switch_to_direct(actor)
    pool = ActorPool(actors)
    before = tg.statistics().direct_actor_calls
    assert list(pool.map(lambda a, v: a.echo.remote(v * v), range(60))) == [
        v * v for v in range(60)
    ]
    assert sorted(
        pool.map_unordered(lambda a, v: a.slow.remote(v, 0.001 * (v % 5)), range(30))
    ) == (list(range(30)))
    assert tg.statistics().direct_actor_calls == before + 90
    kill_and_wait(*actors)


def test_refs_to_direct_returns_travel_everywhere():
    a, b = Log.remote(), Log.remote()
    switch_to_direct(a)
    switch_to_direct(b)
    r = a.echo.remote(5)
    # As a top-level argument of a direct call to another actor, and nested in one.
    assert tg.get(b.plus.remote(r, 1)) == 6
    assert tg.get(b.plus.remote(a.echo.remote(2), a.echo.remote(3))) == 5
    # As an argument of a task, nested in a task's argument, and in a put container.
    assert tg.get(plus_one.remote(a.echo.remote(7))) == 8
    assert tg.get(total_of.remote([a.echo.remote(1), a.echo.remote(2), r])) == 8
    (inner,) = tg.get(tg.put([a.echo.remote(11)]))
    assert tg.get(inner) == 11
    # Returned from a task that made them (small and large), then read here.
    small, large = tg.get(direct_refs_from_a_task.remote(a), timeout=30)
    assert tg.get(small) == 41
    assert tg.get(large)[-1] == 3.0
    # An error travels the same way.
    failed = a.fail.remote("boom")
    with pytest.raises(TaskError, match="boom"):
        tg.get(plus_one.remote(failed))
    del r, inner, small, large, failed
    gc.collect()
    wait_for(lambda: not stored(), what="the store to empty")
    kill_and_wait(a, b)


def test_refs_dropped_before_their_answers_leave_nothing_behind():
    log = Log.remote()
    switch_to_direct(log)
    before = tg.statistics().direct_actor_calls
    for _ in range(3):
        for i in range(30):
            log.slow.remote(i, 0.001)  # small, dropped at once
            log.slow_big.remote(200_000, 0.001)  # 1.6 MB in the store, dropped at once
            log.boxed.remote(20_000)  # holds a ref, dropped at once
        tg.get(log.history.remote())  # all of the above have been answered
    assert tg.statistics().direct_actor_calls == before + 3 * 91
    gc.collect()
    wait_for(lambda: not stored(), what="the dropped returns to be freed")
    wait_for(direct_state_is_clean, what="the client to forget the direct calls")
    tg.kill(log)


def test_a_large_return_is_freed_when_dropped_unread():
    log = Log.remote()
    switch_to_direct(log)
    refs = [log.big.remote(100_000) for _ in range(10)]  # 800 KB each
    tg.wait(refs, num_returns=10, timeout=30)
    assert len(stored()) == 10
    del refs
    gc.collect()
    wait_for(lambda: not stored(), what="the unread returns to be freed")
    tg.kill(log)


def test_a_dying_actor_fails_every_call_in_flight_from_every_thread():
    log = Log.remote()
    switch_to_direct(log)
    pid = tg.get(log.pid.remote())
    outcomes: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(5)

    def caller() -> None:
        refs = []
        started.wait()
        for i in range(100):
            refs.append(log.slow.remote(i, 0.002))
        for ref in refs:
            try:
                tg.get(ref, timeout=30)
                outcome = "ok"
            except ActorDiedError:
                outcome = "died"
            except GetTimeoutError:
                outcome = "hung"
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    log.die.remote()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 400 and "hung" not in outcomes
    assert "died" in outcomes
    with pytest.raises(ActorDiedError):
        tg.get(log.add.remote(1), timeout=30)
    gc.collect()
    wait_for(lambda: not alive(pid), what="the actor's process to be gone")


def test_wait_as_completed_futures_and_await_on_direct_refs():
    log = Log.remote()
    switch_to_direct(log)
    refs = [log.slow.remote(i, 0.01 * (5 - i)) for i in range(5)]
    ready, rest = tg.wait(refs, num_returns=5, timeout=30)
    assert ready == refs and rest == []
    refs = [log.slow.remote(i, 0.005) for i in range(10)]
    assert sorted(tg.get(r) for r in tg.as_completed(refs, timeout=30)) == list(range(10))
    futures = [log.echo.remote(i).future() for i in range(10)]
    assert [f.result(timeout=30) for f in futures] == list(range(10))
    not_yet = log.slow.remote("late", 0.3)
    assert not not_yet.done()
    assert tg.wait([not_yet], timeout=0)[0] == []

    async def gather():
        return await asyncio.gather(*[log.echo.remote(i) for i in range(5)])

    assert asyncio.run(gather()) == list(range(5))
    assert tg.get(not_yet, timeout=30) == "late" and not_yet.done()
    with pytest.raises(TaskError, match="from a future"):
        log.fail.remote("from a future").future().result(timeout=30)
    tg.kill(log)


def test_errors_in_direct_calls_keep_the_actor_and_its_state():
    log = Log.remote()
    switch_to_direct(log)
    before = tg.statistics().direct_actor_calls
    tg.get(log.add.remote("before"))
    refs = [log.fail.remote(f"bad {i}") for i in range(5)]
    for i, ref in enumerate(refs):
        with pytest.raises(TaskError, match=f"bad {i}"):
            tg.get(ref)
    tg.get(log.add.remote("after"))
    assert tg.get(log.history.remote())[-2:] == ["before", "after"]
    # A method returning the wrong number of values fails like one that raised.
    with pytest.raises(TaskError, match="num_returns=2"):
        tg.get(log.triple.options(num_returns=2).remote(1)[0])
    assert tg.statistics().direct_actor_calls == before + 9
    tg.kill(log)


def test_num_returns_two_and_zero_over_the_direct_path():
    log = Log.remote()
    switch_to_direct(log)
    x, y = log.pair.remote(1)
    assert tg.get([x, y]) == [1, 2]
    a, b, c = log.triple.options(num_returns=3).remote(2)
    assert tg.get([c, b, a]) == [6, 4, 2]
    assert log.note.remote("silent") is None
    assert log.add.options(num_returns=0).remote("also silent") is None
    assert tg.get(log.history.remote())[-2:] == ["silent", "also silent"]
    x, y = log.pair.remote(log.echo.remote(10))  # a ref argument, two returns
    assert tg.get(plus_one.remote(y)) == 12
    del x, y, a, b, c
    gc.collect()
    wait_for(lambda: not stored(), what="the returns to be freed")
    tg.kill(log)


def test_exit_actor_over_the_direct_path_fails_later_calls():
    log = Log.remote()
    switch_to_direct(log)
    pid = tg.get(log.pid.remote())
    behind = [log.slow.remote(i, 0.01) for i in range(5)]
    assert tg.get(log.leave.remote(), timeout=30) is None
    queued = log.add.remote("too late")
    for ref in behind:
        assert tg.get(ref, timeout=30) in range(5)
    with pytest.raises(ActorDiedError):
        tg.get(queued, timeout=30)
    with pytest.raises(ActorDiedError):
        tg.get(log.add.remote("later"), timeout=30)
    wait_for(lambda: not alive(pid), what="the actor's process to be gone")


def test_terminate_over_the_direct_path_runs_what_came_before():
    log = Log.remote()
    switch_to_direct(log)
    pid = tg.get(log.pid.remote())
    before = [log.slow.remote(i, 0.01) for i in range(5)]
    done = log.__taskgraph_terminate__.remote()
    assert tg.get(before, timeout=30) == list(range(5))
    assert tg.get(done, timeout=30) is None
    with pytest.raises(ActorDiedError):
        tg.get(log.add.remote("later"), timeout=30)
    wait_for(lambda: not alive(pid), what="the actor's process to be gone")


def test_a_second_driver_calls_a_named_actor_directly_and_leaves_cleanly():
    name = "direct-named"
    log = Log.options(name=name).remote()
    tg.get(log.history.remote())
    script = SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace) + (
        "refs = [a.add.remote(('second', i)) for i in range(100)]\n"
        "assert tg.get(refs, timeout=30) == sorted(tg.get(refs))\n"
        "big = a.big.remote(200_000)\n"
        "assert tg.get(big)[0] == 3.0\n"
        "inflight = [a.slow.remote(i, 0.01) for i in range(20)]\n"
        "tg.shutdown()\n"  # with calls in flight
        "import threading\n"
        "left = [t.name for t in threading.enumerate() if t.name.startswith('taskgraph-')]\n"
        "deadline = time.monotonic() + 10\n"
        "while left and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "    left = [t.name for t in threading.enumerate() if t.name.startswith('taskgraph-')]\n"
        "print('LEFT', left)\n"
    )
    out = second_driver(script)
    assert out.returncode == 0, out.stderr
    assert "LEFT []" in out.stdout, out.stdout
    history = tg.get(log.history.remote(), timeout=30)
    assert [x for x in history if isinstance(x, tuple)] == [("second", i) for i in range(100)]
    wait_for(lambda: not stored(), what="the second driver's objects to be freed")
    tg.kill(log)


# -- races and losses found in review, fixed since (kept as regression tests) -------


def test_a_large_argument_to_a_direct_call_reaches_the_actor():
    # encode_arguments puts it (_put_if_large); the put's ref must outlive the send.
    log = Log.remote()
    switch_to_direct(log)
    assert tg.get(log.echo.remote(np.full(50_000, 2.0)), timeout=30)[-1] == 2.0
    tg.kill(log)


def test_a_nested_ref_the_actor_keeps_stays_alive_after_the_caller_drops_it():
    # The actor's AcquireRefs (via its daemon) must reach the scheduler before the
    # caller's ReleaseRefs (sent straight there once answered).
    log = Log.remote()
    switch_to_direct(log)
    for i in range(100):
        tg.get(log.keep.remote([tg.put(i)]))  # the put's only ref here dies at once
    assert tg.get(log.read_kept.remote(), timeout=60) == list(range(100))
    tg.get(log.drop_kept.remote())
    wait_for(lambda: not stored(), what="the kept objects to be freed")
    tg.kill(log)


def test_each_threads_calls_run_in_the_order_it_made_them():
    # Batches taken from a channel's outbox must be sent in the order taken, even
    # when another thread (or the flusher) took the earlier one.
    log = Log.remote()
    switch_to_direct(log)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, to hit the window every run
    try:

        def caller(t: int) -> None:
            for i in range(500):
                log.add.remote((t, i))  # the dropped ref wakes the flusher, which flushes too

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    history = [x for x in tg.get(log.history.remote(), timeout=60) if isinstance(x, tuple)]
    assert len(history) == 2000
    for t in range(4):
        assert [i for (u, i) in history if u == t] == list(range(500))
    tg.kill(log)


def test_threads_switching_together_use_one_channel(monkeypatch):
    opened: list[Channel] = []

    class SlowToOpen(Channel):
        def __init__(self, *args, **kwargs):
            time.sleep(0.1)  # taking it takes a while: widen the window
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(direct_module, "Channel", SlowToOpen)
    log = alive_log()
    open_the_channel(log)
    start = threading.Barrier(4)

    def caller(t: int) -> None:
        start.wait()
        tg.get([log.add.remote((t, i)) for i in range(10)], timeout=30)

    before = tg.statistics().direct_actor_calls
    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(opened) == 1
    assert tg.statistics().direct_actor_calls == before + 40  # each through that one
    history = tg.get(log.history.remote())
    for t in range(4):
        assert [i for (u, i) in history if u == t] == list(range(10))
    kill_and_wait(log)


def test_a_thread_that_raced_the_switch_keeps_its_order(monkeypatch):
    log = alive_log()
    # Its first call goes through the scheduler with an offer (the actor's process
    # opens its channel before running it); the second waits there for a while, so
    # no switch comes until it ends.
    before = tg.statistics().direct_actor_calls
    first = log.history.remote()
    pending = log.add.remote(slowly.remote("held", 1.0))
    tg.get(first, timeout=30)
    round_trip()
    assert tg.wait([pending], timeout=0)[0] == [], "the slow call ended already"
    assert tg.statistics().direct_actor_calls == before
    # Thread A's "may I switch?" sees the unanswered call and says no; it is slowed
    # down so that this thread ends that call and calls meanwhile (the window is
    # between go_direct() and queueing the call through the scheduler).
    checked = threading.Event()
    original = ActorRoute.go_direct

    def slow_check(self) -> bool:
        answer = original(self)
        if threading.current_thread().name == "thread-a" and not checked.is_set():
            checked.set()
            time.sleep(0.5)
        return answer

    monkeypatch.setattr(ActorRoute, "go_direct", slow_check)
    made: list[tg.ObjectRef] = []

    def thread_a() -> None:
        made.append(log.add.remote(slowly.remote("a1", 0.5)))  # through the scheduler
        made.append(log.add.remote("a2"))  # must run after a1

    a = threading.Thread(target=thread_a, name="thread-a")
    a.start()
    assert checked.wait(10)
    tg.get(pending, timeout=30)  # the only unanswered call ends
    tg.get(log.add.remote("b1"))
    a.join(timeout=30)
    tg.get(made, timeout=30)
    history = tg.get(log.history.remote(), timeout=30)
    assert history.index("a1") < history.index("a2"), history
    assert tg.statistics().direct_actor_calls > before  # the switch came meanwhile
    del made[:]
    kill_and_wait(log)


def test_passing_a_pending_direct_ref_to_a_task_does_not_block():
    gate = Gate.remote()
    switch_to_direct(gate)
    waiting = gate.wait.remote()  # ends only once open() is called
    submitted = threading.Event()
    out: list[tg.ObjectRef] = []

    def submit() -> None:
        out.append(total_of.remote([waiting]))  # .remote() must not wait for `waiting`
        out.append(plus_one.remote(waiting))
        submitted.set()

    thread = threading.Thread(target=submit)
    thread.start()
    returned_at_once = submitted.wait(5)
    gate.open.remote()  # unblocks either way
    thread.join(timeout=30)
    assert returned_at_once
    with pytest.raises(TaskError):  # "opened" + 1, and sum(["opened"])
        tg.get(out[1], timeout=30)
    with pytest.raises(TaskError):
        tg.get(out[0], timeout=30)
    del out[:]
    waiting = None  # the last ref here: its objects may go
    gc.collect()
    wait_for(lambda: not stored(), what="the store to empty")
    kill_and_wait(gate)


def test_a_direct_call_waiting_for_an_earlier_call_through_the_scheduler_does_not_hang():
    log = Log.remote()
    switch_to_direct(log)
    # A task calls the actor through the scheduler (its first call), which holds
    # that call for a slow argument; we pass its ref to a direct call.
    (earlier,) = tg.get(hand_back_a_call.remote(log, [slowly.remote("slow", 0.5)]), timeout=30)
    later = log.add.remote(earlier)
    n = tg.get(later, timeout=30)
    assert tg.get(log.history.remote())[n - 2 : n] == ["slow", n - 1]
    del earlier, later
    kill_and_wait(log)


def test_a_call_made_after_kill_fails():
    log = Log.remote()
    switch_to_direct(log)
    tg.kill(log)
    with pytest.raises(ActorDiedError):
        tg.get(log.add.remote("after kill"), timeout=30)


# -- more found in a second review, fixed since ----------------------------------------


def test_calls_after_kill_open_no_channel(monkeypatch):
    log = Log.remote()
    switch_to_direct(log)
    tries: list[bytes] = []
    real_channel = direct_module.Channel

    def channel(client, channel_id, sock, owner):
        tries.append(channel_id)
        return real_channel(client, channel_id, sock, owner)

    monkeypatch.setattr(direct_module, "Channel", channel)
    tg.kill(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with pytest.raises(ActorDiedError):
                tg.get(log.add.remote("after kill"), timeout=30)
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not tries and not leaked, (tries, leaked)


def test_an_actor_called_directly_listens_on_no_socket():
    """Its process connects to its callers (one connection direction): nothing on
    disk to clean up, nothing for a stranger to connect to."""
    log = Log.remote()
    switch_to_direct(log)
    assert listening(tg.get(log.pid.remote())) == []
    kill_and_wait(log)


def test_a_caller_that_keeps_calling_while_the_actor_waits_for_an_argument_does_not_hang():
    a, b = Log.remote(), Log.remote()
    switch_to_direct(a)
    switch_to_direct(b)
    pid = tg.get(a.pid.remote())
    finished = threading.Event()

    def flood() -> None:
        late = b.slow.remote(1, 0.5)  # direct: the actor asks the scheduler for it
        a.add.remote(late)  # the actor's serve thread waits for `late`
        pad = b"x" * 20_000  # inline (under the put threshold); 200 of them fill the socket
        for _ in range(200):
            a.add.remote(pad)
        finished.set()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        assert finished.wait(5), "the caller is stuck"
    finally:
        if not finished.is_set():
            os.kill(pid, 9)  # tg.kill() would hang too: break the socket instead
        thread.join(timeout=30)
        assert not thread.is_alive()
        kill_and_wait(a, b)


def test_a_done_callback_may_call_an_actor_directly_with_a_ref_argument():
    log = Log.remote()
    switch_to_direct(log)
    box = tg.put(5)
    chained = threading.Event()
    out: list[tg.ObjectRef] = []

    def chain(_future) -> None:
        out.append(log.add.remote(box))
        chained.set()

    slowly.remote(1, 0.05).future().add_done_callback(chain)
    assert chained.wait(5), "the callback is stuck in .remote()"
    assert tg.get(out, timeout=30) == [len(tg.get(log.history.remote()))]
    del out[:]
    box = None  # the last ref here
    kill_and_wait(log)


def test_a_large_return_for_a_caller_that_left_is_freed():
    name = "direct-orphan"
    log = Log.options(name=name).remote()
    tg.get(log.history.remote())
    before = stored()
    script = SWITCH_TO_DIRECT.format(name=name, namespace=tg._api._runtime.namespace) + (
        "a.slow_big.remote(200_000, 0.5)\n"  # 1.6 MB, into the store in 0.5 s
        "tg.shutdown()\n"  # leaves with the call in flight
    )
    out = second_driver(script)
    assert out.returncode == 0, out.stderr
    tg.get(log.history.remote(), timeout=30)  # runs after slow_big
    try:
        wait_for(lambda: stored() <= before, timeout=5, what="the orphaned return to be freed")
    finally:
        _free_orphans(stored() - before)
        kill_and_wait(log)


def test_the_routes_a_client_remembers_are_bounded(monkeypatch):
    monkeypatch.setattr(direct_module, "MAX_ROUTES", 3)
    pids = []
    for _ in range(6):
        log = Log.remote()
        pids.append(tg.get(log.pid.remote()))
        del log  # its last handle: the actor is stopped
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the actors to stop")
    gc.collect()
    # What this process holds of its ways to actors (none is called directly).
    assert len([o for o in gc.get_objects() if isinstance(o, ActorRoute)]) <= 3
    # A forgotten actor called again is asked for again, and switched to.
    log = Log.remote()
    switch_to_direct(log)
    kill_and_wait(log)


def _free_orphans(hex_ids: set[str]) -> None:
    """Register and release objects nobody owns, so the leak check stays meaningful."""
    from taskgraph import _wire as w

    c = tg._api.client()
    worker = c.local_worker()
    assert worker is not None
    for oid in map(bytes.fromhex, hex_ids):
        where = w.Location(worker.worker_id, worker.address, 0, c.host, worker.peer)
        c.send_soon(w.PutObject(oid, None, where))
        c.send_soon(w.ReleaseRefs([oid]))
    c.flush()
    wait_for(lambda: not (stored() & hex_ids), what="the orphans to be freed")
