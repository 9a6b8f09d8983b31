"""``tg.Executor``: the ``concurrent.futures.Executor`` interface on the cluster.

Existing ``concurrent.futures`` code runs unchanged: ``submit`` makes a task,
its future completes when the task's ref does.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from taskgraph import _options
from taskgraph._remote_function import RemoteFunction


class Executor(concurrent.futures.Executor):
    def __init__(self, **remote_options: Any) -> None:
        self._options = _options.validate(dict(remote_options))
        self._functions: dict[Any, RemoteFunction] = {}
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            remote = self._functions.get(fn)
            if remote is None:
                remote = self._functions[fn] = RemoteFunction(fn, self._options)
        future = remote.remote(*args, **kwargs).future()
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)
