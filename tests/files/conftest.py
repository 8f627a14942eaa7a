"""File tests run on both databases; storage is local unless a test asks for S3 as well, which
is a real moto S3 server on a loopback port, started once for the session."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from app.core.config import Settings
from tests.support.processes import free_port
from tests.support.settings import empty_postgres, make_settings
from tests.support.uploads import S3_KEY_ID, S3_SECRET


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
    )  # fmt: skip


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "local"))


@pytest.fixture
def storage_overrides(
    storage_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> dict[str, object]:
    if storage_backend == "local":
        return {}
    endpoint: str = request.getfixturevalue("moto_url")
    bucket = f"test-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-")
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    client.close()
    return {
        "storage_backend": "s3",
        "storage_s3_bucket": bucket,
        "storage_s3_endpoint_url": endpoint,
        "storage_s3_access_key_id": S3_KEY_ID,
        "storage_s3_secret_access_key": S3_SECRET,
    }


@pytest.fixture
async def settings(
    database_url: str | None, tmp_path: Path, storage_overrides: dict[str, object]
) -> Settings:
    if database_url is not None:
        await empty_postgres(database_url)
    return make_settings(tmp_path, database_url, **storage_overrides)
