"""The dashboard's Bokeh pages, listed in one place: ``PAGES`` maps each path to
the function that builds its document (``build(doc, feed)``), in the order of
the navigation bar. A new page is a module of its own with such a function,
and a line here. Pages for frames (scheduler/pages_single.py: one plot, no
bar) are mounted beside them.

Each page is a Bokeh document made per browser tab, on the scheduler's loop,
and updated by periodic callbacks that read the ``Feed``'s snapshots
(scheduler/feed.py), never the state. Above each, a bar links the pages and
the timeline's download (``/api/timeline``, the trace ``tg.timeline()``
writes). Models a test reads back carry names (see each page's module).
"""

from __future__ import annotations

from collections.abc import Callable

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.models.widgets import Div

from . import graph_page, logs_page, pages_single, status_page
from .feed import Feed
from .table_pages import ACTORS, OBJECTS, WORKERS

Build = Callable[[Document, Feed], None]

PAGES: dict[str, Build] = {
    "/status": status_page.build,
    "/workers": WORKERS.build,
    "/actors": ACTORS.build,
    "/objects": OBJECTS.build,
    "/graph": graph_page.build,
    "/logs": logs_page.build,
}


def applications(feed: Feed) -> dict[str, Application]:
    listed = {
        path: Application(FunctionHandler(_page(feed, path, build)))
        for path, build in PAGES.items()
    }
    return {**listed, **pages_single.applications(feed)}  # (for frames: no bar, not in it)


def nav(current: str) -> str:
    """The bar above every page: each page's link (the current one in bold), then
    the timeline's download. Links are relative, so they work behind a proxy's prefix."""
    links = [
        f"<b>{path[1:]}</b>" if path == current else f'<a href="{path[1:]}">{path[1:]}</a>'
        for path in PAGES
    ]
    links.append('<a href="api/timeline" download="timeline.json">timeline (JSON)</a>')
    return "<b>taskgraph</b> &nbsp; " + " &nbsp; ".join(links)


def _page(feed: Feed, path: str, build: Build) -> Callable[[Document], None]:
    def modify(doc: Document) -> None:
        doc.add_root(Div(text=nav(path), name="nav"))
        build(doc, feed)

    return modify
