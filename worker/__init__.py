"""The worker, imported as ``taskgraph.worker``: the daemon of one host (its pure
state machine ``state.py``, its shell ``daemon.py``), the object store, the
executor and actor processes, peer transfer, and the ``taskgraph-worker``
command (``cli.py``)."""
