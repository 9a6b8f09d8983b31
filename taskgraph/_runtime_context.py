"""``tg.get_runtime_context()``'s answer: where the calling code runs (its task,
actor, node and job), with Ray's names, old and new. A reader of the task
context ``_api`` keeps; it changes nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskgraph._api import Runtime, TaskContext


class _Id(str):
    """An id as hex text that also answers ``.hex()``, as Ray's id objects do
    (what ``RuntimeContext``'s older properties return in Ray)."""

    __slots__ = ()

    def hex(self) -> str:
        return str(self)


def _id(text: str | None) -> _Id | None:
    return None if text is None else _Id(text)


class RuntimeContext:
    """Where the calling code runs: ``tg.get_runtime_context()``.

    Ids are hex text. The properties ``job_id``, ``node_id``, ``task_id`` and
    ``actor_id`` are Ray's older names for the getters; what they return also
    answers ``.hex()``, as Ray's id objects do.
    """

    def __init__(self, runtime: Runtime | None, task: TaskContext | None) -> None:
        self._runtime = runtime
        self._task = task

    def get_job_id(self) -> str:
        """The job: the driver that submitted the work (a task's, its driver's; an
        actor's, the driver that created it), as in Ray. The state API's ``job_id``."""
        if self._task is not None and self._task.job_id:
            return self._task.job_id.hex()
        if self._runtime is None:
            raise RuntimeError("get_job_id() needs a connection: call tg.init() first")
        return self._runtime.client.client_id.hex()

    def get_task_id(self) -> str | None:
        return self._task.task_id.hex() if self._task is not None else None

    def get_node_id(self) -> str | None:
        if self._task is not None:
            return self._task.node_id
        if self._runtime is not None:
            local = self._runtime.client.local_worker()
            return local.worker_id if local is not None else None
        return None

    def get_worker_id(self) -> str:
        if self._task is not None:
            return self._task.worker_id
        return f"driver/{os.getpid()}"

    def get_actor_id(self) -> str | None:
        if self._task is not None and self._task.actor_id:
            return self._task.actor_id.hex()
        return None

    def get_assigned_resources(self) -> dict[str, float]:
        """What the task holds while it runs; in an actor, what the actor holds
        for life (Ray's answer in its methods)."""
        return dict(self._task.resources) if self._task is not None else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators this task or actor may use, by resource name, as Ray
        gives them: ``{"GPU": ["0", "1"]}`` (the ids in ``CUDA_VISIBLE_DEVICES``)."""
        gpu_ids = self._task.gpu_ids if self._task is not None else []
        return {"GPU": [str(i) for i in gpu_ids]}

    def is_canceled(self) -> bool:
        """Whether ``tg.cancel()`` was called on the running task or actor call.

        A running actor method is not interrupted by a cancel: it may poll this
        and stop early, as in Ray. (A plain task is interrupted; this is True in
        its ``finally`` or ``except BaseException`` blocks.)
        """
        if self._task is None:
            raise RuntimeError("is_canceled() is for a task or an actor's method, not a driver")
        if self._task.in_async_actor:
            raise RuntimeError(
                "is_canceled() is not available in an async actor's methods (as in Ray)"
            )
        return self._task.cancelled()

    @property
    def job_id(self) -> str:
        return _Id(self.get_job_id())

    @property
    def node_id(self) -> str | None:
        return _id(self.get_node_id())

    @property
    def task_id(self) -> str | None:
        return _id(self.get_task_id())

    @property
    def actor_id(self) -> str | None:
        return _id(self.get_actor_id())

    @property
    def namespace(self) -> str | None:
        return self._runtime.namespace if self._runtime is not None else None

    def __repr__(self) -> str:
        return (
            f"RuntimeContext(task={self.get_task_id()}, node={self.get_node_id()}, "
            f"worker={self.get_worker_id()})"
        )
