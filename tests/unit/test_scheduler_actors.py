"""The actor part of the scheduler's state machine, driven event by event.

No processes: the tests play the clients and the workers, and ``validate()``
runs after every step. An actor is a creation task (its id is the actor's id,
its one return the *anchor* every handle holds) and its method calls are tasks
bound to it, which carry the anchor in ``nested`` as the client does.
"""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

import msgspec
import pytest
from send_checks import query_message

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.exceptions import ActorDiedError, ActorError, ObjectLostError, TaskError
from taskgraph.scheduler.state import (
    ClientJoined,
    ClientLeft,
    ClientSent,
    Event,
    SchedulerState,
    Send,
    WorkerJoined,
    WorkerLeft,
    WorkerSent,
)

M = TypeVar("M")

CLASS = b"c" * 16
FUNCTION = b"f" * 16
METHODS = {"incr": 1, "get": 1, "pair": 2}


class Harness:
    def __init__(self) -> None:
        self.state = SchedulerState("test-cluster")
        self._next_id = 0

    def handle(self, *events: Event) -> list[Send]:
        sends = self.state.handle(*events)
        self.state.validate()
        return sends

    def new_id(self) -> bytes:
        self._next_id += 1
        return self._next_id.to_bytes(12, "big") + b"\0\0\0\0"

    # -- specs ---------------------------------------------------------------

    def task(
        self, deps: list[bytes] | tuple[bytes, ...] = (), resources: dict[str, float] | None = None
    ) -> w.TaskSpec:
        return w.TaskSpec(
            task_id=self.new_id(),
            function_id=FUNCTION,
            name="task",
            args=b"",
            deps=list(deps),
            resources={"CPU": 1.0} if resources is None else resources,
        )

    def actor(
        self,
        place: dict[str, float] | None = None,
        hold: dict[str, float] | None = None,
        deps: list[bytes] | tuple[bytes, ...] = (),
        nested: list[bytes] | tuple[bytes, ...] = (),
        **options: Any,
    ) -> w.TaskSpec:
        """A creation task; by default placed with a CPU and holding nothing, as in Ray."""
        actor_id = self.new_id()
        return w.TaskSpec(
            task_id=actor_id,
            function_id=CLASS,
            name="Counter.__init__",
            args=b"",
            deps=list(deps),
            nested=list(nested),
            resources={"CPU": 1.0} if place is None else place,
            actor_id=actor_id,
            actor=w.ActorSpec("Counter", dict(METHODS), hold=hold or {}, **options),
        )

    def call(
        self,
        actor: w.TaskSpec,
        method: str = "incr",
        deps: list[bytes] | tuple[bytes, ...] = (),
        num_returns: int = 1,
    ) -> w.TaskSpec:
        return w.TaskSpec(
            task_id=self.new_id(),
            function_id=b"",
            name=f"Counter.{method}",
            args=b"",
            deps=list(deps),
            nested=[anchor(actor)],
            num_returns=num_returns,
            resources={},
            actor_id=actor.actor_id,
            method=method,
        )

    # -- peers -----------------------------------------------------------------

    def client(self, client_id: bytes = b"c1", namespace: str = "") -> None:
        self.handle(ClientJoined(client_id, namespace=namespace))
        self.send(client_id, w.ExportFunction(CLASS, b"class code"))
        self.send(client_id, w.ExportFunction(FUNCTION, b"function code"))

    def worker(self, worker_id: str, resources: dict[str, float] | None = None) -> list[Send]:
        info = w.WorkerInfo(worker_id, "host", f"tcp://{worker_id}:1", resources or {"CPU": 2.0})
        return self.handle(WorkerJoined(info))

    def send(self, client_id: bytes, *msgs: Any) -> list[Send]:
        return self.handle(ClientSent(client_id, list(msgs)))

    def submit(self, *specs: w.TaskSpec, client_id: bytes = b"c1") -> list[Send]:
        return self.send(client_id, w.SubmitTasks(list(specs)))

    def from_worker(self, worker_id: str, *msgs: Any) -> list[Send]:
        return self.handle(WorkerSent(worker_id, list(msgs)))

    def done(self, worker_id: str, *results: w.TaskResult) -> list[Send]:
        return self.from_worker(worker_id, w.TasksDone(list(results)))

    def died(self, worker_id: str, actor: w.TaskSpec, exit_code: int = -9) -> list[Send]:
        return self.from_worker(worker_id, w.ActorDied(actor.actor_id, exit_code, pid=4242))

    def release(self, *oids: bytes, client_id: bytes = b"c1") -> list[Send]:
        return self.send(client_id, w.ReleaseRefs(list(oids)))

    def want(self, *oids: bytes, client_id: bytes = b"c1") -> dict[bytes, w.Value]:
        return values(self.send(client_id, w.WantObjects(list(oids))), client_id)

    def error(self, oid: bytes) -> BaseException:
        """What a caller gets for a failed object."""
        return error_of(self.want(oid)[oid])

    def create_named(self, spec: w.TaskSpec, client_id: bytes = b"c1") -> dict[str, Any]:
        sends = self.send(client_id, w.CreateNamedActor(7, spec))
        [reply] = messages(sends, "client", client_id, w.QueryReply)
        assert reply.request_id == 7
        result: dict[str, Any] = reply.result
        return result

    def query(self, what: str, arg: Any = None, client_id: bytes = b"c1") -> Any:
        sends = self.send(client_id, query_message(3, what, arg))
        [reply] = messages(sends, "client", client_id, w.QueryReply)
        return reply.result

    # -- looking -----------------------------------------------------------------

    def actor_state(self, actor: w.TaskSpec) -> str | None:
        rec = self.state.actors.actors.get(actor.actor_id)
        return None if rec is None else rec.state

    def task_state(self, spec: w.TaskSpec) -> str | None:
        task = self.state.tasks.get(spec.task_id)
        return None if task is None else task.state

    def refs(self, oid: bytes) -> int:
        return self.state.objects[oid].refs

    def available(self, worker_id: str, name: str = "CPU") -> float:
        return self.state.workers[worker_id].available.get(name, 0.0)


