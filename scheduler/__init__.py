"""The scheduler, imported as ``taskgraph.scheduler``: its pure state machine
(``state.py`` and the modules beside it), its Tornado shell (``server.py``),
the dashboard, and the ``taskgraph-scheduler`` command (``cli.py``)."""
