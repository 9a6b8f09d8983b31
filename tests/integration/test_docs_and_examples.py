"""The documentation tells the truth, and every example and notebook runs.

- ``docs/architecture.md``'s task-state section matches the scheduler's
  transition table (``docs/transitions.py --check``);
- the ``python`` code blocks of ``docs/guide.md`` run, in order, as one program;
- every program in ``examples/`` exits 0 and prints what it should;
- every notebook in ``notebooks/`` executes without error and is stored
  without outputs.

Each program runs in a subprocess and starts (and stops) its own local
cluster. The test records every process in the program's tree while it runs
and fails, after killing them, if any outlives the program.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import running_processes

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROGRAM_TIMEOUT = 120.0

# Lines each example must print. A new example needs an entry here.
EXPECTED: dict[str, list[str]] = {
    "demo.py": [
        "sum of squares 0..63 by a tree of 127 tasks: 85344",
        "nested tasks: 285",
        "shut down cleanly",
    ],
    "parameter_server.py": [
        "synchronous: 60 updates",
        "synchronous training converged: True",
        "asynchronous: 200 updates",
        "asynchronous training converged: True",
        "shut down cleanly",
    ],
    "parallel_grid_search.py": [
        "scored 48 settings in parallel",
        "best: degree=5 alpha=0.1 ",
        "same as a serial search: True",
    ],
    "wait_in_finishing_order.py": [
        "processed in finishing order: True",
        "ready within 1 s: 3 of 4",
        "cancelled the straggler",
    ],
}

# Executes one notebook with the kernel of this interpreter; a failing cell
# raises CellExecutionError, whose message carries the cell's traceback.
NOTEBOOK_RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(
    notebook, timeout=120, kernel_name="python3",
    resources={"metadata": {"path": sys.argv[2]}},
)
client.execute()
"""


@dataclass
class Finished:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv)} exited with {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _track(root_pid: int, tracked: dict[int, psutil.Process]) -> None:
    """Remember every process now in the tree under ``root_pid``."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        tracked.setdefault(child.pid, child)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()[:4])}"
    except psutil.Error:
        return str(proc.pid)


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_program(
    argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> Finished:
    """Run ``argv`` to completion; fail the test if it hangs or leaves processes behind."""
    environment = {**os.environ, **(env or {})}
    environment.pop("TASKGRAPH_ADDRESS", None)  # each program starts its own cluster
    # Output goes to files, not pipes: a leaked grandchild holding a pipe open
    # would keep us waiting for EOF instead of seeing the program end.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        tracked: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + PROGRAM_TIMEOUT
        timed_out = False
        while True:
            _track(proc.pid, tracked)
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    timed_out = True
                    _kill([*running_processes(list(tracked.values())), psutil.Process(proc.pid)])
                    proc.wait()
                    break
        out.seek(0)
        err.seek(0)
        finished = Finished(argv, proc.returncode, out.read(), err.read())
    if timed_out:
        pytest.fail(f"still running after {PROGRAM_TIMEOUT:g} s, killed:\n{finished.describe()}")
    # Its cluster's processes stop on their own once it is gone; give them time.
    until = time.monotonic() + 15
    while running_processes(list(tracked.values())) and time.monotonic() < until:
        time.sleep(0.05)
    leftovers = running_processes(list(tracked.values()))
    if leftovers:
        names = [_describe(p) for p in leftovers]
        _kill(leftovers)
        pytest.fail(f"processes outlived the program (killed now): {names}\n{finished.describe()}")
    return finished


def test_architecture_task_states_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "transitions.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_guide_code_runs(tmp_path):
    guide = (ROOT / "docs" / "guide.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", guide, flags=re.S | re.M)
    assert len(blocks) > 10, "docs/guide.md lost its ```python blocks"
    program = tmp_path / "guide.py"
    program.write_text("\n".join(blocks))
    finished = run_program([sys.executable, str(program)], cwd=tmp_path)
    assert finished.returncode == 0, finished.describe()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example):
    expected = EXPECTED.get(example.name)
    assert expected is not None, (
        f"examples/{example.name} has no expected output: add its key lines to EXPECTED in "
        f"{Path(__file__).name}"
    )
    finished = run_program([sys.executable, str(example)])
    assert finished.returncode == 0, finished.describe()
    for line in expected:
        assert line in finished.stdout, f"missing {line!r}\n{finished.describe()}"
    assert "Traceback" not in finished.stderr, finished.describe()


def test_examples_and_notebooks_exist():
    assert any(p.name == "demo.py" for p in EXAMPLES)
    assert NOTEBOOKS, "notebooks/ has no notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, (
                f"{notebook.name} cell {i} has stored outputs; clear them before committing"
            )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(notebook, tmp_path):
    for package in ("nbclient", "nbformat", "ipykernel"):
        assert importlib.util.find_spec(package), (
            f"{package} is missing: install the test extras (pip install -e '.[test]')"
        )
    env = {
        "JUPYTER_PLATFORM_DIRS": "1",  # jupyter_core's own future default; silences its warning
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),  # kernel connection files
        "IPYTHONDIR": str(tmp_path / "ipython"),  # history and profile, not in $HOME
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # debugpy's frozen-modules notice
    }
    finished = run_program(
        [sys.executable, "-c", NOTEBOOK_RUNNER, str(notebook), str(notebook.parent)], env=env
    )
    assert finished.returncode == 0, finished.describe()
