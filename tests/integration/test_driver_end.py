"""A driver's end ends its work, as in Ray: when a driver leaves (killed, or it
said goodbye), its tasks not started are dropped and its running ones cancelled;
an actor it made lives on while it is detached."""

from __future__ import annotations

import signal

import pytest

import taskgraph as tg
from conftest import another_driver, finish, wait_for
from taskgraph.util.state import list_tasks

SUBMITS_THEN_DIES = """
import os, signal, sys, time
import taskgraph as tg
tg.init()

@tg.remote(num_cpus=1, max_retries=0)
def hold(path):
    open(path, "w").close()
    time.sleep(300)

@tg.remote(num_cpus=1)
def never(i):
    return i

held = [hold.remote({path!r} + str(i)) for i in range(2)]
queued = [never.remote(i) for i in range(20)]
while not all(os.path.exists({path!r} + str(i)) for i in range(2)):
    time.sleep(0.01)
{end}
"""


def cpus_free() -> float:
    return tg.available_resources().get("CPU", 0.0)


@pytest.mark.parametrize("end", ["os.kill(os.getpid(), signal.SIGKILL)", "tg.shutdown()"])
@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 2}], indirect=True)
def test_a_driver_that_ends_takes_its_running_and_queued_tasks_with_it(
    fresh_cluster, tmp_path, end
) -> None:
    driver = another_driver(SUBMITS_THEN_DIES.format(path=str(tmp_path / "started-"), end=end))
    code, _, err = finish(driver)
    assert code == (-signal.SIGKILL if "SIGKILL" in end else 0), err
    # Both CPUs come back at once (the heartbeat timeout is 30 s: not waited for).
    wait_for(lambda: cpus_free() == 2.0, timeout=15, what="the driver's running tasks to end")
    names = [t for t in list_tasks(limit=0) if t["name"].endswith(("hold", "never"))]
    assert len(names) == 22
    assert {t["state"] for t in names} == {"FAILED"}, "cancelled, none ran to the end"
    assert not [t for t in names if t["name"].endswith("never") and t["start_time_ms"]]


DETACHED_THEN_DIES = """
import os, signal
import taskgraph as tg
tg.init(namespace="keepers")

@tg.remote
class Keeper:
    def ping(self):
        return "still here"

keeper = Keeper.options(name="keeper", lifetime="detached").remote()
tg.get(keeper.ping.remote())
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_detached_actor_outlives_its_killed_driver(fresh_cluster) -> None:
    code, _, err = finish(another_driver(DETACHED_THEN_DIES))
    assert code == -signal.SIGKILL, err
    keeper = tg.get_actor("keeper", namespace="keepers")
    assert tg.get(keeper.ping.remote(), timeout=30) == "still here"
    tg.kill(keeper)
