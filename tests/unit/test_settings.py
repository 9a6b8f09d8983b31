"""Every TASKGRAPH_* variable lives in one record (taskgraph/settings.py), read
nowhere else, each listed in docs/settings.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskgraph import settings as settings_module
from taskgraph.settings import VARIABLES, Settings, markdown

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = [ROOT / "taskgraph", ROOT / "scheduler", ROOT / "worker"]
READ = re.compile(r"(environ\.get\(|environ\[|getenv\()\s*([^)\]]*)")


def sources() -> list[Path]:
    return [p for folder in PACKAGE for p in folder.rglob("*.py")]


def test_the_docs_hold_the_table() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    between = text.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    assert between == markdown(), "run: python docs/settings.py --write"


def test_no_module_but_settings_reads_a_taskgraph_variable() -> None:
    offenders = []
    for path in sources():
        if path == Path(settings_module.__file__):
            continue
        for match in READ.finditer(path.read_text()):
            key = match.group(2)
            if "TASKGRAPH" in key or "_ENV" in key:
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not offenders


def test_every_variable_named_in_the_code_is_a_setting() -> None:
    known = {var.env for var in VARIABLES}
    named = {
        name
        for path in sources()
        for name in re.findall(r"TASKGRAPH_[A-Z_]+", path.read_text())
        if not name.endswith("_")
    }
    assert named <= known, named - known


def test_defaults_and_parsing() -> None:
    plain = Settings.read({})
    assert plain.task_leases and plain.direct_results and plain.direct_actor_calls
    assert plain.lease_idle == 0.05 and plain.executor_prefetch == 16
    assert plain.state_dir.startswith("/tmp/taskgraph-")
    off = Settings.read({"TASKGRAPH_TASK_LEASES": "0", "TASKGRAPH_WORKER_TIMEOUT": "2.5"})
    assert not off.task_leases and off.worker_timeout == 2.5


def test_a_malformed_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="TASKGRAPH_LEASE_IDLE='soon'"):
        Settings.read({"TASKGRAPH_LEASE_IDLE": "soon"})


def test_init_reads_the_environment_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGRAPH_QUEUE_DEPTH", "7")
    assert settings_module.reread().queue_depth == 7.0
    monkeypatch.setenv("TASKGRAPH_QUEUE_DEPTH", "9")
    assert settings_module.settings().queue_depth == 7.0, "read once"
    assert settings_module.reread().queue_depth == 9.0
