"""Shared fixtures: clusters, and the leak checks every test runs under.

A test fails if it leaves behind a process, a shared-memory arena, an object
in a store or a thread that was not there when it started (polled with a deadline, since
teardown is asynchronous). Cluster fixtures check the same after shutdown.
"""

from __future__ import annotations

import atexit
import collections
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

# Each test session gets its own shared-memory folder (still tmpfs), so that
# leak checks see only this session's segments. Set before taskgraph is
# imported; every cluster process inherits it.
SHM_DIR = Path("/dev/shm") / f"taskgraph-tests-{os.getpid()}"
SHM_DIR.mkdir(exist_ok=True)
os.environ["TASKGRAPH_SHM_DIR"] = str(SHM_DIR)
# A session that runs no test (collection only, all deselected) never reaches
# the shm_dir fixture's teardown: remove the empty folder at exit all the same.
atexit.register(lambda: SHM_DIR.exists() and not any(SHM_DIR.iterdir()) and SHM_DIR.rmdir())
# And its own state folder (worker daemons' records, their logs). A starting
# daemon, and a local cluster's shutdown, sweep up after every dead daemon on
# record there: with one folder for all, a session running beside this one
# (pytest-xdist's other worker) would sweep away what a test here killed a
# daemon to look at.
STATE_DIR = Path(tempfile.mkdtemp(prefix="taskgraph-tests-state-"))
os.environ["TASKGRAPH_STATE_DIR"] = str(STATE_DIR)
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)

import taskgraph as tg  # noqa: E402 - after TASKGRAPH_SHM_DIR is set
from taskgraph.testing import (  # noqa: E402 - likewise
    Snapshot,
    alive,
    check_nothing_left,
    descendants,
    taskgraph_threads,
    wait_for,
)
from taskgraph.testing import arenas as segments  # noqa: E402
from taskgraph.testing import child_processes as direct_children  # noqa: E402
from taskgraph.testing import stored_objects as stored  # noqa: E402

__all__ = [  # what test modules take from here besides fixtures
    "Captured",
    "alive",
    "descendants",
    "direct_children",
    "get_json",
    "processes_with_state_dir",
    "running_processes",
    "screenshot_on_failure",
    "segments",
    "stored",
    "taskgraph_threads",
    "wait_for",
    "warm",
]


def warm(fn: Any, *args: Any, n: int = 60, value: Any = None) -> None:
    """Run remote function ``fn`` ``n`` times, so the cluster knows how long its tasks take
    (short ones then wait in busy executors: worker/state.py). Each call must return
    ``value``, or its first argument when ``value`` is None."""
    expected = args[0] if value is None else value
    assert tg.get([fn.remote(*args) for _ in range(n)], timeout=60) == [expected] * n


@pytest.fixture(scope="session", autouse=True)
def shm_dir() -> Iterator[Path]:
    yield SHM_DIR
    leftovers = sorted(p.name for p in SHM_DIR.iterdir())
    for p in SHM_DIR.iterdir():
        p.unlink()
    SHM_DIR.rmdir()
    assert not leftovers, f"segments left at the end of the session: {leftovers}"


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = Snapshot.take()
    yield
    check_nothing_left(before)


def _checked_cluster(**kwargs: object) -> Iterator[tg.ClusterContext]:
    assert not tg.is_initialized(), "a previous test left taskgraph initialized"
    context = tg.init(**kwargs)  # type: ignore[arg-type]
    processes = descendants()
    yield context
    tg.shutdown()
    wait_for(lambda: not alive(processes), what="cluster processes to exit")
    wait_for(lambda: not segments(), what="all arenas to be removed")
    wait_for(lambda: not taskgraph_threads(), what="client threads to end")
    assert not list(SHM_DIR.iterdir())


@pytest.fixture(scope="module")
def cluster() -> Iterator[tg.ClusterContext]:
    """A two-CPU local cluster shared by one test module."""
    yield from _checked_cluster(num_cpus=2)


@pytest.fixture
def fresh_cluster(request: pytest.FixtureRequest) -> Iterator[tg.ClusterContext]:
    """A cluster of one's own; parametrize indirectly with init() keyword arguments."""
    kwargs = getattr(request, "param", {"num_cpus": 2})
    yield from _checked_cluster(**kwargs)


