"""Make docs/images/status.png, the README's picture of the dashboard's status page.

Starts a local cluster, runs a small real graph (a few hundred tasks of three
functions, some waiting on others), opens ``/status`` in headless Chromium
(Debian's ``chromium``, driven by Playwright: the test extras) and saves the
page once every task shows in its task stream. Anyone can rerun it:

    .venv/bin/python docs/screenshot.py [--out docs/images/status.png]
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import taskgraph as tg

OUT = Path(__file__).resolve().parent / "images" / "status.png"
TASK_COUNT = """() => {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    if (docs.length === 0) return -1;
    const source = docs[0].get_model_by_name("task-stream");
    return source === null ? -1 : source.get_length();
}"""


@tg.remote
def load(part: int) -> list[float]:
    rng = random.Random(part)
    time.sleep(rng.uniform(0.01, 0.05))
    return [rng.random() for _ in range(10_000)]


@tg.remote
def clean(values: list[float]) -> list[float]:
    time.sleep(0.02)
    return [v for v in values if v > 0.1]


@tg.remote
def combine(*parts: list[float]) -> float:
    time.sleep(0.03)
    return sum(sum(p) if isinstance(p, list) else p for p in parts)


def workload(parts: int) -> int:
    cleaned = [clean.remote(load.remote(i)) for i in range(parts)]
    level = cleaned
    made = 2 * parts
    while len(level) > 1:  # a tree of sums, two at a time
        level = [combine.remote(*level[i : i + 2]) for i in range(0, len(level), 2)]
        made += len(level)
    tg.get(level[0])
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt install chromium)")
    from playwright.sync_api import sync_playwright

    context = tg.init(num_cpus=2, logging_level="warning")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{context.dashboard_url}/status")
                page.wait_for_function(f"() => ({TASK_COUNT})() >= 0")
                made = workload(96)
                page.wait_for_function(f"() => ({TASK_COUNT})() >= {made}", timeout=60_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    finally:
        tg.shutdown()
    print(f"wrote {args.out} ({made} tasks in the stream)")


if __name__ == "__main__":
    main()
