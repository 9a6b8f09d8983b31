"""Running an actor inside its executor process: one instance, its calls in order.

Three ways to run calls, chosen once at creation:
- sequential (the default): each call runs to the end on the main thread, in
  the order the scheduler handed them over;
- threaded (``max_concurrency=N``): up to N calls at once on N threads;
- asyncio (any ``async def`` method): one event-loop thread; calls interleave
  at ``await``, at most ``max_concurrency`` at once; sync methods run on the
  loop thread too.

A graceful end (``__taskgraph_terminate__`` or ``exit_actor()``) lets running
calls finish, runs ``atexit`` handlers and exits with code 0; the daemon reports
the exit, and the scheduler fails later calls with ``ActorDiedError``.

``sys.exit()`` in a method (or the constructor) ends the process at once, as in
Ray, and the call gets no result: its callers get ``ActorDiedError`` (or it is
retried, ``max_task_retries``). Only ``sys.exit(0)`` is an end on purpose, like
``exit_actor()``; any other code, ``sys.exit()`` with none included, is a crash
that ``max_restarts`` restarts (Ray's ``_raylet.pyx`` draws the same line).
Every end on purpose is announced to the daemon (``ActorEnding``) before the
process exits: an exit that was not announced is a crash, whatever its code.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pickle
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn

from taskgraph import _wire as w
from taskgraph.actor import TERMINATE
from taskgraph.exceptions import ActorDiedError, ActorError

if TYPE_CHECKING:
    from .executor import Executor
    from .task_call import TaskCalls


class ActorRuntime:
    def __init__(self, executor: Executor, instance: Any, spec: w.ActorSpec) -> None:
        self.executor = executor
        self.instance = instance
        self.spec = spec
        self.exiting = False
        self._ending = False  # one exit path runs: terminate's, or one call's thread
        self._end_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        if spec.is_async:
            self._loop = asyncio.new_event_loop()
            threading.Thread(
                target=self._loop.run_forever, name="taskgraph-actor-loop", daemon=True
            ).start()
            self._semaphore = asyncio.Semaphore(spec.max_concurrency)
        elif spec.max_concurrency > 1:
            self._pool = ThreadPoolExecutor(
                spec.max_concurrency, thread_name_prefix="taskgraph-actor"
            )

    def submit(self, a: w.Assignment) -> None:
        if a.spec.method == TERMINATE:
            self.exiting = True
            with self._end_lock:
                self._ending = True  # this thread ends it: the calls' threads do not
            self._drain()
            self.executor.report(self.executor.returns_none(a))
            self.exit_now("__taskgraph_terminate__ was called")
        if self._pool is not None:
            try:
                if not self.exiting:
                    self._pool.submit(self._call, a)
                    return
            except RuntimeError:  # the pool shut down meanwhile: the actor is ending
                pass
            # After exit_actor(), as in Ray: what comes next does not run.
            err = ActorDiedError(self.spec.class_name, "it called exit_actor()")
            self.executor.report(
                w.TaskResult(a.spec.task_id, error=pickle.dumps(err), failure="task")
            )
        elif self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._call_async(a), self._loop)
        else:
            self._call(a)

    def _call(self, a: w.Assignment) -> None:
        method = getattr(self.instance, a.spec.method)
        self.executor.report(self.executor.call(a, method))
        if self.exiting:
            self.exit_soon()

    async def _call_async(self, a: w.Assignment) -> None:
        assert self._semaphore is not None
        async with self._semaphore:
            method = getattr(self.instance, a.spec.method)
            result = await self.executor.call_async(a, method)
        self.executor.report(result)
        if self.exiting:
            self.exit_soon()

    def _drain(self) -> None:
        """Let calls already running finish (called off their threads)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def exit_soon(self) -> None:
        """End from a call's own thread: drain and exit on a thread of its own
        (once, whichever call asks first; not at all while terminate ends it)."""
        with self._end_lock:
            if self._ending:
                return
            self._ending = True
        if threading.current_thread() is threading.main_thread():
            self.exit_now(EXIT_ACTOR)
        threading.Thread(target=self._drain_and_exit, daemon=True).start()

    def _drain_and_exit(self) -> None:
        self._drain()
        self.exit_now(EXIT_ACTOR)

    def exit_now(self, reason: str) -> NoReturn:
        end_process(self.executor, 0, reason)


EXIT_ACTOR = "it called exit_actor()"


def exit_for(executor: TaskCalls, exc: SystemExit, where: str) -> NoReturn:
    """``sys.exit()`` in the actor's code: the process ends now, as in Ray. Code 0
    is an end on purpose; anything else a crash (exit status as Python gives it)."""
    code = exc.code
    if code is not None and code == 0:
        end_process(executor, 0, f"it called sys.exit(0) in its {where}")
    if code is None or isinstance(code, int):
        status = code or 0
    else:
        print(code, file=sys.stderr)  # as the interpreter does with sys.exit("message")
        status = 1
    end_process(executor, status)


def end_process(executor: TaskCalls, status: int, ending: str = "") -> NoReturn:
    """Leave the process once what it sent is out. ``ending``: the actor ends on
    purpose, and why (the daemon hears it before the exit: never a restart)."""
    if ending:
        executor.client.send_soon(w.ActorEnding(ending))
    executor.client.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        atexit._run_exitfuncs()
    finally:
        os._exit(status)


def creation_error(class_name: str, exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    reason = f"its constructor raised {type(exc).__name__}: {exc}\n{text}"
    return pickle.dumps(ActorError(class_name, reason))
