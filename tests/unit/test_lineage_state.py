"""Lineage in the scheduler's state machine: objects lost with their worker are
made again by running their tasks again (scheduler/lineage.py).

Every step runs ``validate()`` (the Harness), which also recounts which
records lineage keeps and why.
"""

from __future__ import annotations

import pickle

from test_scheduler_state import (
    Harness,
    assigned,
    assigned_ids,
    error_of,
    ok,
    ret,
    values,
)

from taskgraph import _wire as w
from taskgraph.exceptions import ObjectLostError, ObjectReconstructionFailedError
from taskgraph.scheduler.state import WorkerLeft


def at(worker_id: str, size: int = 1 << 20) -> w.Location:
    return w.Location(worker_id, f"store-{worker_id}", size, f"host-{worker_id}")


def two_workers() -> Harness:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    h.worker("w2", {"CPU": 1.0})
    return h


def run_on(h: Harness, worker_id: str, spec: w.TaskSpec) -> None:
    """Submit ``spec`` (placed on ``worker_id``) and finish it there, its value in the store."""
    assert spec.task_id in assigned_ids(h.submit(b"c1", spec), worker_id)
    h.done(worker_id, ok(spec, location=at(worker_id)))


def placed(sends: list) -> list[tuple[str, bytes]]:
    return [(wid, tid) for wid in ("w1", "w2", "w3") for tid in assigned_ids(sends, wid)]


def test_a_lost_result_is_made_again_where_a_worker_is_left() -> None:
    h = two_workers()
    spec = h.spec("square", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", spec)

    sends = h.handle(WorkerLeft("w1"))
    [again] = assigned(sends, "w2")
    assert again.spec.task_id == spec.task_id
    assert h.task_state(spec) == "processing"
    assert values(h.want(b"c1", ret(spec)), b"c1") == {}, "it is pending while it is made"

    sends = h.done("w2", ok(spec, location=at("w2")))
    got = values(sends, b"c1")[ret(spec)]
    assert got.location == at("w2") and got.error is None
    assert h.state.objects[ret(spec)].rebuilds_left == 0, "the rebuild took a retry"
    # A reader's late word about the copy that went with w1 changes nothing.
    assert h.send(b"c1", w.ObjectUnreadable(ret(spec), "w1")) == []


def test_a_chain_is_rebuilt_from_its_released_inputs_in_order() -> None:
    """a -> b -> c, all on w1; the driver keeps only c. w1 leaves: c's task needs b,
    whose value was freed (its record kept), which needs a: all three run again,
    a first, each when its argument is back."""
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=2)
    run_on(h, "w1", a)
    b = h.spec("b", deps=[ret(a)], strategy="node?:w1", max_retries=2)
    run_on(h, "w1", b)
    c = h.spec("c", deps=[ret(b)], strategy="node?:w1", max_retries=2)
    run_on(h, "w1", c)
    h.send(b"c1", w.ReleaseRefs([ret(a), ret(b)]))
    assert set(h.state.released) == {ret(a), ret(b)}, "kept as lineage, values freed"
    assert ret(a) not in h.state.objects and h.state.statistics()["objects"] == 1

    sends = h.handle(WorkerLeft("w1"))
    assert assigned_ids(sends, "w2") == [a.task_id]
    assert (h.task_state(b), h.task_state(c)) == ("waiting", "waiting")
    sends = h.done("w2", ok(a, location=at("w2")))
    assert assigned_ids(sends, "w2") == [b.task_id]
    sends = h.done("w2", ok(b, location=at("w2")))
    assert assigned_ids(sends, "w2") == [c.task_id]
    # b is needed by no one now: its value is freed again as c's task ends.
    sends = h.done("w2", ok(c, location=at("w2")))
    assert ret(c) in values(h.want(b"c1", ret(c)), b"c1")
    assert set(h.state.released) == {ret(a), ret(b)}

    # The driver drops c: nothing names a or b any more; every record goes.
    h.send(b"c1", w.ReleaseRefs([ret(c)]))
    assert h.state.released == {} and h.state.objects == {}


def test_a_put_lost_with_its_node_fails_naming_the_node() -> None:
    h = two_workers()
    put_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, location=at("w1")))
    h.handle(WorkerLeft("w1"))
    err = error_of(values(h.want(b"c1", put_id), b"c1")[put_id])
    assert type(err) is ObjectLostError
    assert "put()" in str(err) and "w1" in str(err)


def test_a_result_of_a_task_with_max_retries_0_is_not_made_again() -> None:
    h = two_workers()
    spec = h.spec("square", strategy="node?:w1", max_retries=0)
    run_on(h, "w1", spec)
    assert h.handle(WorkerLeft("w1")) == []
    err = error_of(values(h.want(b"c1", ret(spec)), b"c1")[ret(spec)])
    assert isinstance(err, ObjectReconstructionFailedError), err
    assert "max_retries=0" in str(err) and "w1" in str(err)


