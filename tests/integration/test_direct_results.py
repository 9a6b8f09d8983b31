"""Results handed straight to the waiting driver by the executor (taskgraph/_deliveries.py).

A driver on the worker's host that waits for a task gets a small result from
the executor itself; the scheduler then does not send it again. Everything
else (failures, large values, values holding refs) goes the usual way, and a
delivery that cannot be made changes nothing but the route.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import taskgraph as tg
from conftest import taskgraph_threads, wait_for
from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection


@tg.remote
def double(x):
    return 2 * x


@tg.remote
def big(n):
    return np.arange(n)


@tg.remote
def holding(x):
    return [tg.put(x)]


@tg.remote(max_retries=1, retry_exceptions=True)
def fails_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first try")
    return "second try"


def listener():
    client = tg._api.client()
    assert client.deliveries is not None, "a driver listens for results"
    return client.deliveries


def test_waited_for_results_come_from_the_executor(fresh_cluster):
    before = tg.statistics().results_direct
    assert [tg.get(double.remote(i)) for i in range(50)] == [2 * i for i in range(50)]
    assert tg.statistics().results_direct > before, "handed over by the executors that ran them"
    # Results nobody waits for yet still arrive the usual way.
    refs = [double.remote(i) for i in range(200)]
    assert tg.get(refs) == [2 * i for i in range(200)]


def test_what_may_not_be_handed_over_goes_through_the_scheduler(fresh_cluster, tmp_path):
    arr = tg.get(big.remote(1_000_000))  # in the store, not inline
    assert arr[-1] == 999_999
    before = tg.statistics()
    (inner,) = tg.get(holding.remote(5))  # a ref inside: the scheduler must know first
    after = tg.statistics()
    assert after.results_direct == before.results_direct
    assert after.results_via_scheduler == before.results_via_scheduler + 1
    assert tg.get(inner) == 5
    # A failure is not handed over: the scheduler retries the task.
    assert tg.get(fails_once.remote(str(tmp_path / "marker"))) == "second try"


def test_a_listener_refuses_a_peer_without_the_token(fresh_cluster):
    address = listener().address.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    conn = BlockingConnection(sock)
    [challenge] = conn.recv()
    assert isinstance(challenge, w.Challenge)
    conn.send([w.Hello("executor", b"wrong digest", b"intruder")])
    [reply] = conn.recv()
    assert isinstance(reply, w.Rejected) and "token" in reply.reason
    conn.close()
    assert tg.get(double.remote(21)) == 42


def test_the_listener_stops_with_the_driver(fresh_cluster):
    tg.get(double.remote(1))
    deliveries = listener()
    tg.shutdown()
    assert deliveries.closed
    wait_for(lambda: not taskgraph_threads(), what="the delivery threads to end")
    tg.init(num_cpus=2)  # the fixture shuts this one down


def test_direct_results_can_be_turned_off_and_leases_still_work():
    """The switches are independent: with no direct results, the driver's
    listener still takes leases (only leased tasks' values come straight)."""
    script = (
        "import time\n"
        "import taskgraph as tg\n"
        "tg.init(num_cpus=1)\n"
        "f = tg.remote(lambda x: x + 1)\n"
        "out = [tg.get(f.remote(i)) for i in range(3)]\n"
        "deadline = time.monotonic() + 30\n"
        "while tg.statistics().tasks_leased == 0:\n"
        "    assert time.monotonic() < deadline, 'no lease'\n"
        "    tg.get(f.remote(0))\n"
        "s = tg.statistics()\n"
        "print(out, s.results_direct == s.tasks_leased, s.tasks_leased > 0)\n"
        "tg.shutdown()\n"
    )
    env = {**os.environ, "TASKGRAPH_DIRECT_RESULTS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3] True True"


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_driver_gone_quiet_does_not_stop_the_executor(fresh_cluster):
    # The driver closes its listener: deliveries fail, results still arrive.
    tg.get(double.remote(1))
    listener().close()
    assert [tg.get(double.remote(i)) for i in range(20)] == [2 * i for i in range(20)]
