"""The dashboard's view of the nodes' log files: the last lines of each file of a
node, as its daemon reads them for ``taskgraph logs`` (worker/logs.py).

::

    /logs pages, /api/logs ──LogTail.read(node)──▶ the answer, if under ``period`` old
                                  │ else, one request per node at a time:
                                  ▼
      ask(node, tail) (SchedulerServer.read_logs) ──ReadLogs──▶ the node's daemon
                 future ◀──LogsRead, relayed by the server's shell──┘

Nothing here blocks the scheduler's loop: a reader awaits a future, for
``timeout`` seconds at most (then its answer says so), and however many pages
watch a node, its daemon is asked at most once a ``period``. ``ask`` raises
``LookupError`` for a node not in the cluster; such answers are not kept, so
made-up names cost nothing after their answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PERIOD = 1.0  # seconds an answer is shown before the node is asked again
TAIL = 200  # lines of each file
TIMEOUT = 5.0  # seconds to wait for a daemon's answer
KEPT = 60.0  # seconds an answer nobody read again is kept

Ask = Callable[[str, int], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class LogAnswer:
    node_id: str
    taken: float  # wall-clock seconds
    files: list[dict[str, Any]] = field(default_factory=list)  # read_logs' entries
    error: str = ""  # why there are no files ("": none)
    unknown: bool = False  # the cluster has no such node

    def json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "time": self.taken,
            "files": self.files,
            "error": self.error or None,
        }


class LogTail:
    def __init__(
        self,
        ask: Ask,
        period: float = PERIOD,
        tail: int = TAIL,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ask = ask
        self.period = period
        self.tail = tail
        self.timeout = timeout
        self.clock = clock
        self.wall = wall
        self.asked = 0  # requests sent to daemons
        self._answers: dict[str, tuple[float, LogAnswer]] = {}  # node -> (asked when, answer)
        self._asking: dict[str, asyncio.Future[LogAnswer]] = {}

    async def read(self, node: str) -> LogAnswer:
        now = self.clock()
        kept = self._answers.get(node)
        if kept is not None and now < kept[0] + self.period:
            return kept[1]
        asking = self._asking.get(node)
        if asking is None:
            asking = asyncio.ensure_future(self._ask(node))
            self._asking[node] = asking
            asking.add_done_callback(lambda _: self._asking.pop(node, None))
        # (shielded: a reader that gives up does not cancel the others' request)
        return await asyncio.shield(asking)

    async def _ask(self, node: str) -> LogAnswer:
        began = self.clock()
        self._forget_old(began)
        try:
            self.asked += 1
            files = await asyncio.wait_for(self.ask(node, self.tail), self.timeout)
        except LookupError as exc:
            why = str(exc.args[0] if exc.args else exc)
            return LogAnswer(node, self.wall(), error=why, unknown=True)
        except TimeoutError:
            answer = LogAnswer(
                node, self.wall(), error=f"node {node} did not answer within {self.timeout:g} s"
            )
        else:
            answer = LogAnswer(node, self.wall(), files)
        self._answers[node] = (began, answer)
        return answer

    def _forget_old(self, now: float) -> None:
        for node in [n for n, (t, _) in self._answers.items() if now - t > KEPT]:
            del self._answers[node]
