"""Benchmarks of training, inference and serving; run each from the repository root as ``python -m benchmarks.<name>``."""
