"""The dashboard's Bokeh pages, listed in one place: ``PAGES`` names each page's
path, in the order of the navigation bar, and ``builders()`` maps each to the
function that builds its document (``build(doc, feed)``). A new page is a
module of its own with such a function, and a line in each. Pages for frames
(``FRAMES``; scheduler/pages_single.py: one plot, no bar) are mounted beside
them.

Importing this module imports no Bokeh: the scheduler routes requests by these
paths from its start, and imports Bokeh and the pages' modules (``builders``,
``applications``) only when the first page is asked for (scheduler/dashboard.py).

Each page is a Bokeh document made per browser tab, on the scheduler's loop,
and updated by periodic callbacks that read the ``Feed``'s snapshots
(scheduler/feed.py), never the state. Above each, a bar links the pages and
the timeline's download (``/api/timeline``, the trace ``tg.timeline()``
writes). Models a test reads back carry names (see each page's module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .feed import Feed

if TYPE_CHECKING:
    from bokeh.application import Application
    from bokeh.document import Document

    Build = Callable[[Document, Feed], None]

PAGES = ("/status", "/workers", "/actors", "/objects", "/graph", "/logs")  # the bar's order
FRAMES = ("/individual-task-stream",)  # no bar, not in it (scheduler/pages_single.py)


def builders() -> dict[str, Build]:
    """Each of ``PAGES``'s builder (imports Bokeh and the pages' modules)."""
    from . import graph_page, logs_page, status_page
    from .table_pages import ACTORS, OBJECTS, WORKERS

    return {
        "/status": status_page.build,
        "/workers": WORKERS.build,
        "/actors": ACTORS.build,
        "/objects": OBJECTS.build,
        "/graph": graph_page.build,
        "/logs": logs_page.build,
    }


def applications(feed: Feed) -> dict[str, Application]:
    """A Bokeh application per path of ``PAGES`` and ``FRAMES`` (imports Bokeh)."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler

    from . import pages_single

    listed = {
        path: Application(FunctionHandler(_page(feed, path, build)))
        for path, build in builders().items()
    }
    return {**listed, **pages_single.applications(feed)}


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
    from bokeh.models.widgets import Div

    def modify(doc: Document) -> None:
        doc.add_root(Div(text=nav(path), name="nav"))
        build(doc, feed)

    return modify
