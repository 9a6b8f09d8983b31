"""A channel lost before its reading thread first runs (a thread in get() read its
end meanwhile, and closed it) leaves that thread nothing to do: it ends, closing
its wake-up pipe, instead of dying on the closed socket (seen under load, where
the thread starts late: ``ValueError: file descriptor cannot be a negative
integer``)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from taskgraph import _channels
from taskgraph._channels import Channel


class LateThread:
    """A thread that starts only when the test says (the scheduler's load, played)."""

    started: list[Callable[[], None]] = []

    def __init__(self, target: Callable[[], None], name: str, daemon: bool) -> None:
        self.target = target

    def start(self) -> None:
        LateThread.started.append(self.target)


def test_a_channel_lost_before_its_thread_ran_is_read_by_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fds = psutil.Process().num_fds()
    monkeypatch.setattr(_channels.threading, "Thread", LateThread)
    LateThread.started.clear()
    ours, theirs = socket.socketpair()
    told: list[str] = []
    client: Any = SimpleNamespace(
        channel_lost=lambda oids: told.append("client: lost"),
        channel_gone=lambda channel: told.append("client: gone"),
    )
    owner: Any = SimpleNamespace(channel_lost=lambda channel: told.append("owner: lost"))
    channel = Channel(client, b"\x01" * 16, ours, owner)
    channel.start(bytearray())
    theirs.close()
    channel.lost()  # what a thread in get() does on reading the end
    assert told == ["client: gone", "owner: lost"]

    (read,) = LateThread.started
    read()  # the reading thread, late: nothing to read, and nothing raised

    assert psutil.Process().num_fds() == fds, "its socket and wake-up pipe are closed"
