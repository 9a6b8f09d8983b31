"""Ray's generator forms, as Ray documents them (issue 16): num_returns="streaming"
and "dynamic" on remote functions, and actors' generator methods that stream
(plain, threaded and async actors; through the scheduler and called directly)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import taskgraph as tg
from conftest import switch_to_direct, wait_for
from taskgraph.exceptions import TaskError
from taskgraph.util.state import list_objects

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(num_cpus=0.5)
def count_to(n):
    yield from range(n)


@tg.remote(num_cpus=0.5, num_returns="dynamic")
def split(array, chunk_size):
    while len(array) > 0:
        yield array[:chunk_size]
        array = array[chunk_size:]


@tg.remote(num_cpus=0.5)
def fails_after_two():
    yield from range(2)
    raise ValueError("third")


@tg.remote(num_cpus=0.5)
def total_size(ref_generator):
    assert isinstance(ref_generator, tg.DynamicObjectRefGenerator)
    return sum(len(tg.get(ref)) for ref in ref_generator)


def test_streaming_is_the_default_and_may_be_asked_for():
    gen = count_to.remote(3)
    assert isinstance(gen, tg.ObjectRefGenerator)
    assert [tg.get(r) for r in gen] == [0, 1, 2]
    explicit = count_to.options(num_returns="streaming").remote(2)
    assert isinstance(explicit, tg.ObjectRefGenerator)
    assert [tg.get(r) for r in explicit] == [0, 1]

    @tg.remote(num_cpus=0.5, num_returns="streaming")
    def letters():
        yield from "ab"

    assert [tg.get(r) for r in letters.remote()] == ["a", "b"]


def test_async_for_over_a_streaming_generator():
    async def main():
        return [await ref async for ref in count_to.remote(4)]

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_dynamic_returns_one_ref_to_a_generator_of_refs():
    array = list(range(2500))
    array_ref = tg.put(array)
    dynamic_ref = split.remote(array_ref, 1000)
    assert isinstance(dynamic_ref, tg.ObjectRef)
    ref_generator = tg.get(dynamic_ref)
    assert isinstance(ref_generator, tg.DynamicObjectRefGenerator)
    assert len(ref_generator) == 3
    blocks = [tg.get(ref) for ref in ref_generator]
    assert [len(b) for b in blocks] == [1000, 1000, 500]
    assert [x for block in blocks for x in block] == array
    # Its ref, or the generator itself, goes to another task as an ordinary value.
    assert tg.get(total_size.remote(dynamic_ref)) == 2500
    assert tg.get(total_size.remote(ref_generator)) == 2500
    assert list(tg.get(split.remote([], 5))) == []


def test_dynamic_keeps_the_items_while_its_value_lives_and_frees_them_after():
    dynamic_ref = split.remote(list(range(30)), 10)
    items = [ref.hex() for ref in tg.get(dynamic_ref)]
    held = {o["object_id"] for o in list_objects(limit=0)}
    assert set(items) <= held
    del dynamic_ref

    def gone() -> bool:
        return not set(items) & {o["object_id"] for o in list_objects(limit=0)}

    wait_for(gone, what="a dropped dynamic generator's items to be freed")


def test_dynamic_stores_the_error_in_the_last_ref():
    dynamic_ref = fails_after_two.options(num_returns="dynamic").remote()
    ref1, ref2, ref3 = tg.get(dynamic_ref)
    assert tg.get([ref1, ref2]) == [0, 1]
    with pytest.raises(ValueError, match="third") as raised:
        tg.get(ref3)
    assert isinstance(raised.value, TaskError)


def test_fixed_num_returns_still_takes_a_generator():
    assert tg.get(count_to.options(num_returns=2).remote(2)) == [0, 1]


def test_num_returns_must_be_a_count_or_a_generator_form():
    with pytest.raises(ValueError, match="'streaming' or 'dynamic'"):
        count_to.options(num_returns="lazy")


# -- actors ------------------------------------------------------------------


@tg.remote(num_cpus=0.5)
class Actor:
    def f(self, n):
        yield from range(n)

    def fails(self):
        yield "one"
        raise KeyError("two")

    def pid(self):
        return os.getpid()

    def history(self):
        return "ok"


@tg.remote(num_cpus=0.5)
class AsyncActor:
    async def f(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def sync_gen(self, n):
        yield from range(n)

    async def gated(self, gate):
        yield "before the gate"
        while not os.path.exists(gate):  # the test opens it only after item 0 arrived
            await asyncio.sleep(0.01)
        yield "after the gate"


@tg.remote(num_cpus=0.5, max_concurrency=5)
class ThreadedActor:
    def f(self, n):
        yield from range(n)

    def gated(self, gate):
        yield "before the gate"
        while not os.path.exists(gate):
            time.sleep(0.01)
        yield "after the gate"


def test_generator_methods_stream_on_every_kind_of_actor():
    for cls in (Actor, AsyncActor, ThreadedActor):
        actor = cls.remote()
        gen = actor.f.remote(5)
        assert isinstance(gen, tg.ObjectRefGenerator), cls
        assert [tg.get(ref) for ref in gen] == [0, 1, 2, 3, 4], cls
        assert tg.get(gen.completed()) == 5
        assert list(actor.f.remote(0)) == []
    async_actor = AsyncActor.remote()
    assert [tg.get(r) for r in async_actor.sync_gen.remote(3)] == [0, 1, 2]


@pytest.mark.parametrize("cls", [AsyncActor, ThreadedActor], ids=["async", "threaded"])
def test_an_actors_items_arrive_before_the_call_ends(cls, tmp_path):
    gate = tmp_path / "gate"
    gen = cls.remote().gated.remote(str(gate))
    assert tg.get(next(gen), timeout=60) == "before the gate"
    assert not gen.completed().done()
    gate.touch()
    assert [tg.get(r) for r in gen] == ["after the gate"]


def test_streaming_option_and_errors_of_an_actors_generator():
    actor = Actor.remote()
    assert [tg.get(r) for r in actor.f.options(num_returns="streaming").remote(2)] == [0, 1]
    assert tg.get(actor.f.options(num_returns=3).remote(3)) == [0, 1, 2]
    gen = actor.fails.remote()
    assert tg.get(next(gen)) == "one"
    with pytest.raises(KeyError, match="two"):
        next(gen)
    with pytest.raises(ValueError, match="for remote functions"):
        actor.f.options(num_returns="dynamic")

    @tg.remote(num_cpus=0.5)
    class Declared:
        @tg.method(num_returns="streaming")
        def pairs(self):
            return iter([(1, 2), (3, 4)])  # not a generator function: it still streams

    assert [tg.get(r) for r in Declared.remote().pairs.remote()] == [(1, 2), (3, 4)]


def test_generator_calls_stream_when_the_actor_is_called_directly():
    actor = Actor.remote()
    switch_to_direct(actor)
    before = tg.statistics().direct_actor_calls
    for n in (3, 0, 50):
        assert [tg.get(r) for r in actor.f.remote(n)] == list(range(n))
    assert tg.statistics().direct_actor_calls == before + 3
