"""pytest-benchmark microbenchmarks of the hot paths (make bench-micro)."""