def anchor(actor: w.TaskSpec) -> bytes:
    return return_ids(actor.task_id, 1)[0]


def ret(spec: w.TaskSpec, index: int = 0) -> bytes:
    return return_ids(spec.task_id, spec.num_returns)[index]


def ok(spec: w.TaskSpec) -> w.TaskResult:
    returns = [w.ReturnValue(o, data=b"value") for o in return_ids(spec.task_id, spec.num_returns)]
    return w.TaskResult(spec.task_id, returns=returns)


def raised(spec: w.TaskSpec, exc: BaseException | None = None) -> w.TaskResult:
    exc = exc or TaskError.from_exception(ValueError("boom"), spec.name)
    return w.TaskResult(spec.task_id, error=pickle.dumps(exc), failure="task")


def messages(sends: list[Send], to: str, dest: Any, kind: type[M]) -> list[M]:
    return [
        m for s in sends if s.to == to and s.id == dest for m in s.messages if isinstance(m, kind)
    ]


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


def alive_actor(h: Harness, worker_id: str = "w1", **options: Any) -> tuple[w.TaskSpec, list[Send]]:
    """Submit an actor and report its constructor done on ``worker_id``."""
    spec = h.actor(**options)
    assert assigned_ids(h.submit(spec), worker_id) == [spec.task_id]
    sends = h.done(worker_id, ok(spec))
    assert h.actor_state(spec) == "alive"
    return spec, sends


# -- creation and resources ------------------------------------------------------


def test_an_actor_is_placed_with_a_cpu_and_gives_it_back_once_its_constructor_returns() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.actor()
    [a] = assigned(h.submit(spec), "w1")
    assert a.spec == spec and a.function == b"class code"
    assert h.available("w1") == 0.0, "the constructor runs on the CPU it was placed with"
    assert h.actor_state(spec) == "pending"

    h.done("w1", ok(spec))
    assert h.available("w1") == 1.0, "an actor without num_cpus holds no CPU once alive"
    [described] = h.query("actors")
    assert described["state"] == "ALIVE" and described["node_id"] == "w1"
    assert described["class_name"] == "Counter" and described["methods"] == METHODS
    # The freed CPU runs other work.
    task = h.task()
    assert assigned_ids(h.submit(task), "w1") == [task.task_id]


def test_an_actor_with_explicit_cpus_holds_them_for_life() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 2.0})
    spec, _ = alive_actor(h, place={"CPU": 2.0}, hold={"CPU": 2.0})
    assert h.available("w1") == 0.0
    task = h.task()
    assert assigned(h.submit(task), "w1") == [], "the actor's CPUs are not free"

    sends = h.died("w1", spec)
    assert h.actor_state(spec) == "dead"
    assert h.available("w1") == 1.0
    assert assigned_ids(sends, "w1") == [task.task_id], "its CPUs are back as it dies"


