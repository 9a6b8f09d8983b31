"""``tg.statistics()``: how one client's tasks went and how their results came back.

Each fast path has its count here, so a test (or a user) can see which road
a task took: sent down a lease, called on an actor directly, a result handed
over by an executor on this host, read by the thread that waited for it, or
sent by the scheduler. ``Counts`` is what the client keeps as it goes;
``ClientStatistics`` the frozen snapshot it returns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of how this client's tasks ran and how their results came back."""

    tasks_submitted: int  # plain tasks (not actor calls), whichever way they went
    tasks_leased: int  # of those, sent down a lease to an executor (_leases.py)
    direct_actor_calls: int  # actor calls sent straight to the actor's process
    results_direct: int  # values handed over by an executor on this host
    results_read_in_get: int  # of those, read off their channel by the thread waiting for them
    results_via_scheduler: int  # values the scheduler sent
    values_read_again: int  # values whose copy was gone when read, then read again (lineage)
    awaiting_channels: int  # returns whose values are awaited from a channel now
    open_leases: int  # leased executors serving this client now
    direct_actors: int  # actors this client calls directly now


@dataclass(slots=True)
class Counts:
    """The counts a client keeps as it goes (under its lock)."""

    tasks_submitted: int = 0
    tasks_leased: int = 0
    direct_actor_calls: int = 0
    results_direct: int = 0
    results_read_in_get: int = 0
    results_via_scheduler: int = 0
