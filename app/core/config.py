"""Typed settings from the environment and `.env`; nothing set means embedded mode."""

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from limits import parse as parse_rate
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Environment = Literal["development", "test", "production"]
CommaList = Annotated[list[str], NoDecode]

# Values seen in tutorials and .env examples; a production key must not be one of them.
WEAK_SECRETS = frozenset(
    {"changeme", "change-me", "secret", "secret-key", "your-secret-key", "dev", "development"}
)
MIN_SECRET_LENGTH = 32
# The file types app.files can verify by their first bytes (app/files/safety.py's signature
# table; a test keeps the two equal): UPLOAD_ALLOWED_EXTENSIONS picks among them.
VERIFIABLE_UPLOAD_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "webp", "pdf", "zip", "txt", "csv")
# The v2 routes (the cursor-paged item listing) keep this fixed prefix: API_V1_PREFIX must stay
# clear of it, or one version's routes would shadow the other's.
API_V2_PREFIX = "/api/v2"
# One or more path segments of unreserved characters, none starting with a dot (no "." or ".."
# segment), no trailing slash: "/api/v1", "/svc/v1".
_PREFIX_PATTERN = r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$"
# kombu's SQLAlchemy transport, subclassed in app.jobs.broker (registered under this alias).
_EMBEDDED_BROKER_SCHEME = "appsqla+sqlite:///"


def _cores_but_one() -> int:
    # A factory, not a value: .env.example must not depend on the machine that generates it.
    return max(1, (os.cpu_count() or 2) - 1)


