"""A cluster on this machine for ``tg.init()``: the same programs the CLIs run.

Starts ``taskgraph-scheduler`` on a free loopback port and one
``taskgraph-worker`` as child processes with a fresh token, and stops them
on ``close()``. Both children watch this process and stop if it dies without
closing them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from taskgraph import config

START_TIMEOUT = 60.0


class LocalCluster:
    def __init__(self, worker_args: list[str]) -> None:
        self.token = config.new_token()
        env = dict(os.environ)
        env[config.TOKEN_ENV] = self.token
        env.pop(config.ADDRESS_ENV, None)
        parent = ["--parent-pid", str(os.getpid())]
        self.scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskgraph.scheduler.cli",
                "--port",
                "0",
                "--no-record",
                *parent,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.worker: subprocess.Popen[bytes] | None = None
        try:
            self.address = self._read_address()
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "taskgraph.worker.cli", self.address, *worker_args, *parent],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            self.close()
            raise

    def _read_address(self) -> str:
        assert self.scheduler.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.scheduler.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(START_TIMEOUT)
        text = line[0].decode().strip() if line else ""
        self.scheduler.stdout.close()
        if "listening at " not in text:
            code = self.scheduler.poll()
            raise RuntimeError(
                f"the local scheduler did not start (exit code {code}); see its output above"
            )
        return text.rsplit(" ", 1)[1]

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
        from taskgraph.worker.daemon import sweep_dead_daemons

        sweep_dead_daemons()
