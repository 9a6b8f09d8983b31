"""One call, start to end, inside an executor: a task's, a leased task's, an
actor method's or an actor's constructor's.

::

    Assignment ─▶ arguments (fetched, decoded) ─▶ context entered ─▶ function runs
        ─▶ returns encoded (stored, or streamed item by item) ─▶ TaskResult
                     any failure on the way ─▶ TaskResult (failure as data)

Here: the functions loaded (cached by content hash), the task context a call
sees (get_runtime_context(), CUDA_VISIBLE_DEVICES), the refs held inside its
returns until its report, and each phase's time (``Phases``). ``TaskCalls`` is
the executor's half that runs calls; it must not know where a call came from
or where its result goes (which task runs next, leases, reports: the other
half, ``worker/executor.py``).
"""

from __future__ import annotations

import inspect
import itertools
import os
import pickle
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from taskgraph import _api, serialization
from taskgraph import _wire as w
from taskgraph._ids import generator_item_id, return_ids
from taskgraph._object_ref import ObjectRef
from taskgraph.actor import _ActorExit
from taskgraph.exceptions import ObjectLostError, TaskCancelledError

from . import output
from .actor_runtime import exit_for

if TYPE_CHECKING:
    from .actor_runtime import ActorRuntime
    from .channel import Lease
    from .executor_client import ExecutorClient, Inbox


class Cancelled(BaseException):
    """Raised into a running task by SIGINT when the user cancelled it."""


class _InputLost(Exception):
    """A task's argument could not be read: its copy is gone with its holder."""

    def __init__(self, object_id: bytes, worker_id: str, error: ObjectLostError) -> None:
        super().__init__(object_id.hex())
        self.object_id = object_id
        self.worker_id = worker_id  # whose copy it was
        self.error = error


