"""Benchmarks of ddfp-jax components (run with `python -m benchmarks.<name>` from the repo root)."""