def test_an_actor_that_fits_nowhere_waits_for_a_worker() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.actor(place={"CPU": 4.0}, hold={"CPU": 4.0})
    sends = h.submit(spec)
    assert assigned(sends, "w1") == []
    [notice] = messages(sends, "client", b"c1", w.Notice)
    assert "cannot be scheduled" in notice.text
    assert assigned_ids(h.worker("w2", {"CPU": 4.0}), "w2") == [spec.task_id]


def test_started_records_the_actors_pid() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor()
    h.submit(spec)
    h.from_worker("w1", w.ActorStarted(spec.actor_id, 4321))
    h.from_worker("w1", w.ActorStarted(b"\x77" * 16, 1))  # an unknown actor: ignored
    [described] = h.query("actors")
    assert described["pid"] == 4321 and described["state"] == "PENDING"


# -- calls ---------------------------------------------------------------------------


def test_calls_before_the_actor_is_alive_wait_then_go_in_submission_order() -> None:
    h = Harness()
    h.client()
    spec = h.actor()
    calls = [h.call(spec) for _ in range(3)]
    h.submit(spec, *calls)
    assert [h.task_state(c) for c in calls] == ["ready"] * 3

    assert assigned_ids(h.worker("w1"), "w1") == [spec.task_id], "calls wait for the actor"
    sends = h.done("w1", ok(spec))
    handed = assigned(sends, "w1")
    assert [a.spec.task_id for a in handed] == [c.task_id for c in calls]
    assert all(a.function == b"" and a.gpu_ids == [] for a in handed)
    assert h.available("w1") == 2.0, "calls hold no resources of their own"

    for call in calls:
        h.done("w1", ok(call))
    assert all(h.task_state(c) is None for c in calls)


def test_a_call_with_ready_arguments_waits_behind_an_earlier_call_with_pending_ones() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    slow = h.task()
    first = h.call(spec, deps=[ret(slow)])
    second = h.call(spec)
    sends = h.submit(slow, first, second)
    assert assigned_ids(sends, "w1") == [slow.task_id], "neither call is handed over yet"
    assert h.task_state(first) == "waiting" and h.task_state(second) == "ready"

    sends = h.done("w1", ok(slow))
    [a, b] = assigned(sends, "w1")
    assert (a.spec.task_id, b.spec.task_id) == (first.task_id, second.task_id)
    assert [v.object_id for v in a.inputs] == [ret(slow)]


def test_a_queued_call_whose_argument_fails_lets_the_calls_behind_it_go() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    slow = h.task()
    first = h.call(spec, deps=[ret(slow)])
    second = h.call(spec)
    h.submit(slow, first, second)

    sends = h.done("w1", raised(slow))
    assert isinstance(h.error(ret(first)), ValueError)
    assert assigned_ids(sends, "w1") == [second.task_id], "the failed head no longer blocks"


def test_a_cancelled_queued_call_lets_the_calls_behind_it_go() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    slow = h.task()
    first = h.call(spec, deps=[ret(slow)])
    second = h.call(spec)
    h.submit(slow, first, second)

    sends = h.send(b"c1", w.CancelTasks([ret(first)], recursive=False))
    assert h.task_state(first) is None
    assert assigned_ids(sends, "w1") == [second.task_id]


def test_a_call_with_a_missing_argument_fails_and_does_not_block_the_queue() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    gone = h.call(spec, deps=[b"\x55" * 16])
    then = h.call(spec)
    sends = h.submit(gone, then)
    assert isinstance(h.error(ret(gone)), ObjectLostError)
    assert assigned_ids(sends, "w1") == [then.task_id]


def test_a_call_result_reaches_its_caller_and_a_failed_call_leaves_the_actor_alive() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    good, bad = h.call(spec, "pair", num_returns=2), h.call(spec)
    h.submit(good, bad)
    h.want(ret(good, 0), ret(good, 1), ret(bad))
    sends = h.done("w1", ok(good), raised(bad, ActorError("Counter", "it raised")))
    got = values(sends, b"c1")
    assert got[ret(good, 0)].data == b"value" and got[ret(good, 1)].data == b"value"
    assert isinstance(error_of(got[ret(bad)]), ActorError)
    assert h.actor_state(spec) == "alive"


# -- constructor failures ------------------------------------------------------------


def test_a_failed_constructor_fails_its_calls_and_ends_its_process() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.actor(max_restarts=2, name="counter")
    queued = h.call(spec)
    h.create_named(spec)
    h.submit(queued)
    error = pickle.dumps(ActorError("Counter", "its constructor raised ValueError: nope"))
    sends = h.done("w1", w.TaskResult(spec.task_id, error=error, failure="task"))

    assert messages(sends, "worker", "w1", w.KillActor) == [w.KillActor(spec.actor_id, True)]
    assert h.actor_state(spec) == "dead", "a constructor that raises is not restarted"
    assert h.available("w1") == 1.0
    got = h.want(anchor(spec), ret(queued))
    for oid in (anchor(spec), ret(queued)):
        assert got[oid].error == error, "the caller sees what the constructor raised"
    later = h.call(spec)
    h.submit(later)
    assert h.want(ret(later))[ret(later)].error == error
    assert h.query("get_actor", {"name": "counter"}) is None, "its name is free again"


