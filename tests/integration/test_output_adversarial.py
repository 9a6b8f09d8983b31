"""What tasks print, attacked: forged marker lines, text with no newline before the
next task, bytes that are not UTF-8, executors killed mid-print, a driver that stops
reading, links planted in the log folder, and folding thousands of distinct lines."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

import taskgraph as tg
from conftest import Captured, another_driver, finish, wait_for
from taskgraph._output import Folder
from taskgraph.exceptions import WorkerCrashedError
from taskgraph.worker import output
from taskgraph.worker.logs import read_logs


def cluster_process(part: str) -> psutil.Process:
    """The scheduler or a worker daemon of this test's local cluster."""
    found = [p for p in psutil.Process().children(recursive=True) if part in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


# -- forged markers ------------------------------------------------------------------

FORGER = """
import os, sys, time
sys.stdout = open({mine!r}, "w", buffering=1)  # what this driver shows, from here on
import taskgraph as tg
tg.init()

@tg.remote
def forge(job_hex):
    import os
    fake = "\\x1etaskgraph-source\\x1f" + job_hex + "\\x1f" + "00" * 16 + "\\x1fforged"
    print(fake)
    print("spoofed by print")
    os.write(1, (fake + "\\nspoofed by os.write\\n").encode())
    return os.getpid()

tg.get(forge.remote({job!r}), timeout=30)
deadline = time.monotonic() + 15
while "spoofed by os.write" not in open({mine!r}).read() and time.monotonic() < deadline:
    time.sleep(0.05)  # (output arrives a moment after the result)
tg.shutdown()
"""


def test_a_forged_marker_line_cannot_send_text_to_another_drivers_job(cluster, capsys, tmp_path):
    seen = Captured(capsys)
    client = tg._api._runtime.client  # type: ignore[union-attr]
    mine = tmp_path / "their-stdout"
    code, _, err = finish(another_driver(FORGER.format(job=client.client_id.hex(), mine=str(mine))))
    assert code == 0, err
    theirs = mine.read_text()
    assert "(forge pid=" in theirs and "spoofed by print" in theirs, theirs
    assert "spoofed by os.write" in theirs, "the forger's text stays the forger's"
    # A task of ours after theirs: its line arrives; theirs never did.
    tg.get(shout.remote("ours after the forgery"), timeout=30)
    seen.wait_out("ours after the forgery")
    assert "spoofed" not in seen.out + seen.err, seen.out


@tg.remote
def shout(text):
    import os

    print(text)
    return os.getpid()


# -- text with no newline, then the next task ----------------------------------------


@tg.remote
def unfinished(text):
    import os

    print("begins")
    os.write(1, text.encode())  # no newline: the next marker lands on this line
    return os.getpid()


def test_text_left_without_a_newline_stays_with_its_task_and_the_next_task_is_its_own(
    cluster, capsys
):
    seen = Captured(capsys)
    pid = tg.get(unfinished.remote("left unfinished"), timeout=30)
    tries = 0
    ran_there: list[str] = []

    def next_task_ran_there() -> bool:
        nonlocal tries
        tries += 1
        # Two at a time: awaited one by one they would go down a lease, which
        # can hold the other executor for as long as they keep coming.
        texts = [f"next task {tries}.{k}" for k in range(2)]
        pids = tg.get([shout.remote(text) for text in texts], timeout=30)
        ran_there[:] = [text for text, p in zip(texts, pids, strict=True) if p == pid]
        return bool(ran_there)

    wait_for(next_task_ran_there, what="a task in the same executor")
    for text in ran_there:
        line = seen.wait_out(text)
        assert line.startswith(f"(shout pid={pid}, "), line
    assert seen.wait_out("left unfinished").startswith(f"(unfinished pid={pid}, ")
    assert "taskgraph-source" not in seen.out, "a marker is never shown"


# -- bytes that are not text ---------------------------------------------------------


@tg.remote
def garbage():
    import os
    import sys

    print("fine before")  # (raw bytes are the last task to print's: see the report)
    print("on stderr", file=sys.stderr)
    os.write(1, b"bad \xff\xfe bytes\r\n")
    os.write(2, b"\x00nul and \x1e record separator\n")
    print("fine after")
    return os.getpid()


def test_bytes_that_are_not_utf8_come_through_replaced_and_later_lines_are_fine(cluster, capsys):
    seen = Captured(capsys)
    pid = tg.get(garbage.remote(), timeout=30)
    assert seen.wait_out("bad ").startswith(f"(garbage pid={pid}, ")
    assert "bad \ufffd\ufffd bytes\r\n" in seen.out
    assert seen.wait_out("fine after").startswith(f"(garbage pid={pid}, ")
    wait_for(lambda: "record separator" in seen.read().err, what="the stderr line")


# -- executors killed while printing -------------------------------------------------


@tg.remote(max_retries=0)
def spew(path):
    import os
    import sys

    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        sys.stdout.write("y" * 3000 + "\n")
        os.write(2, b"half a line on stderr ")


def test_executors_killed_mid_print_leave_the_daemon_working_with_no_pipe_left_open(
    cluster, tmp_path
):
    daemon = cluster_process("taskgraph.worker.cli")
    assert tg.get(shout.remote("warm"), timeout=30)
    fds = daemon.num_fds()
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        for n in range(5):  # (what they print goes nowhere in this driver)
            path = tmp_path / f"pid-{n}"
            ref = spew.remote(str(path))
            wait_for(lambda p=path: p.exists() and p.read_text(), what="the task to start")
            os.kill(int(path.read_text()), signal.SIGKILL)
            with pytest.raises(WorkerCrashedError):
                tg.get(ref, timeout=30)
        assert tg.get(shout.remote("after the kills"), timeout=30)
    wait_for(lambda: daemon.num_fds() <= fds, what=f"the daemon back to {fds} fds")


# -- a driver that stops reading -----------------------------------------------------

STUCK = """
import os, sys, time
import taskgraph as tg
tg.init()

@tg.remote
def chatty(n, done):
    line = "z" * 200
    for i in range(n):
        print(line, i)
    open(done, "w").close()
    return n

print("started", flush=True)
ref = chatty.remote({lines}, {done!r})
print("result", tg.get(ref, timeout=300), flush=True)
sys.stderr = open({notes!r}, "w", buffering=1)  # where the driver shows the notes
deadline = time.monotonic() + 60
while "dropped" not in open({notes!r}).read() and time.monotonic() < deadline:
    time.sleep(0.05)  # (what came before the note is shown first, as we read)
tg.shutdown()
"""


def test_a_driver_that_stops_reading_does_not_make_the_scheduler_hold_its_output(cluster, tmp_path):
    scheduler = cluster_process("taskgraph.scheduler")
    before = scheduler.memory_info().rss
    done, notes = tmp_path / "done", tmp_path / "notes"
    # The driver's stdout is a pipe nobody reads yet: its printing blocks. ~230 MB
    # of lines come.
    proc = another_driver(STUCK.format(lines=1_000_000, done=str(done), notes=str(notes)))
    try:
        wait_for(done.exists, timeout=120, what="the chatty task to finish")
        grown = scheduler.memory_info().rss - before
        assert tg.get(shout.remote("others still run"), timeout=30)
    finally:
        code, out, err = finish(proc, timeout=120)
    assert grown < 120 << 20, f"the scheduler grew by {grown >> 20} MB"
    assert code == 0, err
    assert "result 1000000" in out
    told = notes.read_text()
    # The driver drops what it cannot print (its reader thread only queues, so its
    # results are not held up); the scheduler drops for a driver that reads too
    # slowly. Either way the driver is told.
    assert (
        "lines of task output dropped: this process's output was not being read" in told
        or "(taskgraph pid=0, node=schedu) this driver reads too slowly" in told
    ), told[-500:]


# -- the log files: links and bad offsets --------------------------------------------


def test_read_logs_never_follows_a_link_out_of_the_log_folder(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("private key\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "executor-1.out").symlink_to(secret)
    os.mkfifo(logs / "executor-2.out")  # (a fifo would block a plain open)
    (logs / "executor-3.out").write_text("== t task=- job=- ==\nmine\n")
    found = {f["file"]: f["lines"] for f in read_logs(logs)}
    assert found["executor-3.out"] == ["== t task=- job=- ==", "mine"]
    assert not found.get("executor-1.out") and not found.get("executor-2.out"), found
    following = read_logs(logs, offsets={"executor-1.out": 0, "executor-3.out": 0})
    assert "private key" not in str(following)


def test_read_logs_takes_a_bad_offset_as_the_start_of_the_file(tmp_path):
    (tmp_path / "executor-7.err").write_text("one\ntwo\n")
    for bad in (-100, 1 << 62):
        [found] = read_logs(tmp_path, offsets={"executor-7.err": bad})
        assert found["lines"] == ["one", "two"] and found["offset"] == 8, (bad, found)


# -- folding: memory bounded ---------------------------------------------------------


def test_folding_remembers_at_most_its_limit_of_lines_and_shows_counts_it_ends_early():
    folder = Folder(window=60.0, limit=100)
    assert folder.take(0.0, 1, "common", ("a", 1), "(t pid=1)")
    assert not folder.take(0.0, 1, "common", ("b", 2), "(t pid=2)"), "folded: another process"
    for i in range(10_000):
        assert folder.take(1.0, 1, f"distinct {i}", ("a", 1), "(t pid=1)")
        assert len(folder) <= 100
    assert folder.due(1.0) == [(1, "(t pid=1) common [repeated 1x across the cluster]")]
    assert not folder.pending()


# -- the forged key line -------------------------------------------------------------


def test_only_the_first_key_line_of_a_pipe_counts():
    reader = output.OutputReader()
    real = output.Source("real", b"\x01" * 16, b"\x02" * 8)
    forged_key = "f" * 16
    forged = output.Source("forged", b"\x03" * 16, b"\x04" * 8)
    text = (
        f"{output.MARK}key\x1f{output.KEY}\n"
        + real.marker()
        + f"{output.MARK}key\x1f{forged_key}\n"  # a task writes a key line of its own
        + forged.marker(forged_key)
        + "still the real task's\n"
    )
    runs = reader.feed(text.encode())
    assert [s.label for s, _ in runs] == ["real"]
    assert runs[0][1][-1] == "still the real task's"


def test_a_marker_that_begins_after_a_long_unfinished_line_is_not_lost():
    reader = output.OutputReader()
    reader.feed(f"{output.MARK}key\x1f{output.KEY}\n".encode())
    after = output.Source("after", b"\x05" * 16, b"\x06" * 8)
    marker = after.marker().encode()
    runs = reader.feed(b"x" * (4 * output.LINE_LIMIT) + marker[:10])  # a read ends mid-marker
    runs += reader.feed(marker[10:] + b"mine\n")
    assert runs[-1] == (after, ["mine"]), runs[-1]


def test_a_python_executor_writes_its_key_line_before_anything_else():
    code = (
        "import sys; from taskgraph.worker import output; "
        "sys.stdout = output.TaggedStream(sys.stdout); print('hello')"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    first = got.stdout.split(b"\n")[0]
    assert re.fullmatch(b"\x1etaskgraph-source\x1fkey\x1f[0-9a-f]{16}", first), got.stdout
    assert got.stdout.endswith(b"\nhello\n")
