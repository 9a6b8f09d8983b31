"""taskgraph's benchmark suite: ``python -m benchmarks`` (see benchmarks/README.md).

Each benchmark warms up, then times several repetitions and reports their
median and spread. With ``--vs ray,dask`` the same workloads run on Ray and
Dask in the same run, each system in a process of its own, and the table
shows how many times better taskgraph is. Ray and Dask are never taskgraph's
dependencies: install them in a separate environment (see the README).
"""
