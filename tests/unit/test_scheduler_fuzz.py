"""A Hypothesis rule-based machine over the scheduler's state machine.

Clients and workers come and go, submit, put, release, want and cancel in any
order, and workers report whatever the scheduler assigned them as done,
failed, crashed, killed for memory or cancelled (or block, unblock, yield generator items, or
report stale news). After every step ``validate()`` must hold, and so must
what the scheduler told its peers: every processing task was sent to its
worker, every send goes to a peer that is there, one send per peer.
Liveness: once the workers report everything, no task is left processing.
"""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from send_checks import check_sends

from taskgraph import _wire as w
from taskgraph._ids import generator_item_id, return_ids
from taskgraph.exceptions import (
    ObjectLostError,
    OutOfMemoryError,
    TaskError,
    WorkerCrashedError,
)
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

FUNCTIONS = [b"f" * 16, b"g" * 16]
TASK_ERROR = pickle.dumps(TaskError.from_exception(ValueError("fuzz"), "fuzzed"))
CRASH = pickle.dumps(WorkerCrashedError("fuzzed executor", exit_code=-9))
OOM = pickle.dumps(OutOfMemoryError("fuzzed", 9, 8, node="w", memory=7))
LOST = pickle.dumps(ObjectLostError("ab12", "its holder is gone"))
ITEMS = 3  # generator items the machine knows of per generator task
QUEUE_DEPTH = 2.0  # CPU-only tasks a worker may queue, as a share of its CPUs, at most
DURATIONS = (0.0, 1e-5, 0.004, 5.0)  # seconds a finished task took, as workers report it

