"""Errors that tell the truth about what happened (issue 15), in the state machine."""

from __future__ import annotations

import pickle

from test_scheduler_state import Harness, error_of, values

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.exceptions import WorkerCrashedError

CRASH = pickle.dumps(WorkerCrashedError("executor 7 of worker w1", task_name="boom", exit_code=-9))


def crashed(spec: w.TaskSpec) -> w.TaskResult:
    return w.TaskResult(spec.task_id, error=CRASH, failure="crashed", exit_code=-9, pid=7)


def test_a_crash_after_every_retry_says_the_retries_were_used() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("boom", max_retries=2)
    h.submit(b"c1", spec)
    for _ in range(3):
        assert h.task_state(spec) == "processing"
        h.done("w1", crashed(spec))
    [oid] = return_ids(spec.task_id, 1)
    err = error_of(values(h.want(b"c1", oid), b"c1")[oid])
    assert isinstance(err, WorkerCrashedError) and err.attempts == 3
    assert "on each of its 3 tries (max_retries=2)" in str(err)
    assert "SIGKILL" in str(err) and "retrying more will not help" in str(err)


def test_a_crash_with_no_retries_keeps_the_workers_own_words() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("boom", max_retries=0)
    h.submit(b"c1", spec)
    h.done("w1", crashed(spec))
    [oid] = return_ids(spec.task_id, 1)
    err = error_of(values(h.want(b"c1", oid), b"c1")[oid])
    assert isinstance(err, WorkerCrashedError) and err.attempts == 1
    assert "executor 7 of worker w1" in str(err) and "give the task max_retries" in str(err)
