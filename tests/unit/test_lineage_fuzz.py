"""Lineage attacked in the scheduler's state machine (scheduler/lineage.py) and
in a worker's object store: awkward orders of loss, rebuild and failure, lying
readers, deep chains, and a Hypothesis machine that loses, rebuilds and frees
objects in any order.

Every step of the Harness runs ``validate()``; the machine does too.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from send_checks import check_sends
from test_lineage_state import at, placed, run_on, two_workers
from test_results import Side
from test_scheduler_state import (
    Harness,
    assigned,
    assigned_ids,
    error_of,
    failed,
    messages,
    ok,
    ret,
    values,
)
from test_store_state import content, put

from taskgraph import _waiting
from taskgraph import _wire as w
from taskgraph._ids import generator_item_id, return_ids
from taskgraph._object_io import Unreadable
from taskgraph._object_ref import ObjectRef
from taskgraph._waiting import Results
from taskgraph.exceptions import (
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    TaskCancelledError,
)
from taskgraph.scheduler.state import (
    ClientJoined,
    ClientSent,
    Event,
    SchedulerState,
    Send,
    Tick,
    WorkerJoined,
    WorkerLeft,
    WorkerSent,
)
from taskgraph.worker import store

MB = 1 << 20


def freed_on(sends: list[Send], worker_id: str) -> set[bytes]:
    return {
        oid for m in messages(sends, "worker", worker_id, w.FreeObjects) for oid in m.object_ids
    }


def input_lost(spec: w.TaskSpec, oid: bytes, lost_from: str) -> w.TaskResult:
    err = pickle.dumps(ObjectLostError(oid.hex(), "its holder is gone"))
    return w.TaskResult(spec.task_id, error=err, failure="input", lost=oid, lost_from=lost_from)


# -- a task with two returns, one lost and one alive ------------------------------------


def two_returns_on_w1(h: Harness) -> w.TaskSpec:
    spec = h.spec("pair", strategy="node?:w1", max_retries=2, num_returns=2)
    run_on(h, "w1", spec)
    return spec


def test_a_failed_rebuild_of_one_return_leaves_its_live_sibling_alone() -> None:
    """r0 is found unreadable and its task runs again; that run raises. r0 fails;
    r1, whose copy was never lost, keeps its value (it was failed with r0's error)."""
    h = two_workers()
    spec = two_returns_on_w1(h)
    [(where, _)] = placed(h.send(b"c1", w.ObjectUnreadable(ret(spec, 0), "w1")))
    h.done(where, failed(spec))
    got = values(h.want(b"c1", ret(spec, 0), ret(spec, 1)), b"c1")
    assert "boom" in str(error_of(got[ret(spec, 0)]))
    assert got[ret(spec, 1)].error is None and got[ret(spec, 1)].location == at("w1")
    # ... and r1 is still lost like any stored object when w1 goes: made again.
    sends = h.handle(WorkerLeft("w1"))
    assert [tid for _, tid in placed(sends)] == [spec.task_id]


def test_a_cancelled_rebuild_of_one_return_leaves_its_live_sibling_alone() -> None:
    h = two_workers()
    spec = two_returns_on_w1(h)
    [(where, _)] = placed(h.send(b"c1", w.ObjectUnreadable(ret(spec, 0), "w1")))
    h.send(b"c1", w.CancelTasks([ret(spec, 0)], force=True))
    h.done(where, failed(spec, "cancelled"))
    got = values(h.want(b"c1", ret(spec, 0), ret(spec, 1)), b"c1")
    assert isinstance(error_of(got[ret(spec, 0)]), TaskCancelledError)
    assert got[ret(spec, 1)].error is None and got[ret(spec, 1)].location == at("w1")


def test_a_rebuild_lost_with_its_node_and_no_retries_left_spares_the_sibling() -> None:
    h = two_workers()
    spec = h.spec("pair", strategy="node?:w1", max_retries=1, num_returns=2)
    run_on(h, "w1", spec)
    h.from_worker("w2", w.ObjectCopied(ret(spec, 1), at("w2")))
    sends = h.handle(WorkerLeft("w1"))  # r1 lives on in w2's copy; r0 runs again on w2
    assert assigned_ids(sends, "w2") == [spec.task_id]
    h.handle(WorkerLeft("w2"))  # ... and w2 goes too, its rebuild with it: no retry left
    h.worker("w3")
    got = values(h.want(b"c1", ret(spec, 0), ret(spec, 1)), b"c1")
    assert isinstance(error_of(got[ret(spec, 0)]), NodeDiedError)
    assert isinstance(error_of(got[ret(spec, 1)]), ObjectReconstructionFailedError)


def rebuild_r0_on_w2(h: Harness, spec: w.TaskSpec) -> None:
    """r0 is found unreadable; w1's CPU is taken, so its task runs again on w2."""
    h.submit(b"c1", h.spec("blocker", strategy="node:w1"))
    sends = h.send(b"c1", w.ObjectUnreadable(ret(spec, 0), "w1"))
    assert placed(sends) == [("w2", spec.task_id)]


def test_a_rebuild_does_not_free_a_live_sibling_s_copy_where_it_ran() -> None:
    """r1's main copy is on w1 and a copy of it on w2, where r0's task runs again
    and writes r1 too: the store keeps the copy it had (see the store tests
    below), and the scheduler must not free it (it counts it as r1's)."""
    h = two_workers()
    spec = two_returns_on_w1(h)
    h.from_worker("w2", w.ObjectCopied(ret(spec, 1), at("w2")))
    rebuild_r0_on_w2(h, spec)
    sends = h.done("w2", ok(spec, location=at("w2")))
    assert ret(spec, 1) not in freed_on(sends, "w2")
    assert h.state.objects[ret(spec, 1)].copies == {"w2": at("w2")}


def test_a_rebuild_s_surplus_copy_of_a_live_sibling_is_freed() -> None:
    h = two_workers()
    spec = two_returns_on_w1(h)
    rebuild_r0_on_w2(h, spec)
    sends = h.done("w2", ok(spec, location=at("w2")))
    assert freed_on(sends, "w2") == {ret(spec, 1)}, "a copy held by no one"
    assert h.state.objects[ret(spec, 1)].location == at("w1")
    assert h.state.objects[ret(spec, 0)].location == at("w2")


# -- objects that contain refs ---------------------------------------------------------


def test_a_container_made_again_holds_the_refs_its_new_value_names() -> None:
    """A task returns [tg.put(x)]: each run puts a new object. Made again, the
    container's value names the new put, which must live as long as it does
    (it was freed at once); the old put, named by no value now, goes."""
    h = two_workers()
    spec = h.spec("outer", strategy="node?:w1", max_retries=2)
    h.submit(b"c1", spec)
    first = h.new_id()
    h.send(b"c1", w.PutObject(first, data=b"first put"))  # (the executor's, here c1's)
    h.done("w1", ok(spec, location=at("w1"), contains=[first]))
    h.send(b"c1", w.ReleaseRefs([first]))
    [(where, _)] = placed(h.handle(WorkerLeft("w1")))
    second = h.new_id()
    h.send(b"c1", w.PutObject(second, data=b"second put"))
    h.done(where, ok(spec, location=at(where), contains=[second]))
    h.send(b"c1", w.ReleaseRefs([second]))
    assert values(h.want(b"c1", second), b"c1")[second].data == b"second put"
    assert first not in h.state.objects, "what only the old value named is freed"
    h.send(b"c1", w.ReleaseRefs([ret(spec)]))
    assert h.state.objects == {} and h.state.released == {}


def test_a_container_made_again_naming_the_same_refs_holds_them_once() -> None:
    h = two_workers()
    inner = h.new_id()
    h.send(b"c1", w.PutObject(inner, data=b"kept"))
    spec = h.spec("wrap", strategy="node?:w1", max_retries=2, nested=[inner])
    h.submit(b"c1", spec)
    h.done("w1", ok(spec, location=at("w1"), contains=[inner]))
    [(where, _)] = placed(h.handle(WorkerLeft("w1")))
    h.done(where, ok(spec, location=at(where), contains=[inner]))
    assert h.state.objects[inner].refs == 2  # the client's ref and the container
    h.send(b"c1", w.ReleaseRefs([ret(spec), inner]))
    assert h.state.objects == {} and h.state.released == {}


@pytest.mark.xfail(
    strict=True,
    reason="lineage remembers a task's top-level ref arguments (deps), not refs nested "
    "in its arguments (spec.nested): a rebuild runs with refs to objects freed since",
)
def test_a_task_whose_nested_argument_was_freed_is_not_run_again_blind() -> None:
    """f.remote([ref]) made on w1; the driver drops ref; w1 goes. The rebuild would
    run f with a ref to a freed object: either ref is kept as lineage (and made
    again), or the rebuild fails at once saying why."""
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=2)
    run_on(h, "w1", a)
    outer = h.spec("outer", strategy="node?:w1", max_retries=2, nested=[ret(a)])
    run_on(h, "w1", outer)
    h.send(b"c1", w.ReleaseRefs([ret(a)]))
    sends = h.handle(WorkerLeft("w1"))
    names = [h.state.tasks[tid].spec.name for _, tid in placed(sends)]
    rebuilt_blind = names == ["outer"] and ret(a) not in h.state.objects
    assert not rebuilt_blind, "outer runs again with a ref to a freed object"


