"""The scheduler's pure state machine, driven event by event: no sockets, no processes.

Every step goes through ``Harness.handle``, which runs ``validate()`` on the
state after each call, so each test also checks every invariant along the way.
Errors in messages are pickled exceptions; the tests unpickle them and check
their types.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any, TypeVar

import msgspec
import pytest

from taskgraph import _wire as w
from taskgraph._ids import generator_item_id, return_ids
from taskgraph.exceptions import (
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)
from taskgraph.scheduler import placement
from taskgraph.scheduler.state import (
    ClientJoined,
    ClientLeft,
    ClientSent,
    Event,
    SchedulerState,
    Send,
    Tick,
    WorkerJoined,
    WorkerLeft,
    WorkerSent,
)

M = TypeVar("M")

FUNCTION = b"f" * 16
CODE = b"cloudpickled function"


class Harness:
    """A ``SchedulerState`` plus the small vocabulary the tests speak to it in.

    Without worker-side queueing unless asked (``queue_depth``), so that a
    processing task is a running one; the queueing tests turn it on.
    """

    def __init__(self, queue_depth: float = 0.0) -> None:
        self.state = SchedulerState("test-cluster", queue_depth=queue_depth)
        self._next_id = 0

    def handle(self, *events: Event) -> list[Send]:
        sends = self.state.handle(*events)
        self.state.validate()
        return sends

    # -- ids and specs -----------------------------------------------------

    def new_id(self) -> bytes:
        self._next_id += 1
        return self._next_id.to_bytes(12, "big") + b"\0\0\0\0"

    def spec(
        self,
        name: str = "task",
        deps: tuple[bytes, ...] | list[bytes] = (),
        resources: dict[str, float] | None = None,
        **options: Any,
    ) -> w.TaskSpec:
        return w.TaskSpec(
            task_id=self.new_id(),
            function_id=FUNCTION,
            name=name,
            args=b"args",
            deps=list(deps),
            resources={"CPU": 1.0} if resources is None else resources,
            **options,
        )

    # -- clients and workers -----------------------------------------------

    def client(self, client_id: bytes = b"c1", export: bool = True) -> list[Send]:
        sends = self.handle(ClientJoined(client_id))
        if export:
            sends += self.send(client_id, w.ExportFunction(FUNCTION, CODE))
        return sends

    def worker(self, worker_id: str, resources: dict[str, float] | None = None) -> list[Send]:
        info = w.WorkerInfo(
            worker_id, f"host-{worker_id}", f"tcp://{worker_id}:1", resources or {"CPU": 2.0}
        )
        return self.handle(WorkerJoined(info))

    def send(self, client_id: bytes, *messages: Any) -> list[Send]:
        return self.handle(ClientSent(client_id, list(messages)))

    def submit(self, client_id: bytes, *specs: w.TaskSpec) -> list[Send]:
        return self.send(client_id, w.SubmitTasks(list(specs)))

    def from_worker(self, worker_id: str, *messages: Any) -> list[Send]:
        return self.handle(WorkerSent(worker_id, list(messages)))

    def done(self, worker_id: str, *results: w.TaskResult) -> list[Send]:
        return self.from_worker(worker_id, w.TasksDone(list(results)))

    def want(self, client_id: bytes, *object_ids: bytes) -> list[Send]:
        return self.send(client_id, w.WantObjects(list(object_ids)))

    def task_state(self, spec: w.TaskSpec) -> str | None:
        task = self.state.tasks.get(spec.task_id)
        return None if task is None else task.state


def ok(spec: w.TaskSpec, location: w.Location | None = None, **kw: Any) -> w.TaskResult:
    """A successful result: each return's value is ``b"value of <object id hex>"``."""
    returns = [
        w.ReturnValue(oid, data=None if location else value_of(oid), location=location, **kw)
        for oid in return_ids(spec.task_id, spec.num_returns)
    ]
    return w.TaskResult(spec.task_id, returns=returns)


def failed(spec: w.TaskSpec, failure: str = "task", error: bytes | None = None) -> w.TaskResult:
    if error is None and failure == "task":
        error = pickle.dumps(TaskError.from_exception(ValueError("boom"), spec.name))
    return w.TaskResult(spec.task_id, error=error, failure=failure)


def value_of(oid: bytes) -> bytes:
    return b"value of " + oid.hex().encode()


def ret(spec: w.TaskSpec, index: int = 0) -> bytes:
    return return_ids(spec.task_id, spec.num_returns)[index]


def messages(sends: list[Send], to: str, dest: Any, kind: type[M]) -> list[M]:
    found: list[M] = []
    for send in sends:
        if send.to == to and send.id == dest:
            found.extend(m for m in send.messages if isinstance(m, kind))
    return found


def assigned(sends: list[Send], worker_id: str) -> list[w.Assignment]:
    return [a for run in messages(sends, "worker", worker_id, w.RunTasks) for a in run.assignments]


def assigned_ids(sends: list[Send], worker_id: str) -> list[bytes]:
    return [a.spec.task_id for a in assigned(sends, worker_id)]


def values(sends: list[Send], client_id: bytes) -> dict[bytes, w.Value]:
    ready = messages(sends, "client", client_id, w.ObjectsReady)
    return {v.object_id: v for m in ready for v in m.values}


def error_of(value: w.Value) -> BaseException:
    assert value.error is not None, f"{value} carries no error"
    err = pickle.loads(value.error)
    assert isinstance(err, BaseException)
    return err


def destinations(sends: list[Send]) -> list[tuple[str, Any]]:
    return [(s.to, s.id) for s in sends]


# -- submitting and running ----------------------------------------------------


def test_first_task_on_a_worker_carries_the_function_then_never_again() -> None:
    h = Harness()
    h.client()
    first, second = h.spec("square"), h.spec("square")
    sends = h.submit(b"c1", first)  # no worker yet: only a notice says so
    assert [type(m) for s in sends for m in s.messages] == [w.Notice]
    assert h.task_state(first) == "ready"

    sends = h.worker("w1", {"CPU": 1.0})
    [a] = assigned(sends, "w1")
    assert a.spec == first
    assert a.function == CODE
    assert a.inputs == []

    h.submit(b"c1", second)
    sends = h.done("w1", ok(first))
    [a] = assigned(sends, "w1")
    assert a.spec.task_id == second.task_id
    assert a.function == b"", "the worker already has the function's code"

    third = h.spec("square")
    h.submit(b"c1", third)
    sends = h.worker("w2", {"CPU": 1.0})
    [a] = assigned(sends, "w2")
    assert a.function == CODE, "a new worker gets the code the first time"


def test_a_task_submitted_before_its_function_is_exported_still_gets_the_code() -> None:
    h = Harness()
    h.client(export=False)
    h.worker("w1", {"CPU": 1.0})
    first, second = h.spec(), h.spec()
    sends = h.submit(b"c1", first)
    [a] = assigned(sends, "w1")
    assert a.function == b""
    h.send(b"c1", w.ExportFunction(FUNCTION, CODE))
    h.submit(b"c1", second)
    [a] = assigned(h.done("w1", ok(first)), "w1")
    assert a.function == CODE


def test_tasks_done_sends_objects_ready_to_clients_that_want_them() -> None:
    h = Harness()
    h.client(b"c1")
    h.client(b"c2")
    h.worker("w1")
    spec = h.spec()
    h.submit(b"c1", spec)
    oid = ret(spec)
    assert h.want(b"c1", oid) == []
    h.send(b"c2", w.AcquireRefs([oid]))
    assert h.want(b"c2", oid) == []

    sends = h.done("w1", ok(spec))
    for client_id in (b"c1", b"c2"):
        assert values(sends, client_id)[oid].data == value_of(oid)
    assert h.state.statistics()["tasks_finished"] == 1

    # Once ready, a want is answered at once, and only to who asked.
    sends = h.want(b"c1", oid)
    assert destinations(sends) == [("client", b"c1")]
    assert values(sends, b"c1")[oid].data == value_of(oid)


