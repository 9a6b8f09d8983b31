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
from ``TaskHistory.since``, never the whole window) plus one pass over the
live tasks for the counts; when that pass grows slow, snapshots come less
often (at most ``BUDGET`` of the loop's time), so the scheduler never stalls
for its dashboard. Task rows are kept in a window of the last ``keep``,
numbered, so each page streams only the rows it has not seen. The actors and
the largest objects (scheduler/feed_tables.py) are sections of their own,
made when a reader asks for them, under the same rules; the objects, which
may be millions, a step at a time (``Stepped``), the loop running between.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
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
KEEP = 10_000  # task rows a page holds (its ColumnDataSource's rollover)

# Category20, by hand: the dashboard's colours without importing bokeh here.
PALETTE = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip
PROGRESS_STATES = ("done", "running", "waiting", "failed")
LIVE_STATES = {"new": "waiting", "waiting": "waiting", "ready": "waiting", "processing": "running"}
TASK_COLUMNS = (
    "left", "right", "lane", "name", "color", "duration", "node", "pid", "state",
    "fetch", "deserialize", "run", "store", "task_id",
)  # fmt: skip


def color_of(name: str) -> str:
    """A function's colour, the same in every page and every run."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


@dataclass(slots=True)
class Snapshot:
    seq: int = 0  # the newest task row's number (TaskHistory.kept when it was taken)
    rows: deque[tuple[int, tuple[Any, ...]]] = field(default_factory=deque)  # (seq, row)
    lanes: list[str] = field(default_factory=list)  # "node/pid", by lane number
    progress: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> state -> count
    nodes: list[dict[str, Any]] = field(default_factory=list)
    taken: float = 0.0  # wall-clock seconds

    def rows_since(self, seq: int) -> tuple[int, dict[str, list[Any]]]:
        """The task rows after ``seq``, as columns, and the newest row's number."""
        columns: dict[str, list[Any]] = {c: [] for c in TASK_COLUMNS}
        if seq >= self.seq:
            return self.seq, columns
        for n, row in reversed(self.rows):
            if n <= seq:
                break
            for column, value in zip(TASK_COLUMNS, row, strict=True):
                columns[column].append(value)
        for values in columns.values():
            values.reverse()
        return self.seq, columns

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
        recent = list(self.rows)[-limit:] if limit > 0 else []
        out = []
        for _, row in recent:
            r = dict(zip(TASK_COLUMNS, row, strict=True))
            out.append(
                {
                    "task_id": r["task_id"],
                    "name": r["name"],
                    "state": r["state"],
                    "node_id": r["node"] or None,
                    "worker_pid": r["pid"] or None,
                    "start_time_ms": r["left"],
                    "end_time_ms": r["right"],
                    "duration_ms": r["duration"],
                    "phases_ms": {p: r[p] for p in ("fetch", "deserialize", "run", "store")},
                }
            )
        return out


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
        self.snapshot = Snapshot(rows=deque(maxlen=keep))
        self._lanes: dict[tuple[str | None, int], int] = {}
        self._snapshot = Section(self._published, period, clock)
        self._actors = Section(lambda: actor_table(state, wall()), table_period, clock)
        self._objects = Stepped(
            lambda: object_steps(state, wall()), ObjectTable(), table_period, clock
        )

    @property
    def published(self) -> int:
        """Snapshots made."""
        return self._snapshot.made

    def current(self) -> Snapshot:
        return self._snapshot.current()

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
        for n, event in enumerate(events, first):
            snap.rows.append((n, self._row(event)))
        snap.seq = history.kept
        progress: dict[str, dict[str, int]] = {}
        for (name, final), n in history.finished_by_name.items():
            counts = progress.setdefault(name, dict.fromkeys(PROGRESS_STATES, 0))
            counts["done" if final == "FINISHED" else "failed"] += n
        for task in state.tasks.values():
            live = LIVE_STATES.get(task.state)
            if live is not None:
                counts = progress.setdefault(task.spec.name, dict.fromkeys(PROGRESS_STATES, 0))
                counts[live] += 1
        snap.progress = progress
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

    def _row(self, event: TaskEvent) -> tuple[Any, ...]:
        lane = self._lanes.setdefault((event.node, event.pid), len(self._lanes))
        started = event.started or event.placed or event.submitted
        ended = max(event.ended, started)
        phases = [round(p * 1000, 3) for p in event.phases] + [0.0] * (4 - len(event.phases))
        return (
            started * 1000,
            ended * 1000,
            lane,
            event.name,
            color_of(event.name) if event.state == "memory" else "#000000",
            round((ended - started) * 1000, 3),
            event.node or "",
            event.pid,
            STATE_NAMES[event.state],
            *phases[:4],
            event.task_id.hex(),
        )
