"""How busy the machine was during a run: the CPU the rest of the machine took (everything
outside our process groups), from /proc, and the load average."""

import contextlib
import dataclasses
import os
import resource
import time
from pathlib import Path

from bench.wrk import WrkResult

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Process groups of the servers this run started (each has its own, see `serving`); with our
# own group and our reaped children (wrk), that is "us". Everything else is "the machine".
OUR_GROUPS: set[int] = set()


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with Path("/proc/stat").open() as stat:
        fields = [int(n) for n in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _group_ticks(groups: set[int]) -> int:
    """utime+stime clock ticks of every live process whose process group is in `groups`."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
        if int(fields[2]) in groups:  # pgrp, field 5
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    return ticks


def _our_cpu_seconds() -> float:
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
    ticks = _group_ticks(OUR_GROUPS | {os.getpgrp()})
    return ticks / CLOCK_TICKS + reaped.ru_utime + reaped.ru_stime


# Quiet enough to start a run: the whole machine busy less than this many cores' worth.
SETTLE_BUSY_CORES = 0.3
SETTLE_WINDOW_S = 0.2  # measured over this long, again until quiet
SETTLE_MAX_S = 15.0


def settle() -> float | None:
    """Wait until the machine is quiet and return how long that took (None: it wasn't within
    SETTLE_MAX_S, and the run goes ahead; its other_cpu_cores tells how busy it was). What a
    run leaves behind is not over when wrk stops: requests a server still has queued, and the
    queries PostgreSQL is still running for them (a listing's count over a large table took
    0.5 s each, and they ran into the next endpoint's run, whose p99 it made 0.56 s)."""
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_MAX_S:
        try:
            before, at = _busy_cpu_seconds(), time.monotonic()
        except (OSError, ValueError):  # no /proc: not Linux, nothing to wait for
            return None
        time.sleep(SETTLE_WINDOW_S)  # the window the machine's CPU is measured over
        busy_cores = (_busy_cpu_seconds() - before) / (time.monotonic() - at)
        if busy_cores < SETTLE_BUSY_CORES:
            return round(time.monotonic() - start, 2)
    return None


def group_cpu_seconds(pgrp: int) -> float | None:
    """utime+stime of every live process in process group `pgrp` (a server and the workers
    under it), from /proc; None without /proc. A process that exits between two readings
    takes its CPU with it, so read it only around a run during which none should exit."""
    try:
        return _group_ticks({pgrp}) / CLOCK_TICKS
    except OSError:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Enough to tell, after a run, how much CPU other work on the machine took during it."""

    wall: float
    busy: float | None
    ours: float | None
    loadavg_1m: float

    @classmethod
    def take(cls) -> "CpuSnapshot":
        busy: float | None = None
        ours: float | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):  # no /proc: not Linux
            busy, ours = _busy_cpu_seconds(), _our_cpu_seconds()
        return cls(time.monotonic(), busy, ours, round(os.getloadavg()[0], 2))

    def other_cores(self) -> float | None:
        """Cores' worth of CPU used since this snapshot by processes that aren't ours."""
        now = CpuSnapshot.take()
        if (
            self.busy is None or self.ours is None or now.busy is None or now.ours is None
            or now.wall <= self.wall
        ):  # fmt: skip
            return None
        other = (now.busy - self.busy) - (now.ours - self.ours)
        return round(max(0.0, other) / (now.wall - self.wall), 2)

    def annotate(self, result: WrkResult) -> WrkResult:
        return dataclasses.replace(
            result, loadavg_1m=self.loadavg_1m, other_cpu_cores=self.other_cores()
        )