def test_want_of_an_unknown_object_answers_object_lost() -> None:
    h = Harness()
    h.client()
    oid = b"\x99" * 16
    sends = h.want(b"c1", oid)
    err = error_of(values(sends, b"c1")[oid])
    assert isinstance(err, ObjectLostError)
    assert oid.hex() in str(err)


def test_a_dependent_waits_for_its_dependency_and_gets_its_value() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0})
    a = h.spec("a")
    b = h.spec("b", deps=[ret(a)])
    sends = h.submit(b"c1", a, b)
    assert assigned_ids(sends, "w1") == [a.task_id]
    assert h.task_state(b) == "waiting"

    sends = h.done("w1", ok(a))
    [assignment] = assigned(sends, "w1")
    assert assignment.spec.task_id == b.task_id
    assert assignment.inputs == [w.Value(ret(a), data=value_of(ret(a)))]
    assert h.task_state(b) == "processing"


def test_a_dependency_already_done_makes_the_task_ready_at_once() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    put_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, data=b"put value"))
    b = h.spec("b", deps=[put_id])
    [assignment] = assigned(h.submit(b"c1", b), "w1")
    assert assignment.inputs == [w.Value(put_id, data=b"put value")]


def test_num_returns_three_makes_three_objects() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.spec(num_returns=3)
    h.submit(b"c1", spec)
    ids = return_ids(spec.task_id, 3)
    assert len(set(ids)) == 3
    assert all(oid[:12] == spec.task_id[:12] for oid in ids)
    assert h.want(b"c1", *ids) == []
    got = values(h.done("w1", ok(spec)), b"c1")
    assert {oid: v.data for oid, v in got.items()} == {oid: value_of(oid) for oid in ids}


def test_num_returns_zero_runs_and_makes_nothing() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.spec(num_returns=0)
    h.submit(b"c1", spec)
    assert h.state.statistics()["objects"] == 0
    h.done("w1", ok(spec))
    assert h.state.statistics()["tasks"] == {}


def test_an_error_propagates_through_a_chain_of_5000_dependents() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    chain = [h.spec("link0")]
    for i in range(1, 5000):
        chain.append(h.spec(f"link{i}", deps=[ret(chain[-1])]))
    h.submit(b"c1", *chain)
    last = ret(chain[-1])
    h.want(b"c1", last)
    error = pickle.dumps(TaskError.from_exception(ValueError("the first link broke"), "link0"))

    sends = h.done("w1", failed(chain[0], error=error))

    err = error_of(values(sends, b"c1")[last])
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert "the first link broke" in str(err)
    assert h.state.statistics()["tasks"] == {}
    assert h.state.statistics()["tasks_finished"] == 5000


def test_a_task_on_a_failed_object_fails_at_submit() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    a = h.spec("a")
    h.submit(b"c1", a)
    h.done("w1", failed(a))
    b = h.spec("b", deps=[ret(a)])
    assert assigned(h.submit(b"c1", b), "w1") == []
    err = error_of(values(h.want(b"c1", ret(b)), b"c1")[ret(b)])
    assert isinstance(err, ValueError)


def test_a_task_on_a_freed_object_fails_with_object_lost() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    gone = h.new_id()
    h.send(b"c1", w.PutObject(gone, data=b"x"), w.ReleaseRefs([gone]))
    b = h.spec("b", deps=[gone])
    h.submit(b"c1", b)
    err = error_of(values(h.want(b"c1", ret(b)), b"c1")[ret(b)])
    assert isinstance(err, ObjectLostError)
    assert gone.hex() in str(err)


# -- generator tasks -------------------------------------------------------------


def item(spec: w.TaskSpec, index: int, data: bytes = b"") -> w.GeneratorItem:
    oid = generator_item_id(spec.task_id, index)
    return w.GeneratorItem(spec.task_id, index, w.ReturnValue(oid, data=data or value_of(oid)))


def test_a_generator_s_items_are_ready_before_it_ends_and_held_by_its_owner() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    gen = h.spec("gen", generator=True)
    h.submit(b"c1", gen)
    first, second = generator_item_id(gen.task_id, 0), generator_item_id(gen.task_id, 1)
    assert first != ret(gen) and second != ret(gen)
    assert h.want(b"c1", second) == [], "not yielded yet: awaited"

    sends = h.from_worker("w1", w.FromClient(b"executor", [item(gen, 0), item(gen, 1)]))
    assert values(sends, b"c1") == {second: w.Value(second, data=value_of(second))}
    assert {first, second} <= h.state.clients[b"c1"].held
    assert values(h.want(b"c1", first), b"c1")[first].data == value_of(first)

    h.done("w1", ok(gen))
    h.send(b"c1", w.ReleaseRefs([first, second, ret(gen)]))
    assert h.state.statistics()["objects"] == 0


def test_an_item_never_yielded_is_answered_with_an_error_when_the_generator_ends() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    gen = h.spec("gen", generator=True)
    h.submit(b"c1", gen)
    missing = generator_item_id(gen.task_id, 5)
    h.want(b"c1", missing)
    sends = h.done("w1", ok(gen))
    err = error_of(values(sends, b"c1")[missing])
    assert isinstance(err, ObjectLostError) and "without yielding" in str(err)
    assert missing not in h.state.objects


def test_a_task_on_an_item_never_yielded_errs_instead_of_waiting_forever() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    gen = h.spec("gen", generator=True)
    h.submit(b"c1", gen)
    missing = generator_item_id(gen.task_id, 0)
    h.want(b"c1", missing)  # makes the placeholder a task can name
    h.send(b"c1", w.AcquireRefs([missing]))
    user = h.spec("user", deps=[missing])
    h.submit(b"c1", user)
    assert h.task_state(user) == "waiting"
    h.done("w1", ok(gen))
    assert h.task_state(user) is None
    assert isinstance(error_of(values(h.want(b"c1", ret(user)), b"c1")[ret(user)]), ObjectLostError)
    h.send(b"c1", w.ReleaseRefs([missing]))
    assert missing not in h.state.objects


def test_a_retried_generator_keeps_the_items_it_yielded_first() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    gen = h.spec("gen", generator=True, max_retries=1)
    h.submit(b"c1", gen)
    h.send(b"c1", item(gen, 0, b"first try"))
    h.done("w1", failed(gen, "crashed"))
    h.send(b"c1", item(gen, 0, b"second try"))
    oid = generator_item_id(gen.task_id, 0)
    assert values(h.want(b"c1", oid), b"c1")[oid].data == b"first try"


def test_items_of_a_task_that_is_not_a_generator_or_not_running_are_ignored() -> None:
    h = Harness()
    h.client()
    plain = h.spec("plain")
    gen = h.spec("gen", generator=True)
    h.submit(b"c1", plain, gen)  # no worker: neither is processing
    assert h.send(b"c1", item(plain, 0), item(gen, 0)) == []
    oid = generator_item_id(plain.task_id, 0)
    assert isinstance(error_of(values(h.want(b"c1", oid), b"c1")[oid]), ObjectLostError)


# -- cancelling ----------------------------------------------------------------


