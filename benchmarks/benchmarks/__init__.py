"""asv benchmarks for flowsolve (numpy/scipy layout).

Run from `benchmarks/`: `asv run --python=same --quick` benchmarks the current
environment without building one. Modules do no JAX work at import time: x64 is
switched on, data are built and programs compiled in each benchmark's `setup`.
"""