# -- actors ------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="actors.dispatch hands a restarted actor its queued 'ready' calls without "
    "checking that their arguments are still ready: an argument lost meanwhile (and "
    "being made again) goes as an empty Value (no data, location or error)",
)
def test_a_queued_actor_call_whose_argument_is_being_made_again_waits_for_it() -> None:
    from test_scheduler_actors import Harness as ActorHarness
    from test_scheduler_actors import assigned as actor_assigned
    from test_scheduler_actors import ok as actor_ok

    h = ActorHarness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    actor = h.actor(place={}, max_restarts=1, max_task_retries=1)
    h.submit(actor)
    h.done("w1", actor_ok(actor))
    a = msgspec.structs.replace(h.task(), max_retries=2)
    h.submit(a)
    h.done("w1", w.TaskResult(a.task_id, returns=[w.ReturnValue(ret(a), location=at("w1"))]))
    call = h.call(actor, deps=[ret(a)])
    h.submit(call)
    h.worker("w2", {"CPU": 1.0})
    h.handle(WorkerLeft("w1"))  # the actor restarts, its call is queued; a runs again
    assert h.state.objects[ret(a)].state == "pending"
    sends = h.done("w2", actor_ok(actor))  # the actor is back before a is
    for assignment in actor_assigned(sends, "w2"):
        for value in assignment.inputs:
            assert value.error is not None or value.data is not None or value.location
    assert h.task_state(call) == "waiting"


