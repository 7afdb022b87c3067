"""h2pool's benchmarks.

* ``python -m bench.criteria`` measures the project's performance criteria
  against a local TLS HTTP/2 server (or ``--url``) and prints one table;
  ``--peers`` compares with httpx, aiohttp and h2load on the same server.
* ``bench/micro`` holds pytest-benchmark microbenchmarks of the hot paths,
  with no sockets (``make bench-micro``).
"""
