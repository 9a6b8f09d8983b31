"""Who may read the dashboard's JSON and ``/metrics``: requests addressed to the port
by a name it answers to.

A port on loopback is out of other hosts' reach, but not out of a web page's:
a hostile site can point its own name at 127.0.0.1 (DNS rebinding) and read
the port from the user's browser as if it were its own. The browser then
sends that site's name in the ``Host`` header, which is how such a request
is told apart and refused. Bokeh's websockets are guarded the same way by
their ``Origin`` check (scheduler/dashboard.py ``origins``). A port bound to
another address is reachable by any name that address has, so it checks
nothing: who may reach it is the network's business.
"""

from __future__ import annotations

from tornado import web

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` headers a port bound to ``host`` answers; None: any."""
    if host not in LOOPBACK:
        return None
    names = ("127.0.0.1", "localhost", "[::1]")
    with_port = {f"{name}:{port}" for name in names}
    return frozenset(with_port | set(names)) if port == 80 else frozenset(with_port)


class Guarded(web.RequestHandler):
    """A handler that answers 403 to a request naming a host its port does not answer
    to. Subclasses take ``hosts`` (``allowed_hosts``'s answer) among their settings."""

    hosts: frozenset[str] | None = None

    def prepare(self) -> None:
        if self.hosts is not None and self.request.host.lower() not in self.hosts:
            raise web.HTTPError(
                403, reason=f"this port answers as {', '.join(sorted(self.hosts))} only"
            )