def test_each_rebuild_takes_a_retry_until_none_is_left() -> None:
    h = two_workers()
    spec = h.spec("square", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", spec)
    h.handle(WorkerLeft("w1"))
    h.done("w2", ok(spec, location=at("w2")))
    assert h.handle(WorkerLeft("w2")) == []
    err = error_of(values(h.want(b"c1", ret(spec)), b"c1")[ret(spec)])
    assert isinstance(err, ObjectReconstructionFailedError), err
    assert "no retries left (max_retries=1)" in str(err) and "w2" in str(err)


def test_an_input_put_freed_before_the_loss_fails_the_rebuild_with_the_reason() -> None:
    h = two_workers()
    put_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, location=at("w1")))
    spec = h.spec("use", deps=[put_id], strategy="node?:w1", max_retries=3)
    run_on(h, "w1", spec)
    h.send(b"c1", w.ReleaseRefs([put_id]))
    h.handle(WorkerLeft("w1"))
    err = error_of(values(h.want(b"c1", ret(spec)), b"c1")[ret(spec)])
    assert isinstance(err, ObjectReconstructionFailedError)
    assert "put()" in str(err) and "keep a reference" in str(err)


def test_a_task_that_could_not_read_its_argument_waits_for_it_to_be_made_again() -> None:
    """The reader's report comes before the scheduler hears its holder left."""
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", a)
    b = h.spec("b", deps=[ret(a)], strategy="node:w2", max_retries=0)
    h.submit(b"c1", b)
    assert h.task_state(b) == "processing"
    lost = ObjectLostError(ret(a).hex(), "its holder says: connection refused")
    sends = h.done(
        "w2",
        w.TaskResult(
            b.task_id, error=pickle.dumps(lost), failure="input", lost=ret(a), lost_from="w1"
        ),
    )
    assert h.task_state(b) == "waiting", "not failed, and no retry of its own spent"
    # a's only copy counts as lost (its holder may live on: a runs again wherever)
    [(where, again)] = placed(sends)
    assert again == a.task_id
    sends = h.done(where, ok(a, location=at(where)))
    assert assigned_ids(sends, "w2") == [b.task_id]


def test_a_reader_that_finds_a_copy_gone_gets_it_made_again() -> None:
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", a)
    sends = h.send(b"c1", w.ObjectUnreadable(ret(a), "w1"), w.WantObjects([ret(a)]))
    assert placed(sends) == [("w1", a.task_id)], "its holder lives on: it prefers w1 still"
    assert values(sends, b"c1") == {}
    sends = h.done("w1", ok(a, location=at("w1")))
    assert values(sends, b"c1")[ret(a)].location == at("w1")


def test_a_ready_task_whose_argument_is_lost_waits_for_it() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    a = h.spec("a", max_retries=1)
    run_on(h, "w1", a)
    blocker = h.spec("blocker")
    h.submit(b"c1", blocker)  # w1's one CPU is taken
    b = h.spec("b", deps=[ret(a)])
    h.submit(b"c1", b)
    assert h.task_state(b) == "ready"
    h.handle(WorkerLeft("w1"))  # blocker lost for good; a and b wait for a worker
    sends = h.worker("w2", {"CPU": 1.0})
    assert assigned_ids(sends, "w2") == [a.task_id]
    assert h.task_state(b) == "waiting"
    sends = h.done("w2", ok(a, location=at("w2")))
    assert assigned_ids(sends, "w2") == [b.task_id]


def test_a_late_report_of_an_unreadable_copy_spares_the_copy_made_since() -> None:
    """b could not read a's copy on w1; by the time its report comes, w1 left and a
    was made again on w2. The report does not condemn w2's copy: b runs again."""
    h = two_workers()
    h.worker("w3", {"CPU": 1.0})
    a = h.spec("a", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", a)
    b = h.spec("b", deps=[ret(a)], strategy="node:w3", max_retries=0)
    h.submit(b"c1", b)
    [(where, again)] = placed(h.handle(WorkerLeft("w1")))
    assert again == a.task_id
    h.done(where, ok(a, location=at(where)))
    lost = pickle.dumps(ObjectLostError(ret(a).hex(), "connection refused"))
    sends = h.done(
        "w3", w.TaskResult(b.task_id, error=lost, failure="input", lost=ret(a), lost_from="w1")
    )
    assert assigned_ids(sends, "w3") == [b.task_id]
    assert h.state.objects[ret(a)].location == at(where)


def test_a_task_whose_arguments_just_came_goes_before_tasks_ready_from_the_start() -> None:
    """Depth first: a reduce whose maps are done runs before maps not started, so
    intermediates are freed early (benchmarks/chaos.py measures the peak)."""
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    first = h.spec("map")
    h.submit(b"c1", first)
    later = [h.spec("map") for _ in range(3)]
    h.submit(b"c1", *later)
    reduce = h.spec("reduce", deps=[ret(first)])
    h.submit(b"c1", reduce)
    assert h.task_state(reduce) == "waiting"
    sends = h.done("w1", ok(first, location=at("w1")))
    assert assigned_ids(sends, "w1") == [reduce.task_id]
    sends = h.done("w1", ok(reduce))
    assert assigned_ids(sends, "w1") == [later[0].task_id], "the roots keep their order"
