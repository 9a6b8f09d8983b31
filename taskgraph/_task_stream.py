"""``tg.task_stream()``: the dashboard's task stream, live inside a notebook cell,
and a still picture of it.

::

    notebook cell ── <iframe src=DASHBOARD/individual-task-stream> ──▶ scheduler's HTTP port
      (the page opens its own Bokeh websocket there; it updates 5 times a second,
       whatever the kernel is doing)
    stream.picture() ── GET DASHBOARD/api/tasks ──▶ the same rows ──▶ SVG (taskgraph/_html.py)

Why an iframe: the page is a Bokeh server document served by the scheduler
(scheduler/pages_single.py), so the browser talks to the dashboard directly.
It needs no Jupyter server extension, no widget manager and no kernel round
trip, and it renders alike in JupyterLab, Notebook 7 and the classic
notebook. Its cost: the browser must reach the dashboard's address, as it
must to open the dashboard at all (a kernel on a remote machine needs a
tunnel to the port).

The picture is SVG drawn here, not a Bokeh export: exporting needs a browser
(selenium), and an SVG is a few kilobytes that render offline, in a saved
notebook, on GitHub and in nbconvert's HTML.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from taskgraph import _api

# json, urllib and _html are imported by the functions that use them: every
# process imports this module (with taskgraph), only a notebook's kernel draws.

PAGE = "/individual-task-stream"
KEEP = 10_000  # task rows the dashboard keeps (feed.KEEP; a test holds them equal)
FETCH_TIMEOUT = 10.0  # seconds to wait for the dashboard's JSON
FRESH_WITHIN = 1.0  # seconds to wait for a snapshot newer than the call (made every 0.2 s)


class TaskStream:
    """What ``tg.task_stream()`` returns: shown in a notebook, the live task stream.

    ``url`` is the page (open it in a browser tab too); ``tasks()`` the rows
    behind it (``/api/tasks``); ``picture()`` a still picture of them.
    """

    def __init__(self, dashboard_url: str, height: int = 400) -> None:
        self.dashboard_url = dashboard_url
        self.url = dashboard_url + PAGE
        self.height = height

    def __repr__(self) -> str:
        return f"TaskStream({self.url})"

    def _repr_html_(self) -> str:
        from taskgraph import _html

        return _html.task_stream_frame(self.url, self.height)

    def tasks(self, limit: int = KEEP) -> list[dict[str, Any]]:
        """The last ``limit`` finished tasks the dashboard keeps, oldest first, with
        the state API's field names (``name``, ``state``, ``node_id``,
        ``worker_pid``, ``start_time_ms``, ``end_time_ms``, ...).

        As of now: the dashboard's view is a snapshot up to 0.2 s old, so this
        waits (up to ``FRESH_WITHIN``) for one made after the call, which holds
        every task the scheduler had recorded by then.
        """
        called = time.time()
        deadline = time.monotonic() + FRESH_WITHIN
        # (A scheduler on another host with a clock ahead or behind: the deadline.)
        while self._get("/api/status")["time"] < called and time.monotonic() < deadline:
            time.sleep(0.05)
        tasks: list[dict[str, Any]] = self._get(f"/api/tasks?limit={int(limit)}")["tasks"]
        return tasks

    def _get(self, path: str) -> Any:
        import json
        import urllib.request

        with urllib.request.urlopen(self.dashboard_url + path, timeout=FETCH_TIMEOUT) as reply:
            return json.loads(reply.read())

    def picture(self, limit: int = KEEP, title: str = "Task stream") -> TaskStreamPicture:
        """The stream as it is now, as a still picture (SVG) of the last ``limit`` tasks."""
        return TaskStreamPicture(self.tasks(limit), title)


class TaskStreamPicture:
    """A still picture of the task stream: SVG, shown by notebooks; ``save(path)``."""

    def __init__(self, tasks: list[dict[str, Any]], title: str = "Task stream") -> None:
        from taskgraph import _html

        self.tasks = tasks
        self.svg = _html.task_stream_svg(tasks, title)

    def __repr__(self) -> str:
        return f"TaskStreamPicture({len(self.tasks)} tasks)"

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, path: str | Path) -> Path:
        """Write the SVG to ``path``; returns it."""
        target = Path(path)
        target.write_text(self.svg, encoding="utf-8")
        return target


def task_stream(height: int = 400) -> TaskStream:
    """The live task stream, for a notebook cell: ``tg.task_stream()`` as a cell's
    last line shows the dashboard's stream (a bar per finished task, a lane per
    executor process), updating while tasks run. ``height`` in pixels.

    ``.picture()`` makes a still picture of it (SVG), for the end of a notebook
    or a file (``.picture().save("stream.svg")``).
    """
    if isinstance(height, bool) or not isinstance(height, int) or height < 100:
        raise ValueError(f"height must be a whole number of pixels, at least 100; got {height!r}")
    url = _api.dashboard_url()
    if url is None:
        raise RuntimeError(
            "this cluster's scheduler serves no dashboard, so there is no task stream to "
            "show: start it without tg.init(include_dashboard=False) (a scheduler started "
            "by hand: without --no-dashboard)"
        )
    return TaskStream(url, height)
