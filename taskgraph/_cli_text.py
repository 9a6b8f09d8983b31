"""What the ``taskgraph`` command prints: the words and tables of its reports."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import IO, Any

from taskgraph._processes import Started
from taskgraph._transport import parse_address


def head_started_text(
    address: str,
    token: str,
    host: str,
    scheduler: Started,
    node: dict[str, Any],
    log: Path,
    dashboard_url: str = "",
) -> str:
    port = parse_address(address).port
    reachable = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    remote = f"tcp://{reachable}:{port}"
    lines = [
        "Started a taskgraph cluster on this host.",
        f"  scheduler  {address} (pid {scheduler.pid})",
        f"  worker     {node['node_id']} (pid {node['pid']}) with "
        f"{resources_line(node['resources'])}",
        f"  logs       {log.parent}",
        f"  dashboard  {dashboard_url}/status" if dashboard_url else "  dashboard  (none)",
        "",
        "Connect from Python on this host:",
        "    import taskgraph as tg",
        '    tg.init("auto")',
        "",
        "Connect from another host:",
        f'    tg.init("{remote}", token="{token}")',
        "",
        "Add a worker on another host:",
        f"    taskgraph start --address {reachable}:{port} --token {token}",
    ]
    if parse_address(address).host in ("127.0.0.1", "localhost", "::1"):
        lines += [
            f"  (the scheduler listens on {host} only: start with --host 0.0.0.0 "
            "to let other hosts join)"
        ]
    lines += ["", "Watch it with 'taskgraph status'; stop it with 'taskgraph stop'."]
    return "\n".join(lines)


def story_text(address: str, key: str, changes: list[dict[str, Any]]) -> str:
    if not changes:
        return (
            f"The scheduler at {address} has no record of {key}: a wrong id, or its "
            "changes are older than the last 100,000 it keeps."
        )
    start = changes[0]["time"]
    lines = [f"Story of {key} at {address} (seconds since its first change):"]
    for c in changes:
        what = c["kind"] if c["key"] == key else f"{c['kind']} {c['key']}"
        lines.append(
            f"    {c['time'] - start:>9.3f}  {what:<10} {c['from'] or '(none)':>10} -> "
            f"{c['to']:<11} {c['stimulus']}"
        )
    return "\n".join(lines)


def memory_text(address: str, report: dict[str, Any]) -> str:
    lines = [f"Object store of the taskgraph cluster at {address}", ""]
    lines.append(f"    {'node':<14} {'objects':>8} {'in memory':>12} {'spilled':>10} {'cap':>10}")
    for node in report["nodes"]:
        # In memory and spilled from one heartbeat: the store's own, of one moment.
        lines.append(
            f"    {node['node_id']:<14} {node['objects']:>8} "
            f"{size(node['bytes_in_memory']):>12} {size(node['bytes_spilled']):>10} "
            f"{size(node.get('capacity', 0)):>10}"
        )
    inline = report["inline"]
    lines.append(f"    {'(inline)':<14} {inline['objects']:>8} {size(inline['bytes']):>12}")
    if report["largest"]:
        lines += ["", "Largest objects:"]
        for item in report["largest"]:
            held = item["held_by"]
            who = ", ".join(
                [f"client {c[:8]}" for c in held["clients"]]
                + [f"task {t}" for t in held["tasks"]]
                + [f"object {o[:8]}" for o in held["objects"]]
            )
            where = item["node_id"] or "inline"
            lines.append(
                f"    {item['object_id']}  {size(item['size']):>10}  on {where}  held by {who}"
            )
    return "\n".join(lines)


def status_text(address: str, nodes: list[dict[str, Any]]) -> str:
    count = f"{len(nodes)} node" + ("" if len(nodes) == 1 else "s")
    lines = [f"taskgraph cluster at {address}: {count} (resources used/total)"]
    total: dict[str, float] = {}
    available: dict[str, float] = {}
    for node in nodes:
        lines += ["", f"Node {node['node_id']}  host {node['host']}  pid {node['pid']}"]
        lines += resource_lines(node["resources"], node["available"])
        for name, amount in node["resources"].items():
            total[name] = total.get(name, 0.0) + amount
            available[name] = available.get(name, 0.0) + node["available"].get(name, 0.0)
    if not nodes:
        lines += ["", "No worker has joined yet: add one with 'taskgraph start --address ...'."]
    lines += ["", "Total"]
    lines += resource_lines(total, available)
    return "\n".join(lines)


def resource_lines(total: dict[str, float], available: dict[str, float]) -> list[str]:
    width = max((len(n) for n in total), default=0)
    lines = []
    for name in resource_order(total):
        used = max(total[name] - available.get(name, 0.0), 0.0)
        lines.append(f"    {name:<{width}}  {amount(name, used)}/{amount(name, total[name])}")
    return lines or ["    (no resources)"]


def resources_line(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount(n, resources[n])} {n}" for n in resource_order(resources))


def resource_order(resources: dict[str, float]) -> list[str]:
    first = [n for n in ("CPU", "GPU", "memory", "object_store_memory") if n in resources]
    return first + sorted(n for n in resources if n not in first)


def amount(name: str, value: float) -> str:
    if name in ("memory", "object_store_memory"):
        return size(value)
    return f"{value:g}"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class LogPrinter:
    """``taskgraph logs``: the lines of each file, under a ``==> ... <==`` line (as
    ``tail`` heads several files) when there are several, and again whenever
    following moves on to another file."""

    def __init__(self, out: IO[str], several: bool) -> None:
        self.out = out
        self.several = several
        self.printed = False
        self._last: tuple[str, str] | None = None

    def show(self, node: str, files: list[dict[str, Any]]) -> None:
        for entry in files:
            if not entry["lines"]:
                continue
            where = (node, entry["file"])
            if self.several and where != self._last:
                gap = "\n" if self.printed else ""
                self.out.write(f"{gap}==> node {node} {entry['file']} <==\n")
            self._last = where
            self.out.write("".join(line + "\n" for line in entry["lines"]))
            self.printed = True
        self.out.flush()


def log_scope(args: Any) -> str:
    if args.actor:
        return f"by actor {args.actor}"
    if args.task:
        return f"by task {args.task}"
    return f"on node {args.node}" if args.node else "on any node"


# -- list and summary ------------------------------------------------------------


def list_text(kind: str, rows: list[dict[str, Any]], total: int, filtered: bool) -> str:
    """``taskgraph list KIND``: a table of the rows, as ``ray list`` prints it, and a
    closing line when ``--limit`` left some out."""
    if not rows:
        return f"No {kind} match the filters." if filtered else f"No {kind} on record."
    lines = table(rows)
    if total > len(rows):
        lines += ["", f"Showing {len(rows)} of {total} {kind} (--limit N for more, 0 for all)."]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """Aligned columns under an upper-case header: the first row's keys, unless given."""
    names = columns if columns is not None else list(rows[0]) if rows else []
    cells = [[cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(names)]
    return [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in [[n.upper() for n in names], *cells]
    ]


def cell(value: Any) -> str:
    """One value as a table shows it: nothing for None, resources as ``status`` does."""
    if value is None:
        return ""
    if isinstance(value, dict):
        if all(isinstance(v, int | float) for v in value.values()):
            return resources_line(value)
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def detail_text(kind: str, rows: list[dict[str, Any]], total: int, filtered: bool) -> str:
    """``taskgraph list KIND --detail``: each record as a block of ``field: value``
    lines (a task's state changes and phases do not fit a column)."""
    if not rows:
        return f"No {kind} match the filters." if filtered else f"No {kind} on record."
    blocks = []
    for row in rows:
        width = max(len(k) for k in row)
        lines = []
        for key, value in row.items():
            if key == "events" and value:
                first = value[0]["created_ms"]
                value = [f"{e['state']} +{e['created_ms'] - first} ms" for e in value]
            elif key == "phases" and value:
                value = {k.removesuffix("_s"): f"{v * 1000:.3f} ms" for k, v in value.items()}
            lines.append(f"{key + ':':<{width + 1}} {cell(value)}".rstrip())
        blocks.append("\n".join(lines))
    if total > len(rows):
        blocks.append(f"Showing {len(rows)} of {total} {kind} (--limit N for more, 0 for all).")
    return "\n\n".join(blocks)


SUMMARY_KEYS = {"tasks": ("func_or_class_name", "type"), "actors": ("class_name",)}


def summary_text(kind: str, address: str, summary: dict[str, Any]) -> str:
    """``taskgraph summary KIND``: one row per function, class or reference type, with
    a column per state (objects: their count and bytes), then the totals."""
    groups = summary["summary"]
    if kind == "objects":
        rows = [
            {"reference_type": name, "objects": g["objects"], "size": size(g["size_bytes"])}
            for name, g in groups.items()
        ]
        totals = f"{summary['total_objects']} objects, {size(summary['total_size_bytes'])}"
    else:
        states = sorted({s for g in groups.values() for s in g["state_counts"]}, key=_by_life)
        rows = [
            {
                **{k: g[k] for k in SUMMARY_KEYS[kind]},
                **{s: g["state_counts"].get(s, 0) for s in states},
            }
            for g in groups.values()
        ]
        count = summary[f"total_{kind}"]
        totals = f"{count} {kind if count != 1 else kind[:-1]}"
        if summary.get("dropped"):
            totals += f" ({summary['dropped']} finished ones no longer on record)"
    lines = [f"Summary of the {kind} of the taskgraph cluster at {address}: {totals}"]
    if rows:
        lines += ["", *table(rows)]
    return "\n".join(lines)


LIFE = ("PENDING", "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "ALIVE")


def _by_life(state: str) -> tuple[int, str]:
    """States in the order a task or actor goes through them; the ends last."""
    return (LIFE.index(state), "") if state in LIFE else (len(LIFE), state)
