"""OPENTELEMETRY_ENABLED: FastAPI's native spans reach the tracer provider an SDK set up, and
only when asked for. Setting a global provider is once per process, so each case runs in its
own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, json, sys
from pathlib import Path
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from app.core.migrate import upgrade_to_head
from tests.support.settings import asgi_client, make_settings, started_app

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

data = Path(sys.argv[1])
settings = make_settings(data, f"sqlite+aiosqlite:///{data}/app.db",
                         opentelemetry_enabled=sys.argv[2] == "on")
upgrade_to_head(settings)

async def main() -> None:
    async with started_app(settings) as app, asgi_client(app) as http:
        status = (await http.get("/health")).status_code
    spans = [(s.name, dict(s.attributes or {})) for s in exporter.get_finished_spans()]
    print(json.dumps({"status": status, "spans": spans}))

asyncio.run(main())
"""


def probe(tmp_path: Path, switch: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), switch], cwd=REPO, env=dict(os.environ),
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("switch", ["on", "off"])
def test_native_spans_follow_the_setting(tmp_path: Path, switch: str) -> None:
    report = probe(tmp_path, switch)
    assert report["status"] == 200
    spans = report["spans"]
    assert isinstance(spans, list)
    if switch == "off":
        assert spans == []  # the SDK is there, but the service was not asked to use it
        return
    server = [attributes for name, attributes in spans if name == "GET /health"]
    assert len(server) == 1
    assert server[0]["http.route"] == "/health"
    assert server[0]["http.response.status_code"] == 200