def test_a_failed_constructor_argument_fails_the_actor_and_its_calls() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    arg = h.task()
    spec = h.actor(deps=[ret(arg)], max_restarts=1)
    call = h.call(spec)
    h.submit(arg, spec, call)
    assert h.refs(ret(arg)) == 3, "client, creation task and the actor hold the argument"

    h.done("w1", raised(arg))
    assert h.actor_state(spec) == "dead"
    assert isinstance(h.error(ret(call)), ValueError)
    assert h.refs(ret(arg)) == 1, "only the client holds it now"
    h.release(ret(arg))
    assert ret(arg) not in h.state.objects


def test_an_actor_with_a_missing_constructor_argument_is_dead_at_once() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(deps=[b"\x66" * 16], nested=[b"\x67" * 16])
    h.submit(spec)
    assert isinstance(h.error(anchor(spec)), ObjectLostError)
    assert h.actor_state(spec) == "dead"


# -- restarts ------------------------------------------------------------------------


def test_a_restarted_actor_runs_its_constructor_again_with_the_arguments_it_kept() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    arg = w.PutObject(h.new_id(), data=b"argument")
    inner = w.PutObject(h.new_id(), data=b"inner")
    h.send(b"c1", arg, inner)
    spec = h.actor(deps=[arg.object_id], nested=[inner.object_id], max_restarts=1)
    h.submit(spec)
    h.release(arg.object_id, inner.object_id)
    assert h.refs(arg.object_id) == 2 and h.refs(inner.object_id) == 2
    h.done("w1", ok(spec))
    assert h.refs(arg.object_id) == 1, "the actor keeps its arguments for a restart"
    assert h.refs(inner.object_id) == 1

    sends = h.died("w1", spec)
    assert h.actor_state(spec) == "restarting"
    [again] = assigned(sends, "w1")
    assert again.spec == spec and [v.data for v in again.inputs] == [b"argument"]
    assert h.refs(arg.object_id) == 2 and h.refs(inner.object_id) == 2
    h.done("w1", ok(spec))
    assert h.actor_state(spec) == "alive"

    h.died("w1", spec)
    assert h.actor_state(spec) == "dead", "no restarts left"
    assert arg.object_id not in h.state.objects and inner.object_id not in h.state.objects


def test_calls_in_flight_fail_when_the_actor_restarts_without_task_retries() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=1)
    running = [h.call(spec), h.call(spec)]
    h.submit(*running)
    h.want(*(ret(c) for c in running))
    sends = h.died("w1", spec, exit_code=-11)
    got = values(sends, b"c1")
    for call in running:
        err = error_of(got[ret(call)])
        assert isinstance(err, ActorDiedError) and "signal 11" in str(err)
    assert assigned_ids(sends, "w1") == [spec.task_id]

    later = h.call(spec)
    assert assigned(h.submit(later), "w1") == [], "calls wait for the restart"
    assert assigned_ids(h.done("w1", ok(spec)), "w1") == [later.task_id]


def test_calls_in_flight_are_retried_in_order_ahead_of_later_calls() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=2, max_task_retries=1)
    first, second = h.call(spec), h.call(spec)
    h.submit(first, second)
    h.done("w1", ok(first))
    third, fourth = h.call(spec), h.call(spec)
    h.submit(third)

    sends = h.died("w1", spec)
    assert assigned_ids(sends, "w1") == [spec.task_id], "only the constructor, first"
    h.submit(fourth)
    sends = h.done("w1", ok(spec))
    assert assigned_ids(sends, "w1") == [second.task_id, third.task_id, fourth.task_id]

    # Each call is retried once: the second death fails what it already retried.
    h.want(ret(second), ret(third), ret(fourth))
    h.done("w1", ok(second))
    sends = h.died("w1", spec)
    got = values(sends, b"c1")
    assert isinstance(error_of(got[ret(third)]), ActorDiedError)
    assert ret(fourth) not in got, "it had never been retried"
    assert assigned_ids(h.done("w1", ok(spec)), "w1") == [fourth.task_id]
    sends = h.died("w1", spec)
    assert isinstance(error_of(values(sends, b"c1")[ret(fourth)]), ActorDiedError)
    assert h.actor_state(spec) == "dead", "no restarts left"


