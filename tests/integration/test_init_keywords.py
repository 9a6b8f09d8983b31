"""Ray's init() keywords: the logging and dashboard ones work, the output ones are
taken, and any other is an error that names it, before anything starts."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator

import pytest

import taskgraph as tg
from taskgraph import config


@pytest.fixture
def taskgraph_logger() -> Iterator[logging.Logger]:
    """The package's logger, as it was again afterwards (tests share this process)."""
    logger = logging.getLogger("taskgraph")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, "taskgraph", False)]


def test_ray_s_logging_and_dashboard_keywords_are_taken(taskgraph_logger):
    for _ in range(2):  # a second init() adds no second handler
        tg.init(
            num_cpus=1,
            logging_level="DEBUG",
            logging_format="%(levelname)s %(message)s",
            log_to_driver=False,
            include_dashboard=False,
            dashboard_host="0.0.0.0",
            dashboard_port=8265,
        )
        try:
            assert tg.get(tg.remote(lambda: 7).remote()) == 7
        finally:
            tg.shutdown()
    assert taskgraph_logger.level == logging.DEBUG
    [handler] = ours(taskgraph_logger)
    assert handler.formatter is not None
    assert handler.formatter._fmt == "%(levelname)s %(message)s"


def test_configure_logging_false_leaves_the_logger_alone(taskgraph_logger):
    taskgraph_logger.setLevel(logging.ERROR)
    handlers = list(taskgraph_logger.handlers)  # (an earlier init() may have added ours)
    tg.init(num_cpus=1, configure_logging=False, logging_level="DEBUG")
    tg.shutdown()
    assert taskgraph_logger.level == logging.ERROR
    assert taskgraph_logger.handlers == handlers


def test_the_dashboard_keywords_place_the_scheduler_s_http_port(taskgraph_logger):
    with socket.socket() as probe:  # a port free a moment ago (a taken one falls back)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = tg.init(num_cpus=1, include_dashboard=True, dashboard_port=port)
    try:
        assert context.dashboard_url == f"http://127.0.0.1:{port}"
        assert repr(context).endswith(f"dashboard_url='http://127.0.0.1:{port}')")
        with urllib.request.urlopen(f"{context.dashboard_url}/metrics", timeout=10) as reply:
            assert b"taskgraph_nodes" in reply.read()
    finally:
        tg.shutdown()


def test_init_says_where_the_dashboard_is_on_the_usual_port_or_another(taskgraph_logger, caplog):
    caplog.set_level(logging.INFO, logger="taskgraph")
    try:  # the usual port, held here (or by someone else already: taken either way)
        holder: socket.socket | None = socket.create_server(("127.0.0.1", config.DASHBOARD_PORT))
    except OSError:
        holder = None
    try:
        context = tg.init(num_cpus=1, configure_logging=False)
        try:
            url = context.dashboard_url
            assert url is not None and not url.endswith(f":{config.DASHBOARD_PORT}")
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
                assert b"taskgraph_nodes" in reply.read()
        finally:
            tg.shutdown()
    finally:
        if holder is not None:
            holder.close()
    said = [r.getMessage() for r in caplog.records if r.name == "taskgraph"]
    assert any(f"dashboard at {url}/status" in line for line in said), said
    assert not any("is taken" in line for line in said), "nobody asked for that port"


@pytest.mark.parametrize("keyword", ["runtime_env", "local_mode", "_system_config"])
def test_a_ray_keyword_with_no_equivalent_is_named(keyword, taskgraph_logger):
    with pytest.raises(TypeError, match=f"does not take Ray's {keyword}="):
        tg.init(num_cpus=1, **{keyword: {}})
    assert not tg.is_initialized(), "nothing started"


def test_an_unknown_keyword_is_named_with_those_init_takes(taskgraph_logger):
    with pytest.raises(TypeError, match="no keyword num_cpu=; it takes: address, num_cpus"):
        tg.init(num_cpu=1)
    assert not tg.is_initialized()
