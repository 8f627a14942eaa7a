"""Typed settings from the environment and `.env`; nothing set means embedded mode."""

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Environment = Literal["development", "test", "production"]
CommaList = Annotated[list[str], NoDecode]

# Values seen in tutorials and .env examples; a production key must not be one of them.
WEAK_SECRETS = frozenset(
    {"changeme", "change-me", "secret", "secret-key", "your-secret-key", "dev", "development"}
)
MIN_SECRET_LENGTH = 32
# kombu's SQLAlchemy transport, subclassed in app.jobs.broker (registered under this alias).
_EMBEDDED_BROKER_SCHEME = "appsqla+sqlite:///"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    environment: Environment = "development"
    debug: bool = False
    app_name: str = "app"
    secret_key: SecretStr | None = None
    app_data_dir: Path = Path("./var")
    database_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)

    jwt_issuer: str = "app"
    jwt_audience: str = "app-api"
    access_token_expire_minutes: int = Field(default=15, ge=1, le=24 * 60)
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365)
    require_verified_email: bool = False

    cors_origins: CommaList = []
    cors_allow_credentials: bool = True
    allowed_hosts: CommaList = ["*"]
    # Proxies whose X-Forwarded-For is believed (IPs or CIDRs); anyone else could forge it.
    trusted_proxies: CommaList = []
    docs_enabled: bool | None = None
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    session_cookie_name: str = "app_session"

    # Files (FILES-1..3). Uploads have their own cap, checked while the file arrives.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_dir: Path | None = None  # default: APP_DATA_DIR/uploads
    storage_s3_bucket: str | None = None
    storage_s3_endpoint_url: str | None = None
    storage_s3_region: str = "us-east-1"
    # Usually left unset: boto3 then reads AWS_* variables, its config files or instance roles.
    storage_s3_access_key_id: str | None = None
    storage_s3_secret_access_key: SecretStr | None = None
    presigned_url_expire_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    export_batch_size: int = Field(default=1000, ge=1, le=100_000)

    # Images (JOBS-4, ITEMS-4). Pillow refuses images above this many pixels (decompression
    # bombs); every step of a pipeline stays under it too. Pillow's own default is ~89M.
    image_max_pixels: int = Field(default=40_000_000, ge=1024)
    image_max_source_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    image_fetch_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # URL sources may only resolve to public addresses; these CIDRs open an intranet range
    # (cloud metadata addresses stay refused whatever is listed here).
    ssrf_allowed_networks: CommaList = []

    redis_url: str | None = None
    redis_max_connections: int = Field(default=100, ge=1)

    rate_limit_enabled: bool = True
    rate_limit_default: str = "600/minute"
    rate_limit_login: str = "10/minute"
    rate_limit_login_account: str = "5/minute"
    rate_limit_register: str = "5/minute"
    rate_limit_password_reset: str = "5/hour"

    # Background jobs (Celery). Unset broker: REDIS_URL if set, else the embedded broker (a
    # SQLite file under APP_DATA_DIR); unset results: Redis with a Redis broker, else SQLite.
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    # Soft limit raises inside the task (it can clean up); the hard limit kills the process.
    job_soft_time_limit_seconds: int = Field(default=300, ge=1)
    job_time_limit_seconds: int = Field(default=360, ge=1)
    # A Redis-broker message not acknowledged within this is delivered again: it must exceed
    # the longest task, or a slow task would run twice.
    celery_visibility_timeout_seconds: int = Field(default=3600, ge=1)
    celery_result_expires_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    celery_worker_concurrency: int | None = Field(default=None, ge=1)  # default: CPU count
    # How often the embedded broker's worker looks for new messages (it cannot be woken).
    celery_embedded_poll_seconds: float = Field(default=0.1, gt=0, le=5)
    # Realtime (RT-1..5). Browsers may open WebSockets from any page (Starlette's CORS does
    # not cover them), so the Origin is checked against CORS_ORIGINS, these, and our own host.
    ws_allowed_origins: CommaList = []
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=1024)  # uvicorn's default: 16 MiB
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    ws_ping_timeout_seconds: float = Field(default=20.0, gt=0)
    ws_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    ws_auth_timeout_seconds: float = Field(default=10.0, gt=0)
    ws_send_queue_size: int = Field(default=256, ge=1)
    ws_max_connections_per_user: int = Field(default=10, ge=1)
    # With Redis the cap holds across processes: each connection holds a lease renewed a few
    # times per this period; a crashed process's leases lapse after it.
    ws_connection_lease_seconds: float = Field(default=60.0, ge=3)
    chat_message_max_length: int = Field(default=4000, ge=1)
    chat_presence_max_members: int = Field(default=100, ge=0)  # per process (see chat.py)
    rate_limit_chat_message: str = "30/10 seconds"
    notification_relay_interval_seconds: float = Field(default=0.5, gt=0)
    # How long a stopping process gives its WebSockets and SSE streams to close (1001).
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)

    # Maintenance (JOBS-6). Beat sends a heartbeat this often; readiness calls the jobs side
    # stale (and the service degraded) when the last one is older than the threshold, which
    # must leave room for a busy maintenance queue.
    heartbeat_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    heartbeat_stale_seconds: float = Field(default=120.0, gt=0)
    # Ended sessions (expired or revoked) and their refresh tokens are deleted this long after
    # they end. Activity reports count logins from these rows, so reports reaching further back
    # than the retention (plus the refresh lifetime) see fewer sessions.
    auth_session_retention_days: float = Field(default=90.0, ge=0)
    # Unlinked files, row-less objects and temp files older than this go in the daily purge.
    purge_files_older_than_hours: float = Field(default=24.0, ge=0)
    # Finished job rows (the task API's history, reports' listing) are deleted this long after
    # they finish; files they produced stay with their owners.
    job_retention_days: float = Field(default=30.0, ge=0)
    # How often each API process refreshes its job gauges (queue depth, jobs per state).
    job_metrics_refresh_seconds: float = Field(default=15.0, gt=0)
    # A file a worker touches from its consumer's event loop, and beat on every scheduler tick,
    # at least this often: a container probe checks its age (unset: no file is kept).
    liveness_file: Path | None = None
    liveness_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # How long `app api|serve|worker|beat|migrate` wait for DATABASE_URL / REDIS_URL to answer
    # before giving up with one line and exit status 3 (a stack starting all at once).
    startup_timeout_seconds: float = Field(default=30.0, ge=0)

    # Email (JOBS-2). Without SMTP_HOST, mail is written to APP_DATA_DIR/outbox as .eml files
    # and logged (embedded mode; production warns at start). With it, mail goes out by SMTP:
    # "starttls" upgrades a plain connection (port 587), "tls" is implicit TLS (port 465),
    # "none" is plain text (a local relay or a test sink only).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = None  # trust a private CA (else the system's roots)
    smtp_timeout_seconds: float = Field(default=30, gt=0, le=300)
    email_from: str = "App <noreply@localhost>"
    # Links in mails point here: {base}/verify-email?token=..., {base}/reset-password?token=...
    public_base_url: str = "http://127.0.0.1:8000"
    # Transient SMTP failures (4xx, connection errors) are retried with exponential backoff
    # and jitter, at most this many times; then the mail is recorded as failed.
    email_max_retries: int = Field(default=6, ge=0, le=50)
    email_retry_backoff_seconds: float = Field(default=10, gt=0)
    email_retry_backoff_max_seconds: float = Field(default=600, gt=0)
    # A claimed mail is someone's to send for this long; after it, a crashed sender's mail is
    # claimed again (the conditional commit keeps a slow live sender from sending it twice).
    email_lease_seconds: int = Field(default=120, ge=1)
    # The sweep re-sends mail still pending this long after it was due (an enqueue lost
    # between the commit and the broker).
    email_sweep_after_seconds: int = Field(default=300, ge=1)
    email_verify_token_expire_minutes: int = Field(default=24 * 60, ge=1)
    password_reset_token_expire_minutes: int = Field(default=60, ge=1, le=24 * 60)

    metrics_token: SecretStr | None = None
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)

    first_superuser_username: str | None = None
    first_superuser_email: str | None = None
    first_superuser_password: SecretStr | None = None

    log_level: str = "INFO"
    access_log: bool = True
    log_format: Literal["console", "json"] | None = None  # default: json in production
    # Threads allowed to hash passwords at once. One core stays free for the event loop, so a
    # login flood slows logins down instead of every other request.
    password_hash_concurrency: int = Field(default=max(1, (os.cpu_count() or 2) - 1), ge=1)
    # Argon2id cost: OWASP's baseline (19 MiB, 2 passes, 1 lane), about 20 ms per hash on one
    # core. Raising these upgrades stored hashes at each user's next login.
    argon2_memory_kib: int = Field(default=19_456, ge=8_192)
    argon2_time_cost: int = Field(default=2, ge=1)

    @field_validator(
        "database_url",
        "redis_url",
        "sentry_dsn",
        "metrics_token",
        "celery_broker_url",
        "celery_result_backend",
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "smtp_ca_file",
        "liveness_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `REDIS_URL=` in a .env or compose file means "not set", not "a URL that is empty".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "cors_origins",
        "allowed_hosts",
        "trusted_proxies",
        "ws_allowed_origins",
        "ssrf_allowed_networks",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> "Settings":
        if self.environment != "production":
            return self
        problems: list[str] = []
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if len(key) < MIN_SECRET_LENGTH or key.lower() in WEAK_SECRETS:
            problems.append(
                f"SECRET_KEY must be set to at least {MIN_SECRET_LENGTH} random characters"
            )
        if self.debug:
            problems.append("DEBUG must be off")
        if "*" in self.cors_origins and self.cors_allow_credentials:
            problems.append("CORS_ORIGINS='*' cannot be combined with credentials")
        if problems:
            raise ValueError("unsafe production settings: " + "; ".join(problems))
        return self

    @field_validator("ssrf_allowed_networks")
    @classmethod
    def _networks_are_cidrs(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> "Settings":
        if self.storage_backend == "s3" and not self.storage_s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs STORAGE_S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _job_limits_are_ordered(self) -> "Settings":
        if not (
            self.job_soft_time_limit_seconds
            < self.job_time_limit_seconds
            < self.celery_visibility_timeout_seconds
        ):
            raise ValueError(
                "need JOB_SOFT_TIME_LIMIT_SECONDS < JOB_TIME_LIMIT_SECONDS"
                " < CELERY_VISIBILITY_TIMEOUT_SECONDS, or tasks would be delivered twice"
            )
        return self

    @property
    def broker_url(self) -> str:
        return (
            self.celery_broker_url
            or self.redis_url
            or _EMBEDDED_BROKER_SCHEME + str(self.embedded_broker_path)
        )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith(_EMBEDDED_BROKER_SCHEME)

    @property
    def embedded_broker_path(self) -> Path:
        return (self.app_data_dir / "celery-broker.sqlite").resolve()

    @property
    def result_backend_url(self) -> str:
        if self.celery_result_backend:
            return self.celery_result_backend
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{(self.app_data_dir / 'celery-results.sqlite').resolve()}"

    @property
    def outbox_dir(self) -> Path:
        return self.app_data_dir / "outbox"

    @property
    def uploads_dir(self) -> Path:
        return self.storage_local_dir or self.app_data_dir / "uploads"

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json" if self.log_format else self.is_production

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def show_docs(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else not self.is_production

    @property
    def sqlalchemy_url(self) -> str:
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.app_data_dir.resolve() / 'app.db'}"
        url = self.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url.removeprefix(plain)
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    def signing_key(self) -> str:
        """The key that signs tokens: set explicitly, or kept in the data dir.

        A random key per start would log everyone out on every restart and differ between
        processes, so outside production a generated key is written once and reused.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return _persistent_dev_key(self.app_data_dir)


@lru_cache(maxsize=8)
def _persistent_dev_key(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="ascii") as handle:  # "x": never overwrite a key
            path.chmod(0o600)
            handle.write(secrets.token_urlsafe(48))
    except FileExistsError:
        pass
    return path.read_text(encoding="ascii").strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
