# taskgraph.worker.store is worker/store.py (pyproject.toml: package-dir, mypy_path).
from worker.store import *  # noqa: F403 (the whole module, under its runtime name)