class TaskCalls:
    """Runs calls for its executor (``Executor`` is one: worker/executor.py)."""

    # The executor's, read here: which actor this process holds, the lease it
    # serves, its inbox (which task is being cancelled) and the cancels asked for.
    actor: ActorRuntime | None
    actor_id: bytes
    lease: Lease | None
    tasks: Inbox
    cancels: set[bytes]

    def __init__(self, client: ExecutorClient, worker_id: str, executor_id: str) -> None:
        self.client = client
        self.worker_id = worker_id
        self.executor_id = executor_id
        self.functions: dict[bytes, Any] = {}
        self.retry_classes: dict[bytes, tuple[type[BaseException], ...]] = {}
        self.running = False  # a task's own code runs on the main thread (on_sigint)
        self.gpu_ids: list[int] = []  # an actor's, for its whole life
        self.saved_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._until_reported: dict[bytes, list[ObjectRef]] = {}  # refs inside returns
        self.actor_job = b""  # an actor's job: its creator's (Ray's get_job_id())

    def function(self, a: w.Assignment) -> Any:
        """The call's function (an actor's class), loaded once per process."""
        fn = self.functions.get(a.spec.function_id)
        if fn is None:
            fn = self.functions[a.spec.function_id] = serialization.loads_function(a.function)
        return fn

    def returns_none(self, a: w.Assignment) -> w.TaskResult:
        none = serialization.dumps(None)[0]
        oids = return_ids(a.spec.task_id, a.spec.num_returns)
        return w.TaskResult(a.spec.task_id, returns=[w.ReturnValue(o, data=none) for o in oids])

    def arguments(self, a: w.Assignment) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments, refs among them replaced by their values."""
        inputs = {v.object_id: v for v in a.inputs}
        if a.spec.actor_id:  # calls may run side by side: acquire as usual
            args, kwargs = serialization.loads(a.spec.args)
        else:
            args, kwargs = self.client.borrow_arguments(lambda: serialization.loads(a.spec.args))
        return (
            [self._resolve(x, inputs) for x in args],
            {k: self._resolve(v, inputs) for k, v in kwargs.items()},
        )

    def enter(self, a: w.Assignment) -> None:
        """What the call's code sees while it runs: its context, GPUs, job, namespace."""
        spec = a.spec
        call = self.actor is not None and spec.actor is None
        if spec.actor is not None:
            self.actor_job = spec.job or spec.task_id[:8]
        _api.set_task_context(
            _api.TaskContext(
                task_id=spec.task_id,
                node_id=self.worker_id,
                worker_id=self.executor_id,
                # A call holds nothing of its own: its actor's are what it has.
                resources=dict(self.actor.spec.hold if call and self.actor else spec.resources),
                gpu_ids=list(a.gpu_ids) or self.gpu_ids,
                actor_id=self.actor_id,
                job_id=self.actor_job if self.actor_id else spec.job or spec.task_id[:8],
                cancelled=partial(self.cancels.__contains__, spec.task_id),
                in_async_actor=spec.actor is not None and spec.actor.is_async,
            )
        )
        if a.gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, a.gpu_ids))
        self.client.task_began(spec, self.lease.lease_id if self.lease else None)
        if not spec.actor_id or spec.actor is not None:
            # A task sees its job's named actors; an actor keeps its creator's.
            _api.set_namespace(spec.namespace)
            output.task = spec  # who prints now: an actor's lines are its own
        if not spec.actor_id:
            self.running = True

    def leave(self, a: w.Assignment, keep_gpus: bool = False) -> None:
        """The call's code returned: undo ``enter`` (an actor's constructor keeps its GPUs)."""
        self.running = False
        self.client.task_left()
        if not self.actor_id:
            _api.set_task_context(None)
        if keep_gpus:
            self.gpu_ids = list(a.gpu_ids)
        elif a.gpu_ids:
            if self.saved_cuda is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self.saved_cuda

    def call(self, a: w.Assignment, fn: Any) -> w.TaskResult:
        """Run a task or a sequential/threaded actor call; its failure becomes data.
        Its report says how long each phase took (``TaskResult.phases``)."""
        spec = a.spec
        clock = Phases(time.perf_counter())
        started = time.time()
        self.client.fetch_waits.seconds = 0.0
        try:
            args, kwargs = self.arguments(a)
            clock.lap()
            self.enter(a)
            try:
                if self.tasks.cancelling == spec.task_id and not spec.actor_id:
                    raise Cancelled()  # its cancel's SIGINT came during set-up (ignored then)
                out = fn(*args, **kwargs)
                if spec.generator:
                    out = self._stream(spec, out)
            finally:
                self.leave(a)
            clock.lap()
            result = w.TaskResult(spec.task_id, returns=self._pack(spec, out))
        except BaseException as exc:
            result = self.failed(a, exc)
        result.started, result.duration = started, clock.end(self.client.fetch_waits.seconds)
        result.phases = clock.laps
        return result

    async def call_async(self, a: w.Assignment, method: Any) -> w.TaskResult:
        spec = a.spec
        clock = Phases(time.perf_counter())
        started = time.time()
        try:
            args, kwargs = self.arguments(a)
            clock.lap()
            out = method(*args, **kwargs)
            if inspect.isawaitable(out):
                out = await out
            if spec.generator:
                out = await self._stream_async(spec, out)
            clock.lap()
            result = w.TaskResult(spec.task_id, returns=self._pack(spec, out))
        except BaseException as exc:
            result = self.failed(a, exc)
        # (calls run side by side on one loop: no fetch time of their own to tell)
        result.started, result.duration = started, clock.end(0.0)
        result.phases = clock.laps
        return result

    def failed(self, a: w.Assignment, exc: BaseException) -> w.TaskResult:
        """The result of a call that raised ``exc``: its failure, as data."""
        spec = a.spec
        if isinstance(exc, _InputLost):  # (the scheduler has it made again: lineage)
            return w.TaskResult(
                spec.task_id,
                error=pickle.dumps(exc.error),
                failure="input",
                error_type=type(exc.error).__name__,
                lost=exc.object_id,
                lost_from=exc.worker_id,
            )
        if isinstance(exc, Cancelled):
            err = TaskCancelledError(spec.name, spec.task_id.hex())
            return w.TaskResult(spec.task_id, error=pickle.dumps(err), failure="cancelled")
        if isinstance(exc, _ActorExit) and self.actor is not None:
            self.actor.exiting = True
            return self.returns_none(a)
        if isinstance(exc, SystemExit) and self.actor is not None:
            # sys.exit() in a method ends the actor's process, as in Ray: the
            # call has no result (its callers get ActorDiedError, or a retry).
            exit_for(self, exc, f"method {spec.method!r}")
        return w.TaskResult(
            spec.task_id,
            error=serialization.dumps_error(exc, spec.name),
            failure="task",
            error_type=type(exc).__name__,
            no_retry=bool(spec.retry_on) and not self._retried_on(spec.retry_on, exc),
        )

    def _retried_on(self, retry_on: bytes, exc: BaseException) -> bool:
        """Whether ``exc`` is among a task's ``retry_exceptions`` (a list, pickled)."""
        classes = self.retry_classes.get(retry_on)
        if classes is None:
            classes = self.retry_classes[retry_on] = serialization.loads_function(retry_on)
        return isinstance(exc, classes)

    def _stream(self, spec: w.TaskSpec, items: Any) -> int:
        """Send each item of a generator task as it is produced; return the count."""
        count = 0
        for item in items:
            oid = generator_item_id(spec.task_id, count)
            value = self.client.objects.encode(oid, item, f"item {count} of task '{spec.name}'")
            self.client.send_soon(w.GeneratorItem(spec.task_id, count, value))
            count += 1
        return count

    async def _stream_async(self, spec: w.TaskSpec, items: Any) -> int:
        """``_stream`` for an async actor's generator method (async or not)."""
        if not inspect.isasyncgen(items):
            return self._stream(spec, items)
        count = 0
        async for item in items:
            oid = generator_item_id(spec.task_id, count)
            value = self.client.objects.encode(oid, item, f"item {count} of task '{spec.name}'")
            self.client.send_soon(w.GeneratorItem(spec.task_id, count, value))
            count += 1
        return count

    def _resolve(self, value: Any, inputs: dict[bytes, w.Value]) -> Any:
        if isinstance(value, ObjectRef):
            given = inputs[value.id]
            try:
                return self.client.objects.decode(given)
            except ObjectLostError as exc:
                if given.error is not None:
                    raise  # the argument failed: that is its value
                assert given.location is not None  # (only a stored value can be unreadable)
                raise _InputLost(value.id, given.location.worker_id, exc) from exc
        return value

    def _pack(self, spec: w.TaskSpec, out: Any) -> list[w.ReturnValue]:
        n = spec.num_returns
        if n == 0:
            return []
        if n == 1:
            outs = [out]
        else:
            if inspect.isgenerator(out):
                out = list(out)
            if not isinstance(out, tuple | list) or len(out) != n:
                raise ValueError(
                    f"task '{spec.name}' declares num_returns={n} but returned "
                    f"{type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, tuple | list) else "")
                )
            outs = list(out)
        what = f"the return value of task '{spec.name}'"
        returns = [
            self.client.objects.encode(oid, value, what)
            for oid, value in zip(return_ids(spec.task_id, n), outs, strict=True)
        ]
        inner = [oid for r in returns for oid in r.contains]
        if inner:
            # Held until the report is sent: released sooner (the value that
            # holds them dies as the task returns), the scheduler could hear
            # of the release first and free them before it hears they are
            # inside a return.
            self._until_reported[spec.task_id] = [ObjectRef(oid, self.client) for oid in inner]
        return returns


class Phases:
    """A task's phases, timed: arguments (fetched, then decoded), its run, and
    storing its returns. ``laps`` is what the report carries: seconds of
    [fetch, deserialize, run, store]; a task that failed early has fewer."""

    __slots__ = ("_marks",)

    def __init__(self, began: float) -> None:
        self._marks = [began]

    def lap(self) -> None:
        self._marks.append(time.perf_counter())

    def end(self, fetched: float) -> float:
        """The last lap; the whole duration. ``fetched``: the first phase's wait for other hosts."""
        self.lap()
        marks = self._marks
        steps = [b - a for a, b in itertools.pairwise(marks)]
        fetched = min(fetched, steps[0])
        self._marks = [fetched, steps[0] - fetched, *steps[1:]]
        return marks[-1] - marks[0]

    @property
    def laps(self) -> list[float]:
        return self._marks