def test_an_actor_without_restarts_fails_in_flight_queued_and_later_calls() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    slow = h.task()
    running = h.call(spec)
    queued = h.call(spec, deps=[ret(slow)])
    h.submit(slow, running, queued)
    h.died("w1", spec, exit_code=3)
    assert h.actor_state(spec) == "dead"
    for call in (running, queued):
        err = h.error(ret(call))
        assert isinstance(err, ActorDiedError) and "exited with code 3" in str(err)
    later = h.call(spec)
    h.submit(later)
    assert isinstance(h.error(ret(later)), ActorDiedError)
    assert h.task_state(slow) == "processing", "unrelated work goes on"


def test_a_graceful_exit_is_not_restarted() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=2)
    ended = w.ActorDied(spec.actor_id, 0, pid=4242, ending="it called exit_actor()")
    sends = h.from_worker("w1", ended)
    assert assigned(sends, "w1") == []
    assert h.actor_state(spec) == "dead"
    later = h.call(spec)
    h.submit(later)
    err = h.error(ret(later))
    assert isinstance(err, ActorDiedError) and "exit_actor()" in str(err)


def test_a_constructor_that_crashes_its_process_is_restarted() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.actor(max_restarts=1)
    h.submit(spec)
    sends = h.died("w1", spec)
    assert assigned_ids(sends, "w1") == [spec.task_id], "placed again"
    assert h.available("w1") == 0.0
    h.died("w1", spec)
    assert h.actor_state(spec) == "dead"
    assert h.available("w1") == 1.0
    assert isinstance(h.error(anchor(spec)), ActorDiedError)


def test_stale_actor_died_reports_are_ignored() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    blocker = h.task()
    h.submit(blocker)
    spec = h.actor(max_restarts=2)
    h.submit(spec)
    assert h.task_state(spec) == "ready", "no CPU free: not placed"
    h.died("w1", spec)  # no process of it exists anywhere
    rec = h.state.actors.actors[spec.actor_id]
    assert (rec.state, rec.restarts_left) == ("pending", 2)
    h.died("w1", h.actor())  # an actor the scheduler never heard of
    assert assigned_ids(h.done("w1", ok(blocker)), "w1") == [spec.task_id]


# -- kill ----------------------------------------------------------------------------


def test_kill_asks_the_worker_and_the_death_report_ends_the_actor() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=2)
    sends = h.send(b"c1", w.KillActor(spec.actor_id, no_restart=True))
    assert messages(sends, "worker", "w1", w.KillActor) == [w.KillActor(spec.actor_id, True)]
    assert h.actor_state(spec) == "alive", "until the worker says the process is gone"
    sends = h.died("w1", spec)
    assert assigned(sends, "w1") == [], "not restarted"
    assert h.actor_state(spec) == "dead"
    later = h.call(spec)
    h.submit(later)
    err = h.error(ret(later))
    assert isinstance(err, ActorDiedError) and "kill()" in str(err)
    assert h.send(b"c1", w.KillActor(spec.actor_id)) == [], "killing the dead does nothing"


def test_kill_without_no_restart_restarts_the_actor() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=1)
    sends = h.send(b"c1", w.KillActor(spec.actor_id, no_restart=False))
    assert messages(sends, "worker", "w1", w.KillActor) == [w.KillActor(spec.actor_id, False)]
    assert assigned_ids(h.died("w1", spec), "w1") == [spec.task_id]


def test_kill_during_the_constructor_goes_to_the_worker_running_it() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(max_restarts=1)
    h.submit(spec)
    sends = h.send(b"c1", w.KillActor(spec.actor_id))
    assert messages(sends, "worker", "w1", w.KillActor) == [w.KillActor(spec.actor_id, True)]
    h.died("w1", spec)
    assert h.actor_state(spec) == "dead"
    assert h.available("w1") == 2.0


def test_kill_of_an_actor_not_placed_yet_ends_it_at_once() -> None:
    h = Harness()
    h.client()
    spec = h.actor()
    call = h.call(spec)
    h.submit(spec, call)
    h.send(b"c1", w.KillActor(spec.actor_id))
    assert h.actor_state(spec) == "dead"
    assert isinstance(h.error(ret(call)), ActorDiedError)
    assert assigned(h.worker("w1"), "w1") == [], "nothing left to place"


# -- names ---------------------------------------------------------------------------


