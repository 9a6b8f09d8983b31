"""The actor part of the scheduler's state machine: pinned, stateful graph nodes.

Pure, like ``state.py``, and driven only by the state machine:
``SchedulerState`` owns an ``Actors``, and it and the modules beside it
(``clients.py``, ``workers.py``, ``channels.py``, ``objects.py``) call it at
the few points where actors differ from tasks.

- An actor is born from a *creation task*, placed by resources like any
  task. When its constructor returns the actor is ``alive`` on that worker,
  holding its resources (``ActorSpec.hold``) until it dies.
- Method calls are tasks bound to the actor. They wait in ``calls`` in
  submission order; the head is handed to the actor's worker as soon as its
  arguments are ready, so one caller's calls run in its order even when
  their arguments are still being computed.
- The creation task's return object is the actor's *anchor*; handles hold
  it like a ref. When it is freed, the actor is stopped (unless detached).
- A dead process restarts the actor while ``max_restarts`` allows (its
  constructor runs again with the same arguments, which the actor keeps
  alive); calls in flight are retried while ``max_task_retries`` allows.

Actor states::

    pending ──▶ alive ──▶ dead
                ▲   │
                │   ▼
              restarting ──▶ dead
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from taskgraph import _wire as w
from taskgraph._ids import first_return, task_of
from taskgraph.exceptions import ActorDiedError

from .story import ACTOR_TRANSITIONS, check

if TYPE_CHECKING:
    from .state import Obj, Task, WorkerRec
    from .story import Story


class Scheduler(Protocol):
    """What the actors' part may use of the scheduler's state: its records (read,
    and an actor's own tasks changed only through ``transition``) and these
    calls. ``SchedulerState`` is the one implementation."""

    tasks: dict[bytes, Task]
    workers: dict[str, WorkerRec]
    objects: dict[bytes, Obj]
    changes: Story
    stimulus: tuple[Any, ...]
    now: float

    def transition(self, task: Task, finish: str, *args: Any) -> None: ...

    def send_worker(self, worker_id: str, msg: Any) -> None: ...

    def release_resources(self, worker: WorkerRec, task: Task) -> None: ...

    def decref(self, object_id: bytes) -> None: ...

    def resubmit_creation(self, spec: w.TaskSpec, owner: bytes) -> None: ...

    def wake_placement(self) -> None: ...


def anchor_id(actor_id: bytes) -> bytes:
    return first_return(actor_id)


def is_call(spec: w.TaskSpec) -> bool:
    return bool(spec.actor_id) and spec.actor is None


@dataclass(slots=True, eq=False)
class ActorRec:
    actor_id: bytes
    spec: w.TaskSpec  # of the creation task
    owner: bytes
    state: str = "pending"  # pending | alive | restarting | dead
    worker: str | None = None
    pid: int = 0
    calls: deque[Task] = field(default_factory=deque)  # not yet handed over, in order
    running: dict[bytes, Task] = field(default_factory=dict)  # handed over, in order
    restarts_left: int = 0
    gpu_ids: list[int] = field(default_factory=list)
    killing: bool = False  # kill() was asked: no caller opens a channel to it any more
    no_restart: bool = False
    death: bytes | None = None  # the error later calls get
    calls_finished: int = 0  # its calls that returned, whichever road they took
    calls_failed: int = 0  # those that raised, were cancelled or died with its process

    @property
    def actor(self) -> w.ActorSpec:
        assert self.spec.actor is not None
        return self.spec.actor

    @property
    def key(self) -> tuple[str, str]:
        return (self.actor.namespace, self.actor.name)


class Actors:
    def __init__(self, state: Scheduler) -> None:
        self.state = state
        self.actors: dict[bytes, ActorRec] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self._leaving: WorkerRec | None = None  # the worker being removed, if any

    # -- creation ----------------------------------------------------------

    def create_named(self, client_id: bytes, msg: w.CreateNamedActor) -> dict[str, Any]:
        """A named actor: created now, or the existing one (get_if_exists), or an error."""
        spec = msg.spec
        assert spec.actor is not None
        key = (spec.actor.namespace, spec.actor.name)
        existing = self.actors.get(self.names.get(key, b""))
        if existing is not None:
            if not spec.actor.get_if_exists:
                return {
                    "error": f"an actor named {spec.actor.name!r} already exists in namespace "
                    f"{spec.actor.namespace!r}; pick another name or pass get_if_exists=True"
                }
            return {**self.describe(existing), "existing": True}
        return {"actor_id": spec.actor_id.hex()}

    def created(self, task: Task) -> None:
        """A creation task was submitted: the actor exists from now on, pending."""
        spec = task.spec
        assert spec.actor is not None
        rec = ActorRec(spec.actor_id, spec, task.owner, restarts_left=spec.actor.max_restarts)
        self.actors[spec.actor_id] = rec
        self._record(rec, "", rec.state)
        if spec.actor.name:
            self.names[rec.key] = rec.actor_id
        # The actor keeps its constructor's arguments alive for restarts.
        for oid in (*spec.deps, *spec.nested):
            obj = self.state.objects.get(oid)
            if obj is not None:
                obj.refs += 1
        if spec.actor.detached:
            self.state.objects[anchor_id(rec.actor_id)].refs += 1

    def creation_done(self, worker: WorkerRec, task: Task, result: w.TaskResult) -> None:
        rec = self.actors.get(task.id)
        gpu_ids = list(task.gpu_ids)
        self.state.release_resources(worker, task)
        if rec is None or rec.state == "dead":
            # Not expected (the actor's end fails its creation task); if it happens,
            # the process must not outlive the actor.
            self.state.send_worker(worker.worker_id, w.KillActor(task.id, True))
            self.state.transition(task, "erred", rec.death if rec else None)
            return
        if result.failure:
            # The process outlived its failed constructor: end it too.
            self.state.send_worker(worker.worker_id, w.KillActor(rec.actor_id, True))
            self._die(rec, result.error or self._died(rec, "its constructor failed"))
            return
        self._set_state(rec, "alive")
        rec.worker, rec.gpu_ids = worker.worker_id, gpu_ids
        self._take(worker, rec)
        self.state.transition(task, "memory", result)
        self.dispatch(rec)

    def creation_erred(self, actor_id: bytes, error: bytes | None) -> None:
        """The creation task failed before the actor existed (e.g. a failed argument)."""
        rec = self.actors.get(actor_id)
        if rec is not None and rec.state != "dead":
            self._die(rec, error or self._died(rec, "its creation failed"))

    def started(self, msg: w.ActorStarted) -> None:
        rec = self.actors.get(msg.actor_id)
        if rec is not None:
            rec.pid = msg.pid

    def _set_state(self, rec: ActorRec, finish: str) -> None:
        """Move an actor to ``finish`` (a pair missing from ACTOR_TRANSITIONS raises)."""
        if rec.state == finish:
            return
        check(ACTOR_TRANSITIONS, "actor", rec.actor_id, rec.state, finish)
        self._record(rec, rec.state, finish)
        rec.state = finish

    def _record(self, rec: ActorRec, start: str, finish: str) -> None:
        state = self.state
        state.changes.record("actor", rec.actor_id, start, finish, state.stimulus, state.now)

    def may_call_back(self, actor_id: bytes) -> bool:
        """Whether the actor's process may open a channel to a caller on its host
        (taskgraph/_channels.py): not if it may restart (calls sent to a process
        that died would be lost), nor once it is being killed."""
        rec = self.actors.get(actor_id)
        return (
            rec is not None
            and rec.state == "alive"
            and rec.actor.max_restarts == 0
            and not rec.killing
        )

    # -- calls -------------------------------------------------------------

    def call_error(self, spec: w.TaskSpec) -> bytes | None:
        """Why a new call fails at once (the actor is dead or unknown), else None."""
        rec = self.actors.get(spec.actor_id)
        if rec is None:
            err = ActorDiedError(spec.actor_id.hex(), "no such actor is alive any more")
            return pickle.dumps(err)
        if rec.state == "dead":
            return rec.death
        return None

    def call_submitted(self, task: Task) -> None:
        rec = self.actors[task.spec.actor_id]
        task.retries_left = rec.actor.max_task_retries
        rec.calls.append(task)

    def call_direct(self, task: Task) -> None:
        """A call its caller sent straight to the actor's process: it runs there now."""
        self.actors[task.spec.actor_id].running[task.id] = task

    def call_ready(self, task: Task) -> None:
        rec = self.actors.get(task.spec.actor_id)
        if rec is not None:
            self.dispatch(rec)

    def call_finished(self, task: Task) -> None:
        rec = self.actors.get(task.spec.actor_id)
        if rec is None:
            return
        if task.state == "memory":
            rec.calls_finished += 1
        else:
            rec.calls_failed += 1
        if rec.running.pop(task.id, None) is None and rec.calls and rec.calls[0] is task:
            # It failed or was cancelled at the head of the queue: the calls behind
            # it need not wait for it any more.
            self.dispatch(rec)

    def dispatch(self, rec: ActorRec) -> None:
        """Hand calls to the actor from the head of its queue while the head is ready."""
        if rec.state != "alive":
            return
        worker = self.state.workers[rec.worker or ""]
        while rec.calls:
            head = rec.calls[0]
            if head.state in ("waiting",):
                return
            rec.calls.popleft()
            if head.state != "ready":
                continue  # failed or cancelled while queued
            rec.running[head.id] = head
            self.state.transition(head, "processing", worker, [])

    # -- the end -------------------------------------------------------------

    def kill(self, msg: w.KillActor) -> None:
        rec = self.actors.get(msg.actor_id)
        if rec is None or rec.state == "dead":
            return
        rec.no_restart = rec.no_restart or msg.no_restart
        rec.killing = True
        worker = self._process_at(rec)
        if worker is not None:
            self.state.send_worker(worker, w.KillActor(rec.actor_id, msg.no_restart))
            return
        self._die(rec, self._died(rec, "it was killed with kill()"))

    def died(self, msg: w.ActorDied, worker_id: str | None = None) -> None:
        """The actor's process on ``worker_id`` exited: restart it, or fail what it had."""
        rec = self.actors.get(msg.actor_id)
        if rec is None or self._process_at(rec) is None:
            return  # dead, or a late report of a process it already replaced
        if worker_id is not None and self._process_at(rec) != worker_id:
            return  # a worker we gave up on reports a process the actor has replaced
        # Only an end the actor announced is intended (exit_actor(), sys.exit(0),
        # __taskgraph_terminate__); any other exit is a crash, exit code 0 included
        # (os._exit(0)), and restarts it while max_restarts allows, as in Ray.
        intended = bool(msg.ending)
        if msg.exit_code < 0:
            how = f"its process died of signal {-msg.exit_code}"
        else:
            how = f"its process exited with code {msg.exit_code}"
        if rec.no_restart:
            how = "it was killed with kill()"
        elif intended:
            how = f"it ended on purpose: {msg.ending}"
        self._lost_process(rec, how, restart=not intended)

    def worker_left(self, worker: WorkerRec) -> None:
        """Before the worker's own tasks are dealt with: its actors lost their processes."""
        self._leaving = worker
        try:
            for rec in list(self.actors.values()):
                if self._process_at(rec) == worker.worker_id:
                    why = f"its node {worker.worker_id} left the cluster"
                    self._lost_process(rec, why, restart=True)
        finally:
            self._leaving = None

    def _process_at(self, rec: ActorRec) -> str | None:
        """The worker running the actor's process (alive, or in its constructor), if any."""
        if rec.state == "alive":
            return rec.worker
        creation = self.state.tasks.get(rec.actor_id)
        if rec.state != "dead" and creation is not None and creation.state == "processing":
            return creation.worker
        return None

    def _worker(self, worker_id: str | None) -> WorkerRec | None:
        if self._leaving is not None and self._leaving.worker_id == worker_id:
            return self._leaving
        return self.state.workers.get(worker_id or "")

    def _lost_process(self, rec: ActorRec, how: str, restart: bool) -> None:
        state = self.state
        creation = state.tasks.get(rec.actor_id)
        if creation is not None and creation.state == "processing":
            worker = self._worker(creation.worker)
            if worker is not None and creation.id in worker.running:
                state.release_resources(worker, creation)
        elif rec.state == "alive":
            self._give_back(rec)
            self._set_state(rec, "restarting")  # no longer holding anything
        can_restart = restart and not rec.no_restart and rec.restarts_left > 0
        in_flight = list(rec.running.values())
        rec.running.clear()
        for call in in_flight:
            worker = self._worker(call.worker)
            if worker is not None:
                worker.running.discard(call.id)
        death = self._died(rec, how)
        failed = in_flight
        if not can_restart:
            self._die(rec, death)
        else:
            rec.restarts_left -= 1
            self._set_state(rec, "restarting")
            rec.worker, rec.pid = None, 0
            retried = [call for call in in_flight if call.retries_left > 0]
            failed = [call for call in in_flight if call.retries_left <= 0]
            death = self._died(rec, how, restarting=True)  # (not dead: say so)
            for call in retried:
                call.retries_left -= 1
            rec.calls.extendleft(reversed(retried))
            for call in retried:
                state.transition(call, "ready")
            if creation is not None and creation.state == "processing":
                state.transition(creation, "ready")
            else:
                state.resubmit_creation(rec.spec, rec.owner)
        # Last: a failed call may let go of the actor's last handle, which ends
        # the actor (anchor_freed) and must find it settled.
        for call in failed:
            state.transition(call, "erred", death)

    def _die(self, rec: ActorRec, death: bytes | None) -> None:
        state = self.state
        if rec.state == "alive":
            self._give_back(rec)
        self._set_state(rec, "dead")
        rec.death, rec.worker = death, None
        if self.names.get(rec.key) == rec.actor_id:
            del self.names[rec.key]
        calls, rec.calls = list(rec.calls), deque()
        for call in calls:
            if call.id in state.tasks and call.state in ("waiting", "ready"):
                state.transition(call, "erred", death)
        creation = state.tasks.get(rec.actor_id)
        if creation is not None:
            worker = self._worker(creation.worker)
            if worker is not None and creation.id in worker.running:
                state.release_resources(worker, creation)
            state.transition(creation, "erred", death)
        spec = rec.spec
        for oid in (*spec.deps, *spec.nested):
            state.decref(oid)
        if rec.actor.detached:
            state.decref(anchor_id(rec.actor_id))

    def anchor_freed(self, oid: bytes) -> None:
        """The last handle is gone: stop the actor and forget it."""
        actor_id = task_of(oid)
        rec = self.actors.get(actor_id)
        if rec is None:
            return
        worker = self._process_at(rec)
        if worker is not None:  # alive, or its constructor is running again
            self.state.send_worker(worker, w.KillActor(actor_id, True, graceful=True))
        if rec.state != "dead":
            rec.no_restart = True
            self._die(rec, self._died(rec, "its last handle was dropped"))
        del self.actors[actor_id]

    def _died(self, rec: ActorRec, why: str, restarting: bool = False) -> bytes:
        name = f"{rec.actor.class_name} {rec.actor_id.hex()}"
        return pickle.dumps(ActorDiedError(name, why, restarting=restarting))

    # -- resources -----------------------------------------------------------

    def _take(self, worker: WorkerRec, rec: ActorRec) -> None:
        if rec.actor.hold.get("GPU", 0.0) <= 0:
            rec.gpu_ids = []  # (its constructor's GPUs are not held for life)
        worker.reserve(rec.actor.hold, rec.gpu_ids)

    def _give_back(self, rec: ActorRec) -> None:
        worker = self._worker(rec.worker)
        if worker is None:
            return
        worker.give_back(rec.actor.hold, rec.gpu_ids)
        rec.gpu_ids = []
        self.state.wake_placement()

    # -- snapshots and invariants ---------------------------------------------

    def describe(self, rec: ActorRec) -> dict[str, Any]:
        return {
            "actor_id": rec.actor_id.hex(),
            "class_name": rec.actor.class_name,
            "name": rec.actor.name,
            "namespace": rec.actor.namespace,
            "state": rec.state.upper(),
            "node_id": rec.worker,
            "pid": rec.pid,
            "methods": dict(rec.actor.methods),
        }

    def get(self, arg: dict[str, str]) -> dict[str, Any] | None:
        rec = self.actors.get(self.names.get((arg.get("namespace", ""), arg["name"]), b""))
        return self.describe(rec) if rec is not None else None

    def holds(self, refs: dict[bytes, int]) -> None:
        """Add the refs actors hold (constructor arguments, detached anchors)."""
        for rec in self.actors.values():
            if rec.state == "dead":
                continue
            for oid in (*rec.spec.deps, *rec.spec.nested):
                if oid in refs:
                    refs[oid] += 1
            if rec.actor.detached:
                refs[anchor_id(rec.actor_id)] += 1

    def used(self, worker_id: str, used: dict[str, float]) -> None:
        for rec in self.actors.values():
            if rec.state == "alive" and rec.worker == worker_id:
                for name, amount in rec.actor.hold.items():
                    used[name] = used.get(name, 0.0) + amount

    def validate(self) -> None:
        for key, actor_id in self.names.items():
            assert self.actors[actor_id].key == key and self.actors[actor_id].state != "dead"
        for rec in self.actors.values():
            if rec.state == "alive":
                assert rec.worker in self.state.workers, "alive actor on an unknown worker"
            for task in rec.calls:
                assert task.state in ("waiting", "ready") or task.id not in self.state.tasks
            for task in rec.running.values():
                assert task.state == "processing" and rec.state == "alive"
                assert task.worker == rec.worker
            queued = [t for t in rec.calls if self.state.tasks.get(t.id) is t]
            if rec.state == "alive" and queued:
                assert queued[0].state == "waiting", "an alive actor's ready call waits"
            if rec.state == "alive" and rec.calls:
                assert self.state.tasks.get(rec.calls[0].id) is rec.calls[0], (
                    "a finished call heads an alive actor's queue"
                )
        for task in self.state.tasks.values():
            if not is_call(task.spec):
                continue
            owner = self.actors.get(task.spec.actor_id)
            if task.state == "processing":
                assert owner is not None and task in owner.running.values(), "call not running"
            else:
                assert owner is not None and task in owner.calls, "unfinished call not queued"
