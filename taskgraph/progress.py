"""``tg.progress``: a progress bar for refs, or for anything that yields them.

Two forms, told apart by what is given:

- a list or tuple of ``ObjectRef``\\s (or one ref) is *waited for*, as dask's
  ``progress(futures)``: ``tg.wait`` in rounds moves the bar as each finishes,
  and the refs come back, so ``tg.get(tg.progress(refs))`` works;
- any other iterable (``tg.as_completed(refs)``, a streaming generator's refs,
  a ``range``) is *wrapped*, as tqdm wraps: each item is yielded as it comes.

A finished ref whose task raised counts as failed. Its value is never fetched:
the client already knows whether what arrived is an error. Where it shows:

- a notebook (an IPython kernel): tqdm's widget when ipywidgets is installed,
  else the text line below;
- a terminal (the stream is a TTY): a tqdm bar on stderr;
- anything else (a log file, a pipe, CI): no bar, one line at the end,
  ``7/7 done, 1 failed``.

This module only watches: it submits nothing and changes no ref.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar, overload

from taskgraph import _api
from taskgraph._object_ref import ObjectRef

T = TypeVar("T")
FAILED = "{} failed"
TICK = 0.25  # seconds between redraws of a terminal bar while nothing finishes
Refs = TypeVar("Refs", list[ObjectRef], tuple[ObjectRef, ...])


@overload
def progress(
    items: ObjectRef, *, desc: str = "", total: int | None = None, file: IO[str] | None = None
) -> ObjectRef: ...
@overload
def progress(  # type: ignore[overload-overlap]  # a list of refs is waited for, not wrapped
    items: Refs, *, desc: str = "", total: int | None = None, file: IO[str] | None = None
) -> Refs: ...
@overload
def progress(
    items: Iterable[T], *, desc: str = "", total: int | None = None, file: IO[str] | None = None
) -> Iterator[T]: ...
def progress(
    items: object, *, desc: str = "", total: int | None = None, file: IO[str] | None = None
) -> object:
    """Show how many of ``items`` are done and how many failed.

    ``tg.progress(refs)`` (a list or tuple of refs, or one ref) waits until every
    task is done, successfully or not, and returns ``refs``. ``tg.progress(it)``
    for any other iterable yields its items as they come; ``total`` defaults to
    ``len(it)`` where there is one (``as_completed`` and generators have none:
    pass ``total=len(refs)``). ``desc`` labels the bar; ``file`` is where text
    goes (default ``sys.stderr``; given a file, no notebook widget).
    """
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a whole number >= 0 or None, got {total!r}")
    refs = _refs_in(items)  # an empty list too: tg.get(tg.progress([])) is []
    if refs is not None:
        if total is not None:
            raise TypeError("progress(refs) counts the refs given; total= is for iterators")
        _wait_all(refs, _Display.open(desc, len(refs), "task", file))
        return items
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise TypeError(
            "progress() takes an ObjectRef, a list of ObjectRefs (to wait for them) or an "
            f"iterable such as tg.as_completed(refs) (to loop over it), got {type(items).__name__}"
        )
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]  # (an Iterable may be Sized too)
        except TypeError:
            pass
    return _wrap(iter(items), _Display.open(desc, total, "it", file))


def _refs_in(items: object) -> list[ObjectRef] | None:
    """The refs to wait for, or None when ``items`` is to be looped over instead."""
    if isinstance(items, ObjectRef):
        return [items]
    if not isinstance(items, list | tuple):
        return None
    if items and not any(isinstance(i, ObjectRef) for i in items):
        return None  # a list of other things: counted as the loop takes them
    for i, item in enumerate(items):
        if not isinstance(item, ObjectRef):
            raise TypeError(
                f"progress() was given a {type(items).__name__} of ObjectRefs whose item {i} "
                f"is {item!r}, not an ObjectRef: pass only refs (to wait for them) or no refs "
                "at all (to count the items as you loop over them)"
            )
    return list(items)


def _wait_all(refs: list[ObjectRef], display: _Display) -> None:
    """Wait for every ref, moving the display as each finishes."""
    copies = Counter(refs)  # a ref given twice counts twice, as it is listed
    pending = list(copies)
    try:
        while pending:
            ready, pending = _api.wait(pending, num_returns=1, timeout=display.tick)
            if not ready:
                # tqdm draws only when counting (at most every 0.1 s): with nothing
                # counted, its clock and its last count would stand still.
                display.redraw()
                continue
            if pending:  # whatever else has finished by now counts in this round
                more, pending = _api.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for ref in ready:
                display.count(copies[ref], _failed(ref))
    finally:
        display.close()


def _wrap(items: Iterator[T], display: _Display) -> Iterator[T]:
    try:
        for item in items:
            display.count(1, isinstance(item, ObjectRef) and _failed(item))
            yield item
    finally:
        display.close()


def _failed(ref: ObjectRef) -> bool:
    """Whether the ref's task ended in an error, from what has arrived (nothing is fetched).

    False while the ref is not done: an iterator may yield refs still running.
    """
    client = _api.current_client()
    value = client.peek(ref.id) if client is not None else None
    return value is not None and value.error is not None


class _Display:
    """Counts done and failed; shows them as a tqdm bar, a widget, or one line at the end."""

    def __init__(self, desc: str, total: int | None, file: IO[str], bar: Any) -> None:
        self.desc = desc
        self.total = total
        self.file = file
        self.bar = bar  # a tqdm (terminal or notebook), or None: the line at close
        self.done = 0
        self.failed = 0
        self.closed = False

    @classmethod
    def open(cls, desc: str, total: int | None, unit: str, file: IO[str] | None) -> _Display:
        stream = sys.stderr if file is None else file
        bar: Any = None
        if file is None and _in_notebook() and _has_widgets():
            bar = _bar_class(notebook=True)(
                total=total, desc=desc, unit=unit, postfix=FAILED.format(0)
            )
        elif _is_tty(stream):
            bar = _bar_class(notebook=False)(
                total=total,
                desc=desc,
                unit=unit,
                file=stream,
                dynamic_ncols=True,
                postfix=FAILED.format(0),
            )
        return cls(desc, total, stream, bar)

    @property
    def tick(self) -> float | None:
        """How long to wait for the next ref before redrawing (None: no bar to redraw)."""
        return TICK if self.bar is not None else None

    def count(self, n: int, failed: bool) -> None:
        self.done += n
        if failed:
            self.failed += n
            if self.bar is not None:
                self.bar.set_postfix_str(FAILED.format(self.failed), refresh=False)
                self.bar.colour = "red"  # as dask's bar shows erred tasks
        if self.bar is not None:
            self.bar.update(n)

    def redraw(self) -> None:
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            return
        print(self.line(), file=self.file, flush=True)

    def line(self) -> str:
        """``7/7 done, 1 failed`` (``7 done, 1 failed`` with no total); done includes failed."""
        label = f"{self.desc}: " if self.desc else ""
        of = f"/{self.total}" if self.total is not None else ""
        return f"{label}{self.done}{of} done, {FAILED.format(self.failed)}"


@functools.cache
def _bar_class(notebook: bool) -> Any:
    """tqdm's bar (or its notebook widget) without the monitor thread tqdm starts
    with the first bar and keeps for good: it tunes redraws of tight loops, and
    counting tasks is not one."""
    if notebook:
        from tqdm.notebook import tqdm as base
    else:
        from tqdm import tqdm as base
    return type("ProgressBar", (base,), {"monitor_interval": 0})


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (imports nothing that is not loaded yet)."""
    ipython = sys.modules.get("IPython")
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if ipython is None or zmqshell is None:
        return False
    return isinstance(ipython.get_ipython(), zmqshell.ZMQInteractiveShell)


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401 - tqdm's notebook bar is made of them
    except ImportError:
        return False
    return True
