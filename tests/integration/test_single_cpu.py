"""A task blocked in get() lends its CPU: the seed's h() cannot deadlock a 1-CPU node."""

from __future__ import annotations

import pytest

import taskgraph as tg
from conftest import wait_for


@tg.remote
def leaf(i):
    return i


@tg.remote
def parent(n):
    return sum(tg.get([leaf.remote(i) for i in range(n)]))


@tg.remote
def grandparent():
    return tg.get(parent.remote(4)) + tg.get(parent.remote(3))


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_nested_get_on_one_cpu_finishes(fresh_cluster):
    assert tg.cluster_resources()["CPU"] == 1
    assert tg.get(parent.remote(4), timeout=60) == 6
    assert tg.get(grandparent.remote(), timeout=60) == 9
    # A result handed straight to the driver may come before the scheduler hears
    # the task ended (docs/architecture.md, "Direct results"): its CPU comes back then.
    wait_for(lambda: tg.available_resources()["CPU"] == 1, what="the CPU to be free again")
