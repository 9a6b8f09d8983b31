"""``tg.timeline()``: the tasks on record as a Chrome/Perfetto trace, as ``ray.timeline``.

``trace_events`` is pure: task records (``list_tasks(detail=True)``) in, trace
events out. Each node is a trace process and each executor a thread of it
(``"M"`` events name them ``node <id>`` and ``executor <pid>``); each task that
ran is a complete slice (``"ph": "X"``) on its executor's track, with its
phases (fetch, deserialize, run, store) nested inside it one after another
from its start. Times are whole microseconds since the epoch. Open the file in
https://ui.perfetto.dev or chrome://tracing.

Task records keep whole milliseconds, phases finer: a task whose phases add up
to more than its recorded span is drawn as long as its phases, so that they
stay inside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PHASES = ("fetch", "deserialize", "run", "store")


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """The tasks on record as Chrome trace events: the list when ``filename`` is
    None, else written to that file as JSON (and None returned), as Ray's
    ``ray.timeline``. One track per executor process, one slice per task that
    ran, with its phases inside. The scheduler keeps the last
    ``TASKGRAPH_TASK_EVENTS`` finished tasks (10,000 by default)."""
    from taskgraph.util.state import list_tasks

    events = trace_events(list_tasks(limit=0, detail=True))
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def trace_events(tasks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metadata naming each node and executor, then a slice per task that has both
    a start and an end time, each followed by its phases' slices."""
    ran = [t for t in tasks if t.get("start_time_ms") and t.get("end_time_ms")]
    nodes = {node: i + 1 for i, node in enumerate(sorted({str(t["node_id"]) for t in ran}))}
    events: list[dict[str, Any]] = []
    for node, pid in nodes.items():
        events.append(_meta("process_name", pid, 0, f"node {node}"))
    for node, tid in sorted({(str(t["node_id"]), t["worker_pid"] or 0) for t in ran}):
        events.append(_meta("thread_name", nodes[node], tid, f"executor {tid or '?'}"))
    for task in ran:
        events += task_slices(task, nodes[str(task["node_id"])])
    return events


def task_slices(task: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    """The task's slice and its phases' (those that took any time)."""
    start = task["start_time_ms"] * 1000
    # Whole microseconds: at 10**15 a float's steps are a quarter of one, enough to
    # push a phase out of its task.
    bounds, spent = [0], 0.0
    for name in PHASES:
        spent += task.get("phases", {}).get(f"{name}_s", 0.0) * 1e6
        bounds.append(round(spent))
    duration = max((task["end_time_ms"] - task["start_time_ms"]) * 1000, bounds[-1])
    where = {"pid": pid, "tid": task["worker_pid"] or 0}
    slices = [
        {
            "name": task["name"],
            "cat": "task",
            "ph": "X",
            "ts": start,
            "dur": duration,
            **where,
            "args": {
                "task_id": task["task_id"],
                "state": task["state"],
                "error_type": task["error_type"],
                "path": task["path"],
            },
        }
    ]
    for name, begin, end in zip(PHASES, bounds[:-1], bounds[1:], strict=True):
        if end > begin:
            slices.append(
                {"name": name, "cat": "phase", "ph": "X", "ts": start + begin,
                 "dur": end - begin, **where, "args": {"task_id": task["task_id"]}}
            )  # fmt: skip
    return slices


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
