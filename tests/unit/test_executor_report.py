"""An actor's report of a direct call, and the caller that leaves meanwhile.

When a direct caller's connection closes, the actor's process tells the
scheduler which of that caller's calls it holds (``CallerLeft``); the scheduler
fails the caller's other recorded calls as never sent, unless their reports
came first. So a call must count as held until its report is on its way: a
caller that leaves between the two must still name it, or a call that ran is
put on record as failed (seen once in CI, under load).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.worker.channel import Callers
from taskgraph.worker.executor import Executor
from taskgraph.worker.executor_client import Inbox

TASK = bytes(range(16))


class Recorder:
    """Stands in for the executor's stream, its report pipe and one caller: each says
    what it was handed, and whether the call still counted as held at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []
        self.callers: Callers | None = None

    def held(self) -> bool:
        assert self.callers is not None
        with self.callers.lock:
            return TASK in self.callers.replies

    # the client
    def sent(self) -> None:
        pass

    def send_now(self, msg: Any) -> None:
        self.events.append(("stream", self.held()))

    # the report pipe
    def write(self, msg: Any) -> bool:
        self.events.append(("pipe", self.held()))
        return True

    # the caller
    def answer(self, result: w.TaskResult) -> None:
        self.events.append(("answer", self.held()))


def executor_with_a_call() -> tuple[Executor, Recorder]:
    rec = Recorder()
    client: Any = SimpleNamespace(sent=rec.sent, send_now=rec.send_now)
    client.inbox = Inbox(client)
    executor = Executor(client, "worker", "executor")
    executor.actor_id = b"\x01" * 16
    executor.callers = rec.callers = Callers(executor)
    executor.reports = rec  # type: ignore[assignment]
    executor.callers.replies[TASK] = rec  # type: ignore[assignment]
    return executor, rec


def test_a_small_answer_is_held_until_its_report_is_in_the_pipe() -> None:
    executor, rec = executor_with_a_call()
    [oid] = return_ids(TASK, 1)
    executor.report(w.TaskResult(TASK, [w.ReturnValue(oid, data=b"x")]))
    assert rec.events == [("pipe", True), ("answer", False)]


def test_a_stored_answer_is_held_until_its_report_is_sent() -> None:
    executor, rec = executor_with_a_call()
    [oid] = return_ids(TASK, 1)
    where = w.Location("worker", "store", 8, "127.0.0.1")
    executor.report(w.TaskResult(TASK, [w.ReturnValue(oid, location=where)]))
    assert rec.events == [("stream", True), ("answer", False)]


def test_a_failed_call_is_held_until_its_report_is_in_the_pipe() -> None:
    executor, rec = executor_with_a_call()
    executor.report(w.TaskResult(TASK, error=b"pickled", failure="task"))
    assert rec.events == [("pipe", True), ("answer", False)]
