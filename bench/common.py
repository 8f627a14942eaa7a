"""What every part of the load benchmark shares: paths, the loopback host, progress lines on
stderr, the error that stops a run, log tails."""

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
LOG_NOTABLE_LINES = 40  # log lines above INFO (or not JSON) kept in the report


class BenchError(Exception):
    """The run cannot go on; the message says why."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def log_tail(path: Path, lines: int = LOG_NOTABLE_LINES) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]