@pytest.mark.xfail(
    strict=True,
    reason="clients._on_generator_item never sets Obj.no_rebuild for an item, so a lost "
    "item fails saying 'its task is not known' (lineage.GENERATOR is never used for items)",
)
def test_a_lost_generator_item_fails_saying_it_is_a_generator_s() -> None:
    h = two_workers()
    gen = h.spec("numbers", strategy="node?:w1", max_retries=2, generator=True)
    h.submit(b"c1", gen)
    item = w.ReturnValue(generator_item_id(gen.task_id, 0), location=at("w1"))
    h.send(b"c1", w.GeneratorItem(gen.task_id, 0, item))
    h.done("w1", ok(gen))
    h.handle(WorkerLeft("w1"))
    err = error_of(values(h.want(b"c1", item.object_id), b"c1")[item.object_id])
    assert isinstance(err, ObjectReconstructionFailedError)
    assert "generator" in str(err), str(err)


# -- lying and late readers -----------------------------------------------------------


def test_a_reader_s_word_about_a_pulled_copy_frees_that_copy_where_it_is() -> None:
    """The copy on w2 counts as lost: w2's store must be told, else it keeps the
    bytes until w2 exits (the object's later free goes to w1 alone)."""
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=2)
    run_on(h, "w1", a)
    h.from_worker("w2", w.ObjectCopied(ret(a), at("w2")))
    sends = h.send(b"c1", w.ObjectUnreadable(ret(a), "w2"))
    assert freed_on(sends, "w2") == {ret(a)}
    assert h.state.objects[ret(a)].copies == {} and placed(sends) == []
    assert ret(a) not in h.state.workers["w2"].segments


