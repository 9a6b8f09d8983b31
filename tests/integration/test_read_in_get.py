"""A thread waiting in get() reads its answers off the channel itself.

A lease or an actor called directly answers on a channel (taskgraph/_channels.py)
that has a thread of its own; while a thread waits in get() for answers from
one channel only, it reads that channel itself, so nothing wakes a second
thread to hand it over (each thread woken costs tens of microseconds here, the
most of a synchronous call). Which thread read an answer is counted in
``tg.statistics().results_read_in_get``; ``TASKGRAPH_READ_IN_GET=0`` switches
the path off, and the first test then fails.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import leased, switch_to_direct, wait_for
from taskgraph.exceptions import ActorDiedError, GetTimeoutError

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(num_cpus=0)
class Echo:
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
def double(x):
    return 2 * x


def read_in_get() -> int:
    return tg.statistics().results_read_in_get


def test_sync_calls_are_read_by_the_thread_that_waits():
    a = Echo.remote()
    switch_to_direct(a)
    before = read_in_get()
    assert [tg.get(a.echo.remote(i), timeout=30) for i in range(50)] == list(range(50))
    # Each get() reads its own answer, unless the machine stalled this thread for
    # longer than the channel's thread leaves the socket alone (5 ms) between two.
    assert read_in_get() - before >= 25
    tg.kill(a)


def test_a_batch_waited_for_at_once_is_read_by_the_waiting_thread():
    a = Echo.remote()
    switch_to_direct(a)
    before = read_in_get()
    # (the first answer comes late: this thread waits, and reads, before any came)
    refs = [a.slow.remote(-1, 0.5)] + [a.echo.remote(i) for i in range(200)]
    assert tg.get(refs, timeout=30) == [-1, *range(200)]
    assert read_in_get() - before > 150
    tg.kill(a)


def test_leased_tasks_are_read_by_the_thread_that_waits():
    leased(double, 1)
    before_leased, before_read = tg.statistics().tasks_leased, read_in_get()
    assert [tg.get(double.remote(i), timeout=30) for i in range(30)] == [2 * i for i in range(30)]
    leased_now = tg.statistics().tasks_leased - before_leased
    assert leased_now > 0 and read_in_get() > before_read


def test_threads_waiting_on_one_actor_each_get_their_own_values():
    """One thread reads the channel; the others' answers it reads wake them."""
    a = Echo.remote()
    switch_to_direct(a)
    errors: list[BaseException] = []
    got: dict[int, list[int]] = {}

    def caller(k: int) -> None:
        try:
            got[k] = [tg.get(a.echo.remote(k * 1000 + i), timeout=30) for i in range(100)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert got == {k: [k * 1000 + i for i in range(100)] for k in range(4)}
    tg.kill(a)


def test_a_thread_reading_for_a_slow_call_hands_on_a_fast_one():
    """Thread A reads while it waits for a slow call; thread B's fast call, on the
    same channel, is answered while A still waits, and B returns at once."""
    a = Echo.remote()
    switch_to_direct(a)
    slow = a.slow.remote("slow", 3.0)
    out: list[object] = []
    waiter = threading.Thread(target=lambda: out.append(tg.get(slow, timeout=30)))
    waiter.start()
    # (B's call queues behind the slow one in the actor: it answers after it.)
    b_started = time.monotonic()
    assert tg.get(a.echo.remote("fast"), timeout=30) == "fast"
    waiter.join(timeout=30)
    assert out == ["slow"]
    assert time.monotonic() - b_started < 20
    tg.kill(a)


def test_a_value_that_comes_through_the_scheduler_wakes_the_reading_thread():
    """The answer holds a ref, so the executor sends only "ask the scheduler": the
    value comes on the client's scheduler link while this thread reads the channel."""
    a = Echo.remote()
    switch_to_direct(a)
    for i in range(5):
        [inner] = tg.get(a.boxed.remote(i), timeout=30)
        assert tg.get(inner, timeout=30) == i
    tg.kill(a)


def test_get_times_out_while_reading_and_the_channel_goes_on():
    a = Echo.remote()
    switch_to_direct(a)
    slow = a.slow.remote(7, 2.0)
    started = time.monotonic()
    with pytest.raises(GetTimeoutError):
        tg.get(slow, timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert tg.get(slow, timeout=30) == 7
    assert tg.get(a.echo.remote(8), timeout=30) == 8
    tg.kill(a)


def test_an_actor_killed_while_the_waiting_thread_reads():
    a = Echo.remote()
    switch_to_direct(a)
    slow = a.slow.remote(1, 60)
    threading.Timer(0.5, tg.kill, args=(a,)).start()
    with pytest.raises(ActorDiedError):
        tg.get(slow, timeout=30)


SWITCHED_OFF = """
import taskgraph as tg

@tg.remote(num_cpus=0)
class Echo:
    def echo(self, x):
        return x

tg.init(num_cpus=1)
a = Echo.remote()
for i in range(300):
    assert tg.get(a.echo.remote(i)) == i
s = tg.statistics()
print(s.direct_actor_calls, s.results_direct, s.results_read_in_get)
tg.shutdown()
"""


def test_switched_off_the_channel_thread_hands_every_answer_over(tmp_path: Path):
    env = {"TASKGRAPH_READ_IN_GET": "0", "TASKGRAPH_STATE_DIR": str(tmp_path)}
    out = run_driver(SWITCHED_OFF, env)
    direct, results_direct, read = map(int, out.split())
    assert direct > 0 and results_direct > 0 and read == 0


INTERRUPTED = """
import signal, sys, time
import taskgraph as tg

# Ctrl-C as at a terminal (a background shell starts us with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

@tg.remote(num_cpus=0)
class Echo:
    def echo(self, x):
        return x

    def slow(self, path, x):
        open(path, "w").close()
        time.sleep(2)
        return x

tg.init(num_cpus=1)
a = Echo.remote()
while tg.statistics().direct_actor_calls == 0:
    tg.get(a.echo.remote(0))
before = tg.statistics().results_read_in_get
assert tg.get(a.echo.remote(1)) == 1
assert tg.statistics().results_read_in_get == before + 1, "not read in get()"
ref = a.slow.remote(sys.argv[1], 42)
try:
    tg.get(ref)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print(tg.get(ref, timeout=30), tg.get([a.echo.remote(i) for i in range(3)], timeout=30))
tg.shutdown()
"""


def test_ctrl_c_while_the_waiting_thread_reads_loses_no_value(tmp_path: Path):
    """Interrupted while it takes in answers, the thread lets the channel go: the
    scheduler answers for what was in flight, and later calls still work."""
    started, script = tmp_path / "started", tmp_path / "driver.py"
    script.write_text(INTERRUPTED)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env({"TASKGRAPH_STATE_DIR": str(tmp_path)}),
        start_new_session=True,
    )
    try:
        wait_for(started.exists, timeout=60, what="the slow call to start")
        driver.send_signal(2)
        out, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err
    assert out.split("\n")[:2] == ["interrupted", "42 [0, 1, 2]"], (out, err)


def driver_env(extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TASKGRAPH_TOKEN", "TASKGRAPH_ADDRESS", "TASKGRAPH_STATE_DIR")
    }
    env.update(extra)
    return env


def run_driver(script: str, extra: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=driver_env(extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
