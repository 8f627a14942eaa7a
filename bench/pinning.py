"""Pinning: the server on one core, wrk on the others, as the issue's measurements were taken.

Without it the scheduler moves the server and wrk around the same cores, and a server's CPU
per request then includes cache misses and migrations that have nothing to do with its code.
`taskset` wraps the command, so every process under it (uv, Python, `--workers` children)
inherits the affinity.
"""

import dataclasses
import os
import shutil
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs the servers and wrk may use; empty tuples mean "not pinned"."""

    server_cpus: tuple[int, ...] = ()
    wrk_cpus: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.server_cpus)

    def server(self, command: Sequence[str]) -> list[str]:
        return _taskset(self.server_cpus, command)

    def wrk(self, command: Sequence[str]) -> list[str]:
        return _taskset(self.wrk_cpus, command)

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "server_cpus": list(self.server_cpus),
            "wrk_cpus": list(self.wrk_cpus),
            "tool": "taskset" if self.enabled else None,
        }


NO_PINNING = Pinning()


def _taskset(cpus: tuple[int, ...], command: Sequence[str]) -> list[str]:
    if not cpus:
        return list(command)
    return ["taskset", "--cpu-list", ",".join(map(str, cpus)), *command]


def available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def default_pin() -> bool:
    return len(available_cpus()) >= 2 and shutil.which("taskset") is not None


def choose(pin: bool) -> Pinning:
    """The last allowed CPU for the servers (one core, as `app api` is one process), the rest
    for wrk. Redis and the bench itself stay unpinned: they are what the machine also runs."""
    cpus = available_cpus()
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return NO_PINNING
    return Pinning(server_cpus=(cpus[-1],), wrk_cpus=tuple(cpus[:-1]))