def test_readers_naming_unknown_or_wrong_workers_change_nothing() -> None:
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", a)
    put_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, location=at("w2")))
    small = h.new_id()
    h.send(b"c1", w.PutObject(small, data=b"inline"))
    lies = [
        w.ObjectUnreadable(oid, worker)
        for oid in (ret(a), put_id, small, b"never made", b"")
        for worker in ("w2" if oid != put_id else "w1", "no such worker", "")
    ]
    for _ in range(50):
        assert h.send(b"c1", *lies) == []
    got = values(h.want(b"c1", ret(a), put_id, small), b"c1")
    assert got[ret(a)].location == at("w1") and got[put_id].location == at("w2")
    assert got[small].data == b"inline"
    assert h.state.tasks_rebuilt == 0


def test_a_put_a_reader_could_not_read_on_a_live_node_fails_without_calling_it_gone() -> None:
    """One reader's word condemns the only copy of a put (it cannot be made
    again); its node lives on, so the error must not say the node is gone."""
    h = two_workers()
    put_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, location=at("w2")))
    sends = h.send(b"c1", w.ObjectUnreadable(put_id, "w2"))
    assert freed_on(sends, "w2") == {put_id}
    err = error_of(values(h.want(b"c1", put_id), b"c1")[put_id])
    assert type(err) is ObjectLostError
    assert "w2" in str(err) and "could not be read" in str(err) and "gone" not in str(err)


def test_a_flood_of_true_holder_claims_rebuilds_at_most_max_retries_times() -> None:
    """A reader that keeps saying the holder's copy is unreadable (true or not)
    costs one rebuild each time the object is ready again, up to max_retries;
    then the object fails saying so. The scheduler never loops by itself."""
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=3)
    run_on(h, "w1", a)
    for round_ in range(10):
        sends = h.send(b"c1", *[w.ObjectUnreadable(ret(a), "w1")] * 20)
        where = placed(sends)
        if round_ < 3:
            assert [tid for _, tid in where] == [a.task_id]
            [(worker, _)] = where
            h.done(worker, ok(a, location=at("w1")))
            h.from_worker("w1", w.ObjectCopied(ret(a), at("w1")))  # (a stray: ignored)
        else:
            assert where == []
    assert h.state.tasks_rebuilt == 3
    err = error_of(values(h.want(b"c1", ret(a)), b"c1")[ret(a)])
    assert isinstance(err, ObjectReconstructionFailedError) and "max_retries=3" in str(err)


def test_an_input_report_naming_a_worker_that_never_held_it_reruns_only_the_reader() -> None:
    h = two_workers()
    a = h.spec("a", strategy="node?:w1", max_retries=1)
    run_on(h, "w1", a)
    b = h.spec("b", deps=[ret(a)], strategy="node:w2", max_retries=0)
    assert b.task_id in assigned_ids(h.submit(b"c1", b), "w2")
    for _ in range(5):  # (not a retry of its own: the reader may say so again and again)
        sends = h.done("w2", input_lost(b, ret(a), "w9"))
        assert assigned_ids(sends, "w2") == [b.task_id]
    assert h.state.tasks_rebuilt == 0 and h.state.objects[ret(a)].location == at("w1")


def test_a_task_taking_one_object_twice_waits_for_it_again_and_can_be_cancelled() -> None:
    """f.remote(x, x): f could not read x (its copy is gone), so x is made again and
    f waits for it. Cancelled while it waits, f lets go of x as often as it took
    it (found by the machine below: the scheduler raised ValueError)."""
    h = two_workers()
    x = h.spec("x", strategy="node?:w1", max_retries=2)
    run_on(h, "w1", x)
    f = h.spec("f", deps=[ret(x), ret(x)], strategy="node:w2", max_retries=0)
    assert f.task_id in assigned_ids(h.submit(b"c1", f), "w2")
    h.done("w2", input_lost(f, ret(x), "w1"))
    assert h.task_state(f) == "waiting"
    h.send(b"c1", w.CancelTasks([ret(f)]))
    assert h.task_state(f) is None
    assert isinstance(error_of(values(h.want(b"c1", ret(f)), b"c1")[ret(f)]), TaskCancelledError)
    assert h.state.objects[ret(x)].dependents == []


