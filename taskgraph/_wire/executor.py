"""Messages of an executor: with its worker daemon, and with a client over a channel.

An executor runs the tasks its daemon hands it (``Execute``) and reports each
(``Executed``; small reports of channel tasks through the report pipe,
``worker/reports.py``); its client's messages ride on the same stream
(``client.py``). A channel is a connection an executor opens to a client on
its host, to run that client's tasks straight away (``taskgraph/_channels.py``).
"""

from __future__ import annotations

from .common import Location, Msg, TaskResult, TaskSpec
from .worker import Assignment

# -- executor <-> worker daemon ----------------------------------------------


class Fetch(Msg):
    """Executor to its daemon: bring this object from another host into our store."""

    request_id: int
    object_id: bytes
    location: Location


class Fetched(Msg):
    request_id: int
    location: Location | None = None
    error: str = ""


class Execute(Msg):
    assignment: Assignment


class Executed(Msg):
    result: TaskResult


class Returned(Msg):
    """Executor to daemon: tasks it was handed but will not start, because the task
    it runs is blocked in get(); the daemon queues them again."""

    task_ids: list[bytes]


class ActorEnding(Msg):
    """Executor to its daemon, last on its stream: the actor ends on purpose
    (``exit_actor()``, ``__taskgraph_terminate__``, ``sys.exit(0)``, its last
    handle gone), so the exit that follows is not a crash and never restarts it.
    An exit without it is a crash, even with exit code 0."""

    reason: str


class CancelTask(Msg):
    """Daemon to executor: cancel this task, whether it waits there or runs."""

    task_id: bytes
    force: bool = False


class AfterFrames(Msg):
    """Opens each frame of an executor's report pipe: the frames it had sent on its
    stream before (worker/reports.py)."""

    count: int


# -- a client <-> an executor serving it (channels: taskgraph/_channels.py) ----


class ChannelReady(Msg):
    """Executor to client, first on the connection it opens back to the client: it
    serves channel ``channel_id`` (a lease's task id, or an actor's id)."""

    channel_id: bytes


class ChannelTask(Msg):
    """Client to executor: run this task or actor call (answered with ``DirectResult``).
    ``function`` is the task's code, the first time this channel runs it."""

    spec: TaskSpec
    function: bytes = b""


class DirectResult(Msg):
    """A channel task's result, straight from the executor that ran (and reports)
    it. ``via_scheduler``: the values are not in it (their returns hold refs):
    ask the scheduler for them."""

    result: TaskResult
    via_scheduler: bool = False


class LeaseEnding(Msg):
    """Executor to client, on a lease: idle a while (or ``revoked``: the scheduler
    wants the resources back), the lease ends; the client closes its side
    (after it, nothing more is sent), and what it sent before still runs."""

    revoked: bool = False
