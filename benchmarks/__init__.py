"""Benchmarks: scripts that measure, and write their numbers to benchmarks/results/ (run with python -m)."""
