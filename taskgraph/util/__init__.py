"""Helpers users reach for by name, as in Ray: ``taskgraph.util.scheduling_strategies``."""

from taskgraph.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