def test_cancel_of_waiting_and_ready_tasks_errs_them_and_their_dependents() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    running = h.spec("running")
    ready = h.spec("ready")
    waiting = h.spec("waiting", deps=[ret(running)])
    dependent = h.spec("dependent", deps=[ret(ready)])
    h.submit(b"c1", running, ready, waiting, dependent)
    assert [h.task_state(s) for s in (running, ready, waiting, dependent)] == [
        "processing",
        "ready",
        "waiting",
        "waiting",
    ]
    h.want(b"c1", ret(ready), ret(waiting), ret(dependent))

    sends = h.send(b"c1", w.CancelTasks([ret(ready), ret(waiting)]))

    got = values(sends, b"c1")
    for spec in (ready, waiting):
        err = error_of(got[ret(spec)])
        assert isinstance(err, TaskCancelledError)
        assert spec.name in str(err) and spec.task_id.hex() in str(err)
    assert isinstance(error_of(got[ret(dependent)]), TaskCancelledError)
    assert assigned(sends, "w1") == [] and messages(sends, "worker", "w1", w.CancelRunning) == []
    assert h.task_state(running) == "processing"
    assert h.state.statistics()["tasks"] == {"processing": 1}


def test_cancel_of_a_processing_task_asks_its_worker_once() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("long")
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))

    sends = h.send(b"c1", w.CancelTasks([ret(spec)], force=True))
    assert messages(sends, "worker", "w1", w.CancelRunning) == [
        w.CancelRunning(spec.task_id, force=True)
    ]
    assert h.task_state(spec) == "processing", "it stays until the worker says it stopped"
    again = h.send(b"c1", w.CancelTasks([ret(spec)]))
    assert messages(again, "worker", "w1", w.CancelRunning) == []

    # The worker's executor was killed: the worker reports it as crashed, yet
    # a task asked to stop is cancelled, never retried.
    sends = h.done("w1", failed(spec, failure="crashed"))
    assert isinstance(error_of(values(sends, b"c1")[ret(spec)]), TaskCancelledError)
    assert h.state.statistics()["tasks"] == {}


def test_cancel_of_a_processing_task_that_finishes_anyway_keeps_its_value() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec()
    h.submit(b"c1", spec)
    h.send(b"c1", w.CancelTasks([ret(spec)]))
    h.want(b"c1", ret(spec))
    assert values(h.done("w1", ok(spec)), b"c1")[ret(spec)].data == value_of(ret(spec))


def test_cancel_reported_by_the_worker_keeps_its_error() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec()
    h.submit(b"c1", spec)
    h.send(b"c1", w.CancelTasks([ret(spec)]))
    h.want(b"c1", ret(spec))
    error = pickle.dumps(TaskCancelledError("from the worker", spec.task_id.hex()))
    sends = h.done("w1", failed(spec, failure="cancelled", error=error))
    err = error_of(values(sends, b"c1")[ret(spec)])
    assert isinstance(err, TaskCancelledError) and "from the worker" in str(err)


def test_recursive_cancel_follows_the_parent_link() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    parent = h.spec("parent")
    h.submit(b"c1", parent)
    child = h.spec("child", parent=parent.task_id)
    grandchild = h.spec("grandchild", parent=child.task_id)
    h.submit(b"c1", child, grandchild)  # w1 is busy with the parent: both stay ready

    sends = h.send(b"c1", w.CancelTasks([ret(parent)], recursive=True))

    assert messages(sends, "worker", "w1", w.CancelRunning) == [w.CancelRunning(parent.task_id)]
    assert h.task_state(child) is None and h.task_state(grandchild) is None
    got = values(h.want(b"c1", ret(child), ret(grandchild)), b"c1")
    assert all(isinstance(error_of(v), TaskCancelledError) for v in got.values())
    assert h.state.children == {}


def test_non_recursive_cancel_leaves_the_children() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    parent = h.spec("parent")
    h.submit(b"c1", parent)
    child = h.spec("child", parent=parent.task_id)
    h.submit(b"c1", child)
    h.send(b"c1", w.CancelTasks([ret(parent)], recursive=False))
    assert h.task_state(child) == "ready"


# -- retries -------------------------------------------------------------------


def test_a_crashed_task_is_retried_max_retries_times_then_errs() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("fragile", max_retries=2)
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))
    crash = pickle.dumps(WorkerCrashedError("executor 7", task_name="fragile", exit_code=-9))
    for _ in range(2):
        sends = h.done("w1", failed(spec, "crashed", crash))
        assert assigned_ids(sends, "w1") == [spec.task_id], "retried at once"
        assert values(sends, b"c1") == {}
    last = w.TaskResult(spec.task_id, error=crash, failure="crashed", exit_code=-9)
    sends = h.done("w1", last)
    err = error_of(values(sends, b"c1")[ret(spec)])
    assert isinstance(err, WorkerCrashedError) and "SIGKILL" in str(err)
    assert "3 tries (max_retries=2)" in str(err)


def test_a_task_killed_for_memory_is_retried_then_fails_with_out_of_memory() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("hog", max_retries=1)
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))
    oom = pickle.dumps(OutOfMemoryError("hog", 9 << 30, 8 << 30, node="w1", memory=7 << 30))
    killed = w.TaskResult(spec.task_id, error=oom, failure="oom", exit_code=-9)
    sends = h.done("w1", killed)
    assert assigned_ids(sends, "w1") == [spec.task_id], "retried as a crash is"
    err = error_of(values(h.done("w1", killed), b"c1")[ret(spec)])
    assert isinstance(err, OutOfMemoryError), "the monitor's error, not a crash's"
    assert err.node == "w1" and err.memory == 7 << 30


def test_a_crash_without_an_error_still_explains_itself() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.spec("fragile")
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))
    err = error_of(values(h.done("w1", failed(spec, "crashed")), b"c1")[ret(spec)])
    assert isinstance(err, WorkerCrashedError) and "fragile" in str(err)


@pytest.mark.parametrize("retry_exceptions", [False, True])
def test_exceptions_are_retried_only_with_retry_exceptions(retry_exceptions: bool) -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec(max_retries=1, retry_exceptions=retry_exceptions)
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))
    sends = h.done("w1", failed(spec))
    if retry_exceptions:
        assert assigned_ids(sends, "w1") == [spec.task_id]
        sends = h.done("w1", failed(spec))
    assert isinstance(error_of(values(sends, b"c1")[ret(spec)]), ValueError)


def test_a_stale_report_is_ignored() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec()
    h.submit(b"c1", spec)
    h.done("w1", ok(spec))
    assert h.done("w1", ok(spec)) == []
    assert h.done("w2-unknown", ok(spec)) == []


# -- workers leaving -------------------------------------------------------------


def test_a_leaving_worker_s_tasks_are_retried_elsewhere_or_err_with_node_died() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0})
    retried = h.spec("retried", max_retries=1)
    doomed = h.spec("doomed", max_retries=0)
    assert assigned_ids(h.submit(b"c1", retried, doomed), "w1") == [
        retried.task_id,
        doomed.task_id,
    ]
    h.worker("w2", {"CPU": 1.0})
    h.want(b"c1", ret(retried), ret(doomed))

    sends = h.handle(WorkerLeft("w1", "connection lost"))

    [a] = assigned(sends, "w2")
    assert a.spec.task_id == retried.task_id and a.function == CODE
    err = error_of(values(sends, b"c1")[ret(doomed)])
    assert isinstance(err, NodeDiedError)
    assert "w1" in str(err) and "doomed" in str(err)
    assert h.done("w1", ok(retried)) == [], "a report from the departed worker is ignored"
    assert values(h.done("w2", ok(retried)), b"c1")[ret(retried)].data == value_of(ret(retried))


