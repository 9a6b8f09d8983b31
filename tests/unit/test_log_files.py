"""Reading a worker's log files (worker/logs.py): tails, one task's lines, following."""

from __future__ import annotations

from pathlib import Path

from taskgraph.worker.logs import read_logs, sections_of

A, B = "aa" * 16, "bb" * 16


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    with open(path, "a") as f:
        f.write(text)
    return path


def test_no_folder_yet_is_no_files(tmp_path):
    assert read_logs(tmp_path / "missing") == []


def test_the_tail_of_each_file_with_its_pid_and_other_files_ignored(tmp_path):
    write(tmp_path, "executor-12.out", "".join(f"line {i}\n" for i in range(10)))
    write(tmp_path, "executor-12.err", "oops\n")
    write(tmp_path, "notes.txt", "not a log\n")
    files = read_logs(tmp_path, tail=3)
    assert [(f["file"], f["pid"], f["lines"]) for f in files] == [
        ("executor-12.err", 12, ["oops"]),
        ("executor-12.out", 12, ["line 7", "line 8", "line 9"]),
    ]
    assert read_logs(tmp_path, pid=13) == []
    assert [f["lines"] for f in read_logs(tmp_path, tail=0)] == [[], []]


def test_one_tasks_lines_are_those_under_its_headers(tmp_path):
    write(
        tmp_path,
        "executor-5.out",
        f"== f task={A} job=01 ==\na1\n== g task={B} job=01 ==\nb1\n== f task={A} job=01 ==\na2\n",
    )
    [entry] = read_logs(tmp_path, task=A)
    assert entry["lines"] == ["a1", "a2"]
    assert sections_of(["x", f"== g task={B} job=- ==", "y"], B) == ["y"]


def test_following_reads_only_what_came_after_and_a_line_being_written_waits(tmp_path):
    path = write(tmp_path, "executor-7.out", "one\ntwo\nthree-part")
    [first] = read_logs(tmp_path, tail=10)
    assert first["lines"] == ["one", "two"]
    write(tmp_path, "executor-7.out", "ial\nfour\n")
    write(tmp_path, "executor-7.err", "new file\n")
    later = read_logs(tmp_path, offsets={first["file"]: first["offset"]})
    assert {f["file"]: f["lines"] for f in later} == {
        "executor-7.err": ["new file"],
        "executor-7.out": ["three-partial", "four"],
    }
    again = read_logs(tmp_path, offsets={f["file"]: f["offset"] for f in later})
    assert [f["lines"] for f in again] == [[], []]
    path.write_text("replaced\n")  # a new file under the same name, shorter
    [entry] = read_logs(tmp_path, pid=7, offsets={"executor-7.out": 10_000})[1:]
    assert entry["lines"] == ["replaced"]


def test_a_file_larger_than_one_answer_shows_its_newest_whole_lines(tmp_path, monkeypatch):
    import taskgraph.worker.logs as logs

    monkeypatch.setattr(logs, "MAX_BYTES", 20)
    write(tmp_path, "executor-9.out", "".join(f"line {i:02}\n" for i in range(10)))
    [entry] = read_logs(tmp_path, tail=100)
    assert entry["lines"] == ["line 08", "line 09"]
