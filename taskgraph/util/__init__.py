"""Helpers users reach for by name, as in Ray: ``taskgraph.util.scheduling_strategies``."""
