# taskgraph.scheduler.feed is scheduler/feed.py (pyproject.toml: package-dir, mypy_path).
from scheduler.feed import *  # noqa: F403 (the whole module, under its runtime name)
