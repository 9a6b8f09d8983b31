"""``taskgraph-scheduler``: run the cluster's scheduler in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys

from tornado.ioloop import PeriodicCallback

from taskgraph import config
from taskgraph._cli_tls import add_tls_arguments, tls_from_args
from taskgraph._tls import TLS
from taskgraph.settings import settings

from . import dashboard
from .server import SchedulerServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="taskgraph-scheduler", description="Run a taskgraph scheduler in the foreground."
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8786, help="TCP port (0: any free port)")
    p.add_argument(
        "--token",
        default=None,
        help=f"cluster token peers must prove ({config.TOKEN_ENV} by default; new one if unset)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    # A listening socket made by whoever started us (a local cluster, which then
    # knows the address at once and starts its worker alongside).
    # May be given twice: a TCP socket (the cluster's address) and a Unix one.
    p.add_argument("--listen-fd", type=int, action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true", help="do not record for init('auto')")
    p.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="interface for the HTTP port, /metrics (0.0.0.0: all)",
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=dashboard.DEFAULT_PORT,
        help="HTTP port for /metrics; if taken, a free one is used and logged (0: any free port)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="serve no HTTP port")
    # The HTTP port's listening socket, made by a local cluster (like --listen-fd).
    p.add_argument("--dashboard-fd", type=int, default=None, help=argparse.SUPPRESS)
    add_tls_arguments(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, tls: TLS | None = None) -> None:
    token = args.token or settings().token or config.new_token()
    server = SchedulerServer(config.token_bytes(token), cluster_id=os.urandom(6).hex(), tls=tls)
    unix_paths: list[str] = []
    if args.listen_fd:
        socks = [socket.socket(fileno=fd) for fd in args.listen_fd]
        for sock in socks:
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                unix_paths.append(sock.getsockname())
        server.add_sockets(socks)
        host, port = next(s for s in socks if s.family != socket.AF_UNIX).getsockname()[:2]
    else:
        server.listen(args.port, args.host)
        host, port = args.host, next(iter(server._sockets.values())).getsockname()[1]
    address = f"tcp://{host}:{port}"
    http = None
    if args.dashboard_fd is not None:
        http_socks = [socket.socket(fileno=args.dashboard_fd)]
    elif not args.no_dashboard:
        try:
            http_socks = dashboard.bind(args.dashboard_host, args.dashboard_port)
        except OSError as exc:
            where = f"{args.dashboard_host}:{args.dashboard_port}"
            print(
                f"taskgraph-scheduler: cannot serve /metrics on {where}: {exc} "
                "(--dashboard-host, --dashboard-port; --no-dashboard for none)",
                file=sys.stderr,
            )
            raise SystemExit(1) from exc
    else:
        http_socks = []
    if http_socks:
        http = dashboard.serve(server.registry, server.feed, http_socks)
        server.dashboard_url = dashboard.url_of(http_socks[0])
    if not args.no_record:
        config.record_cluster(
            address, token, os.getpid(), "scheduler", **(tls.record() if tls else {})
        )
    print(f"taskgraph-scheduler listening at {address}", flush=True)
    if tls is not None:
        print(f"taskgraph-scheduler takes TLS only, from certificates of {tls.ca}", flush=True)
    if http is not None:  # (a line of its own: the first one is read for the address)
        print(f"taskgraph-scheduler dashboard at {server.dashboard_url}/status", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.parent_pid:

        def check_parent() -> None:
            if os.getppid() != args.parent_pid:  # orphans are re-parented; zombies still "exist"
                stop.set()

        PeriodicCallback(check_parent, 500).start()
    await stop.wait()
    server.shutdown_cluster()
    server.stop()
    if http is not None:
        http.stop()
    for path in unix_paths:  # our starter removes them too, unless it died first
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
    if not args.no_record:
        (config.state_dir() / f"scheduler-{os.getpid()}.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    # Long-lived tables of tasks and objects make the default collector scan a
    # large heap every few hundred allocations; collect far less often.
    gc.set_threshold(100_000, 50, 100)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    try:
        tls = tls_from_args(args)
    except ValueError as exc:
        print(f"taskgraph-scheduler: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        asyncio.run(serve(args, tls))
    except OSError as exc:
        print(
            f"taskgraph-scheduler: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
