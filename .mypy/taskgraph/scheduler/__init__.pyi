# mypy checks scheduler/ as the package scheduler; Python imports it as taskgraph.scheduler
# (pyproject.toml: package-dir). These stubs name each module of it that
# taskgraph/ imports, re-exported from scheduler/ as mypy checks it, so those imports
# are typed. A module imported without one here fails the type check.
# mypy's cache may remember a stub as missing after it is added: rm -rf .mypy_cache.
