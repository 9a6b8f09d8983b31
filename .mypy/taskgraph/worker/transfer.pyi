# taskgraph.worker.transfer is worker/transfer.py (pyproject.toml: package-dir, mypy_path).
from worker.transfer import *  # noqa: F403 (the whole module, under its runtime name)
