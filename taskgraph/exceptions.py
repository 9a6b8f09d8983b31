"""Every error taskgraph raises on purpose, in one tree.

Each error's message says what happened and what to do about it, and every
error survives a trip through ``pickle`` or ``cloudpickle``: errors are made in
one process (a worker, the scheduler) and raised in another (the caller).
This module knows nothing of sockets, the scheduler or serialization formats.

    TaskgraphError(Exception)
     ├── TaskError                  a task raised; also an instance of the cause's class
     ├── TaskCancelledError         the task was cancelled before it finished
     ├── TaskUnschedulableError     no node can ever satisfy the task's resource request
     ├── WorkerCrashedError         the worker process running a task died
     ├── NodeDiedError              a node (or the worker on it) left the cluster
     ├── ObjectLostError            an object's every copy is gone
     │    └── ObjectReconstructionFailedError   ... and running its task again could not make it
     ├── ObjectStoreFullError       an object does not fit in a node's object store
     ├── OutOfMemoryError           a task was killed because its node ran out of memory
     ├── ActorError                 an actor could not run a call
     │    └── ActorDiedError        the actor's process is gone
     ├── GetTimeoutError            (also TimeoutError) get() ran out of time
     ├── ClusterConnectionError     (also ConnectionError) a connection failed or was lost
     │    └── AuthenticationError   a peer failed the handshake
     ├── ProtocolError              a peer sent a message that does not decode
     └── SerializationError         (also TypeError) a value could not be (un)pickled

A ``TaskError`` made by ``TaskError.from_exception`` is an instance of a class
made on the fly that subclasses both ``TaskError`` and the class of the
exception the task raised, so ``except ValueError`` in the caller catches a
``ValueError`` raised in a worker.

This module is where every error is imported from; ``TaskgraphError`` and
``TaskError``, and how errors are pickled, live in ``_task_error.py``.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from taskgraph._task_error import TaskError, TaskgraphError

__all__ = [
    "ActorDiedError",
    "ActorError",
    "AuthenticationError",
    "ClusterConnectionError",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "ProtocolError",
    "SerializationError",
    "TaskCancelledError",
    "TaskError",
    "TaskUnschedulableError",
    "TaskgraphError",
    "WorkerCrashedError",
]


# -- tasks, workers and nodes --------------------------------------------------


class TaskCancelledError(TaskgraphError):
    """The task was cancelled before it finished, so it has no result."""

    def __init__(self, task_name: str = "", task_id: str = "") -> None:
        self.task_name = task_name
        self.task_id = task_id
        which = f"Task {task_name!r}" if task_name else "A task"
        if task_id:
            which += f" (id {task_id})"
        super().__init__(
            f"{which} was cancelled before it finished, so it has no result. "
            "Submit it again if you still need the value."
        )


class TaskUnschedulableError(TaskgraphError):
    """No node in the cluster can ever satisfy the task's resource request."""

    def __init__(
        self,
        task_name: str = "",
        requested: Mapping[str, float] | None = None,
        reason: str = "",
    ) -> None:
        self.task_name = task_name
        self.requested = dict(requested or {})
        self.reason = reason
        which = f"Task {task_name!r}" if task_name else "A task"
        asks = f" asks for {self.requested}, but" if self.requested else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{which}{asks} cannot run on any node in the cluster{why}. "
            "Lower the task's resource request or add a node that has those resources."
        )


def _describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        try:
            return f"exit code {exit_code} / {signal.Signals(-exit_code).name}"
        except ValueError:
            pass
    return f"exit code {exit_code}"


