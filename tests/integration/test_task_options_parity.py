"""Ray's task options, as Ray documents them (issue 16): retry_exceptions as a
list of exception classes, and max_calls (GPU tasks and accelerator_type:
test_gpu_options_parity.py)."""

from __future__ import annotations

import collections
import os

import psutil
import pytest

import taskgraph as tg
from conftest import wait_for


class Flaky(Exception):
    """Raised by a task that fails on its first attempts."""


ERRORS = {"ValueError": ValueError, "KeyError": KeyError, "Flaky": Flaky}


@tg.remote(num_cpus=0.5, max_retries=3, retry_exceptions=[ValueError, Flaky])
def fails_at_first(path, failures, error):
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        attempt = len(f.read())
    if attempt <= failures:
        raise ERRORS[error](f"attempt {attempt}")
    return attempt


def attempts(path) -> int:
    with open(path) as f:
        return len(f.read())


@pytest.mark.usefixtures("cluster")
class TestRetryExceptionsList:
    def test_listed_exceptions_are_retried(self, tmp_path):
        assert tg.get(fails_at_first.remote(str(tmp_path / "v"), 2, "ValueError")) == 3
        assert tg.get(fails_at_first.remote(str(tmp_path / "f"), 1, "Flaky")) == 2

    def test_others_fail_at_once(self, tmp_path):
        path = str(tmp_path / "k")
        with pytest.raises(KeyError, match="attempt 1"):
            tg.get(fails_at_first.remote(path, 2, "KeyError"))
        assert attempts(path) == 1

    def test_subclasses_of_listed_ones_are_retried(self, tmp_path):
        lookup = fails_at_first.options(retry_exceptions=[LookupError])
        assert tg.get(lookup.remote(str(tmp_path / "k"), 2, "KeyError")) == 3

    def test_retries_stop_at_max_retries(self, tmp_path):
        path = str(tmp_path / "v")
        with pytest.raises(ValueError, match="attempt 2"):
            tg.get(fails_at_first.options(max_retries=1).remote(path, 5, "ValueError"))
        assert attempts(path) == 2

    def test_true_still_retries_anything_and_an_empty_list_nothing(self, tmp_path):
        every = fails_at_first.options(retry_exceptions=True)
        assert tg.get(every.remote(str(tmp_path / "k"), 1, "KeyError")) == 2
        none = fails_at_first.options(retry_exceptions=[])
        with pytest.raises(ValueError):
            tg.get(none.remote(str(tmp_path / "v"), 1, "ValueError"))

    def test_a_list_of_anything_else_is_refused(self):
        with pytest.raises(TypeError, match="list of exception classes"):
            fails_at_first.options(retry_exceptions=["ValueError"])


@tg.remote(num_cpus=0.5)
def pid_of_executor():
    return os.getpid()


def exited(pids) -> bool:
    return not any(psutil.pid_exists(p) for p in pids)


@pytest.mark.usefixtures("cluster")
class TestMaxCalls:
    def test_a_process_runs_a_function_at_most_max_calls_times_then_exits(self):
        twice = pid_of_executor.options(max_calls=2)
        pids = collections.Counter(tg.get(twice.remote(), timeout=60) for _ in range(6))
        assert max(pids.values()) <= 2 and len(pids) >= 3, pids
        wait_for(
            lambda: exited(p for p, n in pids.items() if n == 2),
            what="executors that ran their max_calls to exit",
        )

    def test_max_calls_one_gives_every_task_a_fresh_process(self):
        once = pid_of_executor.options(max_calls=1)
        pids = tg.get([once.remote() for _ in range(5)], timeout=60)
        assert len(set(pids)) == 5
        wait_for(lambda: exited(pids), what="each task's process to exit")
        assert tg.get(pid_of_executor.remote(), timeout=60) not in pids, "replaced"

    def test_without_max_calls_processes_are_reused(self):
        pids = [tg.get(pid_of_executor.remote(), timeout=60) for _ in range(6)]
        assert len(set(pids)) < 6

    def test_max_calls_is_for_remote_functions(self):
        with pytest.raises(ValueError, match="max_calls must be"):
            pid_of_executor.options(max_calls=-1)
        with pytest.raises(ValueError, match="unknown actor option"):

            @tg.remote(max_calls=2)
            class Nope:
                pass