def test_objects_stored_on_a_leaving_worker_are_lost() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    h.worker("w2", {"CPU": 1.0})
    on_w1 = w.Location("w1", "seg-a", 1 << 20, "host-w1")
    put_id = h.new_id()
    inline_id = h.new_id()
    h.send(b"c1", w.PutObject(put_id, location=on_w1), w.PutObject(inline_id, data=b"small"))
    spec = h.spec("maker", strategy="node:w1")
    h.submit(b"c1", spec)
    h.done("w1", ok(spec, location=w.Location("w1", "seg-b", 1 << 20, "host-w1")))

    sends = h.handle(WorkerLeft("w1"))
    assert destinations(sends) == []

    got = values(h.want(b"c1", put_id, ret(spec), inline_id), b"c1")
    for oid in (put_id, ret(spec)):
        err = error_of(got[oid])
        assert isinstance(err, ObjectLostError) and "w1" in str(err)
    assert got[inline_id].data == b"small", "an inline value lives in the scheduler"
    # The lost objects are gone from w1: releasing them frees no segment anywhere.
    assert h.send(b"c1", w.ReleaseRefs([put_id, ret(spec)])) == []


def test_a_leaving_worker_takes_its_relayed_clients_with_it() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    executor = b"executor-1"
    put_id = h.new_id()
    h.from_worker("w1", w.FromClient(executor, [w.PutObject(put_id, data=b"v")]))
    assert h.state.statistics()["clients"] == 2
    h.handle(WorkerLeft("w1"))
    assert h.state.statistics() | {"transitions": 0} == {
        "tasks": {},
        "tasks_finished": 0,
        "tasks_finished_by_path": {"scheduled": 0, "lease": 0, "actor_direct": 0},
        "reports_before_records": 0,
        "reports_asked_for": 0,
        "reports_through_pipes": 0,
        "objects": 0,
        "tasks_rebuilt": 0,
        "objects_released": 0,
        "workers": 0,
        "clients": 1,
        "transitions": 0,
    }


def test_what_a_departed_client_sealed_but_never_announced_is_freed() -> None:
    """A driver seals values in a worker's store, then tells us; killed in between,
    only the worker knows them. When it leaves the store, the worker lists what it
    sealed and has not freed; once the client has left us too (its announcements
    read), the ones we never heard of are freed, and only those."""
    h = Harness()
    h.client()
    h.client(b"c2")
    h.worker("w1")
    announced, unheard = h.new_id(), h.new_id()
    on_w1 = w.Location("w1", "seg", 1 << 20, "host-w1")
    h.send(b"c1", w.PutObject(announced, location=on_w1))
    h.send(b"c2", w.AcquireRefs([announced]))  # another client keeps it alive

    gone = w.StoreClientGone(b"c1", [announced, unheard])
    assert h.from_worker("w1", gone) == [], "c1's announcements may still be on the way"
    sends = h.handle(ClientLeft(b"c1"))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([unheard])]

    # A client already gone is answered at once.
    later = h.new_id()
    sends = h.from_worker("w1", w.StoreClientGone(b"c1", [later, announced]))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([later])]


def test_a_worker_joining_again_under_its_id_starts_afresh() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("survivor", max_retries=1)
    h.submit(b"c1", spec)
    stored = h.new_id()
    h.send(b"c1", w.PutObject(stored, location=w.Location("w1", "seg", 1 << 20, "host-w1")))

    sends = h.worker("w1", {"CPU": 2.0})

    [a] = assigned(sends, "w1")
    assert a.spec.task_id == spec.task_id and a.function == CODE, "a fresh worker"
    assert h.state.query("cluster_resources") == {"CPU": 2.0}
    assert isinstance(error_of(values(h.want(b"c1", stored), b"c1")[stored]), ObjectLostError)


def test_a_task_asked_to_stop_on_a_leaving_worker_is_cancelled_not_retried() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec(max_retries=3)
    h.submit(b"c1", spec)
    h.send(b"c1", w.CancelTasks([ret(spec)]))
    h.want(b"c1", ret(spec))
    h.worker("w2", {"CPU": 1.0})
    sends = h.handle(WorkerLeft("w1"))
    assert assigned(sends, "w2") == []
    assert isinstance(error_of(values(sends, b"c1")[ret(spec)]), TaskCancelledError)


# -- reference counting ----------------------------------------------------------


def test_release_frees_an_object_and_its_segment() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    inline, located = h.new_id(), h.new_id()
    h.send(
        b"c1",
        w.PutObject(inline, data=b"v"),
        w.PutObject(located, location=w.Location("w1", "seg-1", 1 << 20, "host-w1")),
    )
    assert h.state.statistics()["objects"] == 2
    assert h.send(b"c1", w.ReleaseRefs([inline])) == []
    sends = h.send(b"c1", w.ReleaseRefs([located]))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([located])]
    assert h.state.statistics()["objects"] == 0
    assert h.send(b"c1", w.ReleaseRefs([located])) == [], "a second release is a no-op"


def test_an_object_held_by_two_clients_lives_until_both_release() -> None:
    h = Harness()
    h.client(b"c1")
    h.client(b"c2")
    oid = h.new_id()
    h.send(b"c1", w.PutObject(oid, data=b"v"))
    h.send(b"c2", w.AcquireRefs([oid, oid]))
    h.send(b"c1", w.ReleaseRefs([oid]))
    assert values(h.want(b"c2", oid), b"c2")[oid].data == b"v"
    h.handle(ClientLeft(b"c2"))
    assert h.state.statistics()["objects"] == 0


def test_an_object_inside_a_put_lives_until_the_outer_is_freed() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    inner, outer = h.new_id(), h.new_id()
    seg = w.Location("w1", "seg-inner", 1 << 20, "host-w1")
    h.send(b"c1", w.PutObject(inner, location=seg))
    h.send(b"c1", w.PutObject(outer, data=b"[ref]", contains=[inner]))
    assert h.send(b"c1", w.ReleaseRefs([inner])) == []
    assert h.state.statistics()["objects"] == 2
    sends = h.send(b"c1", w.ReleaseRefs([outer]))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([inner])]
    assert h.state.statistics()["objects"] == 0


def test_freeing_a_chain_of_5000_nested_objects_does_not_recurse() -> None:
    h = Harness()
    h.client()
    ids = [h.new_id() for _ in range(5000)]
    batch: list[Any] = [w.PutObject(ids[0], data=b"0")]
    for previous, oid in itertools.pairwise(ids):
        batch += [w.PutObject(oid, data=b"x", contains=[previous]), w.ReleaseRefs([previous])]
    h.send(b"c1", *batch)
    assert h.state.statistics()["objects"] == 5000
    h.send(b"c1", w.ReleaseRefs([ids[-1]]))
    assert h.state.statistics()["objects"] == 0


def test_an_object_inside_a_task_s_return_is_held_by_that_return() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    inner = h.new_id()
    h.send(b"c1", w.PutObject(inner, data=b"inner"))
    spec = h.spec()
    h.submit(b"c1", spec)
    h.done("w1", ok(spec, contains=[inner]))
    h.send(b"c1", w.ReleaseRefs([inner]))
    assert inner in h.state.objects
    h.send(b"c1", w.ReleaseRefs([ret(spec)]))
    assert h.state.statistics()["objects"] == 0


