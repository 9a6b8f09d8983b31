"""``python -m benchmarks`` end to end at its smallest: one quick benchmark, no peers.

The suite runs each system in a process of its own and must leave nothing
behind; the autouse leak checks in conftest.py hold it to that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_quick_tasks_sync_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            "tasks_sync",
            "--quick",
            "--repeat",
            "2",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| benchmark | unit | taskgraph | limit | % of limit |" in proc.stdout
    assert "| single client tasks sync | tasks/s |" in proc.stdout
    assert "left processes" not in proc.stdout + proc.stderr

    document = json.loads(out.read_text())
    (ours,) = [r for r in document["results"] if r["system"] == "taskgraph"]
    assert ours["status"] == "ok", ours
    assert len(ours["samples"]) == 2
    assert ours["median"] > 0


def test_unknown_benchmark_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "no_such_benchmark"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown benchmark(s): no_such_benchmark" in proc.stderr
    assert "tasks_async" in proc.stderr  # the message lists the valid names


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_quick_actor_rows_run_on_taskgraph(tmp_path: Path) -> None:
    """The async-actor and n:n rows: actors calling actors, with a get inside a method."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            "async_actor_async,actor_n_n",
            "--quick",
            "--repeat",
            "1",
            "--no-limit",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| 1:1 async-actor calls async | calls/s |" in proc.stdout
    assert "| n:n actor calls async | calls/s |" in proc.stdout
    assert "left processes" not in proc.stdout + proc.stderr
    document = json.loads(out.read_text())
    rows = {r["row"]: r for r in document["results"] if r["system"] == "taskgraph"}
    assert set(rows) == {"async_actor_async", "actor_n_n"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["median"] > 0


# ray_perf's rows (``ray microbenchmark``), less its placement-group and
# object-out-of-scope-callback rows, which test Ray internals.
RAY_PERF_ROWS = (
    "single client get calls",
    "single client put calls",
    "multi client put calls",
    "single client put gigabytes",
    "single client tasks and get batch",
    "multi client put gigabytes",
    "single client get object containing 10k refs",
    "single client wait 1k refs",
    "single client tasks sync",
    "single client tasks async",
    "multi client tasks async",
    "1:1 actor calls sync",
    "1:1 actor calls async",
    "1:1 actor calls concurrent",
    "1:n actor calls async",
    "n:n actor calls async",
    "n:n actor calls with arg async",
    "1:1 async-actor calls sync",
    "1:1 async-actor calls async",
    "1:1 async-actor calls with args async",
    "1:n async-actor calls async",
    "n:n async-actor calls async",
)
# The rows added to mirror ray_perf: key and label.
RAY_PERF_ADDED = {
    "multi_tasks_async": "multi client tasks async",
    "multi_put_small": "multi client put calls",
    "multi_put_gigabytes": "multi client put gigabytes",
    "actor_concurrent": "1:1 actor calls concurrent",
    "actor_args_async": "1:1 actor calls with args async",
    "actor_1_n": "1:n actor calls async",
    "actor_n_n_arg": "n:n actor calls with arg async",
    "async_actor_sync": "1:1 async-actor calls sync",
    "async_actor_args": "1:1 async-actor calls with args async",
    "async_actor_1_n": "1:n async-actor calls async",
    "async_actor_n_n": "n:n async-actor calls async",
}


def test_list_shows_every_ray_perf_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # "KEY GROUP LABEL": a label may add the size in parentheses, as
    # "single client put gigabytes (800 MiB array)" does.
    labels = [line.split(None, 2)[2] for line in lines]
    for name in RAY_PERF_ROWS:
        assert any(label == name or label.startswith(name + " (") for label in labels), name
    keys = {line.split()[0]: line.split(None, 2)[2] for line in lines}
    for key, label in RAY_PERF_ADDED.items():
        assert keys[key] == label


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_quick_ray_perf_rows_run_on_taskgraph(tmp_path: Path) -> None:
    """The rows that mirror ray_perf's: client actors that submit tasks, tasks that put,
    a concurrent actor, calls with arguments, async actors and 1:n / n:n clients."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            ",".join(RAY_PERF_ADDED),
            "--quick",
            "--repeat",
            "1",
            "--no-limit",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in RAY_PERF_ADDED.values():
        assert f"| {label} |" in proc.stdout
    assert "left processes" not in proc.stdout + proc.stderr
    document = json.loads(out.read_text())
    rows = {r["row"]: r for r in document["results"] if r["system"] == "taskgraph"}
    assert set(rows) == set(RAY_PERF_ADDED)
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["median"] > 0


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_quick_transfer_rows_run_on_two_taskgraph_hosts(tmp_path: Path) -> None:
    """Both transfer rows on taskgraph's two-host cluster, and loopback TCP as their limit."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            "transfer_gigabytes,shuffle_1gb",
            "--quick",
            "--repeat",
            "1",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| transfer 800 MiB between two worker daemons | GB/s |" in proc.stdout
    assert "| 1 GiB array shuffle between two worker daemons | GB/s |" in proc.stdout
    assert "transfer >= 1 GB/s on loopback (issue 3): **" in proc.stdout
    assert "left processes" not in proc.stdout + proc.stderr
    document = json.loads(out.read_text())
    cells = {(r["row"], r["system"]): r for r in document["results"]}
    assert set(cells) == {
        ("transfer_gigabytes", "taskgraph"),
        ("transfer_gigabytes", "limit"),
        ("shuffle_1gb", "taskgraph"),
    }
    for cell in cells.values():
        assert cell["status"] == "ok", cell
        assert cell["median"] > 0


@pytest.mark.cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("rate", [None, "4000"])
def test_scheduler_cpu_measures_both_ways(rate: str | None) -> None:
    paced = ["--rate", rate] if rate else []
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scheduler_cpu",
            *("--tasks", "2000", "--channel", "300"),
            *paced,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    alone, process = lines[-4:-2]
    for path, line in zip(("leased task", "direct actor call"), lines[-2:], strict=True):
        assert line.startswith(path) and "µs of scheduler" in line, line
    assert alone.startswith("state machine alone") and "µs of CPU per task" in alone
    assert process.startswith("scheduler process") and "tasks/s" in process
    achieved = float(process.rsplit(" at ", 1)[1].split()[0].replace(",", ""))
    if rate:
        assert achieved <= float(rate) * 1.05, "paced at the rate asked for"
