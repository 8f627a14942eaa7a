"""Bench scripts run as `python bench/NAME.py`, which puts bench/ first on sys.path: a script
named like a standard-library module (bench/email.py once did) breaks every other script that
imports it, indirectly, through pydantic."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_no_bench_script_shadows_a_standard_library_module() -> None:
    names = {path.stem for path in BENCH.glob("*.py")}
    assert names, "no bench scripts found"
    assert not names & set(sys.stdlib_module_names)
