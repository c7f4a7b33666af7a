"""Benchmarks: ``python -m bench.fanout`` (see BENCHMARKS.md)."""
