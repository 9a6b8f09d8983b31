"""What a notebook shows of taskgraph's objects: HTML for a cluster, its nodes, a
ref and an actor handle, the live task stream's frame, and the stream's picture
(SVG).

Pure functions over plain data (the dicts ``tg.nodes()`` and ``/api/tasks``
give, ids as hex, names as strings): no client, no IO, nothing that can block,
so a repr never hangs a kernel. The objects (``ClusterContext``,
``ObjectRef``, ``ActorHandle``, ``NodeList``, ``TaskStream``) read what they
show and hand it here. Every value that reaches the markup goes through
``html.escape``: an actor's name or a node's host is the user's text.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from taskgraph.scheduler.feed import color_of

# Inline styles only: a notebook's page has its own stylesheet, ours must not leak.
TABLE = 'style="border-collapse: collapse; text-align: left; margin: 0"'
KEY = 'style="text-align: left; padding: 1px 12px 1px 0; font-weight: bold"'
CELL = 'style="text-align: left; padding: 1px 12px 1px 0"'
FAILED_COLOR = "#000000"  # as the dashboard draws failed tasks


def cluster(
    *,
    kind: str,
    address: str,
    namespace: str,
    dashboard_url: str | None,
    nodes: Sequence[Mapping[str, Any]] | None,
    why_no_nodes: str = "",
    version: str = "",
) -> str:
    """A cluster's card: size and resources (``nodes`` from ``tg.nodes()``; None
    when they could not be read, ``why_no_nodes`` says why), the dashboard's link."""
    rows: list[tuple[str, str]] = [("Address", _code(address))]
    if nodes is None:
        rows.append(("Nodes", f"unknown ({escape(why_no_nodes)})"))
    else:
        total = _sum(n.get("resources", {}) for n in nodes)
        free = _sum(n.get("available", {}) for n in nodes)
        rows.append(("Nodes", str(len(nodes))))
        for key, label in (("CPU", "CPUs"), ("GPU", "GPUs"), ("memory", "Memory")):
            rows.append((label, _of(key, total.get(key, 0.0), free.get(key, 0.0))))
        for key in sorted(set(total) - {"CPU", "GPU", "memory"}):
            rows.append((escape(key), _of(key, total[key], free.get(key, 0.0))))
    rows.append(("Dashboard", _link(dashboard_url) if dashboard_url else "none"))
    rows.append(("Namespace", _code(namespace)))
    rows.append(("Python", escape(platform.python_version())))
    if version:
        rows.append(("taskgraph", escape(version)))
    body = _table(rows)
    if nodes:
        body += f"<details><summary>{len(nodes)} node{_s(len(nodes))}</summary>"
        body += node_table(nodes) + "</details>"
    title = f"<b>taskgraph</b> {escape(kind)}"
    return f'<div class="taskgraph-cluster"><div>{title}</div>{body}</div>'


def node_table(nodes: Sequence[Mapping[str, Any]]) -> str:
    """A row per node (``tg.nodes()``): id, host, address, resources (free of total)."""
    keys = sorted({k for n in nodes for k in n.get("resources", {})} - {"CPU", "GPU", "memory"})
    head = ["node", "host", "address", "CPUs", "GPUs", "memory", *keys]
    lines = ["<tr>" + "".join(f"<th {KEY}>{escape(h)}</th>" for h in head) + "</tr>"]
    for node in nodes:
        total, free = node.get("resources", {}), node.get("available", {})
        cells = [
            _code(str(node.get("node_id", ""))),
            escape(str(node.get("host", ""))),
            _code(str(node.get("address", ""))),
            *(
                _of(key, total.get(key, 0.0), free.get(key, total.get(key, 0.0)))
                for key in ("CPU", "GPU", "memory", *keys)
            ),
        ]
        lines.append("<tr>" + "".join(f"<td {CELL}>{c}</td>" for c in cells) + "</tr>")
    return f"<table {TABLE}>{''.join(lines)}</table>"


def object_ref(object_id: str, state: str) -> str:
    return (
        f'<span class="taskgraph-ref"><b>ObjectRef</b> {_code(object_id)} '
        f"<i>{escape(state)}</i></span>"
    )


def actor(class_name: str, actor_id: str, name: str = "", namespace: str = "") -> str:
    rows = [("Class", _code(class_name)), ("Actor id", _code(actor_id))]
    if name:
        rows.append(("Name", _code(name)))
        if namespace:
            rows.append(("Namespace", _code(namespace)))
    return f'<div class="taskgraph-actor"><div><b>Actor</b></div>{_table(rows)}</div>'