def test_a_named_actor_is_created_found_and_refused_twice() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(name="counter", namespace="ns")
    assert h.create_named(spec) == {"actor_id": spec.actor_id.hex()}
    assert h.task_state(spec) == "processing"

    clash = h.actor(name="counter", namespace="ns")
    reply = h.create_named(clash)
    assert "already exists" in reply["error"] and "get_if_exists" in reply["error"]
    assert clash.task_id not in h.state.tasks

    again = h.actor(name="counter", namespace="ns", get_if_exists=True)
    reply = h.create_named(again)
    assert reply["existing"] is True and reply["actor_id"] == spec.actor_id.hex()
    assert reply["methods"] == METHODS and reply["class_name"] == "Counter"
    assert again.task_id not in h.state.tasks

    elsewhere = h.actor(name="counter", namespace="other")
    assert h.create_named(elsewhere) == {"actor_id": elsewhere.actor_id.hex()}, "names are scoped"

    found = h.query("get_actor", {"name": "counter", "namespace": "ns"})
    assert found["actor_id"] == spec.actor_id.hex() and found["namespace"] == "ns"
    assert h.query("get_actor", {"name": "counter"}) is None, "not in the default namespace"
    assert h.query("get_actor", {"name": "nobody", "namespace": "ns"}) is None
    assert len(h.query("actors")) == 2


def test_a_dead_actors_name_can_be_taken_again() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(name="counter")
    h.create_named(spec)
    h.done("w1", ok(spec))
    h.died("w1", spec)
    assert h.query("get_actor", {"name": "counter"}) is None
    [dead] = h.query("actors")
    assert dead["state"] == "DEAD"
    successor = h.actor(name="counter")
    assert h.create_named(successor) == {"actor_id": successor.actor_id.hex()}
    assert h.query("get_actor", {"name": "counter"})["actor_id"] == successor.actor_id.hex()


def test_a_restarting_named_actor_keeps_its_name() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(name="counter", max_restarts=1)
    h.create_named(spec)
    h.done("w1", ok(spec))
    h.died("w1", spec)
    found = h.query("get_actor", {"name": "counter"})
    assert found["state"] == "RESTARTING" and found["node_id"] is None


# -- handles and lifetime --------------------------------------------------------------


def test_dropping_the_last_handle_stops_the_actor_gracefully_and_forgets_it() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, place={"CPU": 1.0}, hold={"CPU": 1.0}, name="counter")
    call = h.call(spec)
    h.submit(call)
    h.done("w1", ok(call))
    h.release(ret(call))

    sends = h.release(anchor(spec))
    assert messages(sends, "worker", "w1", w.KillActor) == [
        w.KillActor(spec.actor_id, True, graceful=True)
    ]
    assert h.actor_state(spec) is None and h.query("actors") == []
    assert h.query("get_actor", {"name": "counter"}) is None
    assert h.available("w1") == 2.0
    assert h.died("w1", spec, exit_code=0) == [], "its exit report finds nothing to do"
    later = h.call(spec)
    h.submit(later)
    err = h.error(ret(later))
    assert isinstance(err, ActorDiedError) and "no such actor" in str(err)


def test_queued_calls_keep_the_actor_alive_after_the_handle_is_dropped() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h)
    call = h.call(spec)
    h.submit(call)
    sends = h.release(anchor(spec))
    assert messages(sends, "worker", "w1", w.KillActor) == []
    sends = h.done("w1", ok(call))
    assert messages(sends, "worker", "w1", w.KillActor) == [
        w.KillActor(spec.actor_id, True, graceful=True)
    ]
    assert h.actor_state(spec) is None


def test_dropping_the_handle_during_the_constructor_stops_the_actor_when_it_is_up() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor()
    h.submit(spec)
    h.release(anchor(spec))
    assert h.actor_state(spec) == "pending", "the anchor is not made yet"
    sends = h.done("w1", ok(spec))
    assert messages(sends, "worker", "w1", w.KillActor) == [
        w.KillActor(spec.actor_id, True, graceful=True)
    ]
    assert h.actor_state(spec) is None


def test_dropping_the_handle_of_a_restarting_actor_ends_its_new_process() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec, _ = alive_actor(h, max_restarts=1)
    h.died("w1", spec)
    assert h.task_state(spec) == "processing", "the constructor runs again"
    sends = h.release(anchor(spec))
    assert messages(sends, "worker", "w1", w.KillActor) != [], "the new process must not leak"
    assert h.actor_state(spec) is None
    assert h.available("w1") == 1.0
    assert h.done("w1", ok(spec)) == [], "its late constructor result is stale"