def test_a_task_s_arguments_live_until_the_task_finishes() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    blocker = h.spec("blocker")
    h.submit(b"c1", blocker)
    arg, nested = h.new_id(), h.new_id()
    h.send(b"c1", w.PutObject(arg, data=b"arg"), w.PutObject(nested, data=b"nested"))
    spec = h.spec("user", deps=[arg], nested=[nested])
    h.submit(b"c1", spec)
    h.send(b"c1", w.ReleaseRefs([arg, nested]))
    assert {arg, nested} <= set(h.state.objects)

    [a] = assigned(h.done("w1", ok(blocker)), "w1")
    assert a.inputs == [w.Value(arg, data=b"arg")]
    assert {arg, nested} <= set(h.state.objects)
    h.done("w1", ok(spec))
    assert arg not in h.state.objects and nested not in h.state.objects


def test_a_released_pending_result_is_freed_when_its_task_finishes() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.spec()
    h.submit(b"c1", spec)
    h.send(b"c1", w.ReleaseRefs([ret(spec)]))
    assert ret(spec) in h.state.objects, "pending: its task still makes it"
    seg = w.Location("w1", "seg-r", 1 << 20, "host-w1")
    sends = h.done("w1", ok(spec, location=seg))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([ret(spec)])]
    assert h.state.statistics()["objects"] == 0


def test_a_leaving_client_releases_its_refs_and_stops_waiting() -> None:
    h = Harness()
    h.client(b"c1")
    h.client(b"c2")
    h.worker("w1")
    spec = h.spec()
    h.submit(b"c1", spec)
    h.send(b"c2", w.AcquireRefs([ret(spec)]))
    h.want(b"c2", ret(spec))
    h.send(b"c2", w.Goodbye())
    h.handle(ClientLeft(b"c1"))
    assert h.state.statistics()["clients"] == 0
    assert h.done("w1", ok(spec)) == []
    assert h.state.statistics()["objects"] == 0


# -- resources -------------------------------------------------------------------


def processing_on(h: Harness, worker_id: str) -> int:
    return len(h.state.workers[worker_id].running)


def test_never_more_tasks_processing_on_a_worker_than_its_cpus() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 3.0})
    specs = [h.spec(f"t{i}") for i in range(10)]
    sends = h.submit(b"c1", *specs)
    assert assigned_ids(sends, "w1") == [s.task_id for s in specs[:3]]
    for i, spec in enumerate(specs):
        sends = h.done("w1", ok(spec))
        assert processing_on(h, "w1") == min(3, 10 - i - 1)
    assert h.state.query("available_resources") == {"CPU": 3.0}


def test_cpu_only_tasks_queue_on_busy_workers_up_to_the_queue_depth() -> None:
    h = Harness(queue_depth=1.0)
    h.client()
    h.worker("w1", {"CPU": 2.0, "GPU": 1.0, "disk": 1.0})
    specs = [h.spec(f"t{i}") for i in range(6)]
    sends = h.submit(b"c1", *specs)
    assert assigned_ids(sends, "w1") == [s.task_id for s in specs[:4]], "2 running + 2 queued"
    assert h.state.workers["w1"].available["CPU"] == -2.0
    assert h.state.query("available_resources")["CPU"] == 0.0

    # Only DEFAULT tasks that need nothing but CPUs may wait in a worker's queue.
    others = [
        h.spec("gpu", resources={"CPU": 1.0, "GPU": 1.0}),
        h.spec("disk", resources={"CPU": 1.0, "disk": 1.0}),
        h.spec("spread", strategy="SPREAD"),
        h.spec("pinned", strategy="node:w1"),
    ]
    assert assigned(h.submit(b"c1", *others), "w1") == []
    sends = h.done("w1", ok(specs[0]))
    assert assigned_ids(sends, "w1") == [specs[4].task_id], "CPU-only tasks keep the queue full"


def test_how_deep_a_busy_worker_queues_follows_how_long_the_function_takes() -> None:
    h = Harness(queue_depth=16.0)
    h.client()
    h.worker("w1", {"CPU": 2.0})
    first = [h.spec(f"t{i}") for i in range(40)]
    sends = h.submit(b"c1", *first)
    assert len(assigned(sends, "w1")) == 4, "unknown duration: one queued task per CPU"

    # Short tasks: the worker may hold up to the full depth (16 per CPU).
    quick = w.TaskResult(first[0].task_id, returns=ok(first[0]).returns, duration=1e-5)
    sends = h.done("w1", quick)
    assert processing_on(h, "w1") == 2 + 2 * 16
    assert len(assigned(sends, "w1")) == 31

    # Once its tasks are seen to take seconds, nothing more queues behind them.
    h2 = Harness(queue_depth=16.0)
    h2.client()
    h2.worker("w1", {"CPU": 2.0})
    slow = [h2.spec(f"s{i}") for i in range(10)]
    h2.submit(b"c1", *slow)
    for spec in slow[:4]:
        h2.done("w1", w.TaskResult(spec.task_id, returns=ok(spec).returns, duration=5.0))
    assert processing_on(h2, "w1") == 2, "slow tasks run, none wait behind them"
    assert placement.queue_depth_for(None, 16.0) == 1.0
    assert placement.queue_depth_for(5.0, 16.0) < 0.01
    assert placement.queue_depth_for(1e-5, 16.0) == 16.0
    assert placement.queue_depth_for(0.002, 16.0) == pytest.approx(10.0)


def test_a_task_larger_than_any_worker_never_queues() -> None:
    h = Harness(queue_depth=4.0)
    h.client()
    h.worker("w1", {"CPU": 2.0})
    big = h.spec("big", resources={"CPU": 3.0})
    sends = h.submit(b"c1", big)
    assert assigned(sends, "w1") == []
    assert len(messages(sends, "client", b"c1", w.Notice)) == 1


def test_custom_resources_limit_what_runs_together() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 8.0, "disk": 1.0})
    h.worker("w2", {"CPU": 8.0})
    a, b = (h.spec(resources={"CPU": 1.0, "disk": 1.0}) for _ in range(2))
    sends = h.submit(b"c1", a, b)
    assert assigned_ids(sends, "w1") == [a.task_id] and assigned(sends, "w2") == []
    assert assigned_ids(h.done("w1", ok(a)), "w1") == [b.task_id]


def test_whole_gpus_are_distinct_and_fractional_ones_share() -> None:
    h = Harness()
    h.client()
    h.worker("g", {"CPU": 8.0, "GPU": 2.0})
    whole = [h.spec(f"whole{i}", resources={"CPU": 1.0, "GPU": 1.0}) for i in range(3)]
    sends = h.submit(b"c1", *whole)
    got = assigned(sends, "g")
    assert sorted(a.gpu_ids for a in got) == [[0], [1]]
    assert h.task_state(whole[2]) == "ready"

    h.done("g", ok(whole[0]), ok(whole[1]))  # whole[2] takes one GPU
    halves = [h.spec(f"half{i}", resources={"CPU": 1.0, "GPU": 0.5}) for i in range(3)]
    sends = h.submit(b"c1", *halves)
    got = assigned(sends, "g")
    [busy] = h.state.tasks[whole[2].task_id].gpu_ids
    assert [a.gpu_ids for a in got] == [[1 - busy], [1 - busy]], "two halves share a GPU"
    assert h.task_state(halves[2]) == "ready"

    h.done("g", ok(whole[2]))  # now both GPUs have room for a half
    assert h.task_state(halves[2]) == "processing"
    assert h.state.tasks[halves[2].task_id].gpu_ids == [busy]


def test_a_task_needing_two_gpus_gets_two() -> None:
    h = Harness()
    h.client()
    h.worker("g", {"CPU": 8.0, "GPU": 2.0})
    spec = h.spec(resources={"CPU": 1.0, "GPU": 2.0})
    [a] = assigned(h.submit(b"c1", spec), "g")
    assert a.gpu_ids == [0, 1]


