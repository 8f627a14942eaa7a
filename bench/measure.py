"""Measuring: one measured load against one server process (`measure`, the seam for figures
taken from the server's side, such as its CPU per request), the login flood, and one mode's
whole set of runs (`benchmark_mode`)."""

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import httpx

from bench.common import progress
from bench.cpu import SETTLE_MAX_S, CpuSnapshot, group_cpu_seconds, settle
from bench.pinning import NO_PINNING
from bench.service import Server, Services, scan_service_log
from bench.targets import (
    ENDPOINTS,
    FLOOR_ENDPOINTS,
    HEALTH,
    LOGIN,
    LOGIN_FLOOD,
    Target,
    _expect,
    get_item_id,
    get_token,
    preflight,
    service_targets,
)
from bench.wrk import Load, WrkResult, finish_wrk, start_wrk
from tests.support.waiting import eventually

PROBE_CONNECTIONS = 4  # the light /health traffic beside the login flood
ACCESS_LOG_WAIT_S = 2.0  # how long an access log line may take to reach the log file


def measure(label: str, server: Server, target: Target, load: Load, token: str | None) -> WrkResult:
    """One wrk run of `target` against `server`, annotated with how busy the machine was."""
    connections = load.connections_for(target)
    settled = settle()
    if settled is None:
        progress(f"{label}: not quiet after {SETTLE_MAX_S:.0f}s of waiting; running anyway")
    progress(f"{label}: {target.method} {target.path}, {connections} connections, {load.duration}s")
    before = CpuSnapshot.take()
    server_before = group_cpu_seconds(server.group.pid)
    result = finish_wrk(
        start_wrk(
            server.base_url, target, duration=load.duration, connections=connections,
            token=token, pinning=load.pinning,
        )
    )  # fmt: skip
    server_after = group_cpu_seconds(server.group.pid)
    used = None
    if server_before is not None and server_after is not None:
        used = server_after - server_before
    return dataclasses.replace(before.annotate(result).with_server_cpu(used), settle_s=settled)


def _ratio(ours: float | None, base: float | None) -> float | None:
    return round(ours / base, 4) if ours and base else None


