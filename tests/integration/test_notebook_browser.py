"""notebooks/task_stream.ipynb in JupyterLab and in Notebook 7 (the classic
notebook's successor), in a real browser (Debian's headless ``chromium``, driven
by Playwright): run every cell from the Run menu, and read the task stream's
bars from the Bokeh document inside the cell's frame while the notebook's
graph runs.

JupyterLab runs on loopback with a token, its root, settings, runtime files
and kernels' IPython folder in the test's temporary folder; the kernel starts
the cluster, and the notebook's last cell stops it. Every process in
JupyterLab's tree is recorded while it lives and must be gone once JupyterLab
has stopped. A failing test leaves a screenshot (and JupyterLab's log) in its
temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import running_processes, screenshot_on_failure, wait_for

pytestmark = pytest.mark.cluster

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "task_stream.ipynb"
TASKS = 127  # the notebook's graph: 64 points_inside tasks, a tree of 63 combine tasks
FRAME = "iframe[title='taskgraph task stream']"
# The bars in the frame's Bokeh document (its "task-stream" source); -1: not there yet.
BARS = """() => {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    const source = docs.length ? docs[0].get_model_by_name("task-stream") : null;
    return source === null ? -1 : source.get_length();
}"""


class Lab:
    """A JupyterLab server of the test's own, and every process it started."""

    def __init__(self, server: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
        self.server = server
        self.url = url
        self.token = token
        self.log = log
        self.seen: dict[int, psutil.Process] = {}
        self.opens_at = "/lab/tree/"  # where the front end opens a notebook

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def kernel_states(self) -> list[str] | None:
        """Each kernel's state; None while one starts (jupyter_server fails the
        listing then, reading a time the kernel does not have yet)."""
        try:
            return [k["execution_state"] for k in self.get("/api/kernels")]
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 500:
                raise
            return None

    def track(self) -> None:
        """Remember every process now under the server (its kernels, their clusters)."""
        try:
            children = psutil.Process(self.server.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            self.seen.setdefault(child.pid, child)

    def stop(self) -> None:
        """Stop the server (it shuts its kernels down first); then nothing it
        started may be left, or the test fails (after killing them)."""
        self.track()
        self.server.terminate()
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        procs = list(self.seen.values())
        try:
            wait_for(
                lambda: not running_processes(procs),
                what="JupyterLab's kernels and clusters to exit",
            )
        except BaseException:
            left = running_processes(procs)
            for proc in left:
                proc.kill()
            psutil.wait_procs(left, timeout=10)
            raise


# The front ends: the program that serves it, and where it opens a notebook.
FRONT_ENDS = {"jupyterlab": ("lab", "/lab/tree/"), "notebook 7": ("notebook", "/notebooks/")}


@pytest.fixture(params=sorted(FRONT_ENDS))
def jupyterlab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    pytest.importorskip("jupyterlab", reason="install the test extras: pip install -e '.[test]'")
    pytest.importorskip("notebook", reason="install the test extras: pip install -e '.[test]'")
    program, opens_at = FRONT_ENDS[request.param]
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root)
    env = {
        **os.environ,
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),  # its server file, kernels' files
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    env.pop("TASKGRAPH_ADDRESS", None)  # the notebook starts its own cluster
    (tmp_path / "config").mkdir()
    # Language servers and terminals are not needed here, and cost seconds at start.
    off = {"jupyter_lsp": False, "jupyter_server_terminals": False}
    config = {"ServerApp": {"jpserver_extensions": off}}
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    token = secrets.token_hex(16)
    argv = [
        sys.executable, "-m", "jupyter", program, "--no-browser",
        "--ip=127.0.0.1", "--port=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")  # (CI containers run as root)
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    proc = psutil.Process(server.pid)
    sockets = proc.net_connections if hasattr(proc, "net_connections") else proc.connections

    def listening() -> set[int]:
        # From its socket: it writes its server file before it listens, and older
        # jupyter_servers write port 0 there (their #1650).
        assert server.poll() is None, f"JupyterLab exited:\n{log.read_text()}"
        return {c.laddr.port for c in sockets("tcp") if c.status == psutil.CONN_LISTEN}

    lab = Lab(server, "", token, log)
    lab.opens_at = opens_at
    try:
        wait_for(lambda: bool(listening()), timeout=60, what="JupyterLab to listen")
        (port,) = listening()
        lab.url = f"http://127.0.0.1:{port}"
        yield lab
    finally:
        lab.stop()


def test_the_notebook_shows_the_task_stream_growing_while_its_graph_runs(
    jupyterlab: Lab, browser: Any, tmp_path: Path
) -> None:
    browser.set_default_timeout(60_000)  # JupyterLab takes its time to load on a busy machine
    try:
        with screenshot_on_failure(browser, tmp_path):
            run_the_notebook(jupyterlab, browser)
    except BaseException:
        print(f"JupyterLab's log: {jupyterlab.log}")
        raise


def run_the_notebook(lab: Lab, page: Any) -> None:
    page.goto(f"{lab.url}{lab.opens_at}{NOTEBOOK.name}?token={lab.token}")
    wait_for(lambda: lab.kernel_states() == ["idle"], timeout=60, what="the notebook's kernel")
    lab.track()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('li[data-command="runmenu:run-all"]').click()

    # The bars in the cell's frame, as they change: -1 while its page loads.
    counts: list[int] = []

    def all_bars_shown() -> bool:
        lab.track()
        frame = page.locator(FRAME).element_handle().content_frame()
        n = frame.evaluate(BARS) if frame is not None else -1
        if not counts or counts[-1] != n:
            counts.append(n)
        return n == TASKS

    wait_for(all_bars_shown, timeout=90, what=f"{TASKS} bars in the cell's task stream")
    assert counts == sorted(counts), f"the stream lost bars: {counts}"
    # The graph went in at once: a count between none and all was drawn while it ran.
    assert any(0 < n < TASKS for n in counts), f"no bars shown while tasks ran: {counts}"

    # Then the still picture, and tg.shutdown() (the last cell) done.
    picture = page.locator(".jp-RenderedSVG img")
    picture.wait_for()
    src = picture.get_attribute("src")
    assert src is not None and src.startswith("data:image/svg+xml")
    svg = urllib.parse.unquote(src.partition(",")[2])
    assert svg.count('class="task"') == TASKS
    last_prompt = page.locator(".jp-Cell:last-child .jp-InputPrompt")
    wait_for(
        lambda: last_prompt.inner_text().strip() == "[6]:", timeout=60, what="the last cell to run"
    )
    wait_for(lambda: lab.kernel_states() == ["idle"], timeout=60, what="the kernel to be idle")
