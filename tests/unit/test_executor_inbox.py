"""An executor's inbox: tasks handed to it run in order, and none waits behind a blocked one.

The inbox is driven here by hand: a recording stand-in takes the place of the
executor's client (what it would send to the daemon), and no process starts.
"""

from __future__ import annotations

import pickle
import signal

from taskgraph import _wire as w
from taskgraph.exceptions import TaskCancelledError
from taskgraph.worker.executor_client import Inbox


class Outbox:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.flushes = 0

    def send_soon(self, msg: object) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        self.flushes += 1


def task(name: str, actor: bool = False) -> w.Assignment:
    spec = w.TaskSpec(
        task_id=name.encode().ljust(16, b"\0"),
        function_id=b"f",
        name=name,
        args=b"",
        deps=[],
        actor_id=b"a" * 16 if actor else b"",
    )
    return w.Assignment(spec, [])


def inbox() -> tuple[Inbox, Outbox]:
    out = Outbox()
    return Inbox(out), out  # type: ignore[arg-type]


def test_tasks_come_out_in_the_order_they_went_in() -> None:
    box, _ = inbox()
    for name in "abc":
        box.put(task(name))
    assert [box.get().spec.name for _ in range(3)] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert box.current == task("c").spec.task_id


def test_a_blocked_task_hands_back_what_waits_and_what_arrives_until_it_goes_on() -> None:
    box, out = inbox()
    box.put(task("running"))
    box.get()
    box.put(task("next"))
    box.put(task("call", actor=True))  # an actor's call stays: nothing else would run it
    box.block()
    assert out.sent == [w.Returned([task("next").spec.task_id])]
    box.put(task("late"))
    assert out.sent[-1] == w.Returned([task("late").spec.task_id])
    box.unblock()
    box.put(task("after"))
    assert [box.get().spec.name for _ in range(2)] == ["call", "after"]  # type: ignore[union-attr]


def test_a_new_task_is_never_handed_back_for_the_last_ones_wait() -> None:
    box, out = inbox()
    box.put(task("a"))
    box.get()
    box.block()  # and the task ended without saying it went on
    box.put(task("b"))
    assert out.sent == [w.Returned([task("b").spec.task_id])]
    box.done()
    box.put(task("c"))
    got = box.get()
    assert got is not None and got.spec.name == "c" and not box.blocked
    assert len(out.sent) == 1


def test_cancel_drops_a_waiting_task_and_reports_it_cancelled() -> None:
    box, out = inbox()
    box.put(task("running"))
    box.get()
    box.put(task("waiting"))
    box.cancel(task("waiting").spec.task_id, force=False)
    [msg] = out.sent
    assert isinstance(msg, w.Executed) and msg.result.failure == "cancelled"
    assert msg.result.error is not None
    assert isinstance(pickle.loads(msg.result.error), TaskCancelledError)
    box.put(None)
    assert box.get() is None, "the waiting task is gone"


def test_cancel_of_the_running_task_interrupts_this_process_for_that_task() -> None:
    box, out = inbox()
    box.put(task("running"))
    box.get()
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        box.cancel(task("running").spec.task_id, force=False)
        box.cancel(b"not here at all".ljust(16, b"\0"), force=True)  # nothing to do
    finally:
        signal.signal(signal.SIGINT, previous)
    assert caught == [signal.SIGINT]
    assert box.cancelling == task("running").spec.task_id
    assert out.sent == []