def test_a_blocked_task_lends_its_cpu_and_takes_it_back() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    outer, inner, later = h.spec("outer"), h.spec("inner"), h.spec("later")
    h.submit(b"c1", outer, inner)
    assert h.task_state(inner) == "ready"

    sends = h.send(b"c1", w.TaskBlocked(outer.task_id))
    assert assigned_ids(sends, "w1") == [inner.task_id]
    assert h.send(b"c1", w.TaskBlocked(outer.task_id)) == [], "blocking twice lends nothing more"

    h.send(b"c1", w.TaskUnblocked(outer.task_id))
    assert h.state.query("available_resources") == {"CPU": 0.0}, "overcommitted, shown as 0"
    assert h.state.workers["w1"].available["CPU"] == -1.0
    assert assigned(h.submit(b"c1", later), "w1") == []
    assert assigned(h.done("w1", ok(inner)), "w1") == [], "the CPU went back to outer"
    assert assigned_ids(h.done("w1", ok(outer)), "w1") == [later.task_id]


def test_a_blocked_task_that_finishes_gives_back_only_what_it_holds() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    outer, inner = h.spec("outer"), h.spec("inner")
    h.submit(b"c1", outer, inner)
    h.send(b"c1", w.TaskBlocked(outer.task_id))
    h.done("w1", ok(outer))  # finished while blocked: its CPU was already lent
    assert h.state.workers["w1"].available["CPU"] == 0.0
    h.done("w1", ok(inner))
    assert h.state.workers["w1"].available["CPU"] == 1.0


def test_an_infeasible_task_warns_its_owner_once_and_runs_when_a_worker_fits() -> None:
    h = Harness()
    h.client(b"c1")
    h.client(b"c2")
    h.worker("small", {"CPU": 2.0})
    big = h.spec("big", resources={"CPU": 4.0, "disk": 1.0})
    sends = h.submit(b"c1", big)
    [notice] = messages(sends, "client", b"c1", w.Notice)
    assert notice.level == "warning"
    assert "'big'" in notice.text and big.task_id.hex() in notice.text
    assert "CPU by 2" in notice.text and "disk by 1" in notice.text
    assert destinations(sends) == [("client", b"c1")]

    another = h.spec("big", resources={"CPU": 4.0, "disk": 1.0})
    assert h.submit(b"c1", another) == [], "one warning per kind of task"
    assert (
        len(
            messages(
                h.submit(b"c2", h.spec("big", resources={"CPU": 4.0, "disk": 1.0})),
                "client",
                b"c2",
                w.Notice,
            )
        )
        == 1
    )

    sends = h.worker("large", {"CPU": 4.0, "disk": 2.0})
    assert assigned_ids(sends, "large") == [big.task_id]


def test_a_task_submitted_before_any_worker_joined_says_so() -> None:
    h = Harness()
    h.client()
    sends = h.submit(b"c1", h.spec("early"))
    [notice] = messages(sends, "client", b"c1", w.Notice)
    assert "no worker" in notice.text


# -- placement strategies ------------------------------------------------------------


def test_a_task_goes_where_its_input_bytes_are() -> None:
    h = Harness()
    h.client()
    h.worker("a", {"CPU": 1.0})
    h.worker("b", {"CPU": 1.0})
    big = h.new_id()
    h.send(b"c1", w.PutObject(big, location=w.Location("b", "seg", 100 << 20, "host-b")))
    first, second = h.spec(deps=[big]), h.spec(deps=[big])
    sends = h.submit(b"c1", first)
    assert assigned_ids(sends, "b") == [first.task_id]
    sends = h.submit(b"c1", second)
    assert assigned_ids(sends, "a") == [second.task_id], "b is full: move the bytes"


def test_spread_ignores_locality_and_default_keeps_it() -> None:
    h = Harness()
    h.client()
    h.worker("a", {"CPU": 4.0})
    h.worker("b", {"CPU": 4.0})
    big = h.new_id()
    h.send(b"c1", w.PutObject(big, location=w.Location("b", "seg", 100 << 20, "host-b")))
    local = [h.spec(deps=[big]) for _ in range(4)]
    sends = h.submit(b"c1", *local)
    assert len(assigned(sends, "b")) == 4 and assigned(sends, "a") == []
    h.done("b", *(ok(s) for s in local))

    spread = [h.spec(deps=[big], strategy="SPREAD") for _ in range(4)]
    sends = h.submit(b"c1", *spread)
    assert len(assigned(sends, "a")) == 2 and len(assigned(sends, "b")) == 2


def test_hard_node_affinity_waits_for_its_node() -> None:
    h = Harness()
    h.client()
    h.worker("a", {"CPU": 4.0})
    h.worker("b", {"CPU": 1.0})
    specs = [h.spec(strategy="node:b") for _ in range(2)]
    sends = h.submit(b"c1", *specs)
    assert assigned_ids(sends, "b") == [specs[0].task_id] and assigned(sends, "a") == []
    assert assigned_ids(h.done("b", ok(specs[0])), "b") == [specs[1].task_id]
    nowhere = h.spec(strategy="node:missing")
    assert destinations(h.submit(b"c1", nowhere)) == [("client", b"c1")]  # a warning only
    assert h.task_state(nowhere) == "ready"


def test_soft_node_affinity_falls_back_to_any_node() -> None:
    h = Harness()
    h.client()
    h.worker("a", {"CPU": 4.0})
    h.worker("b", {"CPU": 1.0})
    specs = [h.spec(strategy="node?:b") for _ in range(2)]
    sends = h.submit(b"c1", *specs)
    assert assigned_ids(sends, "b") == [specs[0].task_id]
    assert assigned_ids(sends, "a") == [specs[1].task_id]


# -- relayed executor clients ----------------------------------------------------------


def test_an_executor_s_client_is_answered_through_its_worker() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0})
    outer = h.spec("outer")
    h.submit(b"c1", outer)
    executor = b"executor-1"
    inner = h.spec("inner", parent=outer.task_id)
    sends = h.from_worker(
        "w1",
        w.FromClient(
            executor,
            [w.SubmitTasks([inner]), w.WantObjects([ret(inner)]), w.Query(7, "cluster_resources")],
        ),
    )
    assert h.state.clients[executor].via_worker == "w1"
    assert destinations(sends) == [("worker", "w1")], "one send per destination"
    [run] = messages(sends, "worker", "w1", w.RunTasks)
    assert [a.spec.task_id for a in run.assignments] == [inner.task_id]
    [relay] = messages(sends, "worker", "w1", w.ToClient)
    assert relay.client_id == executor
    assert relay.messages == [w.QueryReply(7, {"CPU": 2.0})]

    sends = h.done("w1", ok(inner))
    assert destinations(sends) == [("worker", "w1")]
    [relay] = messages(sends, "worker", "w1", w.ToClient)
    assert relay == w.ToClient(
        executor, [w.ObjectsReady([w.Value(ret(inner), data=value_of(ret(inner)))])]
    )

    h.from_worker("w1", w.ClientGone(executor))
    assert executor not in h.state.clients


def test_a_relayed_client_s_replies_share_the_worker_s_send_with_its_tasks() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    first, second = h.spec("first"), h.spec("second")
    h.submit(b"c1", first, second)
    executor = b"executor-1"
    h.from_worker("w1", w.FromClient(executor, [w.WantObjects([ret(first)])]))
    sends = h.done("w1", ok(first))
    assert destinations(sends) == [("worker", "w1")]
    kinds = [type(m) for m in sends[0].messages]
    assert sorted(k.__name__ for k in kinds) == ["RunTasks", "ToClient"]