# Mostly plain one-CPU tasks, so that work flows; the rest press on the edges.
task_resources = st.sampled_from(
    [
        {"CPU": 1.0},
        {"CPU": 1.0},
        {"CPU": 1.0},
        {"CPU": 0.5},
        {"CPU": 2.0},
        {},
        {"CPU": 1.0, "GPU": 1.0},
        {"CPU": 1.0, "GPU": 2.0},
        {"GPU": 0.5},
        {"CPU": 1.0, "disk": 1.0},
        {"CPU": 8.0},
    ]
)
worker_resources = st.fixed_dictionaries(
    {"CPU": st.sampled_from([1.0, 2.0, 4.0, 0.0])},
    optional={"GPU": st.sampled_from([1.0, 2.0]), "disk": st.sampled_from([1.0, 2.0])},
)
# What a worker does about one task it was assigned.
acts = st.sampled_from(
    [
        "ok",
        "ok",
        "located",
        "task",
        "crashed",
        "oom",
        "cancelled",
        "blocked",
        "unblocked",
        "yield",
        "stale",
        "input",
    ]
)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = SchedulerState("fuzz", queue_depth=QUEUE_DEPTH)
        self.next_id = 0
        self.worker_count = 0
        self.now = 0.0
        self.objects: list[bytes] = []  # every object id ever named, freed ones too
        self.assigned: dict[bytes, tuple[str, w.TaskSpec]] = {}  # from RunTasks
        self.unblocked: set[bytes] = set()  # tasks that took their CPU back: may overcommit
        # Tasks sent down a lease, recorded and not reported: task id -> (worker, spec).
        self.channel: dict[bytes, tuple[str, w.TaskSpec]] = {}

    # -- plumbing ----------------------------------------------------------

    def new_id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(12, "big") + b"\0\0\0\0"

    def handle(self, *events: Event) -> list[Send]:
        self.now += 0.25
        sends = self.state.handle(Tick(self.now), *events)
        check_sends(self.state, sends)
        # A worker dropped as silent (no heartbeat for worker_timeout) took its tasks.
        self.assigned = {t: a for t, a in self.assigned.items() if a[0] in self.state.workers}
        # A channel task whose lease or worker went is retried the usual way or failed.
        tasks = self.state.tasks
        self.channel = {
            t: c
            for t, c in self.channel.items()
            if t in tasks and tasks[t].state == "processing" and tasks[t].spec.channel
        }
        for send in sends:
            for msg in send.messages:
                self.check_message(send, msg)
        return sends

    def check_message(self, send: Send, msg: Any) -> None:
        if isinstance(msg, w.RunTasks):
            for a in msg.assignments:
                task = self.state.tasks[a.spec.task_id]
                assert task.state == "processing" and task.worker == send.id
                assert len(a.inputs) == len(a.spec.deps)
                for value in a.inputs:  # (not an argument pending again: lineage.py)
                    assert value.error is not None or value.data is not None or value.location
                self.assigned[a.spec.task_id] = (send.id, a.spec)
        elif isinstance(msg, w.FreeObjects):
            # Freed, or a copy there that no longer counts (lost, or a surplus one).
            for oid in msg.object_ids:
                obj = self.state.objects.get(oid)
                if obj is not None:
                    holders = {loc.worker_id for loc in (obj.location, *obj.copies.values()) if loc}
                    assert send.id not in holders, "a live copy freed"
        elif isinstance(msg, w.ToClient):
            assert self.state.clients[msg.client_id].via_worker == send.id
            for inner in msg.messages:
                self.check_message(send, inner)
        elif isinstance(msg, w.ObjectsReady):
            for value in msg.values:
                assert value.error is not None or value.data is not None or value.location
                if value.error is not None:
                    assert isinstance(pickle.loads(value.error), BaseException)

    def send(self, client_id: bytes, *messages: Any) -> list[Send]:
        client = self.state.clients[client_id]
        if client.via_worker is not None:
            return self.handle(
                WorkerSent(client.via_worker, [w.FromClient(client_id, list(messages))])
            )
        return self.handle(ClientSent(client_id, list(messages)))

    def pick_client(self, data: st.DataObject) -> bytes:
        return data.draw(st.sampled_from(sorted(self.state.clients)), label="client")

    def pick_worker(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.state.workers)), label="worker")

    def some_objects(self, data: st.DataObject, label: str, max_size: int = 3) -> list[bytes]:
        """Mostly live objects; now and then one that is gone (or never was)."""
        alive = sorted(self.state.objects)
        if not alive and not self.objects:
            return []
        pool = st.sampled_from(alive) if alive else st.nothing()
        if self.objects:
            pool = pool | st.sampled_from(self.objects)
        return data.draw(st.lists(pool, max_size=max_size), label=label)

    def located(self, worker_id: str, oid: bytes) -> w.Location:
        return w.Location(worker_id, f"seg-{oid.hex()}", 1 << 20, "host")

    def report(self, task_id: bytes, outcome: str, contains: list[bytes]) -> list[Send]:
        worker_id, spec = self.assigned.pop(task_id)
        if outcome in ("ok", "located"):
            returns = [
                w.ReturnValue(oid, location=self.located(worker_id, oid), contains=contains)
                if outcome == "located"
                else w.ReturnValue(oid, data=b"value", contains=contains)
                for oid in return_ids(task_id, spec.num_returns)
            ]
            # Durations from none reported to seconds: how deep workers queue follows them.
            duration = DURATIONS[task_id[11] % len(DURATIONS)]
            result = w.TaskResult(task_id, returns=returns, duration=duration)
        elif outcome == "input":  # it could not read an argument (lineage.py)
            lost = spec.deps[task_id[11] % len(spec.deps)] if spec.deps else b"not an argument"
            # ... its copy where the scheduler said it was (or, now and then, nowhere known)
            obj = self.state.objects.get(lost)
            where = obj.location if obj is not None else None
            lost_from = where.worker_id if where is not None and task_id[11] % 3 else "w-gone"
            result = w.TaskResult(
                task_id, error=LOST, failure="input", lost=lost, lost_from=lost_from
            )
        else:
            error = {"task": TASK_ERROR, "crashed": CRASH, "oom": OOM, "cancelled": None}[outcome]
            result = w.TaskResult(task_id, error=error, failure=outcome)
        return self.handle(WorkerSent(worker_id, [w.TasksDone([result])]))

    # -- clients -----------------------------------------------------------

    @initialize(resources=worker_resources)
    def a_client_and_a_worker(self, resources: dict[str, float]) -> None:
        self.client_joins()
        self.worker_joins(resources)

    @rule()
    def client_joins(self) -> None:
        client_id = b"client" + self.new_id()[2:12]
        self.handle(ClientJoined(client_id))
        self.send(client_id, *(w.ExportFunction(f, b"code " + f) for f in FUNCTIONS))

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data())
    def executor_client_speaks(self, data: st.DataObject) -> None:
        worker_id = self.pick_worker(data)
        client_id = b"executor" + self.new_id()[4:12]
        oid = self.new_id()
        self.objects.append(oid)
        self.handle(WorkerSent(worker_id, [w.FromClient(client_id, [w.PutObject(oid, b"x")])]))
        assert self.state.clients[client_id].via_worker == worker_id

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
        assert client_id not in self.state.clients

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), count=st.integers(1, 4))
    def submit(self, data: st.DataObject, count: int) -> None:
        client_id = self.pick_client(data)
        targets = [f"node:{x}" for x in self.state.workers]
        targets += [f"node?:{x}" for x in self.state.workers]
        specs = []
        for _ in range(count):
            deps = self.some_objects(data, "deps")
            nested = [o for o in self.some_objects(data, "nested", 2) if o in self.state.objects]
            num_returns = data.draw(st.sampled_from([1, 1, 0, 2, 3]), label="num_returns")
            generator = num_returns == 1 and data.draw(st.booleans(), label="generator")
            spec = w.TaskSpec(
                task_id=self.new_id(),
                function_id=data.draw(st.sampled_from(FUNCTIONS), label="function"),
                name="fuzzed",
                args=b"",
                deps=deps,
                nested=nested,
                num_returns=num_returns,
                resources=data.draw(task_resources, label="resources"),
                max_retries=data.draw(st.integers(0, 2), label="max_retries"),
                retry_exceptions=data.draw(st.booleans(), label="retry_exceptions"),
                strategy=data.draw(
                    st.sampled_from(["DEFAULT", "DEFAULT", "SPREAD", "node:gone", *targets]),
                    label="strategy",
                ),
                parent=data.draw(st.sampled_from([b"", *sorted(self.state.tasks)]), label="parent"),
                generator=generator,
            )
            specs.append(spec)
            self.objects.extend(return_ids(spec.task_id, spec.num_returns))
            if generator:
                self.objects.extend(generator_item_id(spec.task_id, i) for i in range(ITEMS))
        self.send(client_id, w.SubmitTasks(specs))
        held = self.state.clients[client_id].held
        assert all(set(return_ids(s.task_id, s.num_returns)) <= held for s in specs)

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), located=st.booleans())
    def put(self, data: st.DataObject, located: bool) -> None:
        client_id = self.pick_client(data)
        contains = self.some_objects(data, "contains")
        oid = self.new_id()
        self.objects.append(oid)
        if located and self.state.workers:
            where = self.located(self.pick_worker(data), oid)
            self.send(client_id, w.PutObject(oid, location=where, contains=contains))
        else:
            self.send(client_id, w.PutObject(oid, data=b"v", contains=contains))
        assert oid in self.state.objects

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data())
    def a_client_leaves_a_store(self, data: st.DataObject) -> None:
        """A worker lists what a client (here or gone) sealed in its store: what we
        know is never freed for it, now or when the client leaves."""
        worker_id = self.pick_worker(data)
        clients = sorted(self.state.clients) or [b"nobody"]
        client_id = data.draw(st.sampled_from(clients), label="store client")
        sealed = [*self.some_objects(data, "sealed"), self.new_id()]
        known = {oid for oid in sealed if oid in self.state.objects}
        sends = self.handle(WorkerSent(worker_id, [w.StoreClientGone(client_id, sealed)]))
        if client_id in self.state.clients:
            sends += self.handle(ClientLeft(client_id))
        freed = {
            oid
            for send in sends
            if send.to == "worker" and send.id == worker_id
            for m in send.messages
            if isinstance(m, w.FreeObjects)
            for oid in m.object_ids
        }
        assert sealed[-1] in freed, "an object nobody announced is freed"
        assert not {o for o in known & freed if o in self.state.objects}

    # -- leases and the tasks sent down them (channel tasks) ------------------

    @rule()
    def lease_client_asks_for_a_lease(self) -> None:
        """A driver (8-byte id: its tasks' ids start with it) submits a lease."""
        client_id = b"lease" + self.new_id()[9:12]
        self.handle(ClientJoined(client_id))
        self.send(client_id, *(w.ExportFunction(f, b"code " + f) for f in FUNCTIONS))
        lease = w.TaskSpec(
            task_id=client_id + self.new_id()[8:],
            function_id=b"taskgraph.lease",
            name="lease",
            args=b"",
            deps=[],
            resources={"CPU": 1.0},
            channel_to="unix://driver",
        )
        self.objects.extend(return_ids(lease.task_id, 1))
        self.send(client_id, w.SubmitTasks([lease]))

    def running_leases(self) -> list[bytes]:
        return sorted(
            t.id
            for t in self.state.tasks.values()
            if w.is_lease(t.spec) and t.state == "processing" and t.owner in self.state.clients
        )

    @precondition(lambda self: self.running_leases())
    @rule(data=st.data(), report_first=acts.filter(lambda a: a in ("ok", "located", "task")))
    def send_down_a_lease(self, data: st.DataObject, report_first: str) -> None:
        lease_id = data.draw(st.sampled_from(self.running_leases()), label="lease")
        lease = self.state.tasks[lease_id]
        spec = w.TaskSpec(
            task_id=lease.owner + self.new_id()[8:],
            function_id=FUNCTIONS[0],
            name="leased",
            args=b"",
            deps=[],
            resources={"CPU": 1.0},
            max_retries=data.draw(st.integers(0, 1), label="max_retries"),
            channel=lease_id,
        )
        self.objects.extend(return_ids(spec.task_id, 1))
        worker_id = lease.worker
        assert worker_id is not None
        early = data.draw(st.booleans(), label="report before record")
        if early:  # the executor's report overtakes the client's record
            contains = [
                o for o in self.some_objects(data, "contains", 2) if o in self.state.objects
            ]
            self.report_channel(worker_id, spec, report_first, contains)
            assert self.state.statistics()["reports_before_records"] >= 1
        self.send(lease.owner, w.SubmitTasks([spec]))
        if early:
            assert spec.task_id not in self.state.tasks or report_first == "task"
        else:
            self.channel[spec.task_id] = (worker_id, spec)

    def report_channel(
        self, worker_id: str, spec: w.TaskSpec, outcome: str, contains: list[bytes]
    ) -> list[Send]:
        if outcome in ("ok", "located"):
            oid = return_ids(spec.task_id, 1)[0]
            ret = (
                w.ReturnValue(oid, location=self.located(worker_id, oid), contains=contains)
                if outcome == "located"
                else w.ReturnValue(oid, data=b"value", contains=contains)
            )
            result = w.TaskResult(spec.task_id, returns=[ret], channel=spec.channel)
        else:
            result = w.TaskResult(
                spec.task_id, error=TASK_ERROR, failure="task", channel=spec.channel
            )
        return self.handle(WorkerSent(worker_id, [w.TasksDone([result])]))

    @precondition(lambda self: self.channel)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "located", "task"]))
    def leased_task_reported(self, data: st.DataObject, outcome: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.channel)), label="leased task")
        worker_id, spec = self.channel.pop(task_id)
        contains = [o for o in self.some_objects(data, "contains", 2) if o in self.state.objects]
        self.report_channel(worker_id, spec, outcome, contains)
        assert task_id not in self.state.tasks

    @precondition(lambda self: self.state.clients)
    @rule(data=st.data(), acquire=st.booleans())
    def acquire_or_release(self, data: st.DataObject, acquire: bool) -> None:
        client_id = self.pick_client(data)
        if acquire:
            self.send(client_id, w.AcquireRefs(self.some_objects(data, "ids")))
            return
        held = sorted(self.state.clients[client_id].held)
        ids = data.draw(st.lists(st.sampled_from(held), max_size=3), label="ids") if held else []
        self.send(client_id, w.ReleaseRefs([*ids, b"never made"]))
        assert not set(ids) & self.state.clients[client_id].held

    @precondition(lambda self: self.state.clients and self.objects)
    @rule(data=st.data())
    def want(self, data: st.DataObject) -> None:
        client_id = self.pick_client(data)
        ids = self.some_objects(data, "ids")
        gone = {o for o in ids if o not in self.state.objects}
        done = {
            o for o in ids if o in self.state.objects and self.state.objects[o].state != "pending"
        }
        sends = self.send(client_id, w.WantObjects(ids))
        answered: dict[bytes, w.Value] = {}
        for send in sends:
            for msg in send.messages:
                inner = msg.messages if isinstance(msg, w.ToClient) else [msg]
                for m in inner:
                    if isinstance(m, w.ObjectsReady):
                        answered.update((v.object_id, v) for v in m.values)
        gone -= set(self.state.objects)  # a generator's item not yet yielded: now awaited
        assert gone | done <= set(answered)
        for oid in gone:
            error = answered[oid].error
            assert error is not None and isinstance(pickle.loads(error), ObjectLostError)

    @precondition(lambda self: self.state.clients and self.objects and self.state.workers)
    @rule(data=st.data())
    def reader_finds_a_copy_gone(self, data: st.DataObject) -> None:
        """A reader says a copy could not be read (true or not): the object is
        read elsewhere, made again, or failed; never left without a way."""
        client_id = self.pick_client(data)
        [oid] = self.some_objects(data, "unreadable", 1) or [b"never made"]
        self.send(client_id, w.ObjectUnreadable(oid, self.pick_worker(data)))
        obj = self.state.objects.get(oid)
        if obj is not None and obj.state == "ready" and obj.data is None:
            assert obj.location is not None, "a ready object with no value"

    @precondition(lambda self: self.state.clients and self.objects)
    @rule(data=st.data(), force=st.booleans(), recursive=st.booleans())
    def cancel(self, data: st.DataObject, force: bool, recursive: bool) -> None:
        client_id = self.pick_client(data)
        ids = self.some_objects(data, "ids")
        self.send(client_id, w.CancelTasks(ids, force=force, recursive=recursive))

    # -- workers -----------------------------------------------------------

    @rule(resources=worker_resources, data=st.data(), again=st.booleans())
    def worker_joins(
        self, resources: dict[str, float], data: st.DataObject | None = None, again: bool = False
    ) -> None:
        if again and data is not None and self.state.workers:
            # A restart under the same id, before the old connection was seen to drop.
            worker_id = self.pick_worker(data)
            self.assigned = {t: a for t, a in self.assigned.items() if a[0] != worker_id}
        else:
            self.worker_count += 1
            worker_id = f"w{self.worker_count}"
        self.handle(WorkerJoined(w.WorkerInfo(worker_id, "host", f"tcp://{worker_id}", resources)))
        assert self.state.workers[worker_id].total == resources

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data())
    def worker_leaves(self, data: st.DataObject) -> None:
        worker_id = self.pick_worker(data)
        self.assigned = {t: a for t, a in self.assigned.items() if a[0] != worker_id}
        self.handle(WorkerLeft(worker_id, "fuzzed"))
        assert worker_id not in self.state.workers
        assert all(c.via_worker != worker_id for c in self.state.clients.values())

    @precondition(lambda self: self.assigned)
    @rule(data=st.data(), act=acts)
    def worker_acts(self, data: st.DataObject, act: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.assigned)), label="task")
        worker_id, _spec = self.assigned[task_id]
        if act in ("blocked", "unblocked", "yield"):
            if not self.state.clients:
                return
            client_id = self.pick_client(data)
            if act == "blocked":
                self.send(client_id, w.TaskBlocked(task_id))
            elif act == "unblocked":
                if self.state.tasks[task_id].blocked:
                    self.unblocked.add(task_id)
                self.send(client_id, w.TaskUnblocked(task_id))
            else:
                index = data.draw(st.integers(0, ITEMS), label="index")
                oid = generator_item_id(task_id, index)
                value = w.ReturnValue(oid, data=b"item")
                self.send(client_id, w.GeneratorItem(task_id, index, value))
            return
        if act == "stale":
            elsewhere = sorted(set(self.state.workers) - {worker_id})
            if elsewhere:
                stale_worker = data.draw(st.sampled_from(elsewhere), label="stale worker")
                result = w.TaskResult(task_id, returns=[])
                assert self.handle(WorkerSent(stale_worker, [w.TasksDone([result])])) == []
            done = w.TaskResult(b"never ran", returns=[])
            assert self.handle(WorkerSent(worker_id, [w.TasksDone([done])])) == []
            return
        contains = [o for o in self.some_objects(data, "contains", 2) if o in self.state.objects]
        self.report(task_id, act, contains)
        task = self.state.tasks.get(task_id)
        if act in ("ok", "located"):
            assert task is None
        elif act == "input":
            assert task is None or task.state in ("waiting", "ready", "processing")
        else:
            assert task is None or task.state in ("ready", "processing"), "retried"

    @precondition(lambda self: self.assigned)
    @rule()
    def workers_report_everything(self) -> None:
        self.drain()

    def drain(self) -> None:
        for _ in range(10_000):
            for task_id in sorted(self.channel):
                worker_id, spec = self.channel.pop(task_id)
                self.report_channel(worker_id, spec, "ok", [])
            if not self.assigned:
                break
            for task_id in sorted(self.assigned):
                self.report(task_id, "ok", [])
        assert not self.assigned, "tasks kept being assigned"
        assert self.state.statistics()["tasks"].get("processing", 0) == 0

    # -- invariants --------------------------------------------------------

    @invariant()
    def every_processing_task_was_sent_to_its_worker(self) -> None:
        processing = {t.id: t.worker for t in self.state.tasks.values() if t.state == "processing"}
        sent = {t: a[0] for t, a in self.assigned.items()}
        sent.update((t, c[0]) for t, c in self.channel.items())
        assert processing == sent

    @invariant()
    def no_worker_holds_more_than_it_has(self) -> None:
        for worker in self.state.workers.values():
            if worker.running & self.unblocked:
                continue  # a task that took its CPU back may overcommit for a while
            for name, amount in worker.available.items():
                # CPU-only tasks may wait in a busy worker's queue, up to a depth.
                floor = -QUEUE_DEPTH * worker.total.get(name, 0.0) if name == "CPU" else 0.0
                assert amount >= floor - 1e-9, f"{worker.worker_id} overcommits {name}: {amount}"

    def teardown(self) -> None:
        self.drain()


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestScheduler = SchedulerMachine.TestCase
