"""A Hypothesis rule-based machine over the scheduler's state machine, with actors.

Clients create actors (any resources, restarts, task retries, names, detached),
call them with arguments that may still be pending or may fail, kill them and
drop their handles; plain tasks run beside them. The machine plays the
workers: it reports what they were assigned as done or failed, and it models
each actor's *process* (born with a creation assignment, ended by a death
report, or by the worker leaving) so that it can say when a process dies.

After every step ``validate()`` holds, and so do checks the scheduler cannot
make about itself: every process the machine knows of is one the scheduler
knows of, or one it asked to end (no leaked actor processes); every call is
first handed over after every call submitted before it; GPUs add up; sends
go only to peers that are there, one send per peer. Liveness: once the
workers report everything and every actor is killed, no task is processing,
no actor is alive and no process is left.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from send_checks import check_sends, query_message

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.exceptions import ActorError, TaskError
from taskgraph.scheduler.actors import ActorRec, is_call
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

CLASS = b"c" * 16
FUNCTION = b"f" * 16
TASK_ERROR = pickle.dumps(TaskError.from_exception(ValueError("fuzz"), "fuzzed"))
CONSTRUCTOR_ERROR = pickle.dumps(ActorError("Fuzzed", "its constructor raised ValueError"))

# (resources to place the actor with, resources it holds while alive), as the client makes them.
actor_resources = st.sampled_from(
    [
        ({"CPU": 1.0}, {}),
        ({"CPU": 1.0}, {}),
        ({"CPU": 1.0}, {"CPU": 1.0}),
        ({"CPU": 2.0}, {"CPU": 2.0}),
        ({"CPU": 0.5}, {"CPU": 0.5}),
        ({}, {}),
        ({"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}),
        ({"CPU": 1.0, "GPU": 0.5}, {"GPU": 0.5}),
        ({"CPU": 8.0}, {"CPU": 8.0}),
    ]
)
task_resources = st.sampled_from([{"CPU": 1.0}, {"CPU": 1.0}, {"GPU": 1.0}, {}])
worker_cpus = st.sampled_from([1.0, 2.0, 4.0])
worker_gpus = st.sampled_from([0.0, 0.0, 1.0, 2.0])
names = st.sampled_from(["", "", "", "a", "b"])
namespaces = st.sampled_from(["", "ns"])
MAX_PEERS = 3  # clients, and workers: enough to move between, few enough to meet again
exit_codes = st.sampled_from([0, 1, -9, -11, -11])


def anchor_of(actor_id: bytes) -> bytes:
    return return_ids(actor_id, 1)[0]


@dataclass(slots=True)
class Process:
    """An actor's process on a worker, as the worker daemon would know it."""

    worker: str
    kill: str = ""  # "" | "graceful" | "kill": what the scheduler asked of it


class ActorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = SchedulerState("fuzz")
        self.next_id = 0
        self.worker_count = 0
        self.objects: list[bytes] = []  # every object id ever named, freed ones too
        self.assigned: dict[bytes, tuple[str, w.TaskSpec]] = {}  # from RunTasks
        self.actors: dict[bytes, w.TaskSpec] = {}  # creation specs, by actor id
        self.processes: dict[bytes, Process] = {}  # by actor id
        self.calls: dict[bytes, list[bytes]] = {}  # actor id -> its calls, in submission order
        self.handed: set[bytes] = set()  # calls handed to a worker at least once
        self.request_id = 0

    # -- plumbing ----------------------------------------------------------

    def new_id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(12, "big") + b"\0\0\0\0"

    def handle(self, *events: Event) -> list[Send]:
        sends = self.state.handle(*events)
        check_sends(self.state, sends)
        for send in sends:
            for msg in send.messages:
                self.check_message(send, msg)
        return sends

    def check_message(self, send: Send, msg: Any) -> None:
        if isinstance(msg, w.RunTasks):
            for a in msg.assignments:
                self.assigned_one(send.id, a)
        elif isinstance(msg, w.KillActor):
            process = self.processes.get(msg.actor_id)
            assert process is not None and process.worker == send.id, "kill sent to no process"
            if process.kill != "kill":
                process.kill = "graceful" if msg.graceful else "kill"
        elif isinstance(msg, w.FreeObjects):
            assert not set(msg.object_ids) & set(self.state.objects)
        elif isinstance(msg, w.ToClient):
            assert self.state.clients[msg.client_id].via_worker == send.id
            for inner in msg.messages:
                self.check_message(send, inner)
        elif isinstance(msg, w.ObjectsReady):
            for value in msg.values:
                if value.error is not None:
                    assert isinstance(pickle.loads(value.error), BaseException)

    def assigned_one(self, worker_id: str, a: w.Assignment) -> None:
        spec = a.spec
        task = self.state.tasks[spec.task_id]
        assert task.state == "processing" and task.worker == worker_id
        assert len(a.inputs) == len(spec.deps)
        self.assigned[spec.task_id] = (worker_id, spec)
        if spec.actor is not None:
            assert spec.actor_id not in self.processes, "a second process for one actor"
            self.processes[spec.actor_id] = Process(worker_id)
        elif is_call(spec):
            process = self.processes.get(spec.actor_id)
            assert process is not None and process.worker == worker_id, "call sent astray"
            if spec.task_id not in self.handed:
                for earlier in self.calls[spec.actor_id]:
                    if earlier == spec.task_id:
                        break
                    assert earlier in self.handed or earlier not in self.state.tasks, (
                        "a call overtook an earlier one"
                    )
                self.handed.add(spec.task_id)

    def send(self, client_id: bytes, *messages: Any) -> list[Send]:
        client = self.state.clients[client_id]
        if client.via_worker is not None:
            relay = w.FromClient(client_id, list(messages))
            return self.handle(WorkerSent(client.via_worker, [relay]))
        return self.handle(ClientSent(client_id, list(messages)))

    def reply(self, sends: list[Send], client_id: bytes, request_id: int) -> Any:
        for send in sends:
            for msg in send.messages:
                inner = msg.messages if isinstance(msg, w.ToClient) else [msg]
                if isinstance(msg, w.ToClient) and msg.client_id != client_id:
                    continue
                for m in inner:
                    if isinstance(m, w.QueryReply) and m.request_id == request_id:
                        return m.result
        raise AssertionError(f"no reply to request {request_id}")

    def query(self, client_id: bytes, what: str, arg: Any = None) -> Any:
        self.request_id += 1
        sends = self.send(client_id, query_message(self.request_id, what, arg))
        return self.reply(sends, client_id, self.request_id)

    def pick_client(self, data: st.DataObject) -> bytes:
        return data.draw(st.sampled_from(sorted(self.state.clients)), label="client")

    def pick_worker(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.state.workers)), label="worker")

    def some_objects(self, data: st.DataObject, label: str, max_size: int = 2) -> list[bytes]:
        """Mostly live objects; now and then one that is gone."""
        alive = sorted(self.state.objects)
        if not alive and not self.objects:
            return []
        pool = st.sampled_from(alive) if alive else st.nothing()
        if self.objects:
            pool = pool | st.sampled_from(self.objects)
        return data.draw(st.lists(pool, max_size=max_size, unique=True), label=label)

    def process_at(self, rec: ActorRec) -> str | None:
        """Where the scheduler believes the actor's process runs, if anywhere."""
        if rec.state == "alive":
            return rec.worker
        creation = self.state.tasks.get(rec.actor_id)
        if rec.state != "dead" and creation is not None and creation.state == "processing":
            return creation.worker
        return None

    def stale(self, task_id: bytes) -> bool:
        """An assigned task the scheduler dropped: its process was asked to end."""
        task = self.state.tasks.get(task_id)
        if task is not None and task.state == "processing":
            return False
        _worker, spec = self.assigned[task_id]
        process = self.processes.get(spec.actor_id)
        return bool(spec.actor_id) and process is not None and process.kill != ""

    def forget_process(self, actor_id: bytes) -> Process:
        """The process is gone: the worker reports none of its tasks any more."""
        process = self.processes.pop(actor_id)
        for task_id, (worker_id, spec) in list(self.assigned.items()):
            if spec.actor_id == actor_id and worker_id == process.worker:
                del self.assigned[task_id]
        return process

    def forget_worker(self, worker_id: str) -> None:
        self.assigned = {t: a for t, a in self.assigned.items() if a[0] != worker_id}
        self.processes = {a: p for a, p in self.processes.items() if p.worker != worker_id}

    # -- clients -----------------------------------------------------------

    # Hypothesis orders rules by their number of arguments and draws the first
    # valid one most often: the rules that move actors along (an actor is made,
    # its process ends, a worker reports) take one argument, every other rule
    # two or more.

    @initialize(cpus=worker_cpus, gpus=worker_gpus)
    def a_client_and_a_worker(self, cpus: float, gpus: float) -> None:
        self.client_joins(None, via_worker=False)
        self.worker_joins(cpus, gpus)

    @precondition(lambda self: len(self.state.clients) < MAX_PEERS)
    @rule(data=st.data(), via_worker=st.booleans())
    def client_joins(self, data: st.DataObject | None, via_worker: bool) -> None:
        """A driver, or code in a task, whose client reaches the scheduler via its worker."""
        if via_worker and data is not None and self.state.workers:
            worker_id = self.pick_worker(data)
            client_id = b"executor" + self.new_id()[4:12]
            relay = w.FromClient(client_id, [w.ExportFunction(CLASS, b"class")])
            self.handle(WorkerSent(worker_id, [relay]))
            return
        client_id = b"client" + self.new_id()[2:12]
        self.handle(ClientJoined(client_id))
        self.send(client_id, w.ExportFunction(CLASS, b"class"), w.ExportFunction(FUNCTION, b"f"))

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), goodbye=st.booleans())
    def client_leaves(self, data: st.DataObject, goodbye: bool) -> None:
        client_id = self.pick_client(data)
        client = self.state.clients[client_id]
        if client.via_worker is not None:
            self.handle(WorkerSent(client.via_worker, [w.ClientGone(client_id)]))
        else:
            if goodbye:
                self.send(client_id, w.Goodbye())
            self.handle(ClientLeft(client_id))

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data())
    def create_actor(self, data: st.DataObject) -> None:
        place, hold = data.draw(actor_resources, label="resources")
        max_restarts = data.draw(st.integers(0, 2), label="max_restarts")
        max_task_retries = data.draw(st.integers(0, 1), label="max_task_retries")
        name = data.draw(names, label="name")
        namespace = data.draw(namespaces, label="namespace")
        detached = data.draw(st.booleans(), label="detached")
        get_if_exists = data.draw(st.booleans(), label="get_if_exists")
        client_id = self.pick_client(data)
        actor_id = self.new_id()
        spec = w.TaskSpec(
            task_id=actor_id,
            function_id=CLASS,
            name="Fuzzed.__init__",
            args=b"",
            deps=self.some_objects(data, "deps"),
            nested=self.some_objects(data, "nested", 1),  # one may be gone: it is not awaited
            resources=place,
            actor_id=actor_id,
            actor=w.ActorSpec(
                "Fuzzed",
                {"m": 1},
                hold=hold,
                max_restarts=max_restarts,
                max_task_retries=max_task_retries,
                name=name,
                namespace=namespace,
                detached=detached,
                get_if_exists=get_if_exists,
            ),
            namespace=namespace,
        )
        self.actors[actor_id] = spec
        self.calls[actor_id] = []
        self.objects.append(anchor_of(actor_id))
        if not name:
            self.send(client_id, w.SubmitTasks([spec]))
            assert actor_id in self.state.actors.actors
            return
        taken = self.query(client_id, "get_actor", {"name": name, "namespace": namespace})
        self.request_id += 1
        sends = self.send(client_id, w.CreateNamedActor(self.request_id, spec))
        reply = self.reply(sends, client_id, self.request_id)
        if taken is None:
            assert reply == {"actor_id": actor_id.hex()}
            assert actor_id in self.state.actors.actors
        elif get_if_exists:
            assert reply["existing"] is True and reply["actor_id"] == taken["actor_id"]
            existing = anchor_of(bytes.fromhex(reply["actor_id"]))
            self.send(client_id, w.AcquireRefs([existing]))
        else:
            assert "already exists" in reply["error"]
        if taken is not None:
            assert actor_id not in self.state.actors.actors and actor_id not in self.state.tasks

    @precondition(lambda self: self.state.clients and self.actors)
    @rule(data=st.data(), count=st.integers(1, 3))
    def call(self, data: st.DataObject, count: int) -> None:
        client_id = self.pick_client(data)
        actor_id = data.draw(st.sampled_from(sorted(self.actors)), label="actor")
        specs = []
        for _ in range(count):
            spec = w.TaskSpec(
                task_id=self.new_id(),
                function_id=b"",
                name="Fuzzed.m",
                args=b"",
                deps=self.some_objects(data, "deps"),
                nested=[anchor_of(actor_id)],  # a call holds its handle, as the client's do
                num_returns=data.draw(st.sampled_from([1, 1, 0, 2]), label="num_returns"),
                resources={},
                actor_id=actor_id,
                method="m",
            )
            specs.append(spec)
            self.objects.extend(return_ids(spec.task_id, spec.num_returns))
        self.send(client_id, w.SubmitTasks(specs))
        self.calls[actor_id].extend(s.task_id for s in specs)

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), resources=task_resources)
    def submit_task(self, data: st.DataObject, resources: dict[str, float]) -> None:
        client_id = self.pick_client(data)
        spec = w.TaskSpec(
            task_id=self.new_id(),
            function_id=FUNCTION,
            name="fuzzed",
            args=b"",
            deps=self.some_objects(data, "deps"),
            resources=resources,
            max_retries=data.draw(st.integers(0, 1), label="max_retries"),
        )
        self.objects.append(return_ids(spec.task_id, 1)[0])
        self.send(client_id, w.SubmitTasks([spec]))

    @precondition(lambda self: self.state.clients and self.actors)
    @rule(data=st.data(), no_restart=st.booleans())
    def kill(self, data: st.DataObject, no_restart: bool) -> None:
        client_id = self.pick_client(data)
        actor_id = data.draw(st.sampled_from(sorted(self.actors)), label="actor")
        self.send(client_id, w.KillActor(actor_id, no_restart))

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), acquire=st.booleans())
    def acquire_or_release(self, data: st.DataObject, acquire: bool) -> None:
        """Handles come and go with their anchors; other refs too."""
        client_id = self.pick_client(data)
        if acquire:
            self.send(client_id, w.AcquireRefs(self.some_objects(data, "ids")))
            return
        held = sorted(self.state.clients[client_id].held)
        if not held:
            return
        anchors = [o for o in held if o[:12] + b"\0\0\0\0" in self.actors]
        pool = (
            st.sampled_from(anchors) | st.sampled_from(held) if anchors else st.sampled_from(held)
        )
        ids = data.draw(st.lists(pool, max_size=2, unique=True), label="ids")
        self.send(client_id, w.ReleaseRefs(ids))

    @precondition(lambda self: any(self.held_anchors(c) for c in self.state.clients))
    @rule(data=st.data(), count=st.integers(1, 2))
    def drop_handle(self, data: st.DataObject, count: int) -> None:
        client_id = data.draw(
            st.sampled_from([c for c in sorted(self.state.clients) if self.held_anchors(c)]),
            label="client",
        )
        anchors = st.sampled_from(self.held_anchors(client_id))
        ids = data.draw(st.lists(anchors, min_size=1, max_size=count, unique=True), label="ids")
        self.send(client_id, w.ReleaseRefs(ids))

    def held_anchors(self, client_id: bytes) -> list[bytes]:
        held = self.state.clients[client_id].held
        return sorted(o for o in held if o[:12] + b"\0\0\0\0" in self.actors)

    # -- workers -----------------------------------------------------------

    @precondition(lambda self: len(self.state.workers) < MAX_PEERS)
    @rule(cpus=worker_cpus, gpus=worker_gpus)
    def worker_joins(self, cpus: float, gpus: float) -> None:
        self.worker_count += 1
        self.join(f"w{self.worker_count}", cpus, gpus)

    def join(self, worker_id: str, cpus: float, gpus: float) -> None:
        resources = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
        self.handle(WorkerJoined(w.WorkerInfo(worker_id, "host", f"tcp://{worker_id}", resources)))

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data(), rejoin=st.booleans())
    def worker_leaves(self, data: st.DataObject, rejoin: bool) -> None:
        """It leaves, or restarts under its old id before its old connection is seen to drop."""
        worker_id = self.pick_worker(data)
        self.forget_worker(worker_id)
        if rejoin:
            total = self.state.workers[worker_id].total
            self.join(worker_id, total["CPU"], total.get("GPU", 0.0))
        else:
            self.handle(WorkerLeft(worker_id, "fuzzed"))
        for rec in self.state.actors.actors.values():
            assert rec.worker != worker_id or rec.state != "alive" or rejoin

    @precondition(lambda self: self.assigned)
    @rule(data=st.data())
    def worker_reports(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.assigned)), label="task")
        self.report(task_id, data.draw(st.sampled_from(["ok", "ok", "ok", "failed"]), "outcome"))

    def report(self, task_id: bytes, outcome: str) -> None:
        worker_id, spec = self.assigned.pop(task_id)
        if outcome == "ok":
            returns = [
                w.ReturnValue(o, data=b"v") for o in return_ids(spec.task_id, spec.num_returns)
            ]
            result = w.TaskResult(task_id, returns=returns)
        else:
            error = CONSTRUCTOR_ERROR if spec.actor is not None else TASK_ERROR
            result = w.TaskResult(task_id, error=error, failure="task")
        self.handle(WorkerSent(worker_id, [w.TasksDone([result])]))
        rec = self.state.actors.actors.get(spec.actor_id)
        if spec.actor is not None and rec is not None and outcome == "failed":
            assert rec.state == "dead", "a failed constructor is not retried"

    @precondition(lambda self: self.processes)
    @rule(data=st.data())
    def actor_process_exits(self, data: st.DataObject) -> None:
        actor_id = data.draw(st.sampled_from(sorted(self.processes)), label="process")
        exit_code = data.draw(exit_codes, label="exit code")
        # An actor that ends on purpose says so before it exits (exit code 0);
        # os._exit(0) does not, and is a crash like any other.
        ending = data.draw(st.sampled_from(["", "it called exit_actor()"]), label="ending")
        self.process_exits(actor_id, 0 if ending else exit_code, ending)

    def process_exits(self, actor_id: bytes, exit_code: int, ending: str = "") -> None:
        process = self.forget_process(actor_id)
        if process.kill:
            exit_code = 0 if process.kill == "graceful" else -9
            ending = "its last handle was dropped" if process.kill == "graceful" else ""
        rec = self.state.actors.actors.get(actor_id)
        restarts = -1 if rec is None else rec.restarts_left
        died = w.ActorDied(actor_id, exit_code, pid=4242, ending=ending)
        self.handle(WorkerSent(process.worker, [died]))
        rec = self.state.actors.actors.get(actor_id)
        if rec is not None and ending:
            assert rec.state == "dead", "an end on purpose is not restarted"
        if rec is not None and rec.state == "restarting":
            assert rec.restarts_left == restarts - 1

    @precondition(lambda self: self.state.workers and set(self.actors) - set(self.processes))
    @rule(data=st.data(), exit_code=exit_codes)
    def stale_death_report(self, data: st.DataObject, exit_code: int) -> None:
        """A death report for an actor with no process anywhere changes nothing."""
        gone = sorted(set(self.actors) - set(self.processes))
        actor_id = data.draw(st.sampled_from(gone), label="actor")
        rec = self.state.actors.actors.get(actor_id)
        before = None if rec is None else (rec.state, rec.restarts_left)
        worker_id = self.pick_worker(data)
        self.handle(WorkerSent(worker_id, [w.ActorDied(actor_id, exit_code)]))
        rec = self.state.actors.actors.get(actor_id)
        assert before == (None if rec is None else (rec.state, rec.restarts_left))

    @precondition(lambda self: self.assigned or self.processes)
    @rule(kills=st.booleans())
    def workers_report_everything(self, kills: bool) -> None:
        self.drain(kills)

    def drain(self, kills: bool = True) -> None:
        """Report every assignment done and carry out every kill, until nothing is left."""
        for _ in range(1_000):
            if self.assigned:
                for task_id in sorted(self.assigned):
                    if task_id in self.assigned:
                        self.report(task_id, "ok")
            elif kills and any(p.kill for p in self.processes.values()):
                for actor_id in sorted(self.processes):
                    if self.processes.get(actor_id, Process("")).kill:
                        self.process_exits(actor_id, -9)
            else:
                break
        assert not self.assigned, "tasks kept being assigned"
        assert self.state.statistics()["tasks"].get("processing", 0) == 0

    # -- invariants --------------------------------------------------------

    @invariant()
    def every_processing_task_was_sent_to_its_worker(self) -> None:
        processing = {t.id: t.worker for t in self.state.tasks.values() if t.state == "processing"}
        live = {t: a[0] for t, a in self.assigned.items() if not self.stale(t)}
        assert processing == live

    @invariant()
    def every_actor_process_is_known_or_asked_to_end(self) -> None:
        for actor_id, rec in self.state.actors.actors.items():
            where = self.process_at(rec)
            if where is not None:
                process = self.processes.get(actor_id)
                assert process is not None and process.worker == where
        for actor_id, process in self.processes.items():
            if process.kill:
                continue
            rec = self.state.actors.actors.get(actor_id)
            assert rec is not None and self.process_at(rec) == process.worker, (
                "a leaked actor process"
            )

    @invariant()
    def queries_agree_with_the_records(self) -> None:
        listed = self.state.query("actors")
        assert {d["actor_id"] for d in listed} == {a.hex() for a in self.state.actors.actors}
        for described in listed:
            if described["name"] and described["state"] != "DEAD":
                key = {"name": described["name"], "namespace": described["namespace"]}
                found = self.state.query("get_actor", key)
                assert found is not None and found["actor_id"] == described["actor_id"]
            if described["state"] == "ALIVE":
                assert described["node_id"] in self.state.workers

    @invariant()
    def gpus_add_up(self) -> None:
        for worker in self.state.workers.values():
            expect = [1.0] * len(worker.gpu_free)
            for task_id in worker.running:
                task = self.state.tasks[task_id]
                share = task.need.get("GPU", 0.0)
                for gpu in task.gpu_ids:
                    expect[gpu] -= 1.0 if share >= 1 else share
            for rec in self.state.actors.actors.values():
                if rec.state == "alive" and rec.worker == worker.worker_id:
                    share = rec.actor.hold.get("GPU", 0.0)
                    assert len(rec.gpu_ids) == (1 if share else 0)
                    for gpu in rec.gpu_ids:
                        expect[gpu] -= 1.0 if share >= 1 else share
            assert all(abs(a - b) < 1e-9 for a, b in zip(expect, worker.gpu_free, strict=True))

    def teardown(self) -> None:
        self.drain()
        # Every actor is killed; those mid-restart or never placed end at once.
        if not self.state.clients:
            self.client_joins(None, via_worker=False)
        client_id = sorted(self.state.clients)[0]
        for actor_id in sorted(self.state.actors.actors):
            rec = self.state.actors.actors.get(actor_id)  # one actor's end may forget another
            if rec is not None and rec.state != "dead":
                self.send(client_id, w.KillActor(actor_id, no_restart=True))
        self.drain()
        assert all(r.state == "dead" for r in self.state.actors.actors.values())
        assert not self.processes, "an actor process outlived its actor"
        assert not any(is_call(t.spec) for t in self.state.tasks.values()), "a call is stuck"


ActorMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestSchedulerActors = ActorMachine.TestCase
