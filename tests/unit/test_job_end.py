"""A driver that leaves takes its job's tasks with it (scheduler/clients.py
``_end_job``), in the state machine: no sockets, every step validated."""

from __future__ import annotations

import msgspec
from test_scheduler_state import Harness, messages

from taskgraph import _wire as w
from taskgraph.scheduler.state import ClientLeft

DRIVER = b"driver01"  # a client's id is the first 8 bytes of its tasks' ids


def own(spec: w.TaskSpec, client: bytes, **changes: object) -> w.TaskSpec:
    task_id = client + spec.task_id[8:]
    return msgspec.structs.replace(spec, task_id=task_id, **changes)


def test_a_leaving_driver_drops_its_queued_tasks_and_cancels_its_running_ones() -> None:
    h = Harness()
    h.client(DRIVER)
    h.client(b"another1")
    h.worker("w1", {"CPU": 1.0})
    running = own(h.spec("running"), DRIVER)
    queued = own(h.spec("queued"), DRIVER)
    theirs = own(h.spec("theirs"), b"another1")
    # A task's task: submitted by an executor, in the driver's job.
    nested = own(h.spec("nested"), b"executr1", job=DRIVER)
    h.submit(DRIVER, running, queued)
    h.submit(b"another1", theirs)
    h.submit(b"another1", nested)
    assert [h.task_state(s) for s in (running, queued, theirs, nested)] == [
        "processing",
        "ready",
        "ready",
        "ready",
    ]
    sends = h.handle(ClientLeft(DRIVER))
    [cancel] = messages(sends, "worker", "w1", w.CancelRunning)
    assert cancel.task_id == running.task_id and not cancel.force
    assert h.task_state(queued) is None and h.task_state(nested) is None, "dropped"
    assert h.task_state(theirs) == "ready", "another driver's task stays"


def test_an_executor_client_that_leaves_leaves_its_tasks_running() -> None:
    h = Harness()
    h.client(DRIVER)
    h.worker("w1", {"CPU": 1.0})
    executor = b"executr1"
    spec = own(h.spec("child"), executor, job=DRIVER)
    h.from_worker("w1", w.FromClient(executor, [w.SubmitTasks([spec])]))
    assert h.task_state(spec) == "processing"
    h.from_worker("w1", w.ClientGone(executor))
    assert h.task_state(spec) == "processing"
