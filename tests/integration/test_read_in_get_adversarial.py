"""The thread that waits reads (``Channel.wait_for``), attacked: threads racing
get() and wait() with timeouts on one channel and on several, zero and tiny
timeouts in loops, futures and sync gets on one actor, values through the
scheduler between plain ones, actors killed and leased executors killed while
a thread reads, shutdown and Ctrl-C while one does, and an executor's client
(a task calling an actor) on the same path. See test_read_in_get.py for the
path itself; tests/unit/test_channel_turns.py drives a channel with no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskgraph as tg
from conftest import leased, switch_to_direct, wait_for
from taskgraph.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    TaskCancelledError,
    TaskgraphError,
)

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(num_cpus=0)
class Twin:
    def history(self):
        return []

    def echo(self, x):
        return x

    def slow(self, x, seconds):
        time.sleep(seconds)
        return x

    def boxed(self, x):
        return [tg.put(x)]  # holds a ref: the value comes through the scheduler


@tg.remote
def triple(x):
    return 3 * x


@tg.remote(max_retries=0)
def whose(seconds):
    time.sleep(seconds)
    return os.getpid()


@tg.remote
def nap(x, seconds):
    time.sleep(seconds)
    return x


def direct_actor() -> Any:
    a = Twin.remote()
    switch_to_direct(a)
    return a


def run_threads(target: Any, n: int, timeout: float = 120) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread still waits"
    return errors


def test_threads_racing_gets_with_timeouts_on_one_and_two_actors():
    """Each thread calls, and gets with a random short timeout (often timing
    out), then gets again without: every value is its own, and nothing but
    GetTimeoutError comes out."""
    actors = [direct_actor(), direct_actor()]
    rng = random.Random(7)
    plans = [[rng.choice([0, 0.0001, 0.001, 0.01, None]) for _ in range(150)] for _ in range(6)]

    def caller(k: int) -> None:
        for i, t in enumerate(plans[k]):
            a = actors[(k + i) % 2]
            x = (k, i)
            ref = a.slow.remote(x, 0.002) if i % 7 == 0 else a.echo.remote(x)
            try:
                assert tg.get(ref, timeout=t) == x
            except GetTimeoutError:
                assert tg.get(ref, timeout=30) == x

    assert run_threads(caller, 6) == []
    for a in actors:
        tg.kill(a)


def test_a_loop_of_zero_timeouts_sees_a_direct_answer_soon():
    """get(timeout=0) and wait(timeout=0) in a loop, as a poller would: the answer
    must not wait for the loop to pause (the channel's thread is parked by each)."""
    a = direct_actor()
    for poll in (
        lambda ref: tg.get(ref, timeout=0),
        lambda ref: tg.wait([ref], timeout=0)[0][0],
    ):
        for i in range(5):
            ref = a.echo.remote(i)
            started = time.monotonic()
            while True:
                try:
                    poll(ref)
                    break
                except (GetTimeoutError, IndexError):
                    assert time.monotonic() - started < 10
            # (an echo answers in well under a millisecond here; 0.1 s is what a
            # loaded machine may add, 0.1-2 s is what the parked thread did)
            assert time.monotonic() - started < 0.5, "the poller waited for the answer"
    tg.kill(a)


def test_tiny_timeouts_in_a_loop_leak_no_descriptors_or_threads():
    a = direct_actor()
    me = psutil.Process()
    tg.get(a.echo.remote(0), timeout=30)
    slow = a.slow.remote("late", 2.0)
    fds, threads = me.num_fds(), threading.active_count()
    deadline = time.monotonic() + 1.0
    polls = 0
    while time.monotonic() < deadline:
        with pytest.raises(GetTimeoutError):
            tg.get(slow, timeout=random.choice([0, 1e-6, 0.0005]))
        polls += 1
    assert me.num_fds() == fds and threading.active_count() == threads
    assert tg.get(slow, timeout=30) == "late"
    assert polls > 100
    tg.kill(a)


def thread_wakes() -> int:
    """Times this process's threads went to sleep and woke, all together."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total


def test_a_thread_blocked_on_a_slow_call_burns_no_cpu():
    """Waiting 2.5 s for an answer, the process sleeps (no thread looks every few ms)."""
    a = direct_actor()
    me = psutil.Process()
    tg.get(a.echo.remote(0), timeout=30)
    ref = a.slow.remote(1, 2.5)
    before = me.cpu_times()
    wakes = thread_wakes()
    assert tg.get(ref, timeout=30) == 1
    after = me.cpu_times()
    used = after.user + after.system - before.user - before.system
    woke = thread_wakes() - wakes
    # (off the fast path, ~10 here; the channel's thread looking every 5 ms: ~500)
    assert woke < 150, f"{woke} wakes in 2.5 s blocked ({used:.3f} s of CPU)"
    tg.kill(a)


def test_futures_and_sync_gets_on_one_actor():
    """A future's callbacks may now run on a thread in get(); one that calls get()
    on a value it has works, and futures complete while another thread loops
    sync calls (each answer read in get(), never more than STICKY late)."""
    a = direct_actor()
    ready = a.echo.remote("here")
    assert tg.get(ready, timeout=30) == "here"
    seen: list[Any] = []
    futures = []
    for i in range(50):
        fut = a.echo.remote(i).future()
        fut.add_done_callback(lambda f: seen.append((f.result(), tg.get(ready, timeout=5))))
        futures.append(fut)
        assert tg.get(a.echo.remote(-i), timeout=30) == -i
    assert [f.result(timeout=30) for f in futures] == list(range(50))
    wait_for(lambda: len(seen) == 50, what="every callback")
    assert sorted(seen) == [(i, "here") for i in range(50)]

    # A future nobody gets, answered while a thread reads, waiting for a later call.
    a.slow.remote("first", 1.0)
    fut = a.echo.remote("quick").future()
    later = a.slow.remote("later", 2.0)
    reader = threading.Thread(target=lambda: tg.get(later, timeout=30))
    reader.start()
    assert fut.result(timeout=2.5) == "quick"  # (at 1 s; ``later`` comes at 3 s)
    reader.join(timeout=30)
    tg.kill(a)


def test_await_beside_sync_gets_on_one_actor():
    a = direct_actor()

    async def awaiting() -> list[int]:
        return [await a.echo.remote(i) for i in range(100)]

    out: list[list[int]] = []
    loop_thread = threading.Thread(target=lambda: out.append(asyncio.run(awaiting())))
    loop_thread.start()
    assert [tg.get(a.echo.remote(-i), timeout=30) for i in range(200)] == [-i for i in range(200)]
    loop_thread.join(timeout=60)
    assert out == [list(range(100))]
    tg.kill(a)


def test_wait_for_the_first_of_two_actors():
    fast, slow = direct_actor(), direct_actor()
    for i in range(10):
        late = slow.slow.remote(("late", i), 1.0)
        soon = fast.echo.remote(("soon", i))
        done, pending = tg.wait([late, soon], num_returns=1, timeout=30)
        assert done == [soon] and pending == [late]
        assert tg.get(late, timeout=30) == ("late", i)
    for a in (fast, slow):
        tg.kill(a)


def test_values_through_the_scheduler_between_plain_ones_from_threads():
    a = direct_actor()

    def caller(k: int) -> None:
        for i in range(40):
            if i % 3 == 0:
                [inner] = tg.get(a.boxed.remote((k, i)), timeout=30)
                assert tg.get(inner, timeout=30) == (k, i)
            else:
                assert tg.get(a.echo.remote((k, i)), timeout=30) == (k, i)

    assert run_threads(caller, 4) == []
    tg.kill(a)


def test_an_actor_killed_while_threads_read_it():
    """Threads loop calls while the actor is killed: each call returns its value
    or raises ActorDiedError, nothing else, and none hangs."""
    for _ in range(3):
        a = direct_actor()
        got_some = threading.Event()

        def caller(k: int, a: Any = a, got_some: threading.Event = got_some) -> None:
            for i in range(100_000):
                try:
                    assert tg.get(a.echo.remote((k, i)), timeout=30) == (k, i)
                    got_some.set()
                except ActorDiedError:
                    return

        killer = threading.Thread(target=lambda a=a, e=got_some: e.wait(30) and tg.kill(a))
        killer.start()
        assert run_threads(caller, 3) == []
        killer.join(timeout=30)


def test_a_leased_executor_killed_while_a_thread_reads():
    leased(whose, 0)
    me = tg.get(whose.remote(0), timeout=30)
    slow = whose.remote(60)
    killer = threading.Timer(0.5, os.kill, args=(me, signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    with pytest.raises(TaskgraphError):
        tg.get(slow, timeout=60)
    assert time.monotonic() - started < 45
    killer.join()
    assert [tg.get(triple.remote(i), timeout=30) for i in range(20)] == [3 * i for i in range(20)]
    assert tg.get(whose.remote(0), timeout=30) != me


def test_cancel_while_a_thread_reads_its_lease():
    leased(nap, 0, 0)
    ref = nap.remote(1, 60)
    threading.Timer(0.5, tg.cancel, args=(ref,), kwargs={"force": True}).start()
    started = time.monotonic()
    with pytest.raises((TaskCancelledError, TaskgraphError)):
        tg.get(ref, timeout=45)
    assert time.monotonic() - started < 40
    assert tg.get(nap.remote(2, 0), timeout=30) == 2


def test_a_task_calling_an_actor_reads_its_answers_itself():
    """An executor's client takes the same path: a task makes many direct calls,
    some from threads with timeouts, and every value is right."""
    a = Twin.remote()

    @tg.remote
    def caller(actor: Any) -> list[Any]:
        import threading as th

        out: list[Any] = [tg.get(actor.echo.remote(i), timeout=30) for i in range(300)]
        errors: list[BaseException] = []

        def inner(k: int) -> None:
            try:
                for i in range(50):
                    ref = actor.echo.remote((k, i))
                    try:
                        assert tg.get(ref, timeout=random.choice([0, 0.001, None])) == (k, i)
                    except GetTimeoutError:
                        assert tg.get(ref, timeout=30) == (k, i)
            except BaseException as exc:
                errors.append(exc)

        threads = [th.Thread(target=inner, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return [out, [repr(e) for e in errors], tg.statistics().results_read_in_get]

    out, errors, read = tg.get(caller.remote(a), timeout=120)
    assert out == list(range(300)) and errors == []
    assert read > 0
    tg.kill(a)


# -- the driver in a process of its own: shutdown and Ctrl-C ---------------------------

SHUT_DOWN_WHILE_READING = """
import threading, time
import taskgraph as tg

@tg.remote(num_cpus=0)
class Twin:
    def echo(self, x):
        return x

    def slow(self, x, seconds):
        time.sleep(seconds)
        return x

tg.init(num_cpus=1)
a = Twin.remote()
while tg.statistics().direct_actor_calls == 0:
    tg.get(a.echo.remote(0))
out = []

def blocked():
    try:
        tg.get(a.slow.remote(1, 60))
        out.append("returned")
    except BaseException as exc:
        out.append(type(exc).__name__)

t = threading.Thread(target=blocked)
t.start()
while tg.statistics().results_read_in_get == 0 or tg.statistics().awaiting_channels == 0:
    time.sleep(0.01)
time.sleep(0.2)
tg.shutdown()
t.join(30)
print(t.is_alive(), out)
"""


def test_shutdown_while_a_thread_reads_a_direct_call(tmp_path: Path):
    out = run_driver(SHUT_DOWN_WHILE_READING, tmp_path)
    assert out.strip() == "False ['ClusterConnectionError']", out


INTERRUPTED_LOOP = """
import os, signal, sys
import taskgraph as tg

armed = [False]


def interrupt(signum, frame):
    # Ctrl-C as at a terminal, but only while the loop below can catch it
    # (a loop's own jump back is no place a test can catch it).
    if armed[0]:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, interrupt)

