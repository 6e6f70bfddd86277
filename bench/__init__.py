"""Benchmarks: ``churnwatch bench NAME`` (see :mod:`bench.registry`), figures in BENCHMARKS.md."""
