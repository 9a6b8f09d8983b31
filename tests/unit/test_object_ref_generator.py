"""ObjectRefGenerator over a stand-in client: what reaches the driver first, an item
or the end of the generator task, must not change what iterating it gives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from taskgraph import _wire as w
from taskgraph import serialization
from taskgraph._ids import generator_item_id, return_ids, task_id
from taskgraph._object_ref import ObjectRef, ObjectRefGenerator

TASK = task_id(b"t" * 12)
END = return_ids(TASK, 1)[0]


class Client:
    """Values arrive in the order given: one batch each time a caller waits."""

    def __init__(self, *batches: list[w.Value]) -> None:
        self.batches = list(batches)
        self.values: dict[bytes, w.Value] = {}
        self.released: list[bytes] = []

    def incref(self, oid: bytes, acquire: bool) -> None:
        pass

    def wait_values(self, oids: Sequence[bytes], count: int, timeout: float | None) -> list[bytes]:
        while sum(o in self.values for o in oids) < count:
            self.values.update((v.object_id, v) for v in self.batches.pop(0))
        return [o for o in oids if o in self.values]

    def peek(self, oid: bytes) -> w.Value | None:
        return self.values.get(oid)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        self.wait_values([r.id for r in refs], len(refs), timeout)
        values = [self.values[r.id] for r in refs]
        for v in values:
            if v.error is not None:
                raise serialization.loads_error(v.error)
        return [serialization.loads(v.data) for v in values]


def item(index: int, value: Any) -> w.Value:
    return w.Value(generator_item_id(TASK, index), data=serialization.dumps(value)[0])


def failed_end() -> w.Value:
    try:
        raise KeyError("two")
    except KeyError as exc:
        return w.Value(END, error=serialization.dumps_error(exc, "fails"))


def never_yielded(index: int) -> w.Value:
    return w.Value(generator_item_id(TASK, index), error=serialization.dumps(KeyError("lost")))


def iterate(client: Client) -> list[Any]:
    gen = ObjectRefGenerator(TASK, ObjectRef(END, client), client)
    got = []
    with pytest.raises(KeyError, match="two"):
        for ref in gen:
            got.append(client.get([ref], None)[0])
    return got


def test_an_item_that_comes_before_the_failed_end() -> None:
    assert iterate(Client([item(0, "one")], [failed_end()], [never_yielded(1)])) == ["one"]


def test_a_failed_end_that_overtakes_the_item_before_it() -> None:
    """(A direct actor call's end comes down its channel, its items by the scheduler.)"""
    assert iterate(Client([failed_end()], [item(0, "one")], [never_yielded(1)])) == ["one"]