class Captured:
    """What this test's stdout and stderr received so far (the driver prints there
    from its reader thread, whenever lines arrive)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.out = self.err = ""

    def read(self) -> Captured:
        got = self.capsys.readouterr()
        self.out += got.out
        self.err += got.err
        return self

    def wait_out(self, text: str) -> str:
        wait_for(lambda: text in self.read().out, what=f"{text!r} in the driver's stdout")
        return next(line for line in self.out.splitlines() if text in line)

    def wait_err(self, text: str) -> str:
        wait_for(lambda: text in self.read().err, what=f"{text!r} in the driver's stderr")
        return next(line for line in self.err.splitlines() if text in line)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium page (Debian's ``chromium``, driven by Playwright; never
    ``playwright install``); closed, with every process it started, at the end."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


def get_json(url: str) -> Any:
    """A JSON reply (the dashboard's ``/api/*``), checking that it says it is JSON."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("application/json")
        return json.loads(reply.read())


@contextmanager
def screenshot_on_failure(page: Any, folder: Path) -> Iterator[None]:
    """A failing browser test leaves a screenshot of its page in ``folder``."""
    try:
        yield
    except BaseException:
        path = folder / "failure.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the page: {path}")
        raise


def processes_with_state_dir(state_dir: Path) -> list[psutil.Process]:
    """Every live process whose environment names ``state_dir`` as its
    ``TASKGRAPH_STATE_DIR``: all that a CLI started for it, children included."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.environ().get("TASKGRAPH_STATE_DIR") == str(state_dir)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def running_processes(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as ended)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def goes_direct(handle: Any) -> bool:
    """Make one call (the actor's ``history`` method) and say whether it went
    straight to the actor (this process's client counts its direct calls)."""
    before = tg.statistics().direct_actor_calls
    tg.get(handle.history.remote(), timeout=30)
    return tg.statistics().direct_actor_calls == before + 1


def switch_to_direct(handle: Any) -> None:
    """Call the actor until this client calls it directly; the client offers the
    actor a channel every 0.1 s while its calls go through the scheduler."""
    wait_for(lambda: goes_direct(handle), what="the client to call the actor directly")


def leased_so_far() -> int:
    """Tasks this driver sent down a lease so far."""
    return tg.statistics().tasks_leased


def leased(fn: Any, *args: Any) -> None:
    """Await ``fn`` one call at a time until a call goes down a lease (which is then
    idle)."""

    def one_went_on_a_lease() -> bool:
        before = leased_so_far()
        tg.get(fn.remote(*args), timeout=30)
        return leased_so_far() > before

    wait_for(one_went_on_a_lease, what="a lease")


def on_lease(submit: Callable[[], Any]) -> tuple[Any, bool]:
    """Call ``submit`` (it submits one task); return what it returns, and whether
    the task went down a lease."""
    before = leased_so_far()
    out = submit()
    return out, leased_so_far() == before + 1


def running_channel_tasks() -> list[dict[str, Any]]:
    """Tasks the scheduler has RUNNING, leases themselves aside."""
    from taskgraph.util.state import list_tasks

    return [t for t in list_tasks(limit=0) if t["state"] == "RUNNING" and t["name"] != "lease"]


def settled() -> bool:
    """The scheduler's record settled: nothing runs, no report waits for its record,
    and this driver awaits nothing from a channel."""
    from taskgraph.util.state import cluster_statistics

    return (
        not running_channel_tasks()
        and cluster_statistics()["reports_before_records"] == 0
        and tg.statistics().awaiting_channels == 0
    )


def wait_settled(timeout: float = 15) -> None:
    """Poll until ``settled()``; fail the test with what still runs at the deadline."""
    from taskgraph.util.state import cluster_statistics

    gc.collect()
    try:
        wait_for(settled, timeout=timeout, what="the scheduler's record to settle")
    except BaseException:
        running = collections.Counter(t["name"] for t in running_channel_tasks())
        print(
            f"running {dict(running)}, reports before records "
            f"{cluster_statistics()['reports_before_records']}, awaiting channels "
            f"{tg.statistics().awaiting_channels}"
        )
        raise


# A script prefix for another driver: call a named actor until the calls go
# straight to it (format with name= and namespace=).
SWITCH_TO_DIRECT = """
import os, sys, time
import numpy as np
import taskgraph as tg
a = tg.get_actor({name!r}, namespace={namespace!r})
deadline = time.monotonic() + 15
while True:
    before = tg.statistics().direct_actor_calls
    tg.get(a.history.remote())
    if tg.statistics().direct_actor_calls == before + 1:
        break
    if time.monotonic() > deadline:
        sys.exit("never went direct")
"""


def another_driver(script: str, pythonpath: str = "") -> subprocess.Popen[str]:
    """``script`` in another driver process on this cluster (end it with ``finish``)."""
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    env = dict(os.environ, TASKGRAPH_ADDRESS=runtime.address, TASKGRAPH_TOKEN=runtime.cluster.token)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    """Wait for a driver to end (killed at the deadline): exit code, stdout, stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def start_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Add a worker daemon to the running local cluster (the caller stops it)."""
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    env = dict(os.environ, **(env or {}), TASKGRAPH_TOKEN=runtime.cluster.token)
    return subprocess.Popen(
        [sys.executable, "-m", "taskgraph.worker.cli", runtime.address, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
