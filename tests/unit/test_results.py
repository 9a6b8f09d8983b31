"""The client's results (``taskgraph/_waiting.py``) on their own: an object the
client holds, driven here through its interface (``ResultsClient``) with no
connection, threads of its own or cluster."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from taskgraph import _wire as w
from taskgraph._object_ref import ObjectRef
from taskgraph._waiting import Results
from taskgraph.exceptions import ClusterConnectionError
from taskgraph.testing import wait_for


class Pickled:
    """Values carried inline, as the scheduler sends small ones."""

    def decode(self, value: w.Value) -> Any:
        assert value.data is not None
        return pickle.loads(value.data)


class Side:
    """The client side ``Results`` asks of: what it would send is kept in ``sent``."""

    def __init__(self, objects: Any = None) -> None:
        self.broken: str | None = None
        self.urgent = False
        self.leases = None
        self.objects = objects if objects is not None else Pickled()
        self.sent: list[Any] = []

    def queue(self, msg: Any, wake: bool = True) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass

    def connection_error(self, reason: str) -> ClusterConnectionError:
        return ClusterConnectionError(reason)

    def wait_begins(self) -> bool:
        return False

    def wait_ended(self) -> None:
        pass


def results(side: Side) -> Results:
    return Results(side, threading.RLock(), side.queue)  # type: ignore[arg-type]


def value(oid: bytes, v: Any) -> w.Value:
    return w.Value(oid, pickle.dumps(v))


A, B = b"a" * 16, b"b" * 16
COUNTED = {A: 1, B: 1}  # refs the client holds


def test_a_wait_asks_once_for_what_is_missing_and_returns_when_enough_arrived() -> None:
    side = Side()
    r = results(side)
    got: list[list[bytes] | None] = []
    waiter = threading.Thread(target=lambda: got.append(r.wait_values([A, B, A], 1, 10.0)))
    waiter.start()
    wait_for(lambda: side.sent, what="the wait asked for its values")
    assert side.sent == [w.WantObjects([A, B])]
    r.arrived([value(B, 2)], COUNTED, [])
    waiter.join(10)
    assert got == [[B]]
    assert r.peek(B) is not None and r.peek(A) is None
    r.forget([B])
    assert r.peek(B) is None


def test_a_wait_times_out_with_none() -> None:
    assert results(Side()).wait_values([A], 1, 0.01) is None


def test_get_decodes_in_the_callers_order_with_repeats() -> None:
    r = results(Side())
    r.arrived([value(A, "x"), value(B, "y")], COUNTED, [])
    refs = [ObjectRef(oid, None, borrowed=True) for oid in (B, A, B)]
    assert r.get(refs, timeout=1.0) == ["y", "x", "y"]


def test_a_value_for_a_ref_no_longer_held_wakes_its_waiters_but_is_not_kept() -> None:
    r = results(Side())
    fire: list[Any] = []
    future = r.future(ObjectRef(A, None, borrowed=True))
    r.arrived([value(A, 1)], {}, fire)
    r.fire(fire)
    assert future.result(timeout=1) == 1
    assert r.peek(A) is None


def test_a_broken_connection_wakes_waiters_and_fails_new_futures_as_connection_errors() -> None:
    side = Side()
    r = results(side)
    pending = r.future(ObjectRef(A, None, borrowed=True))
    ref = ObjectRef(B, None, borrowed=True)
    outcome: list[BaseException] = []

    def get() -> None:
        try:
            r.get([ref], None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=get)
    waiter.start()
    wait_for(lambda: len(side.sent) == 2, what="get asked for its value")
    side.broken = "lost the connection"
    callbacks = r.broke()
    waiter.join(10)
    assert [type(e) for e in outcome] == [ClusterConnectionError]
    assert list(callbacks) == [A] and not pending.done()  # the client fails these itself
    later = r.future(ObjectRef(B, None, borrowed=True))
    with pytest.raises(ConnectionError, match="lost the connection"):
        later.result(timeout=1)
    assert isinstance(later.exception(), ClusterConnectionError)


def test_waiting_inside_a_future_callback_for_a_missing_value_is_refused() -> None:
    r = results(Side())
    seen: list[BaseException] = []

    def inside(_future: Any) -> None:
        try:
            r.wait_values([B], 1, None)
        except RuntimeError as exc:
            seen.append(exc)

    r.future(ObjectRef(A, None, borrowed=True)).add_done_callback(inside)
    fire: list[Any] = []
    r.arrived([value(A, 1)], COUNTED, fire)
    r.fire(fire)
    assert len(seen) == 1 and "callback" in str(seen[0])