def test_a_detached_actor_outlives_its_handles_until_killed() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, detached=True, name="service")
    assert h.refs(anchor(spec)) == 2, "the client and the actor itself"
    sends = h.release(anchor(spec))
    assert messages(sends, "worker", "w1", w.KillActor) == []
    assert h.actor_state(spec) == "alive"
    assert h.query("get_actor", {"name": "service"})["state"] == "ALIVE"

    h.send(b"c1", w.KillActor(spec.actor_id))
    h.died("w1", spec)
    assert h.actor_state(spec) is None, "dead and no handle left: forgotten"
    assert anchor(spec) not in h.state.objects


# -- workers leaving ---------------------------------------------------------------------


def test_an_actor_on_a_worker_that_leaves_restarts_elsewhere() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec, _ = alive_actor(h, max_restarts=1, max_task_retries=1)
    call = h.call(spec)
    h.submit(call)
    h.handle(WorkerLeft("w1"))
    assert h.actor_state(spec) == "restarting"
    assert h.task_state(call) == "ready", "retried on the new process"
    sends = h.worker("w2")
    assert assigned_ids(sends, "w2") == [spec.task_id]
    assert assigned_ids(h.done("w2", ok(spec)), "w2") == [call.task_id]
    assert h.query("actors")[0]["node_id"] == "w2"


def test_an_actor_on_a_worker_that_leaves_dies_without_restarts() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    h.worker("w2")
    spec, _ = alive_actor(h)
    call = h.call(spec)
    h.submit(call)
    h.want(ret(call))
    sends = h.handle(WorkerLeft("w1"))
    err = error_of(values(sends, b"c1")[ret(call)])
    assert isinstance(err, ActorDiedError) and "w1 left the cluster" in str(err)
    assert h.actor_state(spec) == "dead"


def test_a_worker_leaving_during_the_constructor_restarts_or_fails_the_actor() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    once = h.actor(max_restarts=1)
    never = h.actor()
    h.submit(once, never)
    sends = h.handle(WorkerLeft("w1"))
    assert h.actor_state(once) == "restarting" and h.task_state(once) == "ready"
    assert h.actor_state(never) == "dead"
    assert isinstance(h.error(anchor(never)), ActorDiedError)
    assert sends == [] or all(s.to == "client" for s in sends)
    assert assigned_ids(h.worker("w2"), "w2") == [once.task_id]


def test_a_worker_leaving_does_not_touch_an_actor_that_moved_away_from_it() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.actor(max_restarts=1)
    h.submit(spec)
    blocker = h.task()
    h.submit(blocker)  # waits: w1's CPU runs the constructor
    h.died("w1", spec)  # the constructor crashed; w1 runs the blocker now
    assert h.task_state(spec) == "ready" and h.task_state(blocker) == "processing"
    h.handle(WorkerLeft("w1"))
    rec = h.state.actors.actors[spec.actor_id]
    assert (rec.state, rec.restarts_left) == ("restarting", 0), "no process of it was on w1"
    assert assigned_ids(h.worker("w2"), "w2") == [spec.task_id]


def test_a_worker_leaving_with_the_only_handle_of_an_actor_restarting_there() -> None:
    """Its executor's client held the handle; the worker ran the actor's new constructor."""
    h = Harness()
    h.client()
    h.worker("w1")
    executor = b"executor-client"
    spec = h.actor(max_restarts=1)
    relay = w.FromClient(executor, [w.ExportFunction(CLASS, b"class code"), w.SubmitTasks([spec])])
    h.from_worker("w1", relay)
    h.done("w1", ok(spec))
    h.died("w1", spec)
    assert h.task_state(spec) == "processing"
    h.handle(WorkerLeft("w1"))
    assert h.actor_state(spec) is None, "the last handle went with the worker"


def test_a_gpu_actor_keeps_its_gpu_while_alive() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 4.0, "GPU": 2.0})
    spec = h.actor(place={"CPU": 1.0, "GPU": 1.0}, hold={"GPU": 1.0})
    [a] = assigned(h.submit(spec), "w1")
    assert a.gpu_ids == [0]
    h.done("w1", ok(spec))
    worker = h.state.workers["w1"]
    assert worker.gpu_free == [0.0, 1.0] and h.available("w1", "GPU") == 1.0
    assert h.state.actors.actors[spec.actor_id].gpu_ids == [0]
    task = h.task(resources={"GPU": 1.0})
    [b] = assigned(h.submit(task), "w1")
    assert b.gpu_ids == [1], "the actor's GPU is not handed out"
    h.died("w1", spec)
    assert worker.gpu_free == [1.0, 0.0]