@tg.remote(num_cpus=0)
class Twin:
    def echo(self, x):
        return x

    def boxed(self, x):
        return [tg.put(x)]

tg.init(num_cpus=1)
a = Twin.remote()
while tg.statistics().direct_actor_calls == 0:
    tg.get(a.echo.remote(0))
open(sys.argv[1], "w").close()
done = interrupted = 0
i = 0
futures = []
# (the parent stops sending Ctrl-C before it makes the stop file)
while True:
    if os.path.exists(sys.argv[2]):
        break
    i += 1
    try:
        armed[0] = True
        if i % 3 == 0:  # (its callbacks run in a later get(), as it reads)
            futures.append((-i, a.echo.remote(-i).future()))
        if i % 5 == 0:
            [inner] = tg.get(a.boxed.remote(i))
            got = tg.get(inner)
        else:
            got = tg.get(a.echo.remote(i))
        armed[0] = False
        assert got == i, (got, i)
        done += 1
    except KeyboardInterrupt:
        armed[0] = False
        interrupted += 1
check = [tg.get(a.echo.remote(j), timeout=30) for j in range(200)]
assert check == list(range(200)), check
for x, f in futures:
    assert f.result(timeout=30) == x, x
print(done, interrupted, flush=True)
tg.shutdown()
"""


def test_ctrl_c_at_random_points_in_a_loop_of_sync_calls(tmp_path: Path):
    started, stop, script = tmp_path / "started", tmp_path / "stop", tmp_path / "driver.py"
    script.write_text(INTERRUPTED_LOOP)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(started), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(tmp_path),
        start_new_session=True,
    )
    rng = random.Random(3)
    try:
        wait_for(started.exists, timeout=60, what="the loop to start")
        for _ in range(int(os.environ.get("RA_SIGINTS", "150"))):
            driver.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0.001, 0.02))  # (random points in the loop, not a wait)
        stop.touch()
        out, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err[-3000:]
    done, interrupted = map(int, out.split())
    assert done > 0 and interrupted > 0


def driver_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TASKGRAPH_TOKEN", "TASKGRAPH_ADDRESS", "TASKGRAPH_STATE_DIR")
    }
    env["TASKGRAPH_STATE_DIR"] = str(tmp_path)
    return env


def run_driver(script: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=driver_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
