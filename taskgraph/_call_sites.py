"""Where the user's code made an object: ``file.py:function:line``, for the state API.

Each ``.remote()`` and ``put()`` looks up its caller's frame: the first one not in
taskgraph's own code. The scheduler hears each distinct site once
(``CallSite``, a number and its text) and every task or put after that carries
only the number (``TaskSpec.site``, ``PutObject.site``): a few hundred
nanoseconds and one byte or two per call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType

from taskgraph import _wire as w

PACKAGE = "taskgraph"
MAX_SITES = 10_000  # distinct sites a process names; past it, calls name none (0)


class CallSites:
    def __init__(self, send: Callable[[w.Msg], None]) -> None:
        self._send = send  # queues a message for the scheduler, ahead of what names the site
        self._numbers: dict[tuple[CodeType, int], int] = {}

    def here(self) -> int:
        """The number of the site that called into taskgraph (0: none found)."""
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(PACKAGE):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return 0
        key = (frame.f_code, frame.f_lineno)
        number = self._numbers.get(key)
        if number is None:
            if len(self._numbers) >= MAX_SITES:
                return 0
            number = self._numbers[key] = len(self._numbers) + 1
            code = frame.f_code
            self._send(w.CallSite(number, f"{code.co_filename}:{code.co_name}:{frame.f_lineno}"))
        return number
