"""Benchmarks: `python -m bench.<name> [--json]`. Ratios against a baseline run in the
same go; never asserted by tests (the machine is shared and noisy)."""