# -- queries, snapshots and misuse -------------------------------------------------------


def test_queries_describe_nodes_and_resources() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0, "GPU": 1.0})
    h.worker("w2", {"CPU": 4.0, "disk": 1.0})
    h.submit(b"c1", h.spec(resources={"CPU": 1.0, "GPU": 1.0}))
    nodes = {n["node_id"]: n for n in h.state.query("nodes")}
    assert set(nodes) == {"w1", "w2"}
    assert nodes["w1"]["alive"] and nodes["w1"]["host"] == "host-w1"
    assert nodes["w1"]["resources"] == {"CPU": 2.0, "GPU": 1.0}
    assert nodes["w1"]["available"] == {"CPU": 1.0, "GPU": 0.0}
    assert h.state.query("cluster_resources") == {"CPU": 6.0, "GPU": 1.0, "disk": 1.0}
    assert h.state.query("available_resources") == {"CPU": 5.0, "GPU": 0.0, "disk": 1.0}
    assert h.state.query("statistics")["tasks"] == {"processing": 1}
    with pytest.raises(ValueError, match="unknown query"):
        h.state.query("everything")

    sends = h.send(b"c1", w.Query(3, "nodes"))
    [reply] = messages(sends, "client", b"c1", w.QueryReply)
    assert reply.request_id == 3 and len(reply.result) == 2


def test_heartbeats_and_ticks_change_nothing_a_client_sees() -> None:
    h = Harness()
    h.worker("w1")
    assert h.from_worker("w1", w.Heartbeat(running=0, executors=3)) == []
    assert h.state.workers["w1"].executors == 3
    assert h.handle(Tick(12.5)) == []
    assert h.state.now == 12.5


def test_messages_a_peer_may_not_send_raise() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    with pytest.raises(TypeError, match="client may not send RunTasks"):
        h.state.handle(ClientSent(b"c1", [w.RunTasks([])]))
    with pytest.raises(TypeError, match="worker may not send Welcome"):
        h.state.handle(WorkerSent("w1", [w.Welcome(b"", "x")]))


def test_messages_from_unknown_peers_are_dropped() -> None:
    h = Harness()
    assert h.send(b"nobody", w.PutObject(b"x" * 16, data=b"v")) == []
    assert h.from_worker("nowhere", w.Heartbeat()) == []
    assert h.handle(ClientLeft(b"nobody"), WorkerLeft("nowhere")) == []
    assert h.state.statistics()["objects"] == 0


def test_an_unknown_transition_raises() -> None:
    h = Harness()
    h.client()
    spec = h.spec()
    h.submit(b"c1", spec)
    task = h.state.tasks[spec.task_id]
    with pytest.raises(RuntimeError, match=r"no transition 'ready' -> 'memory'"):
        h.state.transition(task, "memory")
    with pytest.raises(RuntimeError, match="no transition"):
        h.state.transition(task, "exploded")
    assert task.state == "ready"
    h.state.validate()


def test_repr_is_one_useful_line() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    h.submit(b"c1", h.spec(), h.spec())
    text = repr(h.state)
    assert "\n" not in text
    assert text.startswith("<SchedulerState ") and text.endswith(">")
    assert "workers=1" in text and "clients=1" in text and "objects=2" in text
    assert "'processing': 1" in text and "'ready': 1" in text


def test_validate_catches_a_broken_reference_count() -> None:
    h = Harness()
    h.client()
    oid = h.new_id()
    h.send(b"c1", w.PutObject(oid, data=b"v"))
    h.state.objects[oid].refs += 1
    with pytest.raises(AssertionError, match="holders"):
        h.state.validate()


# -- channel tasks: sent straight to a leased executor or an actor's process ---------

CALLER = b"caller-1"  # 8 bytes: a channel task's id starts with its client's id


def _granted_lease(h: Harness) -> w.TaskSpec:
    """A caller with a lease running on w1 (one CPU held for it)."""
    h.client(CALLER)
    h.worker("w1", {"CPU": 2.0})
    lease = h.spec("lease", num_returns=1, channel_to="unix://caller")
    lease = msgspec.structs.replace(lease, task_id=CALLER + lease.task_id[8:])
    assert assigned_ids(h.submit(CALLER, lease), "w1") == [lease.task_id]
    return lease


def _leased(h: Harness, lease: w.TaskSpec, **options: Any) -> w.TaskSpec:
    spec = h.spec("leased", channel=lease.task_id, **options)
    return msgspec.structs.replace(spec, task_id=CALLER + spec.task_id[8:])


def _reported(spec: w.TaskSpec, **kw: Any) -> w.TaskResult:
    return msgspec.structs.replace(ok(spec, **kw), channel=spec.channel, started=10.0, duration=0.5)


def test_a_leased_task_is_recorded_as_running_on_its_lease_and_never_placed() -> None:
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease)
    sends = h.submit(CALLER, spec)
    assert assigned(sends, "w1") == [], "the client sent it to its executor itself"
    assert h.task_state(spec) == "processing"
    assert h.state.workers["w1"].available["CPU"] == 1.0, "the lease holds the CPU, once"
    sends = h.done("w1", _reported(spec))
    assert h.task_state(spec) is None and h.state.objects[ret(spec)].state == "ready"
    assert h.state.statistics()["tasks_finished_by_path"]["lease"] == 1
    (record,) = [t for t in h.state.task_list() if t["task_id"] == spec.task_id.hex()]
    assert record["state"] == "FINISHED" and record["path"] == "lease"
    assert (record["start_time_ms"], record["end_time_ms"]) == (10_000, 10_500)


def test_a_report_that_comes_before_its_record_is_applied_by_the_record() -> None:
    h = Harness()
    lease = _granted_lease(h)
    inner = h.new_id()
    h.from_worker("w1", w.FromClient(b"executor", [w.PutObject(inner, data=b"in")]))
    spec = _leased(h, lease)
    report = _reported(spec, contains=[inner])
    h.done("w1", report)
    assert h.state.statistics()["reports_before_records"] == 1
    # The executor lets go of the inner object after its report: the early
    # report holds it until the record applies it.
    h.from_worker("w1", w.FromClient(b"executor", [w.ReleaseRefs([inner])]))
    assert inner in h.state.objects
    h.submit(CALLER, spec)
    assert h.task_state(spec) is None and h.state.objects[ret(spec)].state == "ready"
    assert h.state.objects[inner].refs == 1, "held by the return that contains it, only"
    assert h.state.statistics()["reports_before_records"] == 0


def test_an_early_report_whose_client_left_frees_what_it_stored() -> None:
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease)
    where = w.Location("w1", "seg", 1 << 20, "host-w1")
    h.done("w1", _reported(spec, location=where))
    sends = h.handle(ClientLeft(CALLER))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([ret(spec)])]
    assert h.state.statistics()["reports_before_records"] == 0
    # A report that comes after its client left is not kept at all.
    late = _leased(h, lease)
    sends = h.done("w1", _reported(late, location=where))
    assert messages(sends, "worker", "w1", w.FreeObjects) == [w.FreeObjects([ret(late)])]
    assert h.state.statistics()["reports_before_records"] == 0


