"""Pages with one plot each, for frames: ``/individual-task-stream`` (as Dask
names its individual plots) is what ``tg.task_stream()`` puts in a notebook
cell.

The plot is the ``/status`` page's part (``status_page.TaskStreamPart``),
filling the page (``stretch_both``) so that the frame decides its size. These
pages have no navigation bar and are not in the dashboard's: ``applications``
hands them to pages.py, beside the pages it lists.
"""

from __future__ import annotations

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document

from .feed import Feed
from .status_page import UPDATE_MS, TaskStreamPart

PATH = "/individual-task-stream"


def task_stream_page(doc: Document, feed: Feed) -> None:
    snap = feed.current()
    stream = TaskStreamPart(snap, sizing_mode="stretch_both")
    taken = snap.taken  # the snapshot shown

    def update() -> None:
        nonlocal taken
        snap = feed.current()
        if snap.taken != taken:
            taken = snap.taken
            stream.update(snap)

    doc.title = "taskgraph: task stream"
    doc.add_root(stream.plot)
    doc.add_periodic_callback(update, UPDATE_MS)


def applications(feed: Feed) -> dict[str, Application]:
    def modify(doc: Document) -> None:
        task_stream_page(doc, feed)

    return {PATH: Application(FunctionHandler(modify))}