class WorkerCrashedError(TaskgraphError):
    """The worker process running a task died before reporting a result."""

    def __init__(
        self,
        reason: str = "",
        *,
        task_name: str = "",
        exit_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        self.reason = reason
        self.task_name = task_name
        self.exit_code = exit_code
        self.attempts = attempts
        which = f"running task {task_name!r} " if task_name else ""
        message = f"The worker process {which}died"
        if attempts > 1:
            message = f"{message} on each of its {attempts} tries (max_retries={attempts - 1})"
        if exit_code is not None:
            message += f" ({_describe_exit(exit_code)})"
        if reason:
            message += f": {reason}"
        advice = (
            "look for what the task does that kills its process: retrying more will not help"
            if attempts > 1
            else "give the task max_retries to run it again on a fresh worker"
        )
        super().__init__(
            f"{message}. The worker's log tells whether the OS killed it (e.g. for memory) "
            f"or native code crashed; {advice}."
        )


class NodeDiedError(TaskgraphError):
    """A node, or the worker on it, left the cluster, taking its tasks and objects."""

    def __init__(self, reason: str = "", *, node: str = "") -> None:
        self.reason = reason
        self.node = node
        which = f"Node {node}" if node else "A node"
        why = f": {reason}" if reason else ""
        super().__init__(
            f"{which} left the cluster{why}. Tasks running there and objects held only there "
            "are gone; check that node's logs, then retry (or give tasks max_retries)."
        )


# -- objects -----------------------------------------------------------------


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ObjectLostError(TaskgraphError):
    """Every copy of an object is gone, so ``get`` cannot return it."""

    def __init__(self, object_id: str = "", reason: str = "") -> None:
        self.object_id = object_id
        self.reason = reason
        which = f"Object {object_id}" if object_id else "An object"
        why = f": {reason}" if reason else ""
        super().__init__(
            f"{which} is lost{why}. Make or put the value again (a task's result lost "
            "with its worker is made again on its own, when its task may run again)."
        )


class ObjectReconstructionFailedError(ObjectLostError):
    """An object's every copy is gone and running its task again could not make
    it: the reason says why (the task may not run again, or has no retries left,
    or an argument it needs is gone for good)."""

    def __init__(self, object_id: str = "", reason: str = "") -> None:
        super().__init__(object_id, reason)
        which = f"Object {object_id}" if object_id else "An object"
        why = f": {reason}" if reason else ""
        self.args = (
            f"{which} is lost and could not be made again{why}. Submit the work that "
            "made it again.",
        )


class ObjectStoreFullError(TaskgraphError):
    """An object does not fit in a node's object store."""

    def __init__(
        self, needed: int = 0, used: int = 0, capacity: int = 0, *, node: str = ""
    ) -> None:
        self.needed = needed
        self.used = used
        self.capacity = capacity
        self.node = node
        where = f" on node {node}" if node else ""
        super().__init__(
            f"The object store{where} cannot fit {_size(needed)}: {_size(used)} of "
            f"{_size(capacity)} is in use. Drop references to objects you no longer need, "
            "or give the node a larger object store."
        )


class OutOfMemoryError(TaskgraphError):
    """A task was killed by its node's memory monitor: memory in use there went
    over the limit, and this task used the most (``worker/memory.py``).

    ``used`` and ``total``: what the monitor measured and the limit it holds to
    (the host's memory in use and its threshold, or the worker's tasks together
    and ``TASKGRAPH_TASK_MEMORY_LIMIT``); ``memory``: what the task itself used.
    """

    def __init__(
        self,
        task_name: str = "",
        used: int = 0,
        total: int = 0,
        *,
        node: str = "",
        memory: int = 0,
        task_id: str = "",
    ) -> None:
        self.task_name = task_name
        self.used = used
        self.total = total
        self.node = node
        self.memory = memory
        self.task_id = task_id
        which = f"Task {task_name!r}" if task_name else "A task"
        if task_id:
            which += f" (id {task_id})"
        where = f"node {node}" if node else "its node"
        own = f", where it used {_size(memory)}" if memory else ""
        usage = f" ({_size(used)} in use, the limit is {_size(total)})" if total else ""
        super().__init__(
            f"{which} was killed because {where} ran out of memory{usage}{own}. "
            "Make the task use less memory, or declare its memory need (memory=) so that "
            "fewer run at once; give it max_retries to run it again."
        )


# -- actors ------------------------------------------------------------------


class ActorError(TaskgraphError):
    """An actor could not run a method call."""

    def __init__(self, actor: str = "", reason: str = "") -> None:
        self.actor = actor
        self.reason = reason
        super().__init__(self._describe())

    def _describe(self) -> str:
        which = f"Actor {self.actor}" if self.actor else "An actor"
        why = f": {self.reason}" if self.reason else ""
        return f"{which} could not run the call{why}. Check the actor's log for what went wrong."


class ActorDiedError(ActorError):
    """The actor's process is gone, so calls on it fail. ``restarting``: it died
    while this call ran and is being restarted (later calls go to the new
    process); the call itself was not retried."""

    def __init__(self, actor: str = "", reason: str = "", *, restarting: bool = False) -> None:
        self.restarting = restarting
        super().__init__(actor, reason)

    def _describe(self) -> str:
        which = f"Actor {self.actor}" if self.actor else "The actor"
        why = f" ({self.reason})" if self.reason else ""
        if getattr(self, "restarting", False):
            return (
                f"{which} died{why} while this call ran. The actor is being "
                "restarted and takes later calls; this one was not retried (give the "
                "actor max_task_retries to retry the calls a restart interrupts)."
            )
        return (
            f"{which} died{why}, so calls on it fail. Create a new actor, "
            "or give it max_restarts to have it restarted."
        )


# -- talking to the cluster --------------------------------------------------


class GetTimeoutError(TaskgraphError, TimeoutError):
    """``get`` returned before the objects were ready because its timeout ran out."""

    def __init__(self, timeout: float | None = None, pending: int | None = None) -> None:
        self.timeout = timeout
        self.pending = pending
        after = f" after {timeout:g}s" if timeout is not None else ""
        count = f" with {pending} object(s) not ready" if pending is not None else ""
        super().__init__(
            f"get() timed out{after}{count}. Pass a larger timeout, "
            "or use wait() to take the objects that are ready."
        )


CONNECTION_ADVICE = (
    "Check that the cluster is running, reachable from here, and runs this taskgraph version."
)


class ClusterConnectionError(TaskgraphError, ConnectionError):
    """A connection to the scheduler, a worker, an executor or a client could not be
    made, or was lost. ``advice``: what to do (a general hint unless given; "" when
    ``reason`` says it already)."""

    def __init__(self, reason: str = "", *, advice: str | None = None) -> None:
        self.reason = reason
        self.advice = CONNECTION_ADVICE if advice is None else advice
        text = f"Cluster connection failed: {reason}." if reason else "Cluster connection failed."
        super().__init__(f"{text} {self.advice}".strip())


class AuthenticationError(ClusterConnectionError):
    """A peer failed the connection handshake."""

    def __init__(self, reason: str = "", *, peer: str = "") -> None:
        self.reason = reason
        self.peer = peer
        self.advice = "Check that both ends were given the same cluster token."
        who = f" with {peer}" if peer else ""
        why = f": {reason}" if reason else ""
        TaskgraphError.__init__(self, f"Authentication{who} failed{why}. {self.advice}")


class ProtocolError(TaskgraphError):
    """A peer sent a message that does not decode."""

    def __init__(self, reason: str = "", *, peer: str = "") -> None:
        self.reason = reason
        self.peer = peer
        who = f" from {peer}" if peer else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"Bad message{who}{why}. Check that every process in the cluster runs the same "
            "taskgraph version."
        )


class SerializationError(TaskgraphError, TypeError):
    """A value could not be pickled (or unpickled) to cross a process boundary."""

    def __init__(
        self, what: str = "a value", reason: str = "", *, deserializing: bool = False
    ) -> None:
        self.what = what
        self.reason = reason
        self.deserializing = deserializing
        why = f": {reason}" if reason else ""
        if deserializing:
            advice = (
                "The receiving process must be able to import every module the value refers to."
            )
            super().__init__(f"Could not deserialize {what}{why}. {advice}")
        else:
            advice = (
                "Pass only values that can be pickled; create locks, sockets, open files "
                "and the like inside the task instead."
            )
            super().__init__(f"Could not serialize {what}{why}. {advice}")