def test_a_restarted_gpu_actor_gets_a_gpu_again() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 4.0, "GPU": 1.0})
    spec = h.actor(place={"CPU": 1.0, "GPU": 0.5}, hold={"GPU": 0.5}, max_restarts=1)
    h.submit(spec)
    h.done("w1", ok(spec))
    assert h.state.workers["w1"].gpu_free == [0.5]
    [again] = assigned(h.died("w1", spec), "w1")
    assert again.gpu_ids == [0]
    h.done("w1", ok(spec))
    assert h.state.workers["w1"].gpu_free == [0.5]
    h.send(b"c1", w.KillActor(spec.actor_id))
    h.died("w1", spec)
    assert h.state.workers["w1"].gpu_free == [1.0]


def test_an_actor_restarts_when_an_object_inside_its_arguments_was_already_gone() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    spec = h.actor(nested=[b"\x68" * 16], max_restarts=1)
    h.submit(spec)
    h.done("w1", ok(spec))
    assert assigned_ids(h.died("w1", spec), "w1") == [spec.task_id]
    h.done("w1", ok(spec))
    assert h.actor_state(spec) == "alive"


def test_a_death_reported_by_another_worker_is_ignored() -> None:
    h = Harness()
    h.client()
    h.worker("w1")
    h.worker("w2")
    spec, _ = alive_actor(h, "w1", max_restarts=1)
    h.died("w2", spec)  # w2 never ran it: a stale or confused report
    assert h.actor_state(spec) == "alive"
    h.died("w1", spec)
    assert h.actor_state(spec) == "restarting"


# -- direct calls whose caller left --------------------------------------------------


def direct_call(h: Harness, actor: w.TaskSpec, caller: bytes) -> w.TaskSpec:
    """A call its caller (an 8-byte client id) sends straight to the actor's process."""
    spec = h.call(actor)
    task_id = caller + spec.task_id[8:]
    return w.TaskSpec(
        **{**msgspec.structs.asdict(spec), "task_id": task_id, "channel": actor.actor_id}
    )


@pytest.mark.parametrize("caller_left_first", [False, True])
def test_direct_calls_a_departed_caller_recorded_but_never_sent_are_cancelled(
    caller_left_first: bool,
) -> None:
    """A caller records its direct calls, then sends them (calls with ref arguments
    wait for a ping first); it dies in between. The actor's process says which of
    its calls it got and has not answered: the ones it never got are cancelled and
    let go of their arguments once the caller is gone, in either order; the ones
    it got run on and are reported."""
    h = Harness()
    h.client()
    caller = b"caller-1"
    h.client(caller)
    h.worker("w1")
    actor, _ = alive_actor(h)
    arg = h.new_id()
    h.send(caller, w.PutObject(arg, data=b"argument"))
    got, answered, never = (direct_call(h, actor, caller) for _ in range(3))
    never = w.TaskSpec(**{**msgspec.structs.asdict(never), "deps": [arg]})
    h.submit(got, answered, never, client_id=caller)
    h.done("w1", ok(answered))
    assert h.task_state(never) == "processing"

    executor = b"executor"
    left = w.FromClient(executor, [w.CallerLeft(actor.actor_id, caller, [got.task_id])])
    if caller_left_first:
        h.handle(ClientLeft(caller))
        h.from_worker("w1", left)
    else:
        h.from_worker("w1", left)
        assert h.task_state(never) == "processing", "its records may still be on the way"
        h.handle(ClientLeft(caller))
    assert h.task_state(never) is None, "never sent: cancelled"
    assert arg not in h.state.objects, "and its argument let go"
    assert h.task_state(got) == "processing"
    h.done("w1", ok(got))
    assert h.task_state(got) is None
    assert h.state.workers["w1"].running == set()


def test_a_caller_whose_channel_closed_twice_keeps_the_calls_each_one_got() -> None:
    """The actor's process opened a second channel to a live caller after the first
    broke; each says, as it closes, which calls it got. Once the caller leaves,
    only the calls neither got are cancelled."""
    h = Harness()
    h.client()
    caller = b"caller-2"
    h.client(caller)
    h.worker("w1")
    actor, _ = alive_actor(h)
    first, second, never = (direct_call(h, actor, caller) for _ in range(3))
    h.submit(first, second, never, client_id=caller)
    executor = b"executor"
    for got in (first, second):
        h.from_worker(
            "w1", w.FromClient(executor, [w.CallerLeft(actor.actor_id, caller, [got.task_id])])
        )
    h.handle(ClientLeft(caller))
    assert h.task_state(never) is None, "never sent: cancelled"
    assert h.task_state(first) == "processing", "the first channel got it"
    assert h.task_state(second) == "processing"
