"""Benchmarks (scripts, never timed tests): ``python -m dge_explain.bench.ops``."""
