"""Bench scripts run as modules (`python -m bench.run`) and as scripts (`python bench/run.py`).

As a script, bench/ comes first on sys.path: each script swaps it for the repository root
before importing (bench.*, tests.support), and no module in bench/ may be named like a
standard-library module (bench/email.py once broke every script through pydantic).
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SHIM = "sys.path[0] = str(Path(__file__).resolve().parents[1])"


def _scripts() -> list[Path]:
    """Scripts that import from the repository (bare_app.py, the ceiling, imports none)."""
    return sorted(
        path
        for path in BENCH.glob("*.py")
        if 'if __name__ == "__main__":' in (text := path.read_text())
        and ("\nfrom bench." in text or "\nfrom tests." in text)
    )


def test_no_bench_module_shadows_a_standard_library_module() -> None:
    names = {path.stem for path in BENCH.glob("*.py")}
    assert names, "no bench modules found"
    assert not names & set(sys.stdlib_module_names)


def test_every_script_puts_the_repository_root_on_the_path() -> None:
    scripts = _scripts()
    assert len(scripts) >= 5, scripts
    assert [p.name for p in scripts if SHIM not in p.read_text()] == []


@pytest.mark.parametrize(
    "command",
    [["bench/run.py", "--help"], ["-m", "bench.run", "--help"]],
    ids=["script", "module"],
)
def test_bench_run_starts_both_ways(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--only" in result.stdout
