"""The scheduler's part in Ray's forms (issue 16): an object put as an error (a
dynamic generator's failed last item) and retry_exceptions given as a list
(the executor says when an error is not among them). ``validate()`` runs after
every step."""

from __future__ import annotations

import pickle

import msgspec
from test_scheduler_state import Harness, assigned_ids, error_of, failed, ok, ret, values

from taskgraph import _wire as w
from taskgraph.exceptions import TaskError


def an_error(text: str) -> bytes:
    return pickle.dumps(TaskError.from_exception(ValueError(text), "gen"))


def test_an_object_put_as_an_error_raises_for_its_readers_and_its_dependents() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    oid = h.new_id()
    h.send(b"c1", w.PutObject(oid, error=an_error("third item")))
    assert h.state.objects[oid].state == "error"
    assert isinstance(error_of(values(h.want(b"c1", oid), b"c1")[oid]), ValueError)
    user = h.spec("user", deps=[oid])
    assert assigned_ids(h.submit(b"c1", user), "w1") == []
    err = error_of(values(h.want(b"c1", ret(user)), b"c1")[ret(user)])
    assert "third item" in str(err)
    h.send(b"c1", w.ReleaseRefs([oid, ret(user)]))
    assert h.state.statistics()["objects"] == 0


def test_a_listed_retry_is_skipped_when_the_executor_says_the_error_is_not_listed() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    listed = h.spec("listed", max_retries=2, retry_exceptions=True, retry_on=b"classes")
    other = h.spec("other", max_retries=2, retry_exceptions=True, retry_on=b"classes")
    h.submit(b"c1", listed, other)
    sends = h.done("w1", failed(listed))
    assert assigned_ids(sends, "w1") == [listed.task_id], "a listed error: run again"
    h.done("w1", msgspec.structs.replace(failed(other), no_retry=True))
    assert h.task_state(other) is None, "not listed: it failed at once"
    assert h.state.tasks[listed.task_id].retries_left == 1
    h.done("w1", ok(listed))
    assert h.task_state(listed) is None
