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


def test_bench_run_parses_the_pinning_and_workers_flags() -> None:
    from bench.run import parse_args

    args = parse_args(["--no-pin", "--workers", "2"])
    assert (args.pin, args.workers) == (False, 2)
    assert parse_args(["--pin"]).pin is True
    assert parse_args([]).workers == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--a-floor", "--only", "health"],  # the floor serves only the querying endpoints
        ["--a-floor", "--a-root", "/tmp", "--only", "users_me"],  # one A side, not two
        ["--only", "users_me"],  # no A side
    ],
)
def test_bench_ab_refuses_what_it_cannot_compare(argv: list[str]) -> None:
    from bench.ab import main

    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2


def test_pinning_puts_the_server_and_wrk_on_separate_cores() -> None:
    from bench.pinning import NO_PINNING, Pinning

    pinning = Pinning(server_cpus=(1,), wrk_cpus=(0,))
    assert pinning.server(["app", "api"]) == ["taskset", "--cpu-list", "1", "app", "api"]
    assert pinning.wrk(["wrk"]) == ["taskset", "--cpu-list", "0", "wrk"]
    assert NO_PINNING.server(["app", "api"]) == ["app", "api"]


def test_the_floor_app_imports_and_serves_each_floor_endpoint() -> None:
    from fastapi.routing import APIRoute

    from bench.floor_app import app
    from bench.targets import FLOOR_ENDPOINTS, service_targets

    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    targets = service_targets(1)
    for name in FLOOR_ENDPOINTS:
        path = targets[name].path.split("?")[0].replace("/1", "/{item_id}")
        assert (targets[name].method, path) in served, name


def test_the_floor_selects_every_field_of_the_schemas_it_serializes() -> None:
    # A field added to a schema and not to the floor's SELECT makes the floor answer 500.
    from app.auth.schemas import UserPrivate
    from app.items.schemas import ItemRead
    from bench.floor_app import ITEM_COLUMNS, USER_COLUMNS

    for columns, schema in ((USER_COLUMNS, UserPrivate), (ITEM_COLUMNS, ItemRead)):
        selected = {column.strip() for column in columns.split(",")}
        assert set(schema.model_fields) <= selected, schema.__name__


def test_targets_are_maximum_ratios_with_met_flags() -> None:
    from bench.targets import evaluate_targets

    endpoint = {"cpu_ratio_to_ceiling": 5.0, "floor_ratio": 1.2, "tail_ratio": 3.5}
    found = evaluate_targets({"redis": {"endpoints": {"users_me": endpoint}, "ceiling_drift": 0}})
    verdicts = {name: target["met"] for name, target in found.items()}
    assert verdicts == {"users_me_redis": False, "users_me_floor_redis": True,
                        "users_me_tail_redis": False}  # fmt: skip


def test_realtime_and_export_goals_carry_met_flags() -> None:
    from bench.files import export_goal
    from bench.realtime import goals

    fanout = {"clients": 1000, "send_to_all_received_ms": {"p99": 120.0}}
    found = goals({"one_process": fanout, "two_processes": fanout})
    assert {name: goal["met"] for name, goal in found.items()} == {
        "one_process_p99": False,  # 120 ms against < 100
        "two_processes_p99": True,  # against < 150
    }
    export = {"export_csv": {"rows": 1_000_000, "rows_per_second": 20000,
                             "server_rss_peak_growth_mb": 6.3}}  # fmt: skip
    assert export_goal(export)["met"] is True
    export["export_csv"]["server_rss_peak_growth_mb"] = 50.0  # the goal is strictly under
    assert export_goal(export)["met"] is False
