"""Short tasks wait in busy executors (prefetch): nothing may hang or be lost there.

Once a function's tasks are seen to take under a couple of milliseconds, a
busy executor holds a few of them behind the one it runs (worker/state.py).
Each test here first runs a function a few dozen times so that its tasks count
as short, then makes the executor's queue matter: a running task blocks, a
waiting task is cancelled, a task waits on a task behind it.
"""

from __future__ import annotations

import threading
import time

import pytest

import taskgraph as tg
from conftest import warm
from taskgraph.exceptions import TaskCancelledError


@tg.remote
def step(x=None):
    """Short, unless given a one-element list: then it is busy a moment (long enough
    for the tasks submitted after it to be handed to its executor) and waits for
    what the list holds."""
    if isinstance(x, list):
        time.sleep(0.3)
        return tg.get(x[0])
    return x


@tg.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@tg.remote
def depth(n):
    return 0 if n == 0 else 1 + tg.get(depth.remote(n - 1))


@tg.remote(num_cpus=0, max_concurrency=4)
class Gate:
    def __init__(self):
        self.event = threading.Event()

    def wait(self):
        self.event.wait(60)
        return "open"

    def open(self):
        self.event.set()


def test_tasks_behind_a_blocked_task_run_elsewhere(fresh_cluster):
    warm(step, 1)
    gate = Gate.remote()
    waiting = gate.wait.remote()
    # Two tasks take both CPUs and block; the quick ones were handed to the
    # same two executors behind them and must come back to run elsewhere.
    blocked = [step.remote([waiting]) for _ in range(2)]
    quick = [step.remote(i) for i in range(8)]
    assert tg.get(quick, timeout=30) == list(range(8))
    ready, _ = tg.wait(blocked, num_returns=2, timeout=0)
    assert ready == [], "the blocked tasks still wait for the gate"
    tg.get(gate.open.remote())
    assert tg.get(blocked, timeout=30) == ["open", "open"]
    tg.kill(gate)


def test_nested_tasks_inside_short_tasks_finish(fresh_cluster):
    warm(depth, 0)
    assert tg.get([depth.remote(3) for _ in range(12)], timeout=60) == [3] * 12


@pytest.mark.parametrize("force", [False, True])
def test_cancel_reaches_tasks_waiting_in_an_executor_and_the_one_running(fresh_cluster, force):
    warm(nap, 0)
    long = [nap.remote(60) for _ in range(2)]  # both CPUs, for a minute
    behind = [nap.remote(0) for _ in range(6)]
    tg.cancel(behind[0], force=force)
    with pytest.raises(TaskCancelledError):
        tg.get(behind[0], timeout=30)
    for ref in long:
        tg.cancel(ref, force=force)
    for ref in long:
        with pytest.raises(TaskCancelledError):
            tg.get(ref, timeout=30)
    # The others were not cancelled: they run once the CPUs are free.
    assert tg.get(behind[1:], timeout=30) == [0] * 5
    assert tg.get(nap.remote(0), timeout=30) == 0
