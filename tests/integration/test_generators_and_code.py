"""Generator tasks stream their items; user code travels without installing anything."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time

import pytest

import taskgraph as tg
from taskgraph.exceptions import TaskError

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote
def count_up(n, pause):
    for i in range(n):
        yield i
        time.sleep(pause)


@tg.remote
def gated(gate):
    yield "before the gate"
    while not os.path.exists(gate):  # the test opens the gate only after item 0 arrived
        time.sleep(0.01)
    yield "after the gate"


def test_generator_items_arrive_before_the_task_ends(tmp_path):
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate))
    assert tg.get(next(gen), timeout=60) == "before the gate"
    assert not gen.completed().done()
    gate.touch()
    assert [tg.get(r) for r in gen] == ["after the gate"]
    assert tg.get(gen.completed()) == 2
    assert [tg.get(r) for r in count_up.remote(4, 0)] == [0, 1, 2, 3]


def test_empty_generator_stops_at_once():
    assert list(count_up.remote(0, 0)) == []


@tg.remote
def fails_after_one():
    yield "first"
    raise KeyError("second item")


def test_generator_error_surfaces_where_iteration_reaches_it():
    gen = fails_after_one.remote()
    assert tg.get(next(gen)) == "first"
    with pytest.raises(KeyError):
        next(gen)


def test_generator_with_num_returns_returns_a_list_of_refs():
    refs = count_up.options(num_returns=3).remote(3, 0)
    assert tg.get(refs) == [0, 1, 2]


def test_generator_refs_cannot_leave_the_process():
    import pickle

    with pytest.raises(TypeError, match="cannot leave"):
        pickle.dumps(count_up.remote(1, 0))


def test_code_from_a_local_package_runs_on_workers(tmp_path, monkeypatch):
    package = tmp_path / "localpkg_for_taskgraph"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text(
        textwrap.dedent(
            """
            class LocalError(Exception):
                pass

            def triple(x):
                return 3 * x

            def explode():
                raise LocalError("from a package the workers cannot import")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    helpers = importlib.import_module("localpkg_for_taskgraph.helpers")
    try:

        @tg.remote
        def use(x):
            return helpers.triple(x)

        @tg.remote
        def explode():
            helpers.explode()

        assert tg.get(use.remote(5)) == 15
        with pytest.raises(TaskError) as info:
            tg.get(explode.remote())
        assert "from a package the workers cannot import" in str(info.value)
        assert type(info.value).__name__.endswith("(LocalError)")
    finally:
        for name in [m for m in sys.modules if m.startswith("localpkg_for_taskgraph")]:
            del sys.modules[name]
