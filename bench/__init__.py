"""Benchmarks: end-to-end tunnel throughput (`python -m bench.tunnel`)."""
