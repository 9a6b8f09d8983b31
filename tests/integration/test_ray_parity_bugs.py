"""Ray programs port by changing the import: behaviours that differed from Ray (issue 16).

Each test here failed before its fix. Clusters are real (scheduler, worker,
executors); what the tests read is public state (``taskgraph.util.state``,
``tg.available_resources()``, what a process prints).
"""

from __future__ import annotations

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.util.state import list_actors, list_tasks

pytestmark = pytest.mark.cluster


def actor_states(class_name: str) -> list[str]:
    return sorted(a["state"] for a in list_actors(filters=[("class_name", "=", class_name)]))


# -- actors that hold a CPU ------------------------------------------------------


@tg.remote(num_cpus=1)
class HoldsACpu:
    def ping(self) -> str:
        return "pong"


def test_actors_holding_a_cpu_each_do_not_overfill_a_node(cluster: tg.ClusterContext) -> None:
    first, second, third = (HoldsACpu.remote() for _ in range(3))
    assert tg.get([first.ping.remote(), second.ping.remote()], timeout=60) == ["pong"] * 2

    # The 2-CPU node is full: the third actor's creation waits in the scheduler
    # (Ray: PENDING_CREATION) instead of starting beside the other two.
    creations = list_tasks(filters=[("name", "=", "HoldsACpu.__init__")])
    assert sorted(t["state"] for t in creations) == [
        "FINISHED",
        "FINISHED",
        "PENDING_NODE_ASSIGNMENT",
    ]
    assert actor_states("HoldsACpu") == ["ALIVE", "ALIVE", "PENDING"]
    assert tg.available_resources().get("CPU", 0.0) == 0.0

    tg.kill(first)  # its CPU is free again: the third starts
    assert tg.get(third.ping.remote(), timeout=60) == "pong"
    assert actor_states("HoldsACpu") == ["ALIVE", "ALIVE", "DEAD"]
    for handle in (second, third):
        tg.kill(handle)
    wait_for(lambda: tg.available_resources().get("CPU") == 2.0, what="the CPUs to come back")
