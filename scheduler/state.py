"""The scheduler's decisions: a pure state machine over tasks, objects, workers, clients.

``SchedulerState`` holds everything the scheduler knows; this module keeps
the task's life (its transitions) and the outbox. What each
event does lives beside it, in plain functions over the state (actors in a
part the state owns)::

    handle(*events)
      ├─▶ clients.py   a client's messages: submit, put, get, release, cancel, ...
      ├─▶ workers.py   workers join, leave, report their tasks, beat
      │      both go through channels.py (tasks sent down a channel), objects.py
      │      (objects' states and holders) and actors.py, and change a task's
      │      state only through transition() (here)
      ├─▶ dispatch.py  ready tasks placed on workers (placement.py chooses which)
      └─▶ the outbox, drained: list[Send]

    Readers: views.py (queries, statistics, validate), story.py (the log of changes).

Rules of these modules (everything that decides lives in them, nothing else does):
- The state changes only through ``handle(*events) -> list[Send]``. No sockets,
  asyncio, threads, clock or randomness: time arrives in events.
- Task state changes go through ``transition``, which consults
  ``TRANSITIONS``; a pair missing from the table is a bug and raises.
  Objects' and actors' changes are checked against their tables
  (``story.py``) the same way.
- ``validate()`` (``views.py``) recomputes every invariant from scratch;
  tests call it after every step.

Task states::

    waiting ──▶ ready ──▶ processing ──▶ memory
       │          │  ▲        │ │
       │          │  └─retry──┘ └──▶ erred / cancelled
       └──────────┴──▶ erred / cancelled
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.exceptions import ObjectLostError

from . import clients, dispatch, lineage, objects, placement, views, workers
from .actors import Actors, is_call
from .history import KEEP, TaskHistory
from .records import (  # (the events and records are also taken from here: __all__)
    ClientJoined,
    ClientLeft,
    ClientRec,
    ClientSent,
    EarlyReport,
    Event,
    Obj,
    Send,
    Task,
    Tick,
    WorkerJoined,
    WorkerLeft,
    WorkerRec,
    WorkerSent,
    error_bytes,
    error_type_of,
)
from .story import Story

__all__ = [
    "ClientJoined",
    "ClientLeft",
    "ClientRec",
    "ClientSent",
    "EarlyReport",
    "Event",
    "Obj",
    "SchedulerState",
    "Send",
    "Task",
    "Tick",
    "WorkerJoined",
    "WorkerLeft",
    "WorkerRec",
    "WorkerSent",
    "error_bytes",
    "error_type_of",
]

# -- the state machine -------------------------------------------------------


class SchedulerState:
    """Everything the scheduler knows, changed only by ``handle``."""

    TRANSITIONS: dict[tuple[str, str], str] = {
        ("new", "waiting"): "_to_waiting",
        ("new", "ready"): "_to_ready",
        ("new", "erred"): "_to_erred",
        # Sent down a channel (a lease, or an actor called directly): it runs (or
        # ran: its report may have come first) without being placed.
        ("new", "processing"): "_to_channel",
        ("waiting", "ready"): "_to_ready",
        ("waiting", "erred"): "_to_erred",
        ("waiting", "cancelled"): "_to_cancelled",
        ("ready", "processing"): "_to_processing",
        # An argument became pending again (lost, and being made again: lineage.py).
        ("ready", "waiting"): "_to_waiting_again",
        ("processing", "waiting"): "_to_waiting_again",
        ("ready", "erred"): "_to_erred",
        ("ready", "cancelled"): "_to_cancelled",
        ("processing", "memory"): "_to_memory",
        ("processing", "ready"): "_to_ready",
        ("processing", "erred"): "_to_erred",
        ("processing", "cancelled"): "_to_cancelled",
    }

    def __init__(
        self,
        cluster_id: str = "",
        worker_timeout: float = 30.0,
        queue_depth: float = 0.0,
        task_events: int = KEEP,
        clock_offset: float = 0.0,
    ) -> None:
        self.cluster_id = cluster_id
        self.worker_timeout = worker_timeout
        # CPU-only tasks beyond a worker's CPUs it may hold in its own queue, as a
        # fraction of its CPUs, at most (see placement.queue_depth_for).
        self.queue_depth = queue_depth
        self.durations: dict[bytes, float] = {}  # function id -> its tasks' mean run time
        self._feasible: dict[tuple[Any, ...], bool] = {}  # shape -> some worker could run it
        self.now = 0.0
        # Wall-clock time is now + clock_offset (the shell's time.time() -
        # time.monotonic() at start): task events' times are wall-clock times.
        self.clock_offset = clock_offset
        self.tasks: dict[bytes, Task] = {}
        self.objects: dict[bytes, Obj] = {}
        # Objects no one holds, their values freed, whose records are kept to
        # make again what was made from them (scheduler/lineage.py).
        self.released: dict[bytes, Obj] = {}
        self.workers: dict[str, WorkerRec] = {}
        self.clients: dict[bytes, ClientRec] = {}
        self.functions: dict[bytes, bytes] = {}
        self.children: dict[bytes, set[bytes]] = {}  # parent task -> submitted tasks
        self.leases: set[bytes] = set()  # lease tasks not yet asked to end (taskgraph/_leases.py)
        self.lease_tasks: dict[bytes, set[bytes]] = {}  # lease -> tasks sent down it, running
        # Reports of channel tasks that came before their client's record of them.
        self.early_reports: dict[bytes, EarlyReport] = {}
        self.clients_gone: dict[bytes, None] = {}  # the last that left, oldest first
        # Leases that ended, the last ones, oldest first: a crashed one's exit code.
        self.leases_ended: dict[bytes, int | None] = {}
        # What clients sealed in workers' stores, told as they left a store before
        # they left us: (worker, object ids) to check once they are gone.
        self.sealed_by_leaving: dict[bytes, list[tuple[str, list[bytes]]]] = {}
        self.history = TaskHistory(task_events)  # finished tasks' events kept
        self.queues: dict[tuple[Any, ...], deque[Task]] = {}
        self.transition_count = 0
        # What the state machine is handling now, logged with each state change.
        self.stimulus: tuple[Any, ...] = ("start",)
        self.changes = Story()
        self._log = self.changes.log.append  # (a change per transition: kept cheap)
        self._methods = {pair: getattr(self, name) for pair, name in self.TRANSITIONS.items()}
        self.reports_asked_for = 0  # ReadReports sent (a waiter on a channel task)
        self.tasks_finished = 0
        self.tasks_rebuilt = 0  # run again to make objects lost with their node
        self._out: dict[tuple[str, Any], list[Any]] = {}
        self._assignments: dict[str, list[w.Assignment]] = {}
        # Capacity or ready tasks changed: dispatch.place runs before handle returns.
        self.placement_due = False
        # Tasks to fail, with the error, as this event ends: an argument of theirs
        # failed (scheduler/objects.py's ``done``).
        self.failing: deque[tuple[Task, bytes | None]] = deque()
        self.actors = Actors(self)

    # -- entry point -----------------------------------------------------

    def handle(self, *events: Event) -> list[Send]:
        for event in events:
            self._handle_event(event)
            self._fail_dependents()
        if self.placement_due:
            dispatch.place(self)
            self._fail_dependents()  # (placement fails a task whose argument was lost)
        return self._drain()

    def _fail_dependents(self) -> None:
        while self.failing:
            task, error = self.failing.popleft()
            if task.state in ("waiting", "ready"):
                self.transition(task, "erred", error)

    def _handle_event(self, event: Event) -> None:
        self.stimulus = (type(event).__name__,)
        if isinstance(event, ClientSent):
            client = self.clients.get(event.client_id)
            if client is None:
                return  # a relayed executor's first messages register it implicitly
            for msg in event.messages:
                clients.message(self, client, msg)
        elif isinstance(event, WorkerSent):
            worker = self.workers.get(event.worker_id)
            if worker is None:
                return
            worker.last_seen = self.now
            for msg in event.messages:
                workers.message(self, worker, msg)
        elif isinstance(event, ClientJoined):
            self.clients[event.client_id] = ClientRec(
                event.client_id, event.via_worker, event.namespace, event.host, event.deliver
            )
        elif isinstance(event, ClientLeft):
            clients.left(self, event.client_id)
        elif isinstance(event, WorkerJoined):
            workers.joined(self, event.info)
        elif isinstance(event, WorkerLeft):
            workers.left(self, event.worker_id, event.reason)
        elif isinstance(event, Tick):
            self.now = event.now
            workers.check_heartbeats(self)
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown event {event!r}")

    # -- outbox ----------------------------------------------------------

    def send_client(self, client_id: bytes, msg: Any) -> None:
        self._out.setdefault(("client", client_id), []).append(msg)

    def send_worker(self, worker_id: str, msg: Any) -> None:
        self._out.setdefault(("worker", worker_id), []).append(msg)

    def _drain(self) -> list[Send]:
        for worker_id, assignments in self._assignments.items():
            self.send_worker(worker_id, w.RunTasks(assignments))
        self._assignments = {}
        sends: list[Send] = []
        to_worker: dict[str, Send] = {}
        relayed: dict[str, list[Any]] = {}
        for (kind, dest), msgs in self._out.items():
            if kind == "client":
                client = self.clients.get(dest)
                if client is None:
                    continue
                if client.via_worker is not None:
                    relayed.setdefault(client.via_worker, []).append(w.ToClient(dest, msgs))
                    continue
            send = Send(kind, dest, msgs)
            sends.append(send)
            if kind == "worker":
                to_worker[dest] = send
        # One send (one frame) per destination: a relayed client's replies ride
        # with whatever else its worker gets.
        for worker_id, msgs in relayed.items():
            if worker_id in to_worker:
                to_worker[worker_id].messages.extend(msgs)
            else:
                sends.append(Send("worker", worker_id, msgs))
        self._out = {}
        return sends

    # -- transitions -----------------------------------------------------

    def transition(self, task: Task, finish: str, *args: Any) -> None:
        start = task.state
        method = self._methods.get((start, finish))
        if method is None:
            raise RuntimeError(f"no transition {start!r} -> {finish!r} for task {task.id.hex()}")
        self.transition_count += 1
        self._log(("task", task.id, start, finish, self.stimulus, self.now))
        method(task, *args)

    def resubmit_creation(self, spec: w.TaskSpec, owner: bytes) -> None:
        """Restart an actor: its creation task again, with the arguments it kept alive."""
        task = Task(spec=spec, owner=owner, need=dict(spec.resources))
        task.shape = (tuple(sorted(task.need.items())), spec.strategy)
        self.tasks[spec.task_id] = task
        for oid in (*spec.deps, *spec.nested):
            if oid in self.objects:  # a nested object may have been gone at submit
                self.objects[oid].refs += 1
        failed = next(
            (self.objects[o] for o in spec.deps if self.objects[o].state == "error"), None
        )
        if failed is not None:
            self.transition(task, "erred", failed.error)
        else:
            self.transition(task, "ready")

    def _to_waiting(self, task: Task) -> None:
        task.state = "waiting"

    def _to_waiting_again(self, task: Task) -> None:
        """Its arguments that are pending again (lost, being made again) hold it back."""
        task.state = "waiting"
        task.worker = None
        for oid in task.spec.deps:  # (once per mention, as at submit: _forget undoes each)
            obj = self.objects[oid]
            if obj.state == "pending":
                task.waiting_on.add(oid)
                obj.dependents.append(task)

    def _to_ready(self, task: Task) -> None:
        if is_call(task.spec):
            task.state = "ready"
            self.actors.call_ready(task)  # an actor's queue, not the placement queues
            return
        queue = self.queues.get(task.shape)
        if queue is None:
            queue = self.queues[task.shape] = deque()
        if task.state == "waiting":
            # Its arguments just came: it goes before the tasks that were ready
            # from the start, so that a subtree begun is finished (and its
            # intermediates freed) before new ones begin, as dask's ordering does.
            queue.appendleft(task)
        else:
            queue.append(task)
        task.state = "ready"
        self.placement_due = True
        feasible = self._feasible.get(task.shape)
        if feasible is None:
            feasible = self._feasible[task.shape] = placement.feasible(
                task.need, self.workers.values()
            )
        if not feasible:
            dispatch.warn_infeasible(self, task)
        elif task.spec.strategy.startswith("node:"):
            node = task.spec.strategy.split(":", 1)[1]
            if node not in self.workers:
                dispatch.warn_missing_node(self, task, node)

    def _to_channel(self, task: Task, worker: WorkerRec) -> None:
        task.state = "processing"
        task.worker = worker.worker_id
        task.placed = self.now + self.clock_offset
        task.need = {}  # what the channel's executor holds, it holds for the channel
        worker.running.add(task.id)
        if is_call(task.spec):
            self.actors.call_direct(task)
        else:
            self.lease_tasks.setdefault(task.spec.channel, set()).add(task.id)

    def _to_processing(self, task: Task, worker: WorkerRec, gpu_ids: list[int]) -> None:
        task.state = "processing"
        task.worker = worker.worker_id
        task.placed = self.now + self.clock_offset
        task.gpu_ids = gpu_ids
        worker.running.add(task.id)
        worker.reserve(task.need, gpu_ids)
        spec = task.spec
        if spec.channel_to and spec.actor_id and not self._may_call_back(task, worker):
            spec = msgspec.structs.replace(spec, channel_to="")
        function = b""
        if spec.function_id and spec.function_id not in worker.functions:
            function = self.functions.get(spec.function_id, b"")
            if function:  # not exported yet: send it with a later task
                worker.functions.add(spec.function_id)
        inputs = [self.objects[oid].as_value() for oid in spec.deps]
        self._assignments.setdefault(worker.worker_id, []).append(
            w.Assignment(spec, inputs, function, gpu_ids, self._deliver_to(task, worker))
        )

    def _may_call_back(self, task: Task, worker: WorkerRec) -> bool:
        """Whether an actor's process may open a channel to the caller of ``task``
        (taskgraph/_channels.py): only to a caller on its host, and only if the
        actor cannot restart (calls sent to a process that died would be lost)."""
        owner = self.clients.get(task.owner)
        return (
            owner is not None
            and owner.host == worker.info.host
            and self.actors.may_call_back(task.spec.actor_id)
        )

    def _deliver_to(self, task: Task, worker: WorkerRec) -> str:
        """The owner's address, if it waits for this task and shares the worker's host."""
        owner = self.clients.get(task.owner)
        if owner is None or not owner.deliver or owner.host != worker.info.host:
            return ""
        for oid in return_ids(task.id, task.spec.num_returns):
            obj = self.objects.get(oid)
            if obj is not None and owner.client_id in obj.waiters:
                return owner.deliver
        return ""

    def _to_memory(self, task: Task, result: w.TaskResult) -> None:
        task.state = "memory"
        worker = self.workers.get(task.worker or "")
        for ret in result.returns:
            obj = self.objects.get(ret.object_id)
            if obj is None or obj.state != "pending":
                # Freed meanwhile, or a task run again for another of its returns
                # (lineage.py) while this one lives on: the new copy has no holder.
                if ret.location is not None and worker is not None:
                    kept = () if obj is None else (obj.location, *obj.copies.values())
                    if all(loc is None or loc.worker_id != worker.worker_id for loc in kept):
                        self.send_worker(worker.worker_id, w.FreeObjects([ret.object_id]))
                continue
            if result.delivered:
                obj.waiters.discard(task.owner)  # the executor handed it over already
            objects.set_state(self, obj, "ready")
            obj.data = ret.data
            obj.location = ret.location
            if ret.location is not None and worker is not None:
                worker.segments[ret.object_id] = ret.location.store
            # Made again, it holds what its new value names (a task that puts
            # makes new objects each run), and lets go of what the old one did.
            held, obj.contains = obj.contains, []
            objects.hold_contained(self, obj, ret.contains)
            for inner in held:
                objects.decref(self, inner)
            lineage.remember(self, task, obj)
            objects.done(self, obj)
        self._forget(task)

    def _to_erred(self, task: Task, error: bytes | None) -> None:
        task.state = "erred"
        if not task.error_type:  # (a report names it; a failure decided here does not)
            task.error_type = error_type_of(error)
        for oid in return_ids(task.id, task.spec.num_returns):
            obj = self.objects.get(oid)
            if obj is None or (obj.state != "pending" and obj.lineage is not None):
                continue  # (a sibling return of one it ran again for lives on: lineage.py)
            objects.failed(self, obj, error)
        self._forget(task)
        if task.spec.actor is not None:
            self.actors.creation_erred(task.id, error)

    def _to_cancelled(self, task: Task, error: bytes | None) -> None:
        self._to_erred(task, error)
        task.state = "cancelled"

    def _forget(self, task: Task) -> None:
        """A finished task lets go of its arguments and leaves the table."""
        self.tasks_finished += 1
        spec = task.spec
        if spec.channel:
            running = self.lease_tasks.get(spec.channel)
            if running is not None:
                running.discard(task.id)
        if w.is_lease(spec):
            self.lease_tasks.pop(task.id, None)
        if not task.ended:  # (no report: it ends now)
            task.ended = self.now + self.clock_offset
        self.history.finished(task)
        if is_call(task.spec):
            self.actors.call_finished(task)
        for oid in task.spec.deps:
            if oid in self.objects:
                if oid in task.waiting_on:
                    self.objects[oid].dependents.remove(task)
                objects.decref(self, oid)
        for oid in task.spec.nested:
            if oid in self.objects:
                objects.decref(self, oid)
        task.waiting_on.clear()
        del self.tasks[task.id]
        if task.spec.parent:
            siblings = self.children.get(task.spec.parent)
            if siblings is not None:
                siblings.discard(task.id)
                if not siblings:
                    del self.children[task.spec.parent]
        for oid in return_ids(task.id, task.spec.num_returns):
            obj = self.objects.get(oid)
            if obj is not None and obj.refs == 0:
                objects.free(self, obj)
        for oid in task.items:
            obj = self.objects.get(oid)
            if obj is not None and obj.state == "pending":
                # Never yielded. A reader of the generator learns the end from the
                # count; whoever else holds or awaits the item gets an error.
                lost = ObjectLostError(
                    oid.hex(), f"generator task '{task.spec.name}' ended without yielding it"
                )
                objects.failed(self, obj, error_bytes(lost))
                if obj.refs == 0:
                    objects.free(self, obj)

    # -- objects (scheduler/objects.py) ----------------------------------

    def decref(self, oid: bytes) -> None:
        """One holder less (for actors.py; the modules beside this one call
        ``objects.decref`` as this one does)."""
        objects.decref(self, oid)

    # -- capacity (dispatch.py places) -------------------------------------

    def wake_placement(self) -> None:
        """Capacity or ready tasks changed: try to place before this handle returns."""
        self.placement_due = True

    def release_resources(self, worker: WorkerRec, task: Task) -> None:
        worker.running.discard(task.id)
        need = task.need
        if task.blocked:  # its CPUs were lent out already (TaskBlocked)
            need = {name: amount for name, amount in need.items() if name != "CPU"}
        worker.give_back(need, task.gpu_ids)
        task.blocked = False
        task.gpu_ids = []
        self.placement_due = True

    def workers_changed(self) -> None:
        """A worker joins or leaves: which shapes of task some worker could run
        is asked anew (as they next become ready)."""
        self._feasible.clear()

    # -- snapshots (scheduler/views.py) ------------------------------------

    def story(self, key: bytes) -> list[dict[str, Any]]:
        """What happened to a task (and its returns), an object or an actor, oldest
        first: each state change, what caused it, and when (monotonic seconds)."""
        return self.changes.of(key)

    def query(self, what: str, arg: Any = None) -> Any:
        return views.query(self, what, arg)

    def task_list(self) -> list[dict[str, Any]]:
        return self.history.task_list(self.tasks.values())

    def call_site(self, object_id: bytes) -> str | None:
        """Where the user's code made an object (``file.py:function:line``)."""
        obj = self.objects.get(object_id)
        return obj.site or None if obj is not None else None

    def memory(self, top: int = 10) -> dict[str, Any]:
        return views.memory(self, top)

    def statistics(self) -> dict[str, Any]:
        return views.statistics(self)

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<SchedulerState workers={s['workers']} clients={s['clients']} "
            f"tasks={s['tasks']} objects={s['objects']}>"
        )

    def validate(self) -> None:
        """Every invariant, recomputed from scratch (tests call it after each step)."""
        views.validate(self)
