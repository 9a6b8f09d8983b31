"""A cancel that reaches a task while its process sets it up still cancels it.

A running task is cancelled by a SIGINT that its executor raises into the
task's code; one that lands while the executor is still setting the task up
(loading its code, decoding its arguments) is not raised there, so the task
itself checks, as it starts, whether it was cancelled meanwhile. Seen as a
leased task cancelled right after it was sent running for its full length
(the guide's cancel example, once in a few hundred tries); made certain here
by a function whose code takes a second to load.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.exceptions import TaskCancelledError

pytestmark = pytest.mark.usefixtures("cluster")


def slow_to_load(marker: Path):
    """A remote function whose code, when an executor loads it, writes ``marker``
    and then takes a second (a value it closes over is slow to unpickle)."""

    def restore():
        import time

        open(marker, "w").close()
        time.sleep(1.0)
        return 7

    class SlowToUnpickle:
        def __reduce__(self):
            return (restore, ())

    held = SlowToUnpickle()

    @tg.remote
    def sleeps(seconds):
        time.sleep(seconds)
        return held

    return sleeps


def test_a_task_cancelled_while_its_code_loads_is_cancelled(tmp_path: Path):
    marker = tmp_path / "loading"
    sleeps = slow_to_load(marker)
    ref = sleeps.remote(60)
    wait_for(marker.exists, timeout=30, what="the executor to load the task's code")
    tg.cancel(ref)
    started = time.monotonic()
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=30)
    assert time.monotonic() - started < 20
    # The executor goes on: the same function runs (its code is loaded once).
    assert tg.get(sleeps.remote(0), timeout=30) == 7
