"""What the dashboard shows, published as snapshots made at most once a period.

::

    SchedulerState ──Feed.current(), at most every 0.2 s──▶ Snapshot ─┬─▶ /status, /workers (Bokeh sessions)
      (history.since(seq): the tasks finished since the last one)     └─▶ /api/status, /api/workers, /api/tasks
                   ──Feed.actors(), .objects(), every 1 s──▶ ActorTable, ObjectTable ──▶ /actors, /objects, /api/...
                   ──Feed.finished(): the window's events──▶ /api/timeline (made into a trace off the loop)
    worker daemons ──Feed.logs (LogTail, scheduler/log_tail.py)──▶ /logs, /api/logs

Every page and JSON handler reads the same ``Snapshot``; none reads the
state. A snapshot is made on demand, by the first reader after ``period``
has passed, so a cluster nobody watches pays nothing, and ten browsers cost
what one does. Making one costs the tasks finished since the last (taken
from ``TaskHistory.since``, never the whole window; a tuple each) plus one
pass over the live tasks for the counts; when that pass grows slow,
snapshots come less often (at most ``BUDGET`` of the loop's time), so the
scheduler never stalls for its dashboard. The finished tasks are kept in a
window of the last ``keep``, numbered, so each page streams only the rows
it has not seen; a task's row (``task_columns``) is made only when a reader
asks for it, so tasks no page shows cost no row. The actors and
the largest objects (scheduler/feed_tables.py) are sections of their own,
made when a reader asks for them, under the same rules; the objects, which
may be millions, a step at a time (``Stepped``), the loop running between.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .feed_tables import ActorTable, ObjectTable, actor_table, object_steps
from .history import STATE_NAMES, TaskEvent

if TYPE_CHECKING:
    from .log_tail import LogTail
    from .state import SchedulerState

log = logging.getLogger("taskgraph.scheduler")

PERIOD = 0.2  # seconds between snapshots, at most as often
TABLE_PERIOD = 1.0  # seconds between tables of actors or objects, at most as often
BUDGET = 0.1  # of the loop's time, at most, spent making snapshots
KEEP = 10_000  # finished tasks a snapshot keeps (for /api/tasks and pages)

# Category20, by hand: the dashboard's colours without importing bokeh here.
PALETTE = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip
PROGRESS_STATES = ("done", "running", "waiting", "failed")
LIVE_STATES = {"new": "waiting", "waiting": "waiting", "ready": "waiting", "processing": "running"}


@functools.lru_cache(maxsize=1024)  # (a row per task asks; functions are few)
def color_of(name: str) -> str:
    """A function's colour, the same in every page and every run."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


