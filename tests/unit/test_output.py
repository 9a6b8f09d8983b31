"""What tasks print: tagged in the executor, split into lines by the daemon, folded in the driver."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from taskgraph import _wire as w
from taskgraph._output import Folder
from taskgraph.worker import output
from taskgraph.worker.output import NOBODY, OutputReader, Source, TaggedStream


def spec(
    name: str, task_id: bytes, job: bytes = b"", actor: w.ActorSpec | None = None
) -> w.TaskSpec:
    return w.TaskSpec(task_id, b"", name, b"", [], job=job, actor=actor)


class Pipe(io.StringIO):
    """A text stream that can be reconfigured, as an executor's stdout can."""

    def reconfigure(self, **kwargs: object) -> None:
        pass


def tagged_writes(writes: list[tuple[w.TaskSpec | None, str]]) -> str:
    pipe = Pipe()
    stream = TaggedStream(pipe)
    try:
        for task, text in writes:
            output.task = task
            stream.write(text)
    finally:
        output.task = None
    return pipe.getvalue()


KEY_LINE = f"{output.MARK}key\x1f{output.KEY}\n"  # first, before any task's text


A = spec("square", b"\x01" * 16)
B = spec("cube", b"\x02" * 8 + b"\x03" * 8, job=b"\x09" * 8)


def test_a_marker_goes_before_the_first_text_of_each_task_and_only_then() -> None:
    text = tagged_writes([(A, "one\n"), (A, "two\n"), (B, "three\n")])
    assert text == KEY_LINE + (
        output.source_of(A).marker() + "one\ntwo\n" + output.source_of(B).marker() + "three\n"
    )


def test_a_task_that_prints_nothing_writes_no_marker() -> None:
    assert tagged_writes([(A, ""), (B, "x\n")]) == KEY_LINE + output.source_of(B).marker() + "x\n"


def test_a_marker_after_an_unfinished_line_starts_a_line_of_its_own() -> None:
    text = tagged_writes([(A, "no newline"), (B, "next\n")])
    assert (
        text
        == KEY_LINE
        + output.source_of(A).marker()
        + "no newline\n"
        + output.source_of(B).marker()
        + "next\n"
    )


def test_the_source_names_the_task_its_job_and_an_actor_by_class_and_name() -> None:
    assert output.source_of(A) == Source("square", A.task_id, A.task_id[:8])
    assert output.source_of(B).job == b"\x09" * 8, "a task's task works for the driver named"
    creation = spec("Counter.__init__", b"\x04" * 16, actor=w.ActorSpec("Counter", {}, name="c1"))
    assert output.source_of(creation).label == "Counter[c1]"
    unnamed = spec("Counter.__init__", b"\x04" * 16, actor=w.ActorSpec("Counter", {}))
    assert output.source_of(unnamed).label == "Counter"
    assert output.source_of(None) is NOBODY


def test_the_reader_gives_each_line_with_whoever_printed_it() -> None:
    text = tagged_writes([(None, "starting\n"), (A, "a1\na2\n"), (B, "b1\n")])
    runs = OutputReader().feed(text.encode())
    assert runs == [
        (NOBODY, ["starting"]),
        (output.source_of(A), ["a1", "a2"]),
        (output.source_of(B), ["b1"]),
    ]


def test_a_line_split_across_reads_comes_whole_and_the_rest_comes_at_close() -> None:
    reader = OutputReader()
    assert reader.feed(b"hel") == []
    assert reader.feed(b"lo\nwor") == [(NOBODY, ["hello"])]
    assert reader.close() == [(NOBODY, ["wor"])]


def test_a_very_long_line_is_cut_into_pieces() -> None:
    limit = output.LINE_LIMIT
    [(_, lines)] = OutputReader().feed(b"x" * (2 * limit + 5) + b"\n")
    assert [len(line) for line in lines] == [limit, limit, 5]


def test_text_that_only_looks_like_a_marker_is_an_ordinary_line() -> None:
    fake = output.MARK + "not hex\x1fat all\x1fname\n"
    assert OutputReader().feed(fake.encode()) == [(NOBODY, [fake[:-1]])]


@given(
    st.lists(st.tuples(st.sampled_from([None, A, B]), st.text(max_size=40)), max_size=20), st.data()
)
def test_whatever_is_printed_and_however_it_is_read_the_lines_come_back(writes, data) -> None:
    """Split into reads at any points, the reader gives back exactly the lines
    written (markers removed), each with the task that wrote it."""
    writes = [(t, text.replace("\x1e", " ")) for t, text in writes]  # (a marker starts so)
    raw = tagged_writes(writes).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    reader = OutputReader()
    runs = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        runs += reader.feed(raw[start:end])
    runs += reader.close()
    got = [(source.label, line) for source, lines in runs for line in lines]
    want: list[tuple[str, str]] = []
    open_line: tuple[str, str] | None = None
    marked = False
    last = None
    for task, text in writes:
        if not text:
            continue
        if not marked or task is not last:
            if open_line is not None:
                want.append(open_line)
                open_line = None
            marked, last = True, task
        label = output.source_of(task).label
        pieces = text.split("\n")
        if open_line is not None:
            pieces[0] = open_line[1] + pieces[0]
        for piece in pieces[:-1]:
            want.append((label, piece))
        open_line = (label, pieces[-1]) if pieces[-1] else None
    if open_line is not None:
        want.append(open_line)
    assert got == want


# -- folding in the driver -------------------------------------------------------------


def test_the_same_line_from_other_processes_folds_into_one_count() -> None:
    folder = Folder(window=5)
    assert folder.take(0.0, 1, "loading", ("n", 1), "(f pid=1)")
    assert not folder.take(0.1, 1, "loading", ("n", 2), "(f pid=2)")
    assert not folder.take(0.2, 1, "loading", ("m", 1), "(f pid=1)"), "same pid, other node"
    assert folder.due(4.9) == []
    assert folder.due(5.0) == [(1, "(f pid=1) loading [repeated 2x across the cluster]")]
    assert folder.due(10.0) == [], "told once"


def test_a_process_repeating_itself_is_always_shown() -> None:
    folder = Folder(window=5)
    assert all(folder.take(t / 10, 1, "tick", ("n", 1), "(f pid=1)") for t in range(20))
    assert folder.due(100.0) == []


def test_stdout_and_stderr_fold_apart_and_a_new_window_shows_the_line_again() -> None:
    folder = Folder(window=5)
    assert folder.take(0.0, 1, "x", ("n", 1), "p")
    assert folder.take(0.0, 2, "x", ("n", 2), "p"), "stderr is another line"
    assert not folder.take(1.0, 1, "x", ("n", 3), "p")
    assert folder.take(6.0, 1, "x", ("n", 3), "p"), "after the window, shown again"


def test_a_window_of_zero_shows_every_line() -> None:
    folder = Folder(window=0)
    assert all(folder.take(0.0, 1, "same", ("n", pid), "p") for pid in range(5))


def test_leaving_shows_what_is_still_folded() -> None:
    folder = Folder(window=5)
    folder.take(0.0, 2, "warn", ("n", 1), "(g pid=1)")
    folder.take(0.0, 2, "warn", ("n", 2), "(g pid=2)")
    assert folder.pending()
    assert folder.flush() == [(2, "(g pid=1) warn [repeated 1x across the cluster]")]
    assert not folder.pending()
