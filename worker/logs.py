"""Reading a worker's log files, for ``taskgraph logs`` on any host of the cluster.

The daemon writes what each executor prints to ``executor-<pid>.out`` and
``.err`` in its log folder (worker/output.py), with a header line where each
task begins to print. ``read_logs`` answers one request: the files of one
process or all, the last ``tail`` lines of each (or what came after the
offsets of an earlier answer, to follow them), only one task's sections if
asked. Pure file reading, no state: the daemon calls it as requests come.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_BYTES = 1 << 20  # read from one file for one answer, at most (the newest part)
FILE = re.compile(r"executor-(\d+)\.(out|err)")
HEADER = re.compile(r"== .* task=([0-9a-f-]+) job=[0-9a-f-]+ ==")


def read_logs(
    log_dir: Path,
    pid: int = 0,
    task: str = "",
    offsets: dict[str, int] | None = None,
    tail: int = 100,
) -> list[dict[str, Any]]:
    """One entry per file: its name, the process's pid, the lines read and the
    offset to ask from next time. With ``offsets`` (a follow-up), each file named
    there is read from its offset; new files from their start."""
    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(log_dir))
    except OSError:
        return found  # nothing printed on this worker yet
    for name in names:
        match = FILE.fullmatch(name)
        if match is None or (pid and int(match.group(1)) != pid):
            continue
        path = log_dir / name
        start = (offsets or {}).get(name, 0)
        lines, end = _read(path, start, follow=offsets is not None)
        if task:
            lines = sections_of(lines, task)
        elif offsets is None and tail >= 0:
            lines = lines[-tail:] if tail else []
        found.append({"file": name, "pid": int(match.group(1)), "lines": lines, "offset": end})
    return found


def _read(path: Path, start: int, follow: bool) -> tuple[list[str], int]:
    """The whole lines from ``start`` (the last ``MAX_BYTES`` of them, when not
    following), and where the next read starts."""
    try:
        # Not through a link: a task could plant one here, named like a log file,
        # and have any client of the cluster read what it points to.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return [], 0  # a fifo or device by that name: nothing of ours
            size = f.seek(0, os.SEEK_END)
            if not 0 <= start <= size:
                start = 0  # a new file under the same name (or a bad offset)
            if not follow and size - start > MAX_BYTES:
                start = size - MAX_BYTES
            f.seek(start)
            data = f.read(MAX_BYTES)
    except OSError:
        return [], start
    whole = data[: data.rfind(b"\n") + 1]  # a line being written waits for its end
    lines = whole.decode("utf-8", "replace").split("\n")[:-1]
    if not follow and start and lines:
        lines = lines[1:]  # began mid-line
    return lines, start + len(whole)


def sections_of(lines: list[str], task: str) -> list[str]:
    """The lines printed by one task (hex id): those after its header lines."""
    kept: list[str] = []
    inside = False
    for line in lines:
        header = HEADER.fullmatch(line)
        if header is not None:
            inside = header.group(1) == task
        elif inside:
            kept.append(line)
    return kept
