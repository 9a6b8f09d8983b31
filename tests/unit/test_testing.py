"""taskgraph.testing: the helpers users (and this suite) test with."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

import pytest

from taskgraph.testing import WaitTimeout, no_leaks, wait_for


def test_wait_for_returns_once_the_condition_holds() -> None:
    calls = []
    wait_for(lambda: calls.append(1) or len(calls) >= 3, timeout=5)
    assert len(calls) == 3


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeout, match="the moon"):
        wait_for(lambda: False, timeout=0.05, what="the moon")


def test_no_leaks_catches_a_thread_left_running() -> None:
    stop = threading.Event()
    try:
        with pytest.raises(WaitTimeout, match="threads"), no_leaks(timeout=0.2):
            threading.Thread(target=stop.wait, name="left-behind").start()
    finally:
        stop.set()


def test_no_leaks_catches_a_child_process_left_running() -> None:
    child = None
    try:
        with pytest.raises(WaitTimeout, match="child processes"), no_leaks(timeout=0.2):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    finally:
        assert child is not None
        child.kill()
        child.wait()


def test_no_leaks_collects_garbage_before_blaming_what_it_holds() -> None:
    """A reference cycle left behind is not a leak: what it holds goes with it."""
    stop = threading.Event()

    class Holder:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            stop.set()

    gc.disable()  # (so that only no_leaks collects the cycle)
    try:
        with no_leaks(timeout=5):
            threading.Thread(target=stop.wait, name="held-by-garbage").start()
            Holder()
    finally:
        gc.enable()
        stop.set()


def test_no_leaks_passes_a_block_that_cleans_up() -> None:
    with no_leaks(timeout=5):
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