class Settings(BaseSettings):
    # Each setting's docstring is its description: `app env-example` writes it into .env.example.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    environment: Environment = "development"
    """development, test or production (production refuses unsafe settings)"""
    debug: bool = False
    """FastAPI debug mode (tracebacks in responses); refused in production"""
    app_name: str = "app"
    """the service's name in logs and metrics"""
    api_title: str = "App API"
    """the OpenAPI document's title"""
    api_version: str = "1.0.0"
    """the API's version: OpenAPI, /health, and the start and stop log lines"""
    api_description: str = (
        "Accounts, users and items: the foundation of a production FastAPI service."
    )
    """the OpenAPI document's description"""
    # deploy/nginx/nginx.conf names the SSE route under the default (/api/v1/notifications/
    # stream): change that location too when changing this.
    api_v1_prefix: str = Field(default="/api/v1", pattern=_PREFIX_PATTERN, max_length=100)
    """prefix of every v1 route and of the URLs handed out; deploy/nginx assumes /api/v1"""
    secret_key: SecretStr | None = None
    """signs tokens and sessions; unset (not in production): generated into APP_DATA_DIR"""
    app_data_dir: Path = Path("./var")
    """where the SQLite database, the generated key, the outbox and local uploads live"""
    database_url: str | None = None
    """postgresql://... or any SQLAlchemy async URL; unset: SQLite in APP_DATA_DIR"""
    # All of a process's connections are pooled by default. An overflow connection is closed
    # as soon as it is returned while the pool is full, so under more concurrent requests
    # than the pool holds every overflow checkout was a new connection (TCP, SSL attempt,
    # startup, then close): 18% of users/me's CPU at 32 connections (bench/RESULTS.md).
    # Pooled connections open only when concurrency needs them and are kept.
    database_pool_size: int = Field(default=20, ge=1)
    """database connections a process keeps once opened (opened as load needs them)"""
    database_max_overflow: int = Field(default=0, ge=0)
    """connections opened beyond the pool under load, closed again at once, per process"""
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """wait for a free pooled connection; past it the request gets 503 with Retry-After"""
    # A ping is three round trips on asyncpg: pinging at every checkout doubled the cost of a
    # one-query request (issue 14). Idle connections are the ones a restart may have killed.
    database_ping_idle_seconds: float = Field(default=5.0, ge=0, le=3600)
    """PostgreSQL: ping a pooled connection before use if idle this long (0: at every use)"""
    # Below the idle timeouts of firewalls and PgBouncer-like proxies, which drop connections
    # silently; pre-ping catches the rest.
    database_pool_recycle_seconds: int = Field(default=1800, ge=1)
    """PostgreSQL: pooled connections older than this are replaced before use"""
    database_echo: bool | None = None
    """log every SQL statement; unset: on with DEBUG, else off"""

    jwt_issuer: str = "app"
    """the iss claim of tokens, checked on every token"""
    jwt_audience: str = "app-api"
    """the aud claim of tokens, checked on every token"""
    access_token_expire_minutes: int = Field(default=15, ge=1, le=24 * 60)
    """access token lifetime"""
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365)
    """a login session's lifetime"""
    require_verified_email: bool = False
    """item writes need a verified email"""
    user_items_max_per_page: int = Field(default=50, ge=1, le=100)
    """GET /users/{id}/items pages hold at most this many items (larger per_page is clamped)"""

    cors_origins: CommaList = []
    """comma-separated origins allowed by CORS; '*' with credentials is refused in production"""
    cors_allow_credentials: bool = True
    """CORS responses allow credentials (cookies, Authorization)"""
    allowed_hosts: CommaList = ["*"]
    """comma-separated hosts served (*.example.com allowed); others get 400, /health* excepted"""
    trusted_proxies: CommaList = []
    """IPs/CIDRs of proxies (nginx, load balancer) whose X-Forwarded-For/-Proto/-Host we believe"""
    docs_enabled: bool | None = None
    """serve /docs, /redoc and /openapi.json; unset: on, except in production"""
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """larger request bodies get 413 while they arrive (uploads have their own cap)"""
    session_cookie_name: str = "app_session"
    """name of the signed session cookie"""
    session_cookie_max_age_seconds: int = Field(default=14 * 24 * 3600, ge=60)
    """lifetime of the signed session cookie"""

    # Files (FILES-1..3). Uploads have their own cap, checked while the file arrives.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """largest file an upload accepts; 413 the moment the file passes it"""
    upload_allowed_extensions: CommaList = list(VERIFIABLE_UPLOAD_EXTENSIONS)
    """comma-separated file extensions uploads accept (among png, jpg, jpeg, gif, webp, pdf,
    zip, txt, csv: the types whose content is checked); item images: the image ones of these"""
    storage_backend: Literal["local", "s3"] = "local"
    """local (a directory) or s3 (any S3-compatible bucket)"""
    storage_local_dir: Path | None = None  # default: APP_DATA_DIR/uploads
    """where local objects live; unset: APP_DATA_DIR/uploads"""
    storage_s3_bucket: str | None = None
    """the bucket (required with STORAGE_BACKEND=s3)"""
    storage_s3_endpoint_url: str | None = None
    """an S3 endpoint other than AWS (MinIO, Ceph, R2, ...)"""
    storage_s3_region: str = "us-east-1"
    """the bucket's region"""
    # Usually left unset: boto3 then reads AWS_* variables, its config files or instance roles.
    storage_s3_access_key_id: str | None = None
    """S3 key ID; usually unset: boto3 reads AWS_* variables, its config files or instance roles"""
    storage_s3_secret_access_key: SecretStr | None = None
    """S3 secret key; usually unset, like STORAGE_S3_ACCESS_KEY_ID"""
    presigned_url_expire_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    """lifetime of GET /files/{id}/url links (S3 only)"""
    # Per-user quotas (issue 13 item 7): every live file the user owns counts (uploads, image
    # outputs, item variants, report files); uploads and image jobs are refused past them.
    user_storage_quota_bytes: int = Field(default=1024**3, ge=0)
    """bytes of live files per user; an upload that would pass it gets 413 (admins included)"""
    user_max_files: int = Field(default=1000, ge=0)
    """live files per user; an upload past it gets 413 (admins included)"""
    export_batch_size: int = Field(default=1000, ge=1, le=100_000)
    """rows fetched and encoded per batch in exports"""
    # Streams (exports, file downloads) hold no database connection while the client reads,
    # but each costs a socket and a task: capped per user, across processes with Redis.
    max_concurrent_streams_per_user: int = Field(default=3, ge=1)
    """export and file downloads one user may have running at once; more get 429"""
    stream_write_timeout_seconds: float = Field(default=60.0, gt=0)
    """a download whose client reads nothing for this long is cut off"""
    stream_lease_seconds: float = Field(default=60.0, ge=3)
    """with Redis, how long a download's slot outlives a dead process"""
    # Many exports starting at once would otherwise queue their batch queries on the pool
    # ahead of ordinary requests (measured: 28 starting exports on a pool of 5 pushed other
    # checkouts past the pool timeout). Keep it below DATABASE_POOL_SIZE.
    stream_database_concurrency: int = Field(default=2, ge=1)
    """export batch queries running at once per process; the rest of the pool is for requests"""

    # Images (JOBS-4, ITEMS-4). Pillow refuses images above this many pixels (decompression
    # bombs); every step of a pipeline stays under it too. Pillow's own default is ~89M.
    image_max_pixels: int = Field(default=40_000_000, ge=1024)
    """Pillow's decompression-bomb limit; larger sources or results fail the task"""
    image_max_source_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """largest source image read from storage or fetched from a URL"""
    image_fetch_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    """the whole URL fetch of an image source (DNS, redirects, body)"""
    image_fetch_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """connecting to an image URL's host (each redirect hop)"""
    image_fetch_read_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """longest silence while reading an image URL's answer"""
    # URL sources may only resolve to public addresses; these CIDRs open an intranet range
    # (cloud metadata addresses stay refused whatever is listed here).
    ssrf_allowed_networks: CommaList = []
    """CIDRs an image URL may reach although not public; cloud metadata addresses stay refused"""

    redis_url: str | None = None
    """Redis for rate limits, cache, pub/sub and the job broker; unset: in-process state"""
    redis_max_connections: int = Field(default=100, ge=1)
    """Redis connections per process"""
    # Cached responses never go to REDIS_URL: that instance holds the broker and security
    # state and must not evict, so anything clients can multiply there would block logins.
    cache_redis_url: str | None = None
    """a Redis only for cached responses (maxmemory + allkeys-lru); unset: process memory"""
    cache_memory_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    """byte budget of the in-process cache (keys + values + per-entry overhead)"""
    # Revocation elsewhere reaches a process by pub/sub at once; this bounds it when that event
    # is lost (issue 14: a session ends everywhere within 1 s), so it can't be set above 1 s.
    auth_snapshot_local_seconds: float = Field(default=0.5, ge=0, le=1.0)
    """an API process reuses a session's state read from Redis this long (0: never)"""
    auth_snapshot_local_max_entries: int = Field(default=10_000, ge=1, le=1_000_000)
    """sessions whose state an API process keeps in memory (see above)"""
    cache_list_max_page: int = Field(default=10, ge=0, le=100_000)
    """list pages beyond this one are read from the database, never cached"""

    rate_limit_enabled: bool = True
    """the global per-client rate limit"""
    rate_limit_default: str = "600/minute"
    """requests per client address, every route but /health* and /metrics"""
    # Per-client limits count per IPv4 address and per IPv6 network of this prefix length: a
    # host is handed a whole /64, so a limit per IPv6 address gives it 2^64 budgets.
    rate_limit_ipv6_prefix: int = Field(default=64, ge=32, le=128)
    """IPv6 clients are rate limited per network of this prefix length (IPv4: per address)"""
    rate_limit_login: str = "10/minute"
    """login attempts per client address"""
    # Failed logins, not attempts: a success costs nothing, and resets the client's count.
    # Counted per (account, client), so a stranger's guesses never lock the owner out.
    rate_limit_login_account: str = "5/minute"
    """failed logins per account from one client address"""
    # Against guessing from many addresses. When spent, the owner gets in through the password
    # reset mail: a completed reset starts this count again.
    rate_limit_login_account_global: str = "50/hour"
    """failed logins per account from all clients together"""
    rate_limit_register: str = "5/minute"
    """registrations per client address"""
    rate_limit_password_reset: str = "5/hour"
    """password reset and verification mails per client address, and per target address"""
    rate_limit_test_email: str = "10/hour"
    """admin test mails per admin (a `to` address also counts against that mailbox's budget)"""
    rate_limit_search: str = "30/minute"
    """search requests per client address (GET /api/v1/search)"""
    # The schema states the ceiling (200); this may only lower it.
    search_query_max_chars: int = Field(default=200, ge=1, le=200)
    """longest search query accepted, in characters (longer: 422)"""

    # Posts and comments (issue 15). Sizes may only be narrowed below the schema's own caps
    # (title 200, post 20,000, comment 4,000 characters); a longer text gets 422.
    post_title_max_chars: int = Field(default=200, ge=1, le=200)
    """characters in a post's title"""
    post_body_max_chars: int = Field(default=20_000, ge=1, le=20_000)
    """characters in a post's body"""
    comment_body_max_chars: int = Field(default=4_000, ge=1, le=4_000)
    """characters in a comment"""
    rate_limit_post_write: str = "20/minute"
    """post creates, edits and deletes per user"""
    rate_limit_comment_write: str = "60/minute"
    """comment creates, edits and deletes per user"""

    # Background jobs (Celery). Unset broker: REDIS_URL if set, else the embedded broker (a
    # SQLite file under APP_DATA_DIR). Results: the task API reads the `jobs` table, so by
    # default Celery stores none (a Redis restart then cannot fail a task that did its work).
    celery_broker_url: str | None = None
    """where tasks are queued; unset: REDIS_URL, else a SQLite file in APP_DATA_DIR"""
    celery_result_backend: str | None = None
    """Celery's result store, for Celery's own tools (the task API reads jobs); unset: none"""
    # Soft limit raises inside the task (it can clean up); the hard limit kills the process.
    job_soft_time_limit_seconds: int = Field(default=300, ge=1)
    """a task is told to stop (an exception inside it) after this"""
    job_time_limit_seconds: int = Field(default=360, ge=1)
    """a task's process is killed after this"""
    # A Redis-broker message not acknowledged within this is delivered again: it must exceed
    # the longest task, or a slow task would run twice.
    celery_visibility_timeout_seconds: int = Field(default=3600, ge=1)
    """Redis broker: an unacknowledged task is delivered again after this"""
    celery_result_expires_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """how long Celery keeps task results"""
    # Writing a job's start, progress and end rides out a database restart: transient errors
    # (refused, shutting down, dropped connection) are retried with backoff for this long.
    job_state_retry_seconds: float = Field(default=60.0, ge=0)
    """a job's state write retries a restarting database for this long"""
    # A task body that fails on a database or broker outage runs again (tasks are idempotent),
    # after 1, 2, 4, ... seconds, at most this many times.
    job_transient_max_retries: int = Field(default=3, ge=0)
    """a task failing on a database/broker outage is retried this many times"""
    # The reconciler (app/jobs/reconcile.py) finds jobs whose message the broker lost (a Redis
    # wiped or restarted without its file) or whose worker died holding it, and sends them
    # again or fails them. It runs when a worker starts and every interval (beat).
    job_reconcile_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    """how often beat runs the job reconciler (lost messages, dead workers' jobs)"""
    # A queued job younger than this is left alone: its message may still be on its way.
    job_reconcile_grace_seconds: float = Field(default=60.0, ge=0)
    """the reconciler looks only at queued/running jobs older than this"""
    job_reconcile_max_requeues: int = Field(default=3, ge=0)
    """a lost job is sent again this many times, then failed with a reason its owner sees"""
    job_reconcile_inspect_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    """how long the reconciler waits for live workers to say which jobs they hold"""
    job_reconcile_batch_size: int = Field(default=500, ge=1)
    """most jobs the reconciler looks at per run (oldest first)"""
    # Fairness (issue 13 item 7): jobs a user may have queued or running at once (PENDING,
    # STARTED, PROGRESS, RETRY), and of those, image jobs fetching a URL, which run on their own
    # queue: a user's hung upstreams hold at most that many worker slots.
    user_max_active_jobs: int = Field(default=5, ge=1)
    """queued or running jobs per user; one more gets 429 with Retry-After"""
    user_max_active_url_image_jobs: int = Field(default=1, ge=1)
    """queued or running image jobs from a URL per user; one more gets 429 with Retry-After"""
    user_jobs_retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    """the Retry-After of a 429 for too many active jobs"""
    # A pool process is replaced after this many tasks, so a leak in a library (image
    # decoders, XLSX writers) can't grow a worker without bound.
    celery_worker_max_tasks_per_child: int | None = Field(default=1000, ge=1)
    """tasks a worker process runs before it is replaced; unset: never replaced"""
    celery_result_backend_max_retries: int = Field(default=3, ge=0, le=100)
    """with CELERY_RESULT_BACKEND: retries of a result write that failed on a connection error"""
    celery_worker_concurrency: int | None = Field(default=None, ge=1)  # default: CPU count
    """worker processes (app worker -c N overrides); unset: the CPU count"""
    # How often the embedded broker's worker looks for new messages (it cannot be woken).
    celery_embedded_poll_seconds: float = Field(default=0.1, gt=0, le=5)
    """how often the embedded broker's worker looks for tasks"""
    # Realtime (RT-1..5). Browsers may open WebSockets from any page (Starlette's CORS does
    # not cover them), so the Origin is checked against CORS_ORIGINS, these, and our own host.
    ws_allowed_origins: CommaList = []
    """origins allowed to open WebSockets besides CORS_ORIGINS and the service's own host"""
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=1024)  # uvicorn's default: 16 MiB
    """largest WebSocket frame; larger ones close the socket with 1009"""
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    """interval of WebSocket protocol pings"""
    ws_ping_timeout_seconds: float = Field(default=20.0, gt=0)
    """a peer that doesn't answer a ping within this is closed"""
    ws_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    """a WebSocket whose client sends nothing for this long is closed"""
    ws_auth_timeout_seconds: float = Field(default=10.0, gt=0)
    """time to authenticate after connecting without a token (then 4401)"""
    ws_send_queue_size: int = Field(default=256, ge=1)
    """frames buffered per WebSocket or SSE client; one that falls further behind is closed"""
    ws_max_connections_per_user: int = Field(default=10, ge=1)
    """WebSockets and SSE streams per user; more are closed with 1008"""
    # With Redis the cap holds across processes: each connection holds a lease renewed a few
    # times per this period; a crashed process's leases lapse after it.
    ws_connection_lease_seconds: float = Field(default=60.0, ge=3)
    """with Redis, how long a connection's slot outlives a dead process"""
    # Revocation reaches live connections at once through the hub; this re-check (one cache
    # lookup per live session) bounds how long one lives on when that event is lost.
    ws_session_recheck_seconds: float = Field(default=5.0, gt=0, le=300)
    """how often WebSockets and SSE streams re-check their session (ended ones close, 4401)"""
    chat_message_max_length: int = Field(default=4000, ge=1)
    """characters per chat message"""
    chat_presence_max_members: int = Field(default=100, ge=0)  # per process (see chat.py)
    """above this many members of a room in one process, joins and leaves are not broadcast"""
    rate_limit_chat_message: str = "30/10 seconds"
    """chat frames (messages, typing) per user"""
    # Each connect costs a token check, database reads and, in chat, a join broadcast: counted
    # before the handshake is accepted (a refusal is an HTTP 429, not an open socket).
    rate_limit_realtime_connect_user: str = "30/minute"
    """WebSocket handshakes and SSE connects per user (all processes, with Redis)"""
    rate_limit_realtime_connect_client: str = "60/minute"
    """WebSocket handshakes and SSE connects per client address"""
    rate_limit_chat_presence: str = "10/10 seconds"
    """presence frames (typing) per chat connection; joins and leaves count as connects"""
    # After the hub's Redis connection comes back, each live connection reads what it missed
    # from the database; this many such reads run at once per process.
    realtime_resync_concurrency: int = Field(default=4, ge=1, le=64)
    """after a pub/sub reconnect, database catch-up reads running at once per process"""
    notification_relay_interval_seconds: float = Field(default=0.5, gt=0)
    """embedded mode: how often the API looks for notifications stored by other processes"""
    # How long a stopping process gives its WebSockets and SSE streams to close (1001).
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)
    """on SIGTERM/SIGINT, how long WebSockets (closed with 1001) and SSE streams get to finish"""
    # uvicorn's timeout_keep_alive (its default: 5 s). It must exceed the keep-alive of the
    # proxy's upstream connections (nginx `keepalive_timeout 60s`): else the app closes an idle
    # connection just as the proxy reuses it, and the proxy answers 502.
    http_keepalive_timeout_seconds: int = Field(default=75, ge=1)
    """idle keep-alive connections close after this; keep it above the proxy's (nginx: 60)"""
    # Enforced by `app api`'s HTTP protocol (app/core/http_server.py), not by a bare uvicorn:
    # httptools (llhttp) has no size limit of its own; 48 MiB of headers cost 300 MiB of memory.
    http_max_request_line_bytes: int = Field(default=8 * 1024, ge=256)
    """`app api`: a longer request line (method, URL, version) gets 414"""
    http_max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """`app api`: more header bytes in total (names and values) get 431"""
    http_max_headers: int = Field(default=100, ge=8)
    """`app api`: more header lines than this get 431"""
    http_header_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    """`app api`: a connection whose request head is not complete within this is closed (408)"""
    http_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """`app api`: a request body must progress by HTTP_BODY_MIN_RATE_BYTES per second over each
    window this long (a window with no byte at all included), or the connection is closed (408)"""
    http_body_min_rate_bytes: int = Field(default=1024, ge=0)
    """`app api`: the slowest body upload accepted, in bytes per second (see HTTP_BODY_TIMEOUT)"""
    http_max_connections: int = Field(default=1000, ge=1)
    """`app api`: open connections per process (WebSockets and idle keep-alive included); the
    next ones get 503 with Retry-After"""
    # App-level: checked by BodyLimitsMiddleware before FastAPI parses and pydantic validates,
    # whatever the server. A body of 500 000 unknown keys kept a process busy ~10 s.
    json_max_depth: int = Field(default=32, ge=2, le=500)
    """a JSON body nested deeper than this (objects and arrays) gets 413"""
    json_max_items: int = Field(default=10_000, ge=10)
    """a JSON body with more values than this (object members plus array elements) gets 413"""
    validation_max_errors: int = Field(default=20, ge=1, le=1000)
    """a 422 lists at most this many errors, then says how many more there were"""

    # Maintenance (JOBS-6). Beat sends a heartbeat this often; readiness calls the jobs side
    # stale (and the service degraded) when the last one is older than the threshold, which
    # must leave room for a busy maintenance queue.
    heartbeat_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    """how often beat sends the maintenance heartbeat"""
    heartbeat_stale_seconds: float = Field(default=120.0, gt=0)
    """readiness calls the jobs side stale (service degraded) past this heartbeat age"""
    readiness_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    """/health/ready reuses its answer this long per process, so probes can't load the database"""
    # Ended sessions (expired or revoked) and their refresh tokens are deleted this long after
    # they end. Activity reports count logins from these rows, so reports reaching further back
    # than the retention (plus the refresh lifetime) see fewer sessions.
    auth_session_retention_days: float = Field(default=90.0, ge=0)
    """ended sessions and their refresh tokens are purged this long after they end"""
    # Unlinked files, row-less objects and temp files older than this go in the daily purge.
    purge_files_older_than_hours: float = Field(default=24.0, ge=0)
    """cutoff of the scheduled purge of unlinked files and temp files"""
    # Finished job rows (the task API's history, reports' listing) are deleted this long after
    # they finish; files they produced stay with their owners.
    job_retention_days: float = Field(default=30.0, ge=0)
    """finished job rows are purged this long after they finish (their files stay)"""
    # How often each API process refreshes its job gauges (queue depth, jobs per state).
    job_metrics_refresh_seconds: float = Field(default=15.0, gt=0)
    """how often each API process refreshes its job gauges"""
    # A file a worker touches from its consumer's event loop, and beat on every scheduler tick,
    # at least this often: a container probe checks its age (unset: no file is kept).
    liveness_file: Path | None = None
    """worker/beat touch this file while alive (a container probe checks its age); unset: off"""
    liveness_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    """how often the liveness file is touched"""
    # How long `app api|serve|worker|beat|migrate` wait for DATABASE_URL / REDIS_URL to answer
    # before giving up with one line and exit status 3 (a stack starting all at once).
    startup_timeout_seconds: float = Field(default=30.0, ge=0)
    """how long commands wait for the database and Redis at start before exiting with status 3"""

    # Email (JOBS-2). Without SMTP_HOST, mail is written to APP_DATA_DIR/outbox as .eml files
    # and logged (embedded mode; production warns at start). With it, mail goes out by SMTP:
    # "starttls" upgrades a plain connection (port 587), "tls" is implicit TLS (port 465),
    # "none" is plain text (a local relay or a test sink only).
    smtp_host: str | None = None
    """the SMTP server; unset: mail goes to APP_DATA_DIR/outbox and the log"""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    """the SMTP server's port"""
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    """starttls (port 587), tls (implicit, port 465) or none (a local relay only)"""
    smtp_username: str | None = None
    """SMTP login (after STARTTLS)"""
    smtp_password: SecretStr | None = None
    """SMTP password"""
    smtp_ca_file: Path | None = None  # trust a private CA (else the system's roots)
    """a PEM file of CAs to trust for SMTP; unset: the system's roots"""
    smtp_timeout_seconds: float = Field(default=30, gt=0, le=300)
    """SMTP timeout per connection step"""
    email_from: str = "App <noreply@localhost>"
    """From header and envelope sender; its domain goes into Message-IDs"""
    # Links in mails point here: {base}/verify-email?token=..., {base}/reset-password?token=...
    public_base_url: str = "http://127.0.0.1:8000"
    """base of links in mail ({base}/verify-email?token=..., {base}/reset-password?token=...)"""
    # Transient SMTP failures (4xx, connection errors) are retried with exponential backoff
    # and jitter, at most this many times; then the mail is recorded as failed.
    email_max_retries: int = Field(default=6, ge=0, le=50)
    """retries of a transient SMTP failure, with exponential backoff and jitter"""
    email_retry_backoff_seconds: float = Field(default=10, gt=0)
    """base delay of the first mail retry"""
    email_retry_backoff_max_seconds: float = Field(default=600, gt=0)
    """longest delay between mail retries"""
    # A claimed mail is someone's to send for this long; after it, a crashed sender's mail is
    # claimed again (the conditional commit keeps a slow live sender from sending it twice).
    email_lease_seconds: int = Field(default=120, ge=1)
    """how long a claimed mail is its sender's before a crashed sender's mail is claimed again"""
    # The sweep re-sends mail still pending this long after it was due (an enqueue lost
    # between the commit and the broker).
    email_sweep_after_seconds: int = Field(default=300, ge=1)
    """the outbox sweep re-sends mail pending this long past its due time"""
    email_verify_token_expire_minutes: int = Field(default=24 * 60, ge=1)
    """lifetime of email verification links"""
    # How mail leaves: "auto" is SMTP with SMTP_HOST set, else the outbox directory; "http"
    # posts each mail as JSON to a transactional-mail API (EMAIL_HTTP_URL, with the key as a
    # bearer token and the Message-ID as Idempotency-Key, so a retried post is one mail).
    email_backend: Literal["auto", "smtp", "http", "file"] = "auto"
    """auto (SMTP when SMTP_HOST is set, else files in APP_DATA_DIR/outbox), smtp, http or file"""
    email_http_url: str | None = None
    """the HTTP backend: the provider's send endpoint (https://.../emails)"""
    email_http_api_key: SecretStr | None = None
    """the HTTP backend: the provider's API key, sent as a bearer token (never logged)"""
    email_http_timeout_seconds: float = Field(default=15, gt=0, le=120)
    """the HTTP backend: timeout of one post (connect, write and read each)"""
    # Free-form mail (POST /api/v1/email/send): a user to their own verified address, an admin
    # to a bounded list, one outbox row per recipient.
    email_send_max_recipients: int = Field(default=50, ge=1, le=200)
    """recipients of one admin free-form mail (one outbox row each)"""
    email_send_max_body_chars: int = Field(default=50_000, ge=1, le=100_000)
    """longest text or HTML part of a free-form mail"""
    rate_limit_email_send: str = "5/hour"
    """free-form mails a user sends to their own address"""
    rate_limit_email_send_admin: str = "20/hour"
    """free-form mails per admin (each one up to EMAIL_SEND_MAX_RECIPIENTS recipients)"""
    report_daily_mail_admins: bool = True
    """mail the scheduled daily report to every active, verified admin (links, and the XLSX)"""
    # The workbook travels base64 in each admin's outbox row until the mail is final.
    report_mail_attach_max_bytes: int = Field(default=2 * 1024 * 1024, ge=0, le=20 * 1024 * 1024)
    """the daily report mail attaches the XLSX up to this size (0: links only)"""
    user_report_max_days: int = Field(default=90, ge=1, le=366)
    """longest period (days back from today) of a per-user activity report"""
    password_reset_token_expire_minutes: int = Field(default=60, ge=1, le=24 * 60)
    """lifetime of password reset links"""

    # Orders (issue 15). The schema caps lines at 100 and quantities at 1,000,000: these may
    # only lower the caps (a higher value would promise what the schema refuses).
    order_max_lines: int = Field(default=100, ge=1, le=100)
    """line items per order"""
    order_max_quantity: int = Field(default=1_000_000, ge=1, le=1_000_000)
    """units per order line"""
    # An Idempotency-Key is remembered per user for this long: a retry within it returns the
    # order it made (the same body) or 409 (another body); after it the key is new again.
    order_idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    """how long an order's Idempotency-Key answers with that order"""
    # The hourly purge clears expired keys in batches of this many orders, one commit each, so
    # no single transaction holds a large share of the table.
    order_idempotency_purge_batch_size: int = Field(default=1000, ge=1, le=100_000)
    """orders whose expired Idempotency-Key one purge transaction clears"""
    # Totals in JPY: rates from a Frankfurter-style provider (GET {url}?from=USD&to=JPY ->
    # {"rates": {"JPY": 151.2}}) over the shared outbound HTTP client; unset: the static
    # table below, so embedded mode works offline.
    exchange_rates_url: str | None = None
    """exchange-rate provider (GET ?from=XXX&to=JPY); unset: EXCHANGE_RATES_STATIC"""
    exchange_rates_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    """a provider slower than this fails the request with 504"""
    exchange_rates_cache_seconds: float = Field(default=600.0, ge=0, le=24 * 3600)
    """how long a fetched rate is reused (by every process sharing REDIS_URL)"""
    exchange_rates_static: str = Field(
        default="USD=150.00,EUR=160.00",
        pattern=r"^[A-Z]{3}=[0-9]+(\.[0-9]+)?(,[A-Z]{3}=[0-9]+(\.[0-9]+)?)*$",
    )
    """yen per unit of each currency when no provider is set (CUR=rate,...)"""

    metrics_enabled: bool = True
    """serve /metrics (Prometheus); off: no such route (404)"""
    metrics_token: SecretStr | None = None
    """production serves /metrics only with Authorization: Bearer <token>"""
    sentry_dsn: SecretStr | None = None
    """report errors to Sentry (uv sync --extra sentry)"""
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)
    """share of requests traced by Sentry (0 to 1)"""
    # FastAPI's native OpenTelemetry layer looks up the global providers on every request
    # (3.5 µs, a tenth of a bare /health) to find none unless an SDK was set up. Off, it
    # reads three flags instead.
    opentelemetry_enabled: bool = False
    """FastAPI's own OpenTelemetry spans and metrics, sent to the providers an SDK set up"""

    first_superuser_username: str | None = None
    """superuser created by serve, migrate and create-superuser if missing"""
    first_superuser_email: str | None = None
    """that superuser's email"""
    first_superuser_password: SecretStr | None = None
    """that superuser's password"""

    # A full collection walks every object the process holds (~150 ms under load) and frees
    # almost nothing: app/core/gc_tuning.py. 700/10/10 and false are CPython's defaults.
    gc_freeze_after_startup: bool = True
    """move what startup built out of the garbage collector's reach (gc.freeze())"""
    gc_threshold_gen0: int = Field(default=50_000, ge=100, le=10_000_000)
    """allocations between young garbage collections (CPython: 700)"""
    gc_threshold_gen1: int = Field(default=50, ge=1, le=10_000)
    """young collections between middle ones (CPython: 10)"""
    gc_threshold_gen2: int = Field(default=100, ge=1, le=10_000)
    """middle collections between full ones (CPython: 10)"""

    log_level: str = "INFO"
    """log level (DEBUG, INFO, WARNING, ...)"""
    access_log: bool = True
    """one log line per request (route template, status, duration, user, request ID)"""
    log_format: Literal["console", "json"] | None = None  # default: json in production
    """json or console; unset: json in production, else console"""
    # Threads allowed to hash passwords at once. One core stays free for the event loop, so a
    # login flood slows logins down instead of every other request.
    password_hash_concurrency: int = Field(default_factory=_cores_but_one, ge=1)
    """password hashes computed at once; unset: CPU count - 1 (a core stays with the event loop)"""
    # Past this many waiting per hashing thread, a login (or sign-up, or password change) is
    # refused at once with 503 and Retry-After instead of queueing: a flood then costs the
    # flooder, and admitted logins still answer within about a second (8 x ~20-50 ms a hash).
    password_hash_max_waiting_per_thread: int = Field(default=8, ge=1, le=1000)
    """hashes allowed to wait per hashing thread; past it, 503 with Retry-After at once"""
    # Argon2id cost: OWASP's baseline (19 MiB, 2 passes, 1 lane), about 20 ms per hash on one
    # core. Raising these upgrades stored hashes at each user's next login.
    argon2_memory_kib: int = Field(default=19_456, ge=8_192)
    """Argon2id memory cost (OWASP baseline); raising it rehashes at next login"""
    argon2_time_cost: int = Field(default=2, ge=1)
    """Argon2id passes; raising it rehashes at next login"""

    @field_validator(
        "database_url",
        "redis_url",
        "cache_redis_url",
        "sentry_dsn",
        "metrics_token",
        "celery_broker_url",
        "celery_result_backend",
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "smtp_ca_file",
        "email_http_url",
        "email_http_api_key",
        "liveness_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `REDIS_URL=` in a .env or compose file means "not set", not "a URL that is empty".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("*", mode="after")
    @classmethod
    def _rate_limits_parse(cls, value: object, info: ValidationInfo) -> object:
        # Every RATE_LIMIT_* text is refused at start, not on the first request of its route.
        if isinstance(value, str) and (info.field_name or "").startswith("rate_limit_"):
            try:
                parse_rate(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit like '30/minute': {value!r}") from exc
        return value

    @field_validator(
        "cors_origins",
        "allowed_hosts",
        "trusted_proxies",
        "ws_allowed_origins",
        "ssrf_allowed_networks",
        "upload_allowed_extensions",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit_post_write", "rate_limit_comment_write")
    @classmethod
    def _is_a_rate(cls, value: str) -> str:
        # Parsed per request by their routes: a typo must stop the start, not answer 500.
        parse_rate(value)  # ValueError names the text
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

    @field_validator("upload_allowed_extensions")
    @classmethod
    def _verifiable_extensions(cls, value: list[str]) -> list[str]:
        chosen = [extension.lower().lstrip(".") for extension in value]
        unknown = sorted(set(chosen) - set(VERIFIABLE_UPLOAD_EXTENSIONS))
        if unknown:
            raise ValueError(
                f"cannot check the content of {', '.join(unknown)} files; choose among"
                f" {', '.join(VERIFIABLE_UPLOAD_EXTENSIONS)}"
            )
        return chosen

    @field_validator("ssrf_allowed_networks", "trusted_proxies")
    @classmethod
    def _networks_are_cidrs(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _prefixes_do_not_overlap(self) -> "Settings":
        v1, v2 = self.api_v1_prefix + "/", API_V2_PREFIX + "/"
        if v1.startswith(v2) or v2.startswith(v1):
            raise ValueError(f"API_V1_PREFIX must not overlap the v2 routes' {API_V2_PREFIX}")
        return self

    def api_path(self, path: str) -> str:
        """`path` ("/tasks/abc") under API_V1_PREFIX: every URL the API or a worker hands out."""
        return self.api_v1_prefix + path

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

    @model_validator(mode="after")
    def _mail_backend_is_configured(self) -> "Settings":
        if self.email_backend == "smtp" and not self.smtp_host:
            raise ValueError("EMAIL_BACKEND=smtp needs SMTP_HOST")
        if self.email_backend == "http" and not self.email_http_url:
            raise ValueError("EMAIL_BACKEND=http needs EMAIL_HTTP_URL")
        return self

    @property
    def mail_backend(self) -> Literal["smtp", "http", "file"]:
        """Where mail goes, "auto" resolved."""
        if self.email_backend == "auto":
            return "smtp" if self.smtp_host else "file"
        return self.email_backend

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
    def result_backend_url(self) -> str | None:
        """Only what the operator asked for: nothing in the app reads Celery's results."""
        return self.celery_result_backend

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
    def sql_echo(self) -> bool:
        return self.database_echo if self.database_echo is not None else self.debug

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
