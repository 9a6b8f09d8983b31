"""Ray Core names and behaviours a Ray program expects to find unchanged (issue 16)."""

from __future__ import annotations

import asyncio
import queue

import pytest

import taskgraph as tg
from taskgraph.exceptions import ActorDiedError
from taskgraph.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.usefixtures("cluster")


def test_waiting_for_no_refs_is_nothing_ready():
    assert tg.wait([]) == ([], [])
    assert tg.wait([], num_returns=3, timeout=0) == ([], [])


def test_the_package_offers_cloudpickle_and_no_typing_leftovers():
    import cloudpickle

    assert tg.cloudpickle is cloudpickle
    assert not {"Any", "annotations"} & set(dir(tg))


@tg.remote
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def add(self) -> int:
        self.value += 1
        return self.value


def test_get_or_create_makes_the_named_actor_once():
    first = Counter.options(name="parity-counter").get_or_create(10)
    try:
        assert tg.get(first.add.remote()) == 11
        again = Counter.options(name="parity-counter").get_or_create(100)  # arguments unused
        assert tg.get(again.add.remote()) == 12
    finally:
        tg.kill(first)
    with pytest.raises(ValueError, match="needs a name"):
        Counter.options().get_or_create(1)


# -- taskgraph.util.queue.Queue ------------------------------------------------


@pytest.fixture
def q():
    made = Queue(maxsize=3)
    yield made
    made.shutdown(force=True)


def test_a_queue_hands_items_out_first_in_first_out(q):
    assert q.empty() and not q.full() and len(q) == 0
    for item in ("a", "b", "c"):
        q.put(item)
    assert q.full() and q.qsize() == 3 == q.size()
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == ["a", "b", "c"]
    assert q.empty()


def test_an_empty_or_full_queue_raises_at_once_or_after_the_timeout(q):
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty, match=r"within 0\.1 s"):  # Empty is the stdlib's kind
        q.get(timeout=0.1)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait(4)
    with pytest.raises(queue.Full, match=r"within 0\.1 s"):
        q.put(4, timeout=0.1)
    assert q.qsize() == 3  # nothing was added by the failed puts


def test_batches_go_in_and_out_whole_or_not_at_all(q):
    q.put(0)
    with pytest.raises(Full):
        q.put_nowait_batch([1, 2, 3])  # 4 would not fit in 3
    assert q.qsize() == 1
    q.put_nowait_batch([1, 2])
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [0, 1]
    assert q.get_nowait_batch(1) == [2]
    assert q.get_nowait_batch(0) == []


def test_a_ref_put_in_a_queue_comes_out_as_the_same_ref(q):
    ref = tg.put("value")
    q.put(ref)
    out = q.get()
    assert isinstance(out, tg.ObjectRef) and out == ref
    assert tg.get(out) == "value"


@tg.remote
def consume(q: Queue, n: int) -> list[int]:
    return [q.get(timeout=60) for _ in range(n)]


@tg.remote
def produce(q: Queue, n: int) -> None:
    for i in range(n):
        q.put(i, timeout=60)


def test_tasks_share_a_queue_a_consumer_waits_for_a_producer():
    q = Queue(maxsize=2)  # smaller than the batch: the producer waits for the consumer too
    try:
        got = consume.remote(q, 10)
        tg.get(produce.remote(q, 10), timeout=60)
        assert tg.get(got, timeout=60) == list(range(10))
    finally:
        q.shutdown(force=True)


def test_the_async_variants_wait_without_blocking_the_event_loop(q):
    async def main() -> list[str]:
        getter = asyncio.ensure_future(q.get_async(timeout=30))
        await q.put_async("late")
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return [await getter]

    assert asyncio.run(main()) == ["late"]


def test_bad_arguments_are_clear_errors(q):
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of items"):
        q.put_nowait_batch(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_items"):
        q.get_nowait_batch(-1)
    with pytest.raises(TypeError, match="maxsize"):
        Queue(maxsize="3")  # type: ignore[arg-type]
    assert q.empty()


def test_a_shut_down_queue_fails_later_calls():
    q = Queue()
    q.put(1)
    q.shutdown()
    with pytest.raises(ActorDiedError):
        q.get(timeout=1)