# -- deep chains --------------------------------------------------------------------------


def test_a_chain_of_3000_freed_intermediates_is_rebuilt_and_forgotten_without_recursion() -> None:
    """t0 -> t1 -> ... -> t2999 on w1, only the last held. w1 goes: all 3000 run
    again in order (a worklist, not recursion); then the driver lets go of the
    last, and every record lineage kept goes."""
    state = SchedulerState("deep")
    state.handle(ClientJoined(b"c1"), WorkerJoined(w.WorkerInfo("w1", "h1", "tcp://w1", {})))
    state.handle(ClientSent(b"c1", [w.ExportFunction(b"f" * 16, b"code")]))
    specs: list[w.TaskSpec] = []
    deps: list[bytes] = []
    for i in range(3000):
        spec = w.TaskSpec(
            task_id=(i + 1).to_bytes(12, "big") + b"\0" * 4,
            function_id=b"f" * 16,
            name=f"t{i}",
            args=b"",
            deps=deps,
            resources={},
            max_retries=1,
        )
        state.handle(ClientSent(b"c1", [w.SubmitTasks([spec])]))
        state.handle(WorkerSent("w1", [w.TasksDone([ok(spec, location=at("w1"))])]))
        if deps:
            state.handle(ClientSent(b"c1", [w.ReleaseRefs(deps)]))
        deps = [ret(spec)]
        specs.append(spec)
    state.validate()
    assert len(state.released) == 2999 and len(state.objects) == 1
    state.handle(WorkerJoined(w.WorkerInfo("w2", "h2", "tcp://w2", {})))
    sends = state.handle(WorkerLeft("w1"))
    for spec in specs:
        assert [a.spec.task_id for a in assigned(sends, "w2")] == [spec.task_id]
        sends = state.handle(WorkerSent("w2", [w.TasksDone([ok(spec, location=at("w2"))])]))
    state.validate()
    assert state.tasks_rebuilt == 3000 and len(state.released) == 2999
    state.handle(ClientSent(b"c1", [w.ReleaseRefs([ret(specs[-1])])]))
    state.validate()
    assert state.released == {} and state.objects == {}


# -- the driver's get(): reading again within the caller's timeout -----------------------


class GoneCopies:
    def decode(self, value: w.Value) -> Any:
        raise Unreadable(value.object_id, "w1", "its daemon is gone")


class StaleReader(Results):
    """Results whose first value of an object names a copy that is gone, on a
    clock that moves only as its waits say (wait_values is played here)."""

    def __init__(self, clock: list[float]) -> None:
        self.side = Side(GoneCopies())
        super().__init__(self.side, threading.RLock(), self.side.queue)
        self.waits: list[float | None] = []
        self.clock = clock

    def wait_values(
        self, oids: Sequence[bytes], count: int, timeout: float | None
    ) -> list[bytes] | None:
        self.waits.append(timeout)
        if len(self.waits) == 1:  # the value comes 0.8 s in, naming a copy on w1
            self.clock[0] += 0.8
            self.arrived([w.Value(oids[0], location=at("w1"))], {oids[0]: 1}, [])
            return list(oids)
        self.clock[0] += timeout or 0.0  # ... and is not made again in time
        return None


