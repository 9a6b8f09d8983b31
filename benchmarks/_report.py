"""Results: what each (row, system) measured, and the Markdown table of them.

The table prints median and min-max of the repetitions for every system, the
ratios taskgraph / peer, and the share of the physical limit. A ratio above 1
always means taskgraph is better: rates divide taskgraph's by the peer's;
times and memory divide the peer's by taskgraph's.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks import _catalog
from benchmarks._catalog import Row


@dataclass
class Cell:
    status: str  # "ok", "skip", "error", "timeout"
    samples: list[float] = field(default_factory=list)
    note: str = ""
    # A rate that timed out mid-repetition was below ops / elapsed.
    upper_bound: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


@dataclass
class Results:
    systems: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # run-wide notes: leaks, missing peers
    # Share of the machine's CPU that processes outside the benchmark used, per "group/system".
    background: dict[str, float] = field(default_factory=dict)

    def set(self, row: str, system: str, cell: Cell) -> None:
        self.cells[(row, system)] = cell

    def get(self, row: str, system: str) -> Cell | None:
        return self.cells.get((row, system))

    def rows(self) -> list[Row]:
        present = {row for row, _ in self.cells}
        return [row for b in _catalog.BENCHMARKS for row in b.rows if row.key in present]


# -- numbers -------------------------------------------------------------------------


def fmt(value: float) -> str:
    """Three significant figures, with k/M/G for large values."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= 0.9995 * scale:
            return f"{value / scale:.3g}{suffix}"
    if value == 0 or abs(value) >= 0.001:
        return f"{value:.3g}"
    return f"{value:.2e}"


def ratio(row: Row, ours: Cell | None, theirs: Cell | None) -> tuple[float, str] | None:
    """(factor, relation): how many times better taskgraph is; relation "=", ">" or "<"."""
    if ours is None or theirs is None:
        return None
    a, b = _estimate(ours), _estimate(theirs)
    if a is None or b is None:
        return None
    (a_value, a_bound), (b_value, b_bound) = a, b
    if a_bound and b_bound:
        return None
    factor = a_value / b_value if row.higher_is_better else b_value / a_value
    if a_bound:  # ours is at most a_value
        return factor, "<" if row.higher_is_better else ">"
    if b_bound:  # theirs is at most b_value
        return factor, ">" if row.higher_is_better else "<"
    return factor, "="


def _estimate(cell: Cell) -> tuple[float, bool] | None:
    if cell.median is not None:
        return cell.median, False
    if cell.upper_bound is not None:
        return cell.upper_bound, True
    return None


def _ratio_text(found: tuple[float, str] | None) -> str:
    if found is None:
        return ""
    factor, relation = found
    prefix = "" if relation == "=" else relation
    return f"{prefix}{factor:.2f}x"


# -- the table ---------------------------------------------------------------------------


def table(results: Results) -> str:
    ran = {system for _, system in results.cells}
    systems = [s for s in results.systems if s in ran]
    peers = [s for s in systems if s in _catalog.PEERS]
    has_limit = "limit" in systems
    header = ["benchmark", "unit", *systems]
    header += [f"tg/{p}" for p in peers]
    if has_limit:
        header.append("% of limit")
    lines = [_line(header), _line(["---"] * len(header))]
    notes: list[str] = []
    for row in results.rows():
        cells = [row.label, row.unit + ("" if row.higher_is_better else ", lower is better")]
        for system in systems:
            cells.append(_cell_text(results.get(row.key, system), system, row, notes))
        ours = results.get(row.key, "taskgraph")
        for peer in peers:
            cells.append(_ratio_text(ratio(row, ours, results.get(row.key, peer))))
        if has_limit:
            found = ratio(row, ours, results.get(row.key, "limit"))
            cells.append("" if found is None else f"{found[0] * 100:.0f}%")
        lines.append(_line(cells))
    out = "\n".join(lines)
    legend = (
        "\nCells: median (min-max) over the timed repetitions. tg/peer: how many times "
        "better taskgraph is (rates: taskgraph / peer; times and memory: peer / taskgraph); "
        "above 1 taskgraph wins. Empty: the system has no such workload."
    )
    out += "\n" + legend
    busiest = max(results.background.items(), key=lambda item: item[1], default=None)
    if busiest is not None and busiest[1] >= 0.05:
        mean = statistics.mean(results.background.values())
        out += (
            f"\n\nThe machine was not idle: other processes used {mean:.0%} of its CPU on "
            f"average while benchmarks ran, and {busiest[1]:.0%} during {busiest[0]}. "
            "Numbers taken under such load are lower and noisier than on a quiet machine."
        )
    if notes or results.notes:
        out += "\n\n" + "\n".join(f"[{i}] {text}" for i, text in enumerate(notes, 1))
        if results.notes:
            out += ("\n" if notes else "") + "\n".join(f"- {text}" for text in results.notes)
    return out


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell_text(cell: Cell | None, system: str, row: Row, notes: list[str]) -> str:
    if cell is None:
        return ""
    if cell.status == "ok" and cell.samples:
        median = fmt(statistics.median(cell.samples))
        if len(cell.samples) == 1:
            return f"{median} (1 run)"
        return f"{median} ({fmt(min(cell.samples))}-{fmt(max(cell.samples))})"
    text = f"{system}, {row.label}: {cell.note or cell.status}"
    if text not in notes:
        notes.append(text)
    mark = f"[{notes.index(text) + 1}]"
    if cell.status == "timeout" and cell.upper_bound is not None:
        return f"<{fmt(cell.upper_bound)} timeout {mark}"
    return f"{cell.status} {mark}"


