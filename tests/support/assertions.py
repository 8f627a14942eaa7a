"""Shared assertions: the error envelope (app/core/errors.py) and Prometheus samples.

`assert_envelope` checks a response is the one JSON error envelope with the given status and
code; `error_code` is its lighter twin for processes reached over TCP (no request id check);
`sample` reads one sample of a metric from a /metrics text page.
"""

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ENVELOPE_KEYS", "assert_envelope", "error_code", "sample"]

ENVELOPE_KEYS = {"status", "code", "message", "details", "request_id", "timestamp", "path"}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS
    assert error["status"] == status
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["path"] == response.request.url.path
    assert error["timestamp"].endswith("Z")
    return dict(error)


def error_code(response: httpx.Response) -> str:
    """The code of an error envelope, checking only its outline."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code, body
    return str(body["error"]["code"])


def sample(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                return float(metric.value)
    return 0.0