@pytest.mark.parametrize("retries", [0, 1])
def test_a_lease_that_crashed_retries_or_fails_the_tasks_it_never_reported(retries: int) -> None:
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease, max_retries=retries)
    h.submit(CALLER, spec)
    h.want(CALLER, ret(spec))
    crash = w.TaskResult(lease.task_id, failure="crashed", exit_code=-9, error=b"crashed")
    sends = h.done("w1", crash)
    if retries:
        (again,) = assigned(sends, "w1")
        assert again.spec.task_id == spec.task_id and not again.spec.channel
        h.done("w1", ok(again.spec))
        assert h.state.objects[ret(spec)].state == "ready"
    else:
        err = error_of(values(sends, CALLER)[ret(spec)])
        assert isinstance(err, WorkerCrashedError) and err.exit_code == -9


def test_a_task_on_a_lease_killed_for_memory_fails_with_out_of_memory() -> None:
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease, max_retries=0)
    h.submit(CALLER, spec)
    h.want(CALLER, ret(spec))
    killed = w.TaskResult(lease.task_id, failure="oom", exit_code=-9, error=b"oom")
    err = error_of(values(h.done("w1", killed), CALLER)[ret(spec)])
    assert isinstance(err, OutOfMemoryError) and err.node == "w1"
    assert err.task_name == spec.name, "the task that ran on the lease, not the lease"


def test_a_record_whose_lease_already_ended_unreported_is_retried() -> None:
    h = Harness()
    lease = _granted_lease(h)
    h.done("w1", ok(lease))  # the lease ended (its executor died after it, say)
    spec = _leased(h, lease, max_retries=1)
    (again,) = assigned(h.submit(CALLER, spec), "w1")
    assert again.spec.task_id == spec.task_id and again.spec.resources == {"CPU": 1.0}


def test_a_record_that_comes_after_its_lease_crashed_fails_with_the_exit_code() -> None:
    """Records gather in the client: the lease's crash can be heard first."""
    h = Harness()
    lease = _granted_lease(h)
    crash = w.TaskResult(lease.task_id, failure="crashed", exit_code=5, error=b"crashed")
    h.done("w1", crash)
    spec = _leased(h, lease)
    h.submit(CALLER, spec)
    err = error_of(values(h.want(CALLER, ret(spec)), CALLER)[ret(spec)])
    assert isinstance(err, WorkerCrashedError) and err.exit_code == 5


def test_cancelling_a_leased_task_goes_to_the_daemon_naming_its_lease() -> None:
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease)
    h.submit(CALLER, spec)
    sends = h.send(CALLER, w.CancelTasks([ret(spec)], force=True))
    assert messages(sends, "worker", "w1", w.CancelRunning) == [
        w.CancelRunning(spec.task_id, True, lease.task_id)
    ]
    crash = w.TaskResult(lease.task_id, failure="crashed", exit_code=-9, error=b"crashed")
    sends = h.done("w1", crash)
    assert h.task_state(spec) is None
    assert isinstance(error_of(h.state.objects[ret(spec)].as_value()), TaskCancelledError)


def test_waiting_on_a_running_task_asks_its_worker_for_the_report_once() -> None:
    """A channel task's report gathers in its worker for a while (its executor's
    report pipe, read lazily); a task or a client that waits on its return asks
    for it at once, once."""
    h = Harness()
    lease = _granted_lease(h)
    spec = _leased(h, lease)
    h.submit(CALLER, spec)
    dependent = h.spec("dependent", deps=[ret(spec)])
    sends = h.submit(CALLER, dependent)
    assert messages(sends, "worker", "w1", w.ReadReports) == [w.ReadReports([spec.task_id])]
    assert messages(h.want(CALLER, ret(spec)), "worker", "w1", w.ReadReports) == [], "once"
    assert h.state.statistics()["reports_asked_for"] == 1
    # Nothing is asked for a task that the scheduler placed itself.
    waiting = h.spec("waiting", deps=[ret(dependent)])
    h.done("w1", _reported(spec))
    assert h.task_state(dependent) == "processing"
    assert messages(h.submit(CALLER, waiting), "worker", "w1", w.ReadReports) == []


def test_a_leased_tasks_worker_leaving_retries_it_the_usual_way() -> None:
    h = Harness()
    lease = _granted_lease(h)
    h.worker("w2", {"CPU": 2.0})
    spec = _leased(h, lease, max_retries=1)
    h.submit(CALLER, spec)
    sends = h.handle(WorkerLeft("w1"))
    assert assigned_ids(sends, "w2") == [spec.task_id]


# -- results handed to the waiting owner by the executor (_deliveries.py) ----


def test_an_owner_waiting_on_the_workers_host_gets_its_results_handed_over() -> None:
    h = Harness()
    h.handle(ClientJoined(b"c1", None, "", "host-w1", "unix://owner"))
    h.send(b"c1", w.ExportFunction(FUNCTION, CODE))
    h.worker("w1")
    waited, not_waited = h.spec("waited"), h.spec("not waited")
    sends = h.send(b"c1", w.SubmitTasks([waited, not_waited]), w.WantObjects([ret(waited)]))
    by_name = {a.spec.name: a for a in assigned(sends, "w1")}
    assert by_name["waited"].deliver == "unix://owner"
    assert by_name["not waited"].deliver == "", "nobody waits for it yet"

    # The executor says it handed the value over: the scheduler does not send it again.
    delivered = w.TaskResult(waited.task_id, returns=ok(waited).returns, delivered=True)
    assert values(h.done("w1", delivered), b"c1") == {}
    assert h.task_state(waited) is None, "done all the same"
    # And what it did not hand over comes the usual way.
    h.want(b"c1", ret(not_waited))
    assert ret(not_waited) in values(h.done("w1", ok(not_waited)), b"c1")


def test_results_are_not_handed_over_across_hosts_or_to_clients_without_an_address() -> None:
    h = Harness()
    h.handle(ClientJoined(b"far", None, "", "another-host", "unix://far"))
    h.handle(ClientJoined(b"plain", None, "", "host-w1", ""))
    for client_id in (b"far", b"plain"):
        h.send(client_id, w.ExportFunction(FUNCTION, CODE))
    h.worker("w1", {"CPU": 4.0})
    for client_id in (b"far", b"plain"):
        spec = h.spec()
        sends = h.send(client_id, w.SubmitTasks([spec]), w.WantObjects([ret(spec)]))
        [a] = assigned(sends, "w1")
        assert a.deliver == ""


def test_a_task_waiting_for_a_leased_resource_takes_the_lease_back() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0, "R": 1.0})
    lease = h.spec("lease", resources={"CPU": 1.0, "R": 1.0}, num_returns=0, channel_to="unix://c1")
    h.submit(b"c1", lease)
    assert h.task_state(lease) == "processing"
    waiting = h.spec("t", resources={"CPU": 1.0, "R": 1.0})
    sends = h.submit(b"c1", waiting)
    assert h.task_state(waiting) == "ready"
    assert messages(sends, "worker", "w1", w.CancelRunning) == [w.CancelRunning(lease.task_id)]
    # Asked once; when the lease ends, the task runs.
    assert (
        messages(
            h.submit(b"c1", h.spec("u", resources={"R": 1.0})), "worker", "w1", w.CancelRunning
        )
        == []
    )
    h.done("w1", w.TaskResult(lease.task_id))
    assert h.task_state(waiting) == "processing"
    assert not h.state.leases


def test_a_task_that_could_not_run_there_anyway_leaves_the_lease() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0})
    lease = h.spec("lease", num_returns=0, channel_to="unix://c1")
    h.submit(b"c1", lease)
    sends = h.submit(b"c1", h.spec("gpu", resources={"CPU": 1.0, "GPU": 1.0}))
    assert messages(sends, "worker", "w1", w.CancelRunning) == []