# -- targets -------------------------------------------------------------------------------


def targets(results: Results) -> list[dict[str, Any]]:
    verdicts = []
    for target in _catalog.TARGETS:
        row = _catalog.ROWS[target.row]
        ours = results.get(target.row, "taskgraph")
        if target.against == _catalog.ABSOLUTE:
            # One unit of the row's measure: the ratio is then taskgraph's own value.
            theirs: Cell | None = Cell("ok", samples=[1.0])
        else:
            theirs = results.get(target.row, target.against)
        if ours is None or theirs is None:
            continue
        found = ratio(row, ours, theirs)
        if found is None:
            verdict, detail = "not measured", _why_missing(ours, theirs)
        else:
            factor, relation = found
            shown, goal = _target_text(target, row, factor)
            if relation == "=":
                met = factor >= target.factor
            elif relation == ">":
                met = factor >= target.factor or None
            else:
                met = False if factor < target.factor else None
            if met is None:
                verdict, detail = (
                    "undetermined",
                    f"{relation}{shown}, goal {goal} (a run timed out)",
                )
            elif met:
                verdict, detail = "met", f"{relation.strip('=')}{shown} >= {goal}"
            else:
                verdict = "missed"
                detail = f"{shown} < {goal}: needs {target.factor / factor:.2f}x more"
        verdicts.append({"target": target.text, "verdict": verdict, "detail": detail})
    return verdicts


def _target_text(target: _catalog.Target, row: Row, factor: float) -> tuple[str, str]:
    """(what taskgraph did, the goal), as the target states them."""
    if target.against == "limit":
        return f"{factor * 100:.0f}%", f"{target.factor:.0%}"
    if target.against == _catalog.ABSOLUTE:
        return f"{fmt(factor)} {row.unit}", f"{target.factor:g} {row.unit}"
    return f"{factor:.2f}x", f"{target.factor:g}x"


def _why_missing(ours: Cell, theirs: Cell) -> str:
    for who, cell in (("taskgraph", ours), ("peer", theirs)):
        if cell.status != "ok":
            return f"{who}: {cell.note or cell.status}"
    return ""


def targets_text(verdicts: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {v['target']}: **{v['verdict']}** ({v['detail']})" for v in verdicts)


# -- the machine -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("taskgraph", "ray", "dask", "distributed", "numpy", "cloudpickle"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_text(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['os']}; "
        f"Python {info['python']}; {versions}"
    )


def to_json(results: Results) -> list[dict[str, Any]]:
    out = []
    for (row_key, system), cell in results.cells.items():
        row = _catalog.ROWS[row_key]
        out.append(
            {
                "row": row_key,
                "label": row.label,
                "unit": row.unit,
                "higher_is_better": row.higher_is_better,
                "system": system,
                "status": cell.status,
                "samples": cell.samples,
                "median": cell.median,
                "min": min(cell.samples) if cell.samples else None,
                "max": max(cell.samples) if cell.samples else None,
                "upper_bound": cell.upper_bound,
                "note": cell.note,
            }
        )
    return out
