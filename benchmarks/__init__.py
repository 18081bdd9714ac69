"""Benchmarks of the fused encoder against its peers; see README.md."""
