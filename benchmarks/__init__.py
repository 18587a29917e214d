"""Benchmark scripts (run as files: python benchmarks/NAME.py); a package only so the layer contracts see them."""
