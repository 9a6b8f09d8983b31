"""A cluster on this machine for ``tg.init()``: the same programs the CLIs run.

Starts ``taskgraph-scheduler`` on a free loopback port (and a private Unix
socket, which this process and its worker use) and one
``taskgraph-worker`` side by side as child processes with a fresh token, and stops them
on ``close()``. Both children watch this process and stop if it dies without
closing them.

The children live in a session of their own, as ``taskgraph start``'s do: a
terminal's Ctrl-C (SIGINT to its foreground process group) is for the driver,
which then stops its cluster. Had it reached them too, the worker would stop
first and the scheduler would warn the driver, as it went down, that its
tasks have no worker to run on.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from taskgraph import config
from taskgraph._processes import child_env

if TYPE_CHECKING:
    from taskgraph._tls import TLS

START_TIMEOUT = 60.0


class LocalCluster:
    """``dashboard``: where the scheduler serves HTTP (/metrics), as (host, port);
    port None: any free port; ``dashboard=None``: no HTTP port. ``tls``: both
    children run on TLS with these certificates."""

    def __init__(
        self,
        worker_args: list[str],
        dashboard: tuple[str, int | None] | None = ("127.0.0.1", None),
        tls: TLS | None = None,
    ) -> None:
        self.token = config.new_token()
        env = child_env(self.token)
        parent = ["--parent-pid", str(os.getpid()), *(tls.args() if tls else [])]
        # The scheduler's HTTP port (a free one unless asked for one), made here
        # like its listening socket below.
        http = _http_socket(*dashboard) if dashboard is not None else None
        if http is None:
            http_args = ["--no-dashboard"]
            self.dashboard_url: str | None = None
        else:
            http_args = ["--dashboard-fd", str(http.fileno())]
            host, port = http.getsockname()[:2]
            self.dashboard_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        # We make the scheduler's listening socket, so the address is known at
        # once and the worker starts alongside the scheduler, not after it:
        # connections wait in the socket's backlog until the scheduler is up.
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        # This driver and the worker reach the scheduler over a Unix socket as
        # well: on one host it skips the loopback TCP stack, a good part of what
        # every message costs. Others (a second worker, `taskgraph status`) use TCP.
        self.socket_dir = tempfile.mkdtemp(prefix="tg-scheduler-")
        local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(self.socket_dir, "scheduler.sock")
        local.bind(path)
        local.listen(128)
        self.local_address = f"unix://{path}"
        self.worker: subprocess.Popen[bytes] | None = None
        try:
            self.scheduler = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskgraph.scheduler.cli",
                    "--listen-fd",
                    str(listener.fileno()),
                    "--listen-fd",
                    str(local.fileno()),
                    "--no-record",
                    *http_args,
                    *parent,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # (see above: Ctrl-C is for the driver)
                pass_fds=tuple(s.fileno() for s in (listener, local, http) if s is not None),
            )
        except BaseException:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        finally:
            listener.close()  # the scheduler holds them now; if it dies, connecting fails
            local.close()
            if http is not None:
                http.close()
        try:
            self.worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskgraph.worker.cli",
                    self.local_address,
                    *worker_args,
                    *parent,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # (see above: Ctrl-C is for the driver)
            )
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        for name, proc in (("scheduler", self.scheduler), ("worker", self.worker)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"the local {name} exited with code {proc.returncode} while starting; "
                    "see its output above"
                )

    def close(self, timeout: float = 10.0) -> None:
        # The worker first, so it does not see its scheduler vanish and complain.
        procs = [p for p in (self.worker, self.scheduler) if p is not None]
        deadline = time.monotonic() + timeout
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # A worker killed along the way (or by the user) left its arena and
        # spill files: nothing of the cluster survives shutdown().
        from taskgraph.worker.store import sweep_dead_daemons

        sweep_dead_daemons()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _http_socket(host: str, port: int | None) -> socket.socket:
    """A listening socket for the scheduler's HTTP port: ``port`` (None: the usual
    one, ``config.DASHBOARD_PORT``), or a free one when that is taken (said in
    the log, as Dask does, when the port was asked for)."""
    try:
        return socket.create_server((host, port or config.DASHBOARD_PORT), backlog=128)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    if not port:  # the usual port is another cluster's: any will do
        return socket.create_server((host, 0), backlog=128)
    sock = socket.create_server((host, 0), backlog=128)
    logging.getLogger("taskgraph").warning(
        "dashboard_port=%d is taken (another cluster's?); the dashboard is on port %d instead",
        port,
        sock.getsockname()[1],
    )
    return sock
