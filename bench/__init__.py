"""Reproducible benchmarks; ``make bench`` runs :mod:`bench.run` and writes BENCHMARKS.md."""
