"""Refs a task got in its arguments: counted for the task while it runs, and
for its process only if they outlive it (the executor tells the scheduler of
those alone, when the task ends)."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

import taskgraph as tg
from conftest import stored, wait_for

BIG = 400_000  # float64s: 3.2 MB, above the inline limit


def kept() -> list:
    """Refs a task kept after it returned: one list per executor process.

    On ``sys``, not in a global here: each task function arrives pickled by
    value with globals of its own.
    """
    if not hasattr(sys, "taskgraph_test_kept"):
        sys.taskgraph_test_kept = []  # type: ignore[attr-defined]
    return sys.taskgraph_test_kept  # type: ignore[attr-defined]


@tg.remote
def keep(refs, also=None):
    kept().extend(refs)
    return len(kept())


@tg.remote
def read_kept():
    return [float(tg.get(ref)[0]) for ref in kept()]


@tg.remote
def forget_kept():
    kept().clear()
    return len(kept())


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_ref_a_task_keeps_after_it_returned_keeps_its_object(fresh_cluster):
    # One executor, so every task here sees the same kept(). A task's argument
    # refs are counted for the task while it runs; the ones it keeps beyond
    # that must be counted for its process, the others not at all.
    kept = tg.put(np.full(BIG, 3.0))
    passing = tg.put(np.full(BIG, 4.0))  # only looked at, never kept
    assert tg.get(keep.remote([kept], also=[passing])) == 1
    kept_id = kept.hex()
    del kept, passing
    gc.collect()
    wait_for(lambda: stored() == {kept_id}, what="the store to free only what no one keeps")
    assert tg.get(read_kept.remote()) == [3.0]
    assert tg.get(forget_kept.remote()) == 0
    wait_for(lambda: not stored(), what="the kept object to be freed once let go")


@tg.remote
def boxed_put(refs):
    """Given refs (borrowed), return a ref to a new object inside a list."""
    return [tg.put(np.full(BIG, float(len(refs))))]


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_ref_returned_inside_a_value_survives_the_task_that_made_it(fresh_cluster):
    # The task's own ref to the put dies as it returns, before its report is
    # sent: the object must still be there for whoever reads the return.
    arg = tg.put(1)
    for _ in range(20):
        (inner,) = tg.get(boxed_put.remote([arg]), timeout=30)
        assert tg.get(inner, timeout=30)[0] == 1.0
    del inner, arg
    gc.collect()
    wait_for(lambda: not stored(), what="the objects to be freed")
