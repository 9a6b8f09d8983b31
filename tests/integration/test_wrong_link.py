"""A peer that sends a message of the wrong kind for its link is cut off before
anything of that frame is applied; the cluster goes on."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

import taskgraph as tg
from taskgraph import _wire as w
from taskgraph._transport import connect_blocking

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote
def double(x: int) -> int:
    return 2 * x


def intruder_task(client_id: bytes) -> w.TaskSpec:
    return w.TaskSpec(
        task_id=client_id + b"\0\0\0\x01" + b"\0\0\0\0",
        function_id=b"no such function",
        name="intruder",
        args=b"",
        deps=[],
    )


def send_and_be_cut_off(messages_for: Callable[[bytes], list[Any]]) -> None:
    """Connect as an authenticated client, send one frame, and be cut off for it."""
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    client_id = os.urandom(8)
    hello = w.Hello("client", b"", client_id, pid=os.getpid())
    conn, _ = connect_blocking(
        runtime.address, runtime.cluster.token.encode(), hello, w.SCHEDULER_TO_CLIENT
    )
    try:
        conn.send(messages_for(client_id))
        with pytest.raises(ConnectionError):
            conn.recv()  # the scheduler closed the connection
    finally:
        conn.close()


def test_a_client_sending_a_worker_message_is_cut_off_and_its_frame_not_applied():
    send_and_be_cut_off(lambda me: [w.SubmitTasks([intruder_task(me)]), w.RunTasks([])])
    tasks = tg._api.client().query("tasks")
    assert not [t for t in tasks if t["name"] == "intruder"], "half a frame was applied"
    assert tg.get(double.remote(21)) == 42


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), -5.0])
def test_a_resource_amount_not_finite_or_negative_is_refused_where_it_enters(amount):
    """One task asking for CPU nan would poison placement for everyone: the frame
    is refused as it is decoded, the sender cut off, nothing of it applied."""
    send_and_be_cut_off(
        lambda me: [
            w.SubmitTasks([msgspec.structs.replace(intruder_task(me), resources={"CPU": amount})])
        ]
    )
    tasks = tg._api.client().query("tasks")
    assert not [t for t in tasks if t["name"] == "intruder"]
    assert tg.get([double.remote(i) for i in range(8)], timeout=30) == [2 * i for i in range(8)]


@pytest.mark.parametrize("option", ["num_cpus", "num_gpus", "memory"])
@pytest.mark.parametrize("amount", [float("nan"), float("inf")])
def test_an_amount_not_finite_is_refused_at_once_by_options(option, amount):
    with pytest.raises(ValueError, match="must be a non-negative number"):
        double.options(**{option: amount})
