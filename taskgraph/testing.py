"""Helpers for testing programs that use taskgraph (taskgraph's own suite uses them).

Wait for a condition instead of sleeping, and check that a test left nothing
behind: processes, shared-memory arenas, objects in a store, threads::

    import taskgraph as tg
    from taskgraph.testing import no_leaks, wait_for

    def test_pipeline():
        with no_leaks():
            tg.init(num_cpus=2)
            ref = pipeline.remote()
            wait_for(lambda: tg.wait([ref], timeout=0)[0], what="the pipeline")
            tg.shutdown()

Teardown is asynchronous (processes exit, arenas are unlinked a moment after
``shutdown()`` returns), so every check polls with a deadline.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from taskgraph import _api
from taskgraph.worker import store


class WaitTimeout(AssertionError):
    """``wait_for``'s condition did not hold by the deadline."""


def wait_for(
    condition: Callable[[], object], timeout: float = 15.0, what: str = "", every: float = 0.01
) -> None:
    """Poll ``condition`` until it is truthy; raise ``WaitTimeout`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(every)


def child_processes() -> set[int]:
    """This process's children (a local cluster's scheduler and workers)."""
    return {p.pid for p in psutil.Process().children(recursive=False)}


def descendants() -> set[int]:
    """This process's children and theirs (executors too)."""
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie is not)."""
    found = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.add(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def arenas() -> set[str]:
    """Shared-memory arenas of worker daemons (files in ``TASKGRAPH_SHM_DIR``)."""
    return set(store.segments())


def stored_objects() -> set[str]:
    """Objects (hex ids) in the stores of this host's workers of the cluster this
    process is connected to (none when it is not)."""
    runtime = _api._runtime
    if runtime is None:
        return set()
    client = runtime.client
    found: set[str] = set()
    for info in client.workers:
        if info.host != client.host:
            continue
        try:
            _, object_ids = client.store_for(info.worker_id, info.address).stats()
        except (OSError, ConnectionError):
            continue  # that daemon is gone
        found.update(oid.hex() for oid in object_ids)
    return found


def taskgraph_threads() -> set[str]:
    """Names of this process's taskgraph threads (all are named ``taskgraph-*``)."""
    return {t.name for t in threading.enumerate() if t.name.startswith("taskgraph-")}


@dataclass(frozen=True)
class Snapshot:
    """What exists now, to compare with later (``check_nothing_left``)."""

    children: set[int]
    arenas: set[str]
    stored: set[str]
    threads: int

    @classmethod
    def take(cls) -> Snapshot:
        return cls(child_processes(), arenas(), stored_objects(), threading.active_count())


def check_nothing_left(before: Snapshot, timeout: float = 15.0) -> None:
    """Wait until no process, arena, stored object or thread is left beyond
    ``before``; raise ``WaitTimeout`` naming the first that stays."""
    if _nothing_left(before):
        return
    # Garbage in reference cycles (a frame held by a traceback, say) is not a
    # leak: collect it, so that what it holds (refs, actor handles) goes. Only
    # when something is left: a full collection in a big process (a test
    # session's) costs a tenth of a second, and most checks find nothing.
    gc.collect()
    wait_for(
        lambda: not alive(child_processes() - before.children),
        timeout,
        "child processes to exit",
    )
    wait_for(lambda: arenas() <= before.arenas, timeout, "shared-memory arenas to be removed")
    wait_for(lambda: stored_objects() <= before.stored, timeout, "objects in the store to be freed")
    wait_for(lambda: threading.active_count() <= before.threads, timeout, "threads to end")


def _nothing_left(before: Snapshot) -> bool:
    return (
        not alive(child_processes() - before.children)
        and arenas() <= before.arenas
        and stored_objects() <= before.stored
        and threading.active_count() <= before.threads
    )


@contextmanager
def no_leaks(timeout: float = 15.0) -> Iterator[Snapshot]:
    """Fail (``WaitTimeout``) if the block leaves anything behind."""
    before = Snapshot.take()
    yield before
    check_nothing_left(before, timeout)
