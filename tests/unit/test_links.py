"""Every link (one direction of one kind of connection) decodes only its own
messages: anything else fails the whole frame with a ProtocolError, before any
of it is handled."""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec
import pytest

from taskgraph import _wire as w
from taskgraph.exceptions import ProtocolError


def every_message_type() -> list[type[w.Msg]]:
    found: list[type[w.Msg]] = []
    todo = list(w.Msg.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def minimal(tp: Any) -> Any:
    """A small valid value of type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return typing.get_args(tp)[0]
    if origin in (typing.Union, types.UnionType):
        return minimal(typing.get_args(tp)[0])
    if origin in (list, tuple, set):
        return origin()
    if origin is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, w.Msg):
        return tp(**{f.name: minimal(f.type) for f in msgspec.structs.fields(tp) if f.required})
    return {bytes: b"", str: "", int: 0, float: 0.0, bool: False}.get(tp)


MESSAGES = every_message_type()


def frame_body(*messages: w.Msg) -> bytes:
    return w.encode(list(messages))[w.HEADER.size :]


@pytest.mark.parametrize("link", w.LINKS, ids=lambda link: link.name)
def test_a_link_takes_exactly_its_messages(link: w.Link) -> None:
    for cls in MESSAGES:
        body = frame_body(minimal(cls))
        if cls in link.messages:
            [back] = link.decode(body)
            assert type(back) is cls
        else:
            with pytest.raises(ProtocolError, match=link.name):
                link.decode(body)


def test_every_top_level_message_travels_some_link() -> None:
    carried = {cls for link in w.LINKS for cls in link.messages}
    parts = {  # only ever inside other messages
        w.ActorSpec,
        w.Assignment,
        w.Location,
        w.MetricData,
        w.MetricSeries,
        w.ReturnValue,
        w.TaskResult,
        w.TaskSpec,
        w.Value,
        w.WorkerInfo,
    }
    assert carried | parts == set(MESSAGES), set(MESSAGES) - carried - parts


def test_one_wrong_message_fails_the_whole_frame() -> None:
    body = frame_body(w.Goodbye(), w.RunTasks([]))
    with pytest.raises(ProtocolError):
        w.CLIENT_TO_SCHEDULER.decode(body)


def test_a_query_names_a_known_question() -> None:
    good = msgspec.msgpack.encode([["Query", 1, "nodes"]])
    assert w.CLIENT_TO_SCHEDULER.decode(good) == [w.Query(1, "nodes")]
    bad = msgspec.msgpack.encode([["Query", 1, "everything"]])
    with pytest.raises(ProtocolError, match="everything"):
        w.CLIENT_TO_SCHEDULER.decode(bad)