def with_ratio(result: WrkResult, ceiling: WrkResult) -> dict[str, Any]:
    """`cpu_ratio_to_ceiling` (server CPU per request over the bare app's /health, same run) is
    the issue's figure; `ratio_to_ceiling` (rps over rps) is kept for older results."""
    return {
        **result.as_dict(),
        "ratio_to_ceiling": _ratio(result.rps, ceiling.rps),
        "cpu_ratio_to_ceiling": _ratio(result.cpu_ms_per_request, ceiling.cpu_ms_per_request),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Flood:
    health_alone: WrkResult
    health_during_login_flood: WrkResult
    login: WrkResult

    def runs(self) -> dict[str, WrkResult]:
        return {
            "health_alone": self.health_alone,
            "health_during_login_flood": self.health_during_login_flood,
            "login": self.login,
        }

    def as_dict(self) -> dict[str, Any]:
        alone, during = self.health_alone, self.health_during_login_flood
        ratio = round(during.p99_ms / alone.p99_ms, 2) if alone.p99_ms else None
        return {**{k: r.as_dict() for k, r in self.runs().items()}, "health_p99_ratio": ratio}

    def problems(self) -> list[str]:
        return [p for k, r in self.runs().items() for p in r.problems(f"{LOGIN_FLOOD}.{k}")]


def login_flood(server: Server, load: Load, token: str) -> Flood:
    """Light /health traffic alone, then again while wrk floods the login endpoint.

    The flood starts first and runs one second longer, so it covers the whole probe.
    """
    probe = dataclasses.replace(load, connections=PROBE_CONNECTIONS)
    base_url = server.base_url
    alone = measure("health alone", server, HEALTH, probe, token)
    connections = load.connections_for(LOGIN)
    progress(f"login flood on {connections} connections, /health probe beside it")
    flood_started = CpuSnapshot.take()
    flood = start_wrk(
        base_url, LOGIN, duration=load.duration + 1, connections=connections, token=token,
        pinning=load.pinning,
    )  # fmt: skip
    try:
        probe_started = CpuSnapshot.take()
        during = finish_wrk(
            start_wrk(
                base_url, HEALTH, duration=load.duration, connections=PROBE_CONNECTIONS,
                token=token, pinning=load.pinning,
            )
        )  # fmt: skip
        during = probe_started.annotate(during)
    except BaseException:
        flood.process.kill()
        flood.process.wait()
        raise
    return Flood(alone, during, flood_started.annotate(finish_wrk(flood)))


def check_access_log_flag(services: Services, client: httpx.Client, path: str) -> dict[str, Any]:
    """`--no-access-log` is what the second health figure is about: does it turn the log off?

    One request to a route the access log does not skip, then count the lines it wrote
    within ACCESS_LOG_WAIT_S (none is the expected answer).
    """
    quiet = services.quiet
    assert quiet is not None
    before = scan_service_log(quiet.log)["access_log_lines"]
    _expect(client.get(path), 200, f"GET {path} on the --no-access-log service")

    def lines_written() -> int:
        count: int = scan_service_log(quiet.log)["access_log_lines"] - before
        return count

    try:
        written = eventually(
            lines_written, timeout=ACCESS_LOG_WAIT_S, interval=0.1, what="an access log line"
        )
    except AssertionError:
        written = 0
    return {"request": f"GET {path}", "access_log_lines_written": written, "effective": not written}


def benchmark_mode(
    ceiling_server: Server, services: Services, load: Load, only: Sequence[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """One mode's figures, its problems (non-2xx, socket errors) and its warnings."""
    mode = services.mode
    started = CpuSnapshot.take()
    ceiling = measure(f"{mode}: ceiling", ceiling_server, HEALTH, load, None)
    problems = ceiling.problems(f"{mode}.ceiling")
    warnings: list[str] = []
    endpoints: dict[str, Any] = {}
    names = [n for n in ENDPOINTS if n in only]
    with contextlib.ExitStack() as stack:
        clients = {
            server.base_url: stack.enter_context(
                httpx.Client(base_url=server.base_url, timeout=30.0)
            )
            for server in (services.full, services.quiet, services.floor)
            if server is not None
        }
        full = clients[services.full.base_url]
        token = get_token(full)
        targets = service_targets(get_item_id(full))
        for name in names:  # all of them first: a wrong status stops the run before any load
            client = clients[services.for_endpoint(name).base_url]
            preflight(client, name, targets[name], token)
        report: dict[str, Any] = {"redis_url": services.redis_url}
        if services.quiet is not None:
            quiet = clients[services.quiet.base_url]
            check = check_access_log_flag(services, quiet, targets["item_read"].path)
            report["no_access_log_check"] = check
            if not check["effective"]:
                warnings.append(
                    f"{mode}: `app api --no-access-log` still writes the access log "
                    f"({check['access_log_lines_written']} line(s) for one {check['request']}); "
                    "health_no_access_log measures /health, which skips it anyway"
                )
        for name in names:
            server = services.for_endpoint(name)
            # Again just before the run: it warms the caches (an earlier run may have retired
            # an entry: item_create bumps the items' generation).
            preflight(clients[server.base_url], name, targets[name], token)
            result = measure(f"{mode}: {name}", server, targets[name], load, token)
            problems += result.problems(f"{mode}.{name}")
            endpoints[name] = with_ratio(result, ceiling)
            if services.floor is not None and name in FLOOR_ENDPOINTS:
                # Right after ours, under the same machine load: the same work, done plainly.
                floor_server = services.floor
                preflight(clients[floor_server.base_url], f"floor {name}", targets[name], token)
                floor = measure(f"{mode}: floor {name}", floor_server, targets[name], load, token)
                problems += floor.problems(f"{mode}.floor.{name}")
                endpoints[name]["floor"] = floor.as_dict()
                endpoints[name]["floor_ratio"] = _ratio(
                    result.cpu_ms_per_request, floor.cpu_ms_per_request
                )
    # Again after the endpoints (before the flood, whose hashing may outlast it): how far the
    # machine moved meanwhile. The ratios are only as good as this is small.
    recheck = measure(f"{mode}: ceiling again", ceiling_server, HEALTH, load, None)
    problems += recheck.problems(f"{mode}.ceiling_recheck")
    report |= {
        "ceiling": ceiling.as_dict(),
        "endpoints": endpoints,
        "ceiling_recheck": recheck.as_dict(),
        "ceiling_drift": round(recheck.rps / ceiling.rps - 1, 3) if ceiling.rps else None,
    }
    if LOGIN_FLOOD in only:
        flood = login_flood(services.full, load, token)
        report[LOGIN_FLOOD] = flood.as_dict()
        problems += [f"{mode}.{p}" for p in flood.problems()]
    report["loadavg_1m"] = {"start": started.loadavg_1m, "end": round(os.getloadavg()[0], 2)}
    report["other_cpu_cores_mean"] = started.other_cores()
    report["service_logs"] = {
        server.name: scan_service_log(server.log)
        for server in (services.full, services.quiet, services.floor)
        if server is not None
    }
    for server_name, log in report["service_logs"].items():
        if log["notable_count"]:
            warnings.append(f"{mode}: {server_name} logged {log['notable_count']} line(s) "
                            "above INFO (see service_logs)")  # fmt: skip
    report["problems"] = problems
    return report, problems, warnings


WORKERS_SCALING_GOAL = 1.8  # the issue: `app api --workers 2` on 2 cores / one worker, rps
SCALING_OTHER_CORES_LIMIT = 0.25  # other work's CPU (cores) under which scaling is judged


def workers_scaling(one: Server, many: Server, workers: int, load: Load) -> dict[str, Any]:
    """Requests/sec of the cached anonymous item read, `app api --workers N` over one worker.

    Neither is pinned (N workers need N cores), so wrk shares the cores with them: on a
    2-core machine this is a lower bound of what N workers give behind a separate client.
    """
    unpinned = dataclasses.replace(load, pinning=NO_PINNING)
    with httpx.Client(base_url=one.base_url, timeout=30.0) as client:
        target = service_targets(get_item_id(client))["item_read"]
    runs: dict[str, WrkResult] = {}
    for label, server in (("one_worker", one), (f"{workers}_workers", many)):
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            preflight(client, label, target, "")
        runs[label] = measure(f"scaling: {label}", server, target, unpinned, None)
    single, multi = runs["one_worker"], runs[f"{workers}_workers"]
    ratio = _ratio(multi.rps, single.rps)
    # What the machine can't hide: server CPU per request, N workers over one. Near 1, the
    # workers share nothing that costs (no lock, no extra round trip), so with N free cores
    # throughput grows N-fold; well above 1, something scales worse than the cores do.
    cpu_ratio = _ratio(multi.cpu_ms_per_request, single.cpu_ms_per_request)
    # N workers can only show N times the throughput with N cores to spare; when other work
    # took more than SCALING_OTHER_CORES_LIMIT cores, a ratio under the goal is the
    # machine's, not the server's: `met` stays false, `conclusive` says how far to trust it.
    others = [r.other_cpu_cores for r in (single, multi)]
    busiest = max((o for o in others if o is not None), default=None)
    return {
        "endpoint": "item_read",
        "workers": workers,
        **{label: run.as_dict() for label, run in runs.items()},
        "ratio": ratio,
        "cpu_per_request_ratio": cpu_ratio,
        "target": WORKERS_SCALING_GOAL,
        "met": ratio is not None and ratio >= WORKERS_SCALING_GOAL,
        "other_cpu_cores_max": busiest,
        "conclusive": busiest is not None and busiest <= SCALING_OTHER_CORES_LIMIT,
        "problems": [p for k, r in runs.items() for p in r.problems(f"workers_scaling.{k}")],
    }
