"""Benchmarks behind DESIGN's performance targets: pure, importable functions returning figures.

Nothing under ``router/`` imports this package; benchmarks import the router, never the reverse.
"""
