"""Actor calls straight from caller to actor process, skipping the scheduler.

A client switches an actor to direct calls once it knows where the actor's
process listens and none of its calls through the scheduler is unanswered
(taskgraph/_direct.py). Each test first drives the switch, then checks that
direct calls behave exactly as calls through the scheduler do.
"""

from __future__ import annotations

import gc
import os
import pickle
import time

import numpy as np
import pytest

import taskgraph as tg
from conftest import direct, stored, switch_to_direct, wait_for
from taskgraph.exceptions import ActorDiedError, TaskError

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

    def big(self, n):
        return np.full(n, 3.0)

    def boxed(self, n):
        return [tg.put(np.full(n, 5.0))]

    def die(self):
        os._exit(1)


@tg.remote
def slowly(x, delay):
    time.sleep(delay)
    return x


def test_calls_go_direct_and_keep_their_order_across_the_switch():
    counter = Counter.remote()
    # Through the scheduler first, one waiting on a slow argument: the calls
    # after the switch must still run after it.
    first = counter.add.remote(slowly.remote("slow", 0.5))
    switch_to_direct(counter)  # its history() calls wait behind the slow one
    assert tg.get(first) == 1
    refs = [counter.add.remote(i) for i in range(50)]
    assert direct(counter)
    assert tg.get(refs) == list(range(2, 52))
    assert tg.get(counter.history.remote()) == ["slow", *range(50)]
    tg.kill(counter)


def test_ref_arguments_of_direct_calls_are_fetched_by_the_actor_in_order():
    counter = Counter.remote()
    switch_to_direct(counter)
    before = len(tg.get(counter.history.remote()))
    late = slowly.remote("late", 0.3)
    refs = [counter.add.remote(late), counter.add.remote("after"), counter.add.remote(tg.put(7))]
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
    boxed = counter.boxed.remote(500_000)  # returns a ref: kept alive for us
    (inner,) = tg.get(boxed)
    gc.collect()
    assert tg.get(inner)[0] == 5.0
    del big, boxed, inner
    gc.collect()
    wait_for(lambda: not stored(), what="the store to free the returns")
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
    counter = Counter.options(max_restarts=1).remote()
    for _ in range(5):
        tg.get(counter.add.remote(0))
        time.sleep(0.05)  # let the client ask for the actor's address
    route = tg._api.client()._routes[counter._actor_id]
    assert route.channel is None and not route.address
    tg.kill(counter)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_direct_calls_can_be_turned_off(monkeypatch):
    from taskgraph import _client

    monkeypatch.setattr(_client, "DIRECT_ENABLED", False)  # TASKGRAPH_DIRECT_ACTOR_CALLS=0
    counter = Counter.remote()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # long enough to have switched if it could
        tg.get(counter.add.remote(0))
    assert not direct(counter)
    assert not tg._api.client()._routes[counter._actor_id].address, "it never even asked"
    tg.kill(counter)