def task_stream_frame(url: str, height: int) -> str:
    """The live page in an iframe: it talks to the dashboard itself (its own
    websocket), so it updates in any notebook front end, without a kernel round
    trip or a server extension."""
    src = escape(url, quote=True)
    return (
        f'<iframe src="{src}" title="taskgraph task stream" width="100%" '
        f'height="{int(height)}" style="border: none" loading="eager"></iframe>'
        f'<div style="font-size: smaller">the live task stream from '
        f'<a href="{src}" target="_blank">{escape(url)}</a></div>'
    )


# -- the task stream's picture -------------------------------------------------

WIDTH = 900
LABELS = 150  # the left margin, for lane names
LANE = 20  # pixels per lane (the bar takes 80% of it, as on the dashboard)
TOP, BOTTOM, RIGHT = 28, 30, 16


def task_stream_svg(tasks: Sequence[Mapping[str, Any]], title: str = "Task stream") -> str:
    """The tasks (``/api/tasks`` rows) as the dashboard draws them: a lane per
    ``node/pid``, a bar per task from start to end, coloured by function, failed
    ones black; each bar's tooltip names the task. Time runs in seconds from the
    first start."""
    lanes: dict[str, int] = {}
    for t in tasks:
        lanes.setdefault(_lane(t), len(lanes))
    height = TOP + max(len(lanes), 1) * LANE + BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LABELS}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not tasks:
        parts.append(f'<text x="{LABELS}" y="{TOP + 14}" fill="#666666">no tasks yet</text>')
        return "".join([*parts, "</svg>"])
    start = min(float(t["start_time_ms"]) for t in tasks)
    end = max(float(t["end_time_ms"]) for t in tasks)
    span = max(end - start, 1.0)
    plot = WIDTH - LABELS - RIGHT

    def x(ms: float) -> float:
        return LABELS + (ms - start) / span * plot

    def y(lane: int) -> float:  # the first lane at the bottom, as on the dashboard
        return TOP + (len(lanes) - 1 - lane) * LANE

    for lane, i in lanes.items():
        label_y = y(i) + LANE * 0.4 + 4
        parts.append(
            f'<text x="{LABELS - 6}" y="{label_y:.1f}" text-anchor="end">{escape(lane)}</text>'
        )
    bottom = TOP + len(lanes) * LANE
    for seconds in _ticks(span / 1000):
        tx = x(start + seconds * 1000)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{TOP}" y2="{bottom + 4}" stroke="#e5e5e5"/>'
            f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{seconds:g} s</text>'
        )
    for t in tasks:
        left, right = x(float(t["start_time_ms"])), x(float(t["end_time_ms"]))
        top = y(lanes[_lane(t)])
        color = color_of(str(t["name"])) if t.get("state") == "FINISHED" else FAILED_COLOR
        duration = float(t["end_time_ms"]) - float(t["start_time_ms"])
        tip = f"{t['name']}: {duration:.1f} ms on {_lane(t)} ({t.get('state', '')})"
        parts.append(
            f'<rect class="task" x="{left:.2f}" y="{top:.1f}" width="{max(right - left, 0.5):.2f}" '
            f'height="{LANE * 0.8:.1f}" fill="{color}" fill-opacity="0.8">'
            f"<title>{escape(tip)}</title></rect>"
        )
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{height - 2}" text-anchor="end" fill="#666666">'
        f"{len(tasks)} task{_s(len(tasks))} on {len(lanes)} lane{_s(len(lanes))}</text>"
    )
    return "".join([*parts, "</svg>"])


def _lane(task: Mapping[str, Any]) -> str:
    return f"{task.get('node_id') or ''}/{task.get('worker_pid') or 0}"


def _ticks(seconds: float) -> list[float]:
    """Round times from 0 to ``seconds``, about six of them (1, 2 or 5 times a power of ten apart)."""
    raw = seconds / 6
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [round(i * step, 9) for i in range(int(seconds / step) + 1)]


# -- small pieces ---------------------------------------------------------------


def _table(rows: Sequence[tuple[str, str]]) -> str:
    """Rows of (label, cell); both are markup already (escaped by the caller)."""
    body = "".join(f"<tr><th {KEY}>{k}</th><td {CELL}>{v}</td></tr>" for k, v in rows)
    return f"<table {TABLE}>{body}</table>"


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def _link(url: str) -> str:
    return f'<a href="{escape(url, quote=True)}" target="_blank">{escape(url)}</a>'


def _sum(resources: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in resources:
        for key, value in r.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _of(key: str, total: float, free: float) -> str:
    """``2 (1 free)``; memory in bytes, shown in GiB or MiB."""
    if not total:
        return "0"
    show = _bytes if key == "memory" else _number
    return escape(f"{show(total)} ({show(free)} free)" if free != total else show(total))


def _number(value: float) -> str:
    return f"{value:g}"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:g} B"


def _s(n: int) -> str:
    return "" if n == 1 else "s"