@dataclass(slots=True)
class Snapshot:
    seq: int = 0  # the newest task's number (TaskHistory.kept when it was taken)
    # The last finished tasks, numbered, each with its lane: (seq, lane, event).
    # Events, not rows: a row is made only for what a reader asks (a page, the
    # newest few hundred a second; /api/tasks, its limit), not for every task.
    events: deque[tuple[int, int, TaskEvent]] = field(default_factory=deque)
    lanes: list[str] = field(default_factory=list)  # "node/pid", by lane number
    progress: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> state -> count
    nodes: list[dict[str, Any]] = field(default_factory=list)
    taken: float = 0.0  # wall-clock seconds

    def rows_since(self, seq: int, limit: int | None = None) -> tuple[int, dict[str, list[Any]]]:
        """The task rows after ``seq`` as columns (``task_columns``; the newest
        ``limit`` of them, if given), and the newest row's number."""
        n = min(self.seq - seq, len(self.events))
        if limit is not None:
            n = min(n, limit)
        newest = list(islice(reversed(self.events), max(n, 0)))
        newest.reverse()
        return self.seq, task_columns(newest)

    def status(self) -> dict[str, Any]:
        totals = dict.fromkeys(PROGRESS_STATES, 0)
        for counts in self.progress.values():
            for state, n in counts.items():
                totals[state] += n
        return {
            "time": self.taken,
            "tasks": totals,
            "by_function": self.progress,
            "store": self.store(),
        }

    def store(self) -> list[dict[str, Any]]:
        """Each node's object store: bytes in memory, spilled to disk, and its capacity."""
        return [
            {
                "node_id": node["node_id"],
                "bytes_in_memory": node["store_bytes"],
                "bytes_spilled": node["spilled_bytes"],
                "capacity": node["store_capacity"],
            }
            for node in self.nodes
        ]

    def tasks(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` task rows, oldest first, in the state API's names."""
        _, c = self.rows_since(0, max(limit, 0))
        return [
            {
                "task_id": c["task_id"][i],
                "name": c["name"][i],
                "state": c["state"][i],
                "node_id": c["node"][i] or None,
                "worker_pid": c["pid"][i] or None,
                "start_time_ms": c["left"][i],
                "end_time_ms": c["right"][i],
                "duration_ms": round(c["duration"][i], 3),
                "phases_ms": {
                    p: round(c[p][i], 3) for p in ("fetch", "deserialize", "run", "store")
                },
            }
            for i in range(len(c["task_id"]))
        ]


def task_columns(entries: list[tuple[int, int, TaskEvent]]) -> dict[str, list[Any]]:
    """Task-stream rows of ``Snapshot.events`` entries, as columns: times in
    milliseconds (a rectangle from its start to its end), the lane, the
    function's colour (black: failed) and the time of each phase."""
    events = [event for _, _, event in entries]
    starts = [e.started or e.placed or e.submitted for e in events]
    ends = [max(e.ended, start) for e, start in zip(events, starts, strict=True)]
    phases = [(*e.phases, 0.0, 0.0, 0.0, 0.0) for e in events]  # (some report fewer)
    return {
        "left": [start * 1000 for start in starts],
        "right": [end * 1000 for end in ends],
        "lane": [lane for _, lane, _ in entries],
        "name": [e.name for e in events],
        "color": [color_of(e.name) if e.state == "memory" else "#000000" for e in events],
        "duration": [(end - start) * 1000 for start, end in zip(starts, ends, strict=True)],
        "node": [e.node or "" for e in events],
        "pid": [e.pid for e in events],
        "state": [STATE_NAMES[e.state] for e in events],
        "fetch": [p[0] * 1000 for p in phases],
        "deserialize": [p[1] * 1000 for p in phases],
        "run": [p[2] * 1000 for p in phases],
        "store": [p[3] * 1000 for p in phases],
        "task_id": [e.task_id.hex() for e in events],
    }


T = TypeVar("T")


class Section(Generic[T]):
    """One thing the dashboard shows, made by ``make`` when a reader asks and the
    last one is ``period`` old, and never more than ``BUDGET`` of the time: what
    took long to make is made less often."""

    def __init__(self, make: Callable[[], T], period: float, clock: Callable[[], float]):
        self.make = make
        self.period = period
        self.clock = clock
        self.made = 0  # how many times
        self._value: T | None = None
        self._next = 0.0  # when it may be made again (the clock's time)

    def current(self) -> T:
        now = self.clock()
        if self._value is None or now >= self._next:
            self._value = self.make()
            self.made += 1
            cost = self.clock() - now
            self._next = now + max(self.period, cost / BUDGET)
        return self._value


class Stepped(Generic[T]):
    """A section too large to make at once: ``steps()`` makes one a step at a time
    (a generator that yields between steps, each bounded), in a task on the loop
    that lets everything else run between them. Readers get the last one made at
    once, and ask for the next when it is ``period`` old; ``BUDGET`` counts the
    steps' time, not the waits between them."""

    def __init__(
        self,
        steps: Callable[[], Generator[None, None, T]],
        first: T,
        period: float,
        clock: Callable[[], float],
    ) -> None:
        self.steps = steps
        self.period = period
        self.clock = clock
        self.made = 0
        self._value = first  # (shown until the first is made)
        self._next = 0.0
        self._making: asyncio.Future[None] | None = None

    def current(self) -> T:
        if self._making is None and self.clock() >= self._next:
            self._making = asyncio.ensure_future(self._make())
        return self._value

    async def made_once(self) -> T:
        """The last one made; if none was yet, the first, once made."""
        self.current()
        if not self.made and self._making is not None:
            await asyncio.shield(self._making)
        return self._value

    async def _make(self) -> None:
        began = self.clock()
        spent = 0.0
        try:
            steps = self.steps()
            while True:
                step = self.clock()
                try:
                    next(steps)
                except StopIteration as done:
                    self._value = done.value
                    self.made += 1
                    break
                finally:
                    spent += self.clock() - step
                await asyncio.sleep(0)  # (one turn of the loop for everything else)
        except Exception:
            log.exception("the dashboard could not make a table")
        finally:
            self._next = began + max(self.period, spent / BUDGET)
            self._making = None


class Feed:
    """Makes the dashboard's snapshots off one ``SchedulerState``, which it only reads.
    ``logs``: where pages read nodes' log files (set by the server; None: nowhere)."""

    def __init__(
        self,
        state: SchedulerState,
        period: float = PERIOD,
        keep: int = KEEP,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        table_period: float = TABLE_PERIOD,
        logs: LogTail | None = None,
    ) -> None:
        self.state = state
        self.period = period
        self.clock = clock
        self.wall = wall
        self.logs = logs
        self.snapshot = Snapshot(events=deque(maxlen=keep))
        self._lanes: dict[tuple[str | None, int], int] = {}
        self._snapshot = Section(self._published, period, clock)
        # Progress walks every live task: a table of its own, at most once a second.
        self._progress = Section(self._count_progress, table_period, clock)
        self._actors = Section(lambda: actor_table(state, wall()), table_period, clock)
        self._objects = Stepped(
            lambda: object_steps(state, wall()), ObjectTable(), table_period, clock
        )

    @property
    def published(self) -> int:
        """Snapshots made."""
        return self._snapshot.made

    def current(self) -> Snapshot:
        snap = self._snapshot.current()
        # (made on its own budget: a slow pass over the live tasks makes the
        # counts come less often, not the task stream)
        snap.progress = self._progress.current()
        return snap

    def actors(self) -> ActorTable:
        return self._actors.current()

    def objects(self) -> ObjectTable:
        """The largest objects (scheduler/feed_tables.py's ``OBJECT_ROWS``), as last made
        (an empty table until the first is); needs a running event loop."""
        return self._objects.current()

    async def objects_made(self) -> ObjectTable:
        """As ``objects()``, but never the empty table before the first is made."""
        return await self._objects.made_once()

    def finished(self) -> tuple[int, list[TaskEvent]]:
        """The finished tasks' events the scheduler keeps, oldest first, and the newest
        one's number: a copy of the window (an event does not change once made, so
        a thread may read them)."""
        history = self.state.history
        return history.kept, history.since(0)

    def _published(self) -> Snapshot:
        self.publish()
        return self.snapshot

    def publish(self) -> None:
        state = self.state
        history = state.history
        snap = self.snapshot
        events = history.since(snap.seq)
        first = history.kept - len(events) + 1  # the oldest one's number
        lanes = self._lanes
        for n, event in enumerate(events, first):
            lane = lanes.setdefault((event.node, event.pid), len(lanes))
            snap.events.append((n, lane, event))
        snap.seq = history.kept
        snap.nodes = [
            {
                "node_id": r.worker_id,
                "host": r.info.host,
                "cpu_percent": r.system.get("cpu_percent"),
                "memory_percent": r.system.get("memory_percent"),
                "memory_used": r.system.get("memory_used"),
                "memory_total": r.system.get("memory_total"),
                "store_bytes": r.store.get("bytes_in_memory", 0),
                "store_capacity": r.store.get("capacity", 0),
                "spilled_bytes": r.store.get("bytes_spilled", 0),
                "running": len(r.running),
                "executors": r.executors,
                "resources": dict(r.total),
            }
            for r in state.workers.values()
        ]
        snap.lanes = [f"{node}/{pid}" for node, pid in self._lanes]
        snap.taken = self.wall()

    def _count_progress(self) -> dict[str, dict[str, int]]:
        """Tasks by function and by done, running, waiting or failed: the finished
        counted as they finish, the live by one pass over them."""
        progress: dict[str, dict[str, int]] = {}
        state = self.state
        for (name, final), n in state.history.finished_by_name.items():
            counts = progress.setdefault(name, dict.fromkeys(PROGRESS_STATES, 0))
            counts["done" if final == "FINISHED" else "failed"] += n
        for task in state.tasks.values():
            live = LIVE_STATES.get(task.state)
            if live is not None:
                counts = progress.setdefault(task.spec.name, dict.fromkeys(PROGRESS_STATES, 0))
                counts[live] += 1
        return progress