def test_get_reads_a_gone_copy_again_within_its_timeout_not_a_second_one(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(_waiting.time, "monotonic", lambda: clock[0])
    reader = StaleReader(clock)
    ref = ObjectRef(b"x" * 16, None, borrowed=True)
    with pytest.raises(GetTimeoutError) as caught:
        reader.get([ref], timeout=1.0)
    assert any(isinstance(m, w.ObjectUnreadable) for m in reader.side.sent)
    assert reader.waits[0] == 1.0 and reader.waits[1] == pytest.approx(0.2)
    assert clock[0] == pytest.approx(101.0), "get(timeout=1.0) returned 1 s in"
    assert caught.value.timeout == 1.0, "the error names the caller's timeout"


# -- the store: a rebuild writes an object whose copy is already there --------------------


@pytest.fixture
def objects(tmp_path: Path) -> Iterator[store.ObjectStore]:
    s = store.ObjectStore("lineage-unit", 10 * MB, tmp_path / "spill")
    yield s
    s.close()


def test_a_second_write_of_a_live_sealed_object_is_kept_nowhere(objects) -> None:
    """A task run again for one lost return writes its other returns too; one may
    be here already, alive (its copy was never lost). The store keeps that copy
    (its readers and the scheduler know it) and lets the new bytes go at seal."""
    put(objects, b"r1", MB, 1)
    objects.pin(b"r1", "reader")
    put(objects, b"r1", MB, 2, holder="rebuild")
    assert content(objects, b"r1") == {1}
    assert objects.stats()["objects"] == 1 and objects.arena.used == MB
    assert objects.retired == {}
    objects.unpin(b"r1", "reader")
    objects.free(b"r1")
    assert objects.stats()["objects"] == 0 and objects.arena.used == 0


def test_a_second_write_whose_writer_dies_before_sealing_leaves_the_live_copy(objects) -> None:
    put(objects, b"r1", MB, 1)
    objects.create(b"r1", MB, "rebuild")
    objects.drop_holder("rebuild")
    assert content(objects, b"r1") == {1} and objects.arena.used == MB
    assert objects.retired == {}


# -- a machine that loses, rebuilds and frees objects in any order -------------------------


class LineageMachine(RuleBasedStateMachine):
    """One client builds graphs of stored results (chains, diamonds, two returns,
    containers) on a few workers, holds some and drops others; workers leave
    and join, readers say copies are gone (rightly or not), executors say they
    could not read an argument, rebuilds fail. Invariants: ``validate()``, every
    assignment's inputs and every value sent carry a value or an error; when
    the workers report everything, nothing is left processing; and once the
    client lets go of everything, no record lineage kept is left."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SchedulerState("lineage-fuzz")
        self.next_id = 0
        self.now = 0.0
        self.workers = 0
        self.made: list[bytes] = []  # results ever submitted
        self.assigned: dict[bytes, tuple[str, w.TaskSpec]] = {}

    def new_id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(12, "big") + b"\0\0\0\0"

    def handle(self, *events: Event) -> list[Send]:
        self.now += 0.25
        sends = self.state.handle(Tick(self.now), *events)
        check_sends(self.state, sends)
        self.assigned = {t: a for t, a in self.assigned.items() if a[0] in self.state.workers}
        for send in sends:
            for msg in send.messages:
                if isinstance(msg, w.RunTasks):
                    for a in msg.assignments:
                        for value in a.inputs:
                            assert value.error is not None or value.data or value.location, (
                                "an input sent with no value"
                            )
                        self.assigned[a.spec.task_id] = (send.id, a.spec)
                elif isinstance(msg, w.ObjectsReady):
                    for value in msg.values:
                        assert value.error is not None or value.data or value.location
        return sends

    def send(self, *msgs: Any) -> list[Send]:
        return self.handle(ClientSent(b"c1", list(msgs)))

    def held(self) -> list[bytes]:
        return sorted(self.state.clients[b"c1"].held)

    @initialize()
    def start(self) -> None:
        self.handle(ClientJoined(b"c1"))
        self.send(w.ExportFunction(b"f" * 16, b"code"))
        self.worker_joins()
        self.worker_joins()

    @rule()
    def worker_joins(self) -> None:
        self.workers += 1
        worker_id = f"w{self.workers}"
        self.handle(WorkerJoined(w.WorkerInfo(worker_id, "h", f"tcp://{worker_id}", {"CPU": 2.0})))

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data())
    def worker_leaves(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(sorted(self.state.workers)), label="leaves")
        self.handle(WorkerLeft(worker_id, "killed"))

    @rule(data=st.data(), count=st.integers(1, 3))
    def submit(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            pool = st.sampled_from(self.held() or [b"never made"])
            deps = data.draw(st.lists(pool, max_size=2), label="deps")
            nested = data.draw(st.lists(pool, max_size=1), label="nested")
            spec = w.TaskSpec(
                task_id=self.new_id(),
                function_id=b"f" * 16,
                name="t",
                args=b"",
                deps=deps,
                nested=nested,
                num_returns=data.draw(st.sampled_from([1, 1, 2]), label="num_returns"),
                resources={"CPU": 1.0},
                max_retries=data.draw(st.sampled_from([0, 1, 2, 5]), label="max_retries"),
            )
            self.made.extend(return_ids(spec.task_id, spec.num_returns))
            self.send(w.SubmitTasks([spec]))

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), act=st.sampled_from(["ok", "ok", "ok", "raise", "input", "contains"]))
    def worker_reports(self, data: st.DataObject, act: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.assigned)), label="task")
        self.report(task_id, act, data)

    def report(self, task_id: bytes, act: str, data: st.DataObject | None = None) -> None:
        worker_id, spec = self.assigned.pop(task_id)
        if act == "raise":
            result = failed(spec)
        elif act == "input" and spec.deps and data is not None:
            oid = data.draw(st.sampled_from(spec.deps), label="unreadable input")
            obj = self.state.objects[oid]
            holders = sorted({loc.worker_id for loc in (obj.location, *obj.copies.values()) if loc})
            lost_from = data.draw(st.sampled_from([*holders, "w-never"]), label="lost from")
            result = input_lost(spec, oid, lost_from)
        else:
            contains: list[bytes] = []
            if act == "contains":
                inner = self.new_id()
                self.made.append(inner)
                self.send(w.PutObject(inner, data=b"inner"))
                contains = [inner]
            result = ok(spec, location=at(worker_id), contains=contains)
            if contains:
                self.handle(WorkerSent(worker_id, [w.TasksDone([result])]))
                self.send(w.ReleaseRefs(contains))
                return
        self.handle(WorkerSent(worker_id, [w.TasksDone([result])]))

    @precondition(lambda self: self.assigned)
    @rule()
    def workers_report_everything(self) -> None:
        """(So that there is much made to lose.)"""
        self.drain()

    @precondition(lambda self: self.held())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.held()), max_size=3, unique=True), label="rel"
        )
        self.send(w.ReleaseRefs(ids))

    @precondition(lambda self: self.made and self.state.workers)
    @rule(data=st.data())
    def reader_says_unreadable(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(self.made), label="unreadable")
        obj = self.state.objects.get(oid)
        holders = []
        if obj is not None and obj.location is not None:
            holders = [obj.location.worker_id, *obj.copies]
        worker_id = data.draw(st.sampled_from([*holders, *sorted(self.state.workers)]), label="at")
        self.send(w.ObjectUnreadable(oid, worker_id))

    @precondition(lambda self: self.made and len(self.state.workers) > 1)
    @rule(data=st.data())
    def another_worker_pulls_a_copy(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(self.made), label="copied")
        worker_id = data.draw(st.sampled_from(sorted(self.state.workers)), label="to")
        obj = self.state.objects.get(oid)
        if obj is not None and obj.location is not None and obj.location.worker_id != worker_id:
            self.handle(WorkerSent(worker_id, [w.ObjectCopied(oid, at(worker_id))]))

    @precondition(lambda self: self.made)
    @rule(data=st.data(), force=st.booleans())
    def cancel(self, data: st.DataObject, force: bool) -> None:
        oid = data.draw(st.sampled_from(self.made), label="cancel")
        self.send(w.CancelTasks([oid], force=force))

    @invariant()
    def ready_objects_in_stores_are_on_live_workers(self) -> None:
        for obj in self.state.objects.values():
            if obj.state == "ready" and obj.location is not None:
                assert obj.location.worker_id in self.state.workers
                assert set(obj.copies) <= set(self.state.workers)

    def drain(self) -> None:
        if not self.state.workers:
            self.worker_joins()
        for _ in range(1000):
            if not self.assigned:
                break
            for task_id in sorted(self.assigned):
                self.report(task_id, "ok")
        assert not self.assigned, "tasks kept being assigned"
        tasks = self.state.statistics()["tasks"]
        assert not tasks.get("processing") and not tasks.get("ready") and not tasks.get("waiting")

    def teardown(self) -> None:
        self.drain()
        self.send(w.ReleaseRefs(self.held()))
        self.drain()
        assert self.state.objects == {}, "objects live on with no holder"
        assert self.state.released == {}, "lineage records live on with nothing downstream"


LineageMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestLineageMachine = LineageMachine.TestCase
