"""Task throughput with the dashboard open in a browser, against without (issue 14).

One local cluster; the same workload (``tasks`` no-op tasks submitted at once,
or ``--batch`` at a time, then awaited: the ``tasks_async`` row's shape) timed
in rounds that alternate between no browser and a headless Chromium showing
``/status`` (the live task stream: its websocket streams the finished tasks).
Alternating rounds share the machine's drift alike. The browser runs on the same cores as the cluster,
as it would on a laptop, so its own drawing counts against the cluster too.

    python -m benchmarks.dashboard_open [--tasks 5000] [--rounds 5] [--page status] [--batch 0]

Needs Debian's ``chromium`` and Playwright for Python (the test extras).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

import taskgraph as tg


@tg.remote
def noop() -> None:
    return None


def rate(n: int, cpu: dict[str, list[float]] | None = None, batch: int = 0) -> float:
    """Tasks a second, submitted ``batch`` at a time (0: all at once) and awaited;
    with ``cpu``, each process kind's CPU seconds per 1,000 tasks too."""
    before = cpu_by_kind()
    start = time.perf_counter()
    for first in range(0, n, batch or n):
        tg.get([noop.remote() for _ in range(min(batch or n, n - first))])
    took = time.perf_counter() - start
    if cpu is not None:
        for kind, seconds in cpu_by_kind().items():
            cpu.setdefault(kind, []).append((seconds - before.get(kind, 0.0)) / n * 1000)
    return n / took


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of this process, the scheduler, the workers (daemons and
    executors) and the browser, each kind summed over its processes."""
    totals: dict[str, float] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            line = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        kind = (
            "driver" if proc.pid == me.pid
            else "scheduler" if "taskgraph.scheduler.cli" in line
            else "browser" if "chrom" in line or "playwright" in line or "node" in proc.name()
            else "workers"
        )  # fmt: skip
        totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def settle(idle: float = 0.1, timeout: float = 20.0) -> None:
    """Wait until the browser has done with opening the page (loading BokehJS, the
    first drawings): less than ``idle`` of a core for two tenths of a second in a
    row (the cluster being idle, an open page then gets no updates). What is timed
    is a page kept open while tasks run, not one being opened."""
    deadline = time.monotonic() + timeout
    calm = 0
    last = cpu_by_kind().get("browser", 0.0)
    while calm < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # (a CPU reading needs time to pass)
        now = cpu_by_kind().get("browser", 0.0)
        calm = calm + 1 if now - last < idle * 0.1 else 0
        last = now


@contextmanager
def page_open(url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on this machine (Debian: apt install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            # The stream is live once Bokeh has made the page's document.
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0")
            yield page
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each kind")
    parser.add_argument("--page", default="status", help="the page the browser shows")
    parser.add_argument(
        "--batch", type=int, default=0, help="submit this many at a time (0: a round at once)"
    )
    args = parser.parse_args()
    context = tg.init(num_cpus=2, logging_level="warning")
    try:
        if context.dashboard_url is None:
            raise SystemExit("the cluster serves no dashboard")
        url = f"{context.dashboard_url}/{args.page}"
        rate(args.tasks)  # warm: executors started, function exported
        closed: list[float] = []
        opened: list[float] = []
        cpu_closed: dict[str, list[float]] = {}
        cpu_opened: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            closed.append(rate(args.tasks, cpu_closed, args.batch))
            with page_open(url):
                rate(args.tasks // 5)  # the page's first updates, untimed
                settle()
                opened.append(rate(args.tasks, cpu_opened, args.batch))
        without, with_page = statistics.median(closed), statistics.median(opened)
        print(f"tasks async, no browser        : {without:8,.0f} tasks/s  {fmt(closed)}")
        print(f"tasks async, /{args.page} open{'':{max(0, 11 - len(args.page))}}: "
              f"{with_page:8,.0f} tasks/s  {fmt(opened)}")  # fmt: skip
        print(f"with the page open: {with_page / without:.0%} of without (target: >= 90%)")
        print("CPU seconds per 1,000 tasks (median), no browser -> page open:")
        for kind in ("driver", "scheduler", "workers", "browser"):
            a = statistics.median(cpu_closed.get(kind, [0.0]))
            b = statistics.median(cpu_opened.get(kind, [0.0]))
            print(f"  {kind:9}: {a:6.3f} -> {b:6.3f}")
    finally:
        tg.shutdown()


def fmt(samples: list[float]) -> str:
    return "(" + ", ".join(f"{s:,.0f}" for s in samples) + ")"


if __name__ == "__main__":
    main()
