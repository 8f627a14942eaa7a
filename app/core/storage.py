"""Where uploaded objects live: one small async protocol, a local directory or an S3 bucket.

Keys are made by the server (`new_key`), never taken from a client, so no name a client sends
can reach a path. Every blocking call (file I/O, boto3) runs in a worker thread.
"""

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from app.core.config import Settings
from app.core.errors import AppError, Conflict, ServiceUnavailable

CHUNK_BYTES = 256 * 1024
_KEY = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{32}$")


class StorageUnavailable(ServiceUnavailable):
    def __init__(self, message: str = "File storage is unavailable") -> None:
        super().__init__(message)


class StorageFull(AppError):
    status, code = 507, "insufficient_storage"

    def __init__(self) -> None:
        super().__init__("File storage is full")


class PresignNotSupported(Conflict):
    def __init__(self) -> None:
        super().__init__("This storage backend cannot presign URLs; download the content")


@dataclass(frozen=True, slots=True)
class StoredKey:
    key: str
    modified_at: datetime


class Storage(Protocol):
    def temp_path(self) -> Path:
        """Where an upload is spooled before `put`."""

    async def put(self, key: str, source: Path, *, content_type: str) -> None:
        """Store the file at `source` under `key` (the file may be moved away)."""

    def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` inclusive."""

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def presign(
        self, key: str, *, expires: int, filename_header: str, content_type: str
    ) -> str: ...

    def list_keys(self) -> AsyncIterator[StoredKey]: ...

    async def check(self) -> None:
        """Raise StorageUnavailable if the backend can't be reached."""

    async def remove_stale_temp_files(self, cutoff: datetime) -> int:
        """Spooled uploads a killed process left behind (a live upload removes its own)."""

    async def close(self) -> None: ...


def new_key() -> str:
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name}"  # two-level fan-out keeps directories small


def _checked(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class LocalStorage:
    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.temp_dir = self.root / ".tmp"
        # Readiness says "down" below this: the next upload of the largest allowed size could
        # fail with 507, so a balancer should prefer another instance.
        self.min_free_bytes = min_free_bytes

    def path_of(self, key: str) -> Path:
        return self.root / _checked(key)

    def temp_path(self) -> Path:
        """A temp file on the same file system, so `put` is an atomic rename."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        return self.temp_dir / uuid.uuid4().hex

    async def put(self, key: str, source: Path, *, content_type: str) -> None:
        target = self.path_of(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)

        try:
            await anyio.to_thread.run_sync(move)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise storage_error_for(exc) from exc

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        try:
            handle = await anyio.to_thread.run_sync(path.open, "rb")
        except OSError as exc:
            raise storage_error_for(exc) from exc
        try:
            await anyio.to_thread.run_sync(handle.seek, start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = await anyio.to_thread.run_sync(handle.read, min(CHUNK_BYTES, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            await anyio.to_thread.run_sync(handle.close)

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path_of(key).unlink(missing_ok=True))

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_of(key).is_file)

    async def presign(
        self, key: str, *, expires: int, filename_header: str, content_type: str
    ) -> str:
        raise PresignNotSupported()

    async def list_keys(self) -> AsyncIterator[StoredKey]:
        def scan() -> list[StoredKey]:
            found = []
            for path in self.root.glob("??/*"):
                key = path.relative_to(self.root).as_posix()
                if _KEY.match(key):
                    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                    found.append(StoredKey(key, modified))
            return found

        for stored in await anyio.to_thread.run_sync(scan):
            yield stored

    async def check(self) -> None:
        """Writable for real: a file is written and removed (permission bits say nothing of a
        read-only mount or a full disk), and the free space holds one more largest upload."""

        def probe() -> None:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            marker = self.temp_dir / f"ready-{os.getpid()}-{uuid.uuid4().hex}"
            try:
                marker.write_bytes(b"ok")
            finally:
                marker.unlink(missing_ok=True)
            stats = os.statvfs(self.root)
            if stats.f_bavail * stats.f_frsize < self.min_free_bytes:
                raise OSError(errno.ENOSPC, "less free space than one largest upload")

        try:
            await anyio.to_thread.run_sync(probe)
        except OSError as exc:
            raise storage_error_for(exc) from exc

    async def remove_stale_temp_files(self, cutoff: datetime) -> int:
        return await anyio.to_thread.run_sync(_remove_older_files, self.temp_dir, cutoff)

    async def close(self) -> None:
        return None


def _remove_older_files(directory: Path, cutoff: datetime) -> int:
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):  # removed by its upload meanwhile
                if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                    path.unlink()
                    removed += 1
    return removed


def storage_error_for(exc: OSError) -> AppError:
    """Disk full is 507 (the client may retry elsewhere or later); anything else is 503."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull()
    return StorageUnavailable()


class S3Storage:
    def __init__(self, client: Any, bucket: str, temp_dir: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.temp_dir = temp_dir

    def temp_path(self) -> Path:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        return self.temp_dir / uuid.uuid4().hex

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await anyio.to_thread.run_sync(lambda: getattr(self.client, method)(**kwargs))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(kwargs.get("Key")) from exc
            raise StorageUnavailable() from exc
        except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: upload_file's failures
            raise StorageUnavailable() from exc

    async def put(self, key: str, source: Path, *, content_type: str) -> None:
        # upload_file switches to a multipart upload for big files: memory stays bounded.
        await self._call(
            "upload_file",
            Filename=str(source),
            Bucket=self.bucket,
            Key=_checked(key),
            ExtraArgs={"ContentType": content_type},
        )

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        response = await self._call(
            "get_object", Bucket=self.bucket, Key=_checked(key), Range=f"bytes={start}-{end}"
        )
        body = response["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, CHUNK_BYTES):
                yield chunk
        finally:
            await anyio.to_thread.run_sync(body.close)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=_checked(key))

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", Bucket=self.bucket, Key=_checked(key))
        except FileNotFoundError:
            return False
        return True

    async def presign(
        self, key: str, *, expires: int, filename_header: str, content_type: str
    ) -> str:
        url: str = await self._call(
            "generate_presigned_url",
            ClientMethod="get_object",
            Params={
                "Bucket": self.bucket,
                "Key": _checked(key),
                "ResponseContentDisposition": filename_header,
                "ResponseContentType": content_type,
            },
            ExpiresIn=expires,
        )
        return url

    async def list_keys(self) -> AsyncIterator[StoredKey]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self._call("list_objects_v2", Bucket=self.bucket, **extra)
            for entry in page.get("Contents", []):
                if _KEY.match(entry["Key"]):
                    yield StoredKey(entry["Key"], entry["LastModified"])
            token = page.get("NextContinuationToken")
            if not token:
                return

    async def check(self) -> None:
        await self._call("head_bucket", Bucket=self.bucket)

    async def remove_stale_temp_files(self, cutoff: datetime) -> int:
        return await anyio.to_thread.run_sync(_remove_older_files, self.temp_dir, cutoff)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.client.close)


def create_storage(settings: Settings) -> LocalStorage | S3Storage:
    if settings.storage_backend == "local":
        return LocalStorage(settings.uploads_dir, min_free_bytes=settings.max_upload_bytes)
    import boto3
    from botocore.config import Config

    secret = settings.storage_s3_secret_access_key
    client = boto3.client(
        "s3",
        endpoint_url=settings.storage_s3_endpoint_url,
        region_name=settings.storage_s3_region,
        aws_access_key_id=settings.storage_s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
        ),
    )
    assert settings.storage_s3_bucket is not None  # the settings refuse s3 without one
    return S3Storage(client, settings.storage_s3_bucket, settings.app_data_dir / "tmp")
