"""What tasks and actors print reaches the driver that submitted them, prefixed with
who printed it, whichever road the task took; and each executor's log file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import taskgraph as tg
from conftest import Captured, another_driver, finish, leased, on_lease, switch_to_direct, wait_for
from taskgraph.settings import settings


@tg.remote
def square(x):
    print(f"squaring {x}")
    return x * x, tg.get_runtime_context().get_node_id()


@tg.remote
def where():
    import os

    return os.getpid(), tg.get_runtime_context().get_node_id()


@tg.remote
def shout(text):
    import os

    print(text)
    return os.getpid(), tg.get_runtime_context().get_node_id()


@tg.remote
def outer():
    print("outer says hi")
    return tg.get(inner.remote())


@tg.remote
def inner():
    print("inner says hi")
    return 7


@tg.remote
class Counter:
    def __init__(self):
        self.n = 0

    def history(self):
        return None

    def incr(self, word="count"):
        import os

        self.n += 1
        print(f"{word} is {self.n}")
        logging.getLogger("mine").warning("warned at %d", self.n)
        return os.getpid()


def test_a_tasks_print_reaches_the_driver_with_its_prefix(cluster, capsys):
    seen = Captured(capsys)
    value, node = tg.get(square.remote(12), timeout=30)
    assert value == 144
    line = seen.wait_out("squaring 12")
    assert line.startswith("(square pid=") and f", node={node[:6]}) squaring 12" in line, line


def test_an_actors_print_and_logging_carry_its_class_and_name(cluster, capsys):
    seen = Captured(capsys)
    named = Counter.options(name="counter-1").remote()
    pid = tg.get(named.incr.remote("named"), timeout=30)
    assert seen.wait_out("named is 1").startswith(f"(Counter[counter-1] pid={pid}, node=")
    assert seen.wait_err("warned at 1").startswith(f"(Counter[counter-1] pid={pid}, node=")
    plain = Counter.remote()
    pid = tg.get(plain.incr.remote("plain"), timeout=30)
    assert seen.wait_out("plain is 1").startswith(f"(Counter pid={pid}, node=")
    tg.kill(named)
    tg.kill(plain)


def test_a_tasks_own_tasks_print_to_the_driver_that_started_them(cluster, capsys):
    seen = Captured(capsys)
    assert tg.get(outer.remote(), timeout=30) == 7
    assert seen.wait_out("outer says hi").startswith("(outer pid=")
    assert seen.wait_out("inner says hi").startswith("(inner pid=")


def test_a_leased_task_and_a_direct_call_print_as_well(cluster, capsys):
    seen = Captured(capsys)
    tries: list[bool] = []

    def one_went_on_a_lease() -> bool:
        ref, went = on_lease(lambda: shout.remote(f"down a lease {len(tries)}"))
        tg.get(ref, timeout=30)
        tries.append(went)
        return went

    leased(where)
    wait_for(one_went_on_a_lease, what="a task down a lease")
    assert seen.wait_out(f"down a lease {len(tries) - 1}").startswith("(shout pid=")
    counter = Counter.remote()
    switch_to_direct(counter)
    before = tg.statistics().direct_actor_calls
    tg.get(counter.incr.remote("direct"), timeout=30)
    assert tg.statistics().direct_actor_calls == before + 1, "the call went straight to the actor"
    assert seen.wait_out("direct is 1").startswith("(Counter pid=")
    tg.kill(counter)


QUIET = """
import json
import taskgraph as tg
tg.init(log_to_driver={log_to_driver})

@tg.remote
def shout(text):
    import os
    print(text)
    return os.getpid(), tg.get_runtime_context().get_node_id()

print(json.dumps(tg.get(shout.remote({text!r}), timeout=30)))
import time
time.sleep({linger})  # (output arrives a moment after the result)
tg.shutdown()
"""


def log_file(node: str, pid: int) -> Path:
    return settings().state_path() / "logs" / node / f"executor-{pid}.out"


def test_log_to_driver_false_keeps_the_output_in_the_log_file_only(cluster, capsys):
    seen = Captured(capsys)
    script = QUIET.format(log_to_driver=False, text="a quiet line", linger=1.0)
    code, out, err = finish(another_driver(script))
    assert code == 0, err
    pid, node = json.loads(out.splitlines()[0])
    assert "a quiet line" not in out + err, "log_to_driver=False shows nothing"
    wait_for(lambda: log_file(node, pid).exists(), what="the executor's log file")
    text = log_file(node, pid).read_text()
    assert "a quiet line" in text and "== shout task=" in text, text
    assert "a quiet line" not in seen.read().out, "another driver's output is not ours"


def test_another_drivers_output_goes_to_that_driver_only(cluster, capsys):
    seen = Captured(capsys)
    script = QUIET.format(log_to_driver=True, text="their own line", linger=3.0)
    code, out, err = finish(another_driver(script))
    assert code == 0, err
    pid, node = json.loads(out.splitlines()[0])
    assert f"(shout pid={pid}, node={node[:6]}) their own line" in out
    assert "their own line" not in seen.read().out + seen.err


FOLDED = """
import sys, io, time
import taskgraph as tg
tg.init()

@tg.remote
class Loader:
    def load(self):
        import os
        print("loading the model")
        return os.getpid()

captured = sys.stdout = io.StringIO()  # what the driver shows, from here on
loaders = [Loader.remote() for _ in range(3)]
pids = tg.get([a.load.remote() for a in loaders], timeout=60)
assert len(set(pids)) == 3
deadline = time.monotonic() + 30
while not ({until}) and time.monotonic() < deadline:
    time.sleep(0.05)
sys.stdout = sys.__stdout__
print(captured.getvalue())
tg.shutdown()
"""


def test_the_same_line_from_many_processes_is_shown_once_then_counted(cluster):
    proc = another_driver(FOLDED.format(until='"[repeated" in captured.getvalue()'))
    code, out, err = finish(proc, timeout=90)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "loading the model" in line]
    assert len(lines) == 2, out
    assert lines[1].endswith("loading the model [repeated 2x across the cluster]"), out


def test_the_fold_window_setting_of_zero_shows_every_line(cluster, monkeypatch):
    monkeypatch.setenv("TASKGRAPH_OUTPUT_FOLD_WINDOW", "0")
    proc = another_driver(FOLDED.format(until="captured.getvalue().count('loading') == 3"))
    code, out, err = finish(proc, timeout=90)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "loading the model" in line]
    assert len(lines) == 3 and not any("repeated" in line for line in lines), out
