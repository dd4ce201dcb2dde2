"""Benchmarks: each module prints its figures and the ratio against its baseline."""
