"""The seed's examples, as a Ray user would run them."""

from __future__ import annotations

import time

import pytest

import taskgraph as tg

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote
def f(x):
    return x * x


@tg.remote
def identity(x):
    return x


def test_remote_function():
    assert tg.get(f.remote(4)) == 16


def test_task_dependencies():
    x1 = identity.remote(1)
    y1 = identity.remote(x1)
    y2 = identity.remote(x1)
    assert tg.get(y1) == 1
    assert tg.get(y2) == 1


@tg.remote
def one():
    return 1


@tg.remote
def g():
    return [one.remote() for _ in range(4)]


@tg.remote
def h():
    return tg.get([one.remote() for _ in range(4)])


def test_nested_tasks_return_refs():
    refs = tg.get(g.remote())
    assert len(refs) == 4
    assert all(isinstance(r, tg.ObjectRef) for r in refs)
    assert tg.get(refs) == [1, 1, 1, 1]


def test_nested_tasks_get_inside():
    assert tg.get(h.remote()) == [1, 1, 1, 1]


@tg.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def test_wait_processes_results_in_finishing_order():
    delays = [0.6, 0.05, 0.3]
    remaining = [sleep_then.remote(d, i) for i, d in enumerate(delays)]
    order = []
    while remaining:
        ready, remaining = tg.wait(remaining, num_returns=1)
        order.append(tg.get(ready[0]))
    assert order == [1, 2, 0]


def test_put_once_read_many():
    import numpy as np

    x = np.arange(1000)
    x_id = tg.put(x)

    @tg.remote
    def total(a):
        return int(a.sum())

    assert tg.get([total.remote(x_id) for _ in range(10)]) == [int(x.sum())] * 10
