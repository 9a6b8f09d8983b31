"""The dashboard's log reader (scheduler/log_tail.py), over a made-up ``ask``: no
cluster. What it promises: one request per node at a time however many read,
an answer kept for a period, a daemon that does not answer is an error in the
answer (never a reader left waiting), and made-up node names are not kept."""

from __future__ import annotations

import asyncio
from typing import Any

from taskgraph.scheduler.log_tail import LogTail

FILES = [{"file": "executor-7.out", "pid": 7, "lines": ["hello"], "offset": 6}]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Daemons:
    """Answers for the nodes it knows, when ``answer()`` is called (or never)."""

    def __init__(self, nodes: tuple[str, ...] = ("n1",)) -> None:
        self.nodes = nodes
        self.asked: list[tuple[str, int]] = []
        self.waiting: list[asyncio.Future[list[dict[str, Any]]]] = []

    def ask(self, node: str, tail: int) -> asyncio.Future[list[dict[str, Any]]]:
        if node not in self.nodes:
            raise LookupError(f"no node {node!r} in the cluster (nodes: {', '.join(self.nodes)})")
        self.asked.append((node, tail))
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        return future

    def answer(self) -> None:
        for future in self.waiting:
            if not future.done():
                future.set_result(FILES)
        self.waiting.clear()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # (lets the readers' tasks run: no time passes)


def test_readers_share_one_request_and_its_answer_is_kept_for_a_period() -> None:
    async def run() -> None:
        daemons, clock = Daemons(), Clock()
        tail = LogTail(daemons.ask, period=1.0, tail=50, clock=clock, wall=lambda: 9.0)
        readers = [asyncio.ensure_future(tail.read("n1")) for _ in range(3)]
        await settle()
        assert daemons.asked == [("n1", 50)]
        daemons.answer()
        answers = await asyncio.gather(*readers)
        assert all(a.files == FILES and a.error == "" and a.taken == 9.0 for a in answers)
        clock.now = 0.9
        assert (await tail.read("n1")).files == FILES and len(daemons.asked) == 1
        clock.now = 1.0
        again = asyncio.ensure_future(tail.read("n1"))
        await settle()
        assert len(daemons.asked) == 2 and tail.asked == 2
        daemons.answer()
        assert (await again).json() == {"node_id": "n1", "time": 9.0, "files": FILES, "error": None}

    asyncio.run(run())


def test_a_daemon_that_does_not_answer_is_an_error_in_time_and_is_asked_again() -> None:
    async def run() -> None:
        daemons, clock = Daemons(), Clock()
        tail = LogTail(daemons.ask, period=1.0, timeout=0.01, clock=clock)
        answer = await tail.read("n1")
        assert answer.files == [] and "did not answer within 0.01 s" in answer.error
        assert not answer.unknown
        assert daemons.waiting[0].cancelled(), "the request is given up"
        clock.now = 1.0
        reader = asyncio.ensure_future(tail.read("n1"))
        await settle()
        daemons.answer()
        assert (await reader).files == FILES

    asyncio.run(run())


def test_an_unknown_node_is_said_so_and_not_kept() -> None:
    async def run() -> None:
        daemons = Daemons()
        tail = LogTail(daemons.ask)
        for _ in range(2):
            answer = await tail.read("nope")
            assert answer.unknown and answer.error.startswith("no node 'nope'")
        assert tail.asked == 2 and daemons.asked == []  # asked each time, never a daemon

    asyncio.run(run())


def test_a_reader_that_gives_up_does_not_cancel_the_others_request() -> None:
    async def run() -> None:
        daemons = Daemons()
        tail = LogTail(daemons.ask)
        impatient = asyncio.ensure_future(tail.read("n1"))
        patient = asyncio.ensure_future(tail.read("n1"))
        await settle()
        impatient.cancel()
        await settle()
        daemons.answer()
        assert (await patient).files == FILES and len(daemons.asked) == 1

    asyncio.run(run())
