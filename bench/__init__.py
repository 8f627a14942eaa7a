"""Benchmarks, run as modules (`uv run python -m bench.run`) or as scripts (`python bench/run.py`).

They share tests.support's process harness (free ports, process groups, Redis/PostgreSQL
servers) with the test suite.
"""
