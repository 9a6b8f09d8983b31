"""The dashboard port's routing (scheduler/dashboard.py ``Routes``, ``LazyPages``): our
own handlers answer from the start, the pages are made by the first request for one,
and pages that cannot be made answer 503 and are tried again. An HTTP server on
loopback in this process; the pages are stand-ins, no cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from taskgraph.scheduler.dashboard import LazyPages, Routes


class Hello(web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


def serve_and_ask(
    applications: Callable[[], dict[str, Any]], paths: list[str]
) -> tuple[list[HTTPResponse], LazyPages]:
    """Serves our one handler (``/api/hello``) and the lazy pages; asks for ``paths``
    in turn (``|`` between two: at once)."""

    async def run() -> list[HTTPResponse]:
        server = HTTPServer(Routes(web.Application([(r"/api/hello", Hello)]), pages))
        socks = bind_sockets(0, "127.0.0.1")
        server.add_sockets(socks)
        url = f"http://127.0.0.1:{socks[0].getsockname()[1]}"
        client = AsyncHTTPClient(force_instance=True)
        try:
            answers: list[HTTPResponse] = []
            for asked in paths:
                answers += await asyncio.gather(
                    *(client.fetch(url + p, raise_error=False) for p in asked.split("|"))
                )
            return answers
        finally:
            client.close()
            server.stop()
            await server.close_all_connections()
            pages.stop()

    pages = LazyPages(applications, [])
    return asyncio.run(run()), pages


def test_pages_are_made_by_the_first_request_for_one_and_once() -> None:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler

    made: list[int] = []

    def applications() -> dict[str, Any]:
        made.append(1)
        return {"/status": Application(FunctionHandler(lambda doc: None))}

    answers, pages = serve_and_ask(
        applications, ["/api/hello", "/favicon.ico", "/status|/status", "/static/js/bokeh.min.js"]
    )
    hello, favicon, first, second, script = answers
    assert hello.code == 200 and hello.body == b"hello"
    assert favicon.code == 404, "no pages yet: no favicon (and no Bokeh made for it)"
    assert first.code == second.code == 200 and b"Bokeh" in first.body
    assert script.code == 200 and b"Bokeh" in script.body  # (Bokeh's own files)
    assert made == [1] and pages.app is not None


def test_pages_that_cannot_be_made_answer_503_and_are_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[int] = []

    def applications() -> dict[str, Any]:
        made.append(1)
        raise RuntimeError("no pages today")

    with caplog.at_level(logging.ERROR, logger="taskgraph.scheduler"):
        answers, pages = serve_and_ask(applications, ["/status", "/workers", "/api/hello"])
    assert [a.code for a in answers] == [503, 503, 200]
    assert made == [1, 1] and pages.app is None
    assert "could not make its pages" in caplog.text and "no pages today" in caplog.text
