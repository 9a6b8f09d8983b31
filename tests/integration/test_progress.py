"""``tg.progress``: waits for refs or wraps an iterator, counting what finished and failed.

On a real local cluster: the text line when stderr is not a terminal, a tqdm
bar on a stream that is one (it moves as each task finishes, before the last),
the iterator form (lazy, in the iterator's order), bad input, and a notebook
(executed with nbclient) that gets tqdm's widget, or the text without ipywidgets.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

import taskgraph as tg
from conftest import wait_for

pytestmark = pytest.mark.cluster


@tg.remote
def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


@tg.remote
def when_exists(path):
    """Return once ``path`` exists: a task the test lets finish when it wants."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return path


@tg.remote
def countdown(n):
    yield from range(n, 0, -1)


class Terminal(io.StringIO):
    """A stream that says it is a TTY, as a terminal's stderr does."""

    def isatty(self) -> bool:
        return True


def last_line(text: str) -> str:
    return text.splitlines()[-1]


def test_waits_for_refs_and_counts_a_failure(cluster, capsys):
    refs = [fails_on_three.remote(i) for i in range(7)]
    assert tg.progress(refs) is refs
    ready, _ = tg.wait(refs, num_returns=7, timeout=0)
    assert ready == refs
    err = capsys.readouterr().err
    assert last_line(err) == "7/7 done, 1 failed"
    assert "\r" not in err and "%|" not in err  # not a terminal: no bar
    with pytest.raises(ValueError, match="three"):
        tg.get(refs[3])
    assert tg.get(tg.progress(refs[:3])) == [0, 1, 2]


def test_counts_a_ref_given_twice_twice_and_an_empty_list(cluster, capsys):
    a, b = fails_on_three.remote(1), fails_on_three.remote(3)
    assert tg.progress((a, a, b), desc="pairs") == (a, a, b)
    assert last_line(capsys.readouterr().err) == "pairs: 3/3 done, 1 failed"
    assert tg.progress(a) is a
    assert last_line(capsys.readouterr().err) == "1/1 done, 0 failed"
    assert tg.progress([]) == []
    assert last_line(capsys.readouterr().err) == "0/0 done, 0 failed"


def test_terminal_bar_moves_as_each_task_finishes(cluster, tmp_path):
    gate = tmp_path / "gate"
    refs = [fails_on_three.remote(3), when_exists.remote(str(gate))]
    terminal = Terminal()
    waiter = threading.Thread(target=tg.progress, args=(refs,), kwargs={"file": terminal})
    waiter.start()
    try:
        wait_for(lambda: "1/2" in terminal.getvalue(), what="the bar to count the first task")
        assert waiter.is_alive()
        assert "1 failed" in terminal.getvalue()
    finally:
        gate.touch()
        waiter.join(timeout=30)
    assert not waiter.is_alive()
    final = terminal.getvalue().split("\r")[-1]
    assert "100%" in final and "2/2" in final and "1 failed" in final
    assert "done," not in terminal.getvalue()  # the bar, not the line


def test_iterator_yields_in_its_order_and_counts(cluster, capsys):
    refs = [fails_on_three.remote(i) for i in range(5)]
    tg.wait(refs, num_returns=len(refs))  # so that the failure is known when its ref is yielded
    assert list(tg.progress(iter(refs), desc="in order")) == refs
    assert last_line(capsys.readouterr().err) == "in order: 5 done, 1 failed"

    finished = list(tg.progress(tg.as_completed(refs), total=len(refs)))
    assert sorted(finished, key=refs.index) == refs
    assert last_line(capsys.readouterr().err) == "5/5 done, 1 failed"

    assert tg.get(list(tg.progress(countdown.remote(3)))) == [3, 2, 1]
    assert last_line(capsys.readouterr().err) == "3 done, 0 failed"

    assert list(tg.progress(range(4))) == [0, 1, 2, 3]
    assert last_line(capsys.readouterr().err) == "4/4 done, 0 failed"


def test_iterator_yields_as_it_goes(cluster, capsys):
    pulled = []

    def source():
        for i in range(3):
            pulled.append(i)
            yield i

    items = tg.progress(source(), desc="lazy")
    assert pulled == []
    assert next(items) == 0
    assert pulled == [0]
    assert capsys.readouterr().err == ""  # the line comes at the end
    assert list(items) == [1, 2]
    assert last_line(capsys.readouterr().err) == "lazy: 3 done, 0 failed"


def test_iterator_on_a_terminal_shows_a_bar_with_its_total(cluster):
    refs = [fails_on_three.remote(i) for i in range(5)]
    terminal = Terminal()
    for _ in tg.progress(tg.as_completed(refs), total=5, file=terminal):
        pass
    final = terminal.getvalue().split("\r")[-1]
    assert "5/5" in final and "1 failed" in final


def test_bad_input_says_what_it_takes(cluster):
    ref = fails_on_three.remote(1)
    for wrong in (5, None, object()):
        with pytest.raises(TypeError, match="takes an ObjectRef, a list of ObjectRefs"):
            tg.progress(wrong)
    with pytest.raises(TypeError, match="got str"):
        tg.progress("refs")
    with pytest.raises(TypeError, match="item 1 is 3, not an ObjectRef"):
        tg.progress([ref, 3])
    with pytest.raises(TypeError, match="total= is for iterators"):
        tg.progress([ref], total=1)
    with pytest.raises(ValueError, match="total must be"):
        tg.progress(iter([ref]), total=-1)
    assert tg.get(ref) == 1


NOTEBOOK_CELLS = [
    """import sys
import taskgraph as tg

tg.init(num_cpus=2)

@tg.remote
def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x

refs = [fails_on_three.remote(i) for i in range(7)]""",
    """sys.modules["ipywidgets"] = None  # as if it were not installed
try:
    tg.progress(refs)
finally:
    del sys.modules["ipywidgets"]""",
    'done = tg.progress(refs, desc="tasks")',
    "tg.shutdown()",
]

NOTEBOOK_RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
nbformat.write(notebook, sys.argv[2])
"""


def test_notebook_shows_a_widget_or_the_text(tmp_path):
    # Its own cluster, in the kernel: no cluster fixture here.
    from test_docs_and_examples import run_program

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    given, executed = tmp_path / "progress.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(notebook, given)
    env = {
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    finished = run_program(
        [sys.executable, "-c", NOTEBOOK_RUNNER, str(given), str(executed)], cwd=tmp_path, env=env
    )
    assert finished.returncode == 0, finished.describe()
    result = json.loads(Path(executed).read_text())

    without_widgets = result["cells"][1]["outputs"]
    assert [(o["output_type"], o.get("name")) for o in without_widgets] == [("stream", "stderr")]
    assert "".join(without_widgets[0]["text"]).strip() == "7/7 done, 1 failed"

    with_widgets = result["cells"][2]["outputs"]
    assert len(with_widgets) == 1
    assert "application/vnd.jupyter.widget-view+json" in with_widgets[0]["data"]
    # What the widget showed last, as nbclient recorded it from the kernel.
    models = result["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in models.values() if m["model_name"] == "FloatProgressModel"]
    assert [(b["value"], b["max"]) for b in bars] == [(7, 7)]
    texts = [
        m["state"]["value"].replace("\u2007", " ")
        for m in models.values()
        if m["model_name"] == "HTMLModel"
    ]
    assert any("tasks: 100%" in t for t in texts), texts
    assert any("7/7" in t and "1 failed" in t for t in texts), texts
