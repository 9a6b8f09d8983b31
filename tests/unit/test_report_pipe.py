"""The report pipe (worker/reports.py): reports come out whole, in the executor's
order, and never before the stream frames the executor sent ahead of them."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import ProtocolError
from taskgraph.worker.reports import ATOMIC, ReportReader, ReportWriter


@pytest.fixture
def ends() -> Iterator[tuple[ReportWriter, ReportReader, BlockingConnection, socket.socket]]:
    """A writer on a real pipe whose stream is one end of a socket pair."""
    read_fd, write_fd = os.pipe()
    ours, theirs = socket.socketpair()
    conn = BlockingConnection(ours)
    conn.send([w.Goodbye()])  # the handshake's frame: not counted
    writer, reader = ReportWriter(write_fd, conn), ReportReader(read_fd)
    yield writer, reader, conn, theirs
    conn.close()
    theirs.close()
    if writer.fd >= 0:
        os.close(writer.fd)
    reader.close()


def report(n: int, size: int = 8) -> w.Executed:
    value = w.ReturnValue(n.to_bytes(16, "big"), data=bytes(size))
    return w.Executed(w.TaskResult(n.to_bytes(16, "big"), returns=[value]))


def ids(msgs: list[w.Executed]) -> list[int]:
    return [int.from_bytes(m.result.task_id, "big") for m in msgs]


def test_reports_wait_for_the_stream_frames_sent_before_them(ends) -> None:
    writer, reader, conn, _ = ends
    assert writer.write(report(1))  # after no frame
    conn.send([w.Goodbye()])
    assert writer.write(report(2))  # after one
    conn.send([w.Goodbye()])
    conn.send([w.Goodbye()])
    assert writer.write(report(3))  # after three
    reader.read()
    assert ids(reader.due()) == [1]
    assert reader.waiting()
    reader.frames = 2
    assert ids(reader.due()) == [2], "report 3 follows the third frame"
    reader.frames = 3
    assert ids(reader.due()) == [3]
    assert not reader.waiting() and reader.due() == []


def test_a_report_split_across_reads_comes_out_whole(ends) -> None:
    writer, reader, _, _ = ends
    many = [report(i, size=200) for i in range(300)]  # more than one read's worth
    for msg in many:
        assert writer.write(msg)
        reader.read()  # reads whatever has arrived, whole frames or not
    reader.read()
    assert ids(reader.due()) == list(range(300))


def test_a_report_too_large_to_write_whole_is_refused(ends) -> None:
    writer, reader, _, _ = ends
    assert not writer.write(report(1, size=ATOMIC))
    reader.read()
    assert reader.due() == [] and not reader.waiting()


def test_what_a_dead_writer_left_is_all_handed_over(ends) -> None:
    writer, reader, conn, _ = ends
    conn.send([w.Goodbye()])
    assert writer.write(report(7))
    os.close(writer.fd)
    writer.fd = -1  # (the fixture must not close it again)
    reader.read()
    assert reader.closed, "the writer's end is closed: nothing more will come"
    assert reader.due() == []
    assert ids(reader.due(everything=True)) == [7]
    assert not writer.write(report(8)), "a writer without its pipe sends on the stream"


def test_frames_are_split_whole_and_a_partial_one_waits() -> None:
    one, two = w.encode([w.Goodbye()]), w.encode([w.Goodbye(), w.Goodbye()])
    buffer = bytearray(one + two + two[:5])
    assert [len(f) for f in w.take_frames(buffer, w.CLIENT_TO_SCHEDULER)] == [1, 2]
    assert buffer == two[:5], "the partial frame stays"
    buffer += two[5:]
    assert [len(f) for f in w.take_frames(buffer, w.CLIENT_TO_SCHEDULER)] == [2] and not buffer


def test_a_pipe_frame_without_its_count_is_refused() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, w.encode([report(1)]))
        bad = ReportReader(read_fd)
        with pytest.raises(ProtocolError, match="AfterFrames"):
            bad.read()
    finally:
        os.close(write_fd)
        os.close(read_fd)


def test_a_writer_whose_reader_went_away_sends_on_the_stream(ends) -> None:
    writer, reader, _, _ = ends
    write_fd = writer.fd
    reader.close()
    assert not writer.write(report(1)), "the pipe is broken: the stream takes it"
    assert writer.fd == -1 and not writer.write(report(2)), "and every one after"
    os.close(write_fd)
    reader.fd = os.open(os.devnull, os.O_RDONLY)  # (the fixture closes it again)
