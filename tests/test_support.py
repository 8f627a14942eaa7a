"""The shared test harness itself: eventually()'s failures say what was awaited and how far
it got, and GroupProcess starts, watches and stops a whole process group."""

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import GroupProcess, ProcessDied, http_ok, port_open
from tests.support.waiting import eventually, eventually_async
from tests.support.workers import WorkerSpares


def test_eventually_returns_the_first_truthy_value() -> None:
    answers: Iterator[object] = iter([None, 0, [], "ready"])
    assert eventually(lambda: next(answers), timeout=5, interval=0, what="an answer") == "ready"


def test_eventually_names_what_and_the_last_value_on_timeout() -> None:
    with pytest.raises(AssertionError) as failure:
        eventually(lambda: [] or None, timeout=0.05, interval=0.01, what="the queue to drain")
    assert "the queue to drain" in str(failure.value)
    assert "last value: None" in str(failure.value)


def test_eventually_retries_errors_and_reports_the_last_one() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("not listening yet")

    with pytest.raises(AssertionError, match="last error: ConnectionRefusedError") as failure:
        eventually(refused, timeout=0.05, interval=0.01, what="a listener")
    assert isinstance(failure.value.__cause__, ConnectionRefusedError)


def test_an_assertion_in_the_probe_fails_at_once() -> None:
    calls: list[int] = []

    def wrong() -> bool:
        calls.append(1)
        raise AssertionError("the task failed")

    with pytest.raises(AssertionError, match="the task failed"):
        eventually(wrong, timeout=30, what="the task")
    assert calls == [1]


async def test_eventually_async_awaits_coroutines_and_plain_checks() -> None:
    seen: list[int] = []

    async def third_time() -> int | None:
        seen.append(1)
        return len(seen) if len(seen) == 3 else None

    assert await eventually_async(third_time, timeout=5, interval=0, what="the third call") == 3
    assert await eventually_async(lambda: len(seen), timeout=1, what="a plain check") == 3
    with pytest.raises(AssertionError, match="waiting for never; last value: False"):
        await eventually_async(lambda: False, timeout=0.05, interval=0.01, what="never")


def test_a_process_that_exits_while_starting_fails_fast(tmp_path: Path) -> None:
    process = GroupProcess(
        [sys.executable, "-c", "print('bye'); raise SystemExit(3)"], stdout=tmp_path / "out.log"
    )
    with pytest.raises(ProcessDied, match="exit code 3"):
        process.wait_until(lambda: False, timeout=30, what="never")
    assert "bye" in process.logs()


def test_stop_takes_the_whole_group(tmp_path: Path) -> None:
    # A parent that ignores SIGTERM and a child that would outlive it: both must go.
    script = (
        "import signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(child.pid, flush=True); time.sleep(60)"
    )
    log = tmp_path / "group.log"
    process = GroupProcess([sys.executable, "-c", script], stdout=log)
    child = int(eventually(lambda: log.read_text().strip(), timeout=30, what="the child's pid"))
    assert process.stop(signal.SIGTERM, grace=0.5) is False  # ignored: killed after the grace
    assert process.returncode == -signal.SIGKILL
    eventually(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=10,
               what="the child to be gone")  # fmt: skip


def test_readiness_checks_answer_no_when_nothing_listens() -> None:
    assert port_open(1) is False
    assert http_ok("http://127.0.0.1:1/health") is False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_spare_serves_app_settings_only() -> None:
    """A spare imported before it knew its environment: a variable read at import (not an app
    setting, which Settings() reads when the command runs) must get a worker started cold."""
    assert WorkerSpares.serves({"DATABASE_URL": "postgresql+asyncpg://x/y", "LOG_LEVEL": "INFO"})
    assert not WorkerSpares.serves({"LOG_LEVEL": "INFO", "PYTHONPATH": "/elsewhere"})
    assert not WorkerSpares.serves({"PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics"})
