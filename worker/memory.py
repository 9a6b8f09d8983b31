"""The worker daemon's memory monitor: what memory is in use, against what limit.

::

    daemon's timer (TASKGRAPH_MEMORY_MONITOR_REFRESH_MS) ──▶ MemoryMonitor.look(busy pids)
        └─ over the limit ──▶ MemoryPressure ──▶ WorkerState picks a task, SIGKILLs its executor
                                                  └─ its death ──▶ OutOfMemoryError (retried
                                                                   while max_retries lasts)

Two limits, whichever is crossed first: the host's memory in use (total less
available, ``/proc/meminfo``) above ``TASKGRAPH_MEMORY_USAGE_THRESHOLD`` of its
total (Ray's 95%), and, when ``TASKGRAPH_TASK_MEMORY_LIMIT`` is set, what
this worker's running tasks use together. A task's memory is its executor's
resident memory less what it shares (``/proc/<pid>/statm``, as Ray counts a
worker's heap): pages of the shared-memory object store it has read are not
its own. Only executors running a task are looked at, so a look costs one
read of ``/proc/meminfo`` and one small read per running task.

Which task dies is the state machine's decision (``WorkerState._memory_pressure``);
here is only the measuring. ``read_host`` and ``read_process`` are injected so
that a test can say what memory is in use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import psutil

from .records import MemoryPressure


def host_memory() -> tuple[int, int]:
    """This host's memory in use (total less available) and its total, in bytes."""
    memory = psutil.virtual_memory()
    return memory.total - memory.available, memory.total


class MemoryMonitor:
    def __init__(
        self,
        threshold: float,
        task_limit: int = 0,
        *,
        read_host: Callable[[], tuple[int, int]] = host_memory,
        read_process: Callable[[int], int] | None = None,
    ) -> None:
        self.threshold = threshold
        self.task_limit = task_limit
        self.read_host = read_host
        self.read_process = read_process or self._process_memory
        self._processes: dict[int, psutil.Process] = {}
        self.times_over = 0  # looks that found memory over a limit (each kills one task at most)

    def look(self, busy: Mapping[int, int]) -> MemoryPressure | None:
        """``busy``: the pid of each executor running a task, by executor id. A
        ``MemoryPressure`` when memory is over a limit, else None."""
        for pid in [p for p in self._processes if p not in busy.values()]:
            del self._processes[pid]
        if not busy:
            return None  # nothing of ours to kill
        used, total = self.read_host()
        limit = int(total * self.threshold)
        usage: dict[int, int] | None = None
        if used <= limit and self.task_limit > 0:
            usage = {e: self.read_process(pid) for e, pid in busy.items()}
            used, limit = sum(usage.values()), self.task_limit
        if used <= limit:
            return None
        if usage is None:
            usage = {e: self.read_process(pid) for e, pid in busy.items()}
        self.times_over += 1
        return MemoryPressure(used, limit, usage)

    def _process_memory(self, pid: int) -> int:
        """A process's resident memory less what it shares; 0 once it is gone."""
        proc = self._processes.get(pid)
        try:
            if proc is None:
                proc = self._processes[pid] = psutil.Process(pid)
            info = proc.memory_info()
        except psutil.Error:
            self._processes.pop(pid, None)
            return 0
        return max(0, info.rss - getattr(info, "shared", 0))
