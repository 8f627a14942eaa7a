"""`app ...`: run the service, migrate, create the first superuser, seed demo data."""

import asyncio
import atexit
import math
import os
import random
import shutil
import sys
import tempfile
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress

from app import models  # noqa: F401 - registers every table
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.migrate import upgrade_to_head

if TYPE_CHECKING:
    from app.files.service import PurgeReport

cli = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

Host = Annotated[str, typer.Option(help="Interface to bind")]
Port = Annotated[int, typer.Option(help="TCP port")]


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        console.print(f"[red]Refusing to start: invalid settings[/red]\n{exc}")
        raise typer.Exit(2) from exc


def _reachable(settings: Settings) -> Settings:
    """Wait (STARTUP_TIMEOUT_SECONDS at most) for the configured database and Redis, or exit 3."""
    from app.core.startup import Unreachable, wait_for_dependencies

    try:
        asyncio.run(wait_for_dependencies(settings))
    except Unreachable as exc:
        typer.echo(str(exc), err=True)  # one line, unwrapped (rich would fold it)
        raise typer.Exit(3) from None
    return settings


def _run_api(settings: Settings, *, host: str, port: int, workers: int, access_log: bool) -> None:
    # Workers share their Prometheus samples through files; a fresh directory per run, so a
    # previous run's dead processes don't haunt the figures.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir is None and workers > 1:  # one process needs no files (and is faster)
        metrics_dir = tempfile.mkdtemp(prefix="app-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
    if not access_log:
        os.environ["ACCESS_LOG"] = "false"  # read by each worker's settings
        get_settings.cache_clear()  # with one worker, uvicorn runs the app in this process
    configure_logging(settings)
    from app.core.http_server import PROTOCOL

    uvicorn.run(
        "app.main:serve_app",
        factory=True,
        # uvicorn's httptools protocol plus header/line limits, read timeouts and a connection
        # cap (HTTP_* settings): httptools has none of them. A string, so workers import it.
        http=PROTOCOL,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # ours (structlog) is set up in each worker by serve_app
        access_log=False,  # the app writes its own access log, with request IDs
        # Forwarded headers are believed only from TRUSTED_PROXIES, by the app (app.core.proxy),
        # whichever server runs it.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=settings.http_keepalive_timeout_seconds,
        timeout_graceful_shutdown=30,
        # With --workers, uvicorn kills a child that hasn't answered its health ping within
        # this (default 5 s). A child starting on a busy machine (imports, the database wait
        # of STARTUP_TIMEOUT_SECONDS) took longer and was killed in a loop; give it that long.
        timeout_worker_healthcheck=max(5, math.ceil(settings.startup_timeout_seconds)),
        # WebSockets (RT-5): a frame cap far below uvicorn's 16 MiB, protocol pings that close
        # dead peers, and no per-message compression: chat frames are small, and compressing
        # each one once per client costs CPU and a zlib context (~100 KiB) per connection.
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_per_message_deflate=False,
    )


@cli.command()
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    access_log: Annotated[bool, typer.Option(help="Log each request")] = True,
    jobs: Annotated[bool, typer.Option(help="Also run a Celery worker and beat")] = True,
) -> None:
    """The whole service on one machine: migrate, then the API, a worker and the scheduler."""
    from app.jobs.processes import Child, Supervisor

    settings = _reachable(_settings())
    console.print(f"Database: [bold]{_redacted(settings.sqlalchemy_url)}[/bold]")
    console.print(f"Job broker: [bold]{_redacted(settings.broker_url)}[/bold]")
    upgrade_to_head(settings)
    _ensure_superuser_from_settings(settings)
    children = (
        [
            Child("worker", ["worker"], stop_timeout=settings.job_time_limit_seconds + 5),
            Child("beat", ["beat"], stop_timeout=10),
        ]
        if jobs
        else []
    )
    configure_logging(settings)  # the supervisor logs the children's starts and stops
    with Supervisor(children):
        _run_api(settings, host=host, port=port, workers=1, access_log=access_log)


@cli.command()
def worker(
    queues: Annotated[
        str, typer.Option("-Q", "--queues", help="Comma-separated queues (default: all)")
    ] = "",
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", min=1, help="Processes (default: CPUs)")
    ] = None,
) -> None:
    """A Celery worker for the given queues."""
    from app.jobs.celery_app import QUEUES

    settings = _reachable(_settings())
    configure_logging(settings)
    chosen = [name.strip() for name in queues.split(",") if name.strip()] or list(QUEUES)
    unknown = set(chosen) - set(QUEUES)
    if unknown:
        console.print(f"[red]Unknown queues: {', '.join(sorted(unknown))}[/red]")
        raise typer.Exit(2)
    # The app of `celery -A app.worker`: on the embedded broker its worker_init handler takes
    # the broker's lock and re-queues what a stopped worker left (exit 2 if the lock is held).
    from app.worker import celery

    argv = ["worker", "-Q", ",".join(chosen), "--loglevel", settings.log_level.upper()]
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if settings.embedded_broker:
        # Mingle, gossip and remote control need broadcast, which SQLite can't carry.
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    celery.worker_main(argv)


@cli.command()
def beat() -> None:
    """The Celery scheduler: sends the periodic maintenance tasks."""
    settings = _reachable(_settings())
    configure_logging(settings)
    settings.app_data_dir.mkdir(parents=True, exist_ok=True)
    from app.worker import celery  # the app of `celery -A app.worker beat`

    celery.Beat(loglevel=settings.log_level.upper()).run()


@cli.command()
def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[
        int, typer.Option(min=1, envvar="WEB_CONCURRENCY", help="Worker processes")
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log each request")] = True,
) -> None:
    """The API only (distributed mode). Does not migrate: run `app migrate` before a rollout."""
    _run_api(_reachable(_settings()), host=host, port=port, workers=workers, access_log=access_log)


@cli.command()
def migrate() -> None:
    """Apply database migrations, then create the superuser from settings if configured."""
    settings = _reachable(_settings())
    upgrade_to_head(settings)
    _ensure_superuser_from_settings(settings)
    console.print("[green]Database is at the latest revision.[/green]")


@cli.command("create-superuser")
def create_superuser(
    username: Annotated[str | None, typer.Option(help="Default: FIRST_SUPERUSER_USERNAME")] = None,
    email: Annotated[str | None, typer.Option(help="Default: FIRST_SUPERUSER_EMAIL")] = None,
    password: Annotated[
        str | None, typer.Option(help="Default: FIRST_SUPERUSER_PASSWORD, or asked for")
    ] = None,
) -> None:
    """Create the first superuser from options or settings (asks for a password on a terminal)."""
    settings = _settings()
    username = username or settings.first_superuser_username
    email = email or settings.first_superuser_email
    if password is None and settings.first_superuser_password is not None:
        password = settings.first_superuser_password.get_secret_value()
    if password is None and sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not (username and email and password):
        console.print("[red]Give --username, --email and --password (or FIRST_SUPERUSER_*).[/red]")
        raise typer.Exit(2)
    upgrade_to_head(settings)
    created = _create_superuser(settings, username, email, password)
    console.print(
        f"Superuser [bold]{username}[/bold] {'created' if created else 'already exists'}."
    )


def _ensure_superuser_from_settings(settings: Settings) -> None:
    password = settings.first_superuser_password
    if settings.first_superuser_username and settings.first_superuser_email and password:
        _create_superuser(
            settings,
            settings.first_superuser_username,
            settings.first_superuser_email,
            password.get_secret_value(),
        )


def _create_superuser(settings: Settings, username: str, email: str, password: str) -> bool:
    from app.auth import service as auth_service
    from app.core.db import create_engine, create_sessionmaker
    from app.core.errors import AppError
    from app.core.security import PasswordHasher

    async def run() -> bool:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                _, created = await auth_service.ensure_superuser(
                    session=session,
                    hasher=PasswordHasher.from_settings(settings),
                    username=username,
                    email=email,
                    password=password,
                )
                return created
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (ValidationError, AppError) as exc:
        console.print(f"[red]Cannot create the superuser:[/red] {exc}")
        raise typer.Exit(2) from exc


DEMO_PASSWORD = "Demo-password-1"
_WORDS = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
)  # fmt: skip


@cli.command()
def seed(
    users: Annotated[int, typer.Option(min=0, help="Demo users to create")] = 10,
    items: Annotated[int, typer.Option(min=0, help="Demo items to create")] = 100,
) -> None:
    """Fill the database with demo users and items (all users share one demo password)."""
    settings = _settings()
    upgrade_to_head(settings)
    asyncio.run(_seed(settings, users, items))
    console.print(f"Demo users log in as demo<N> with password [bold]{DEMO_PASSWORD}[/bold].")


async def _seed(settings: Settings, user_count: int, item_count: int) -> None:
    from sqlalchemy import func, select

    from app.auth.models import User
    from app.core.db import create_engine, create_sessionmaker
    from app.core.security import PasswordHasher
    from app.items.models import Currency, Item

    engine = create_engine(settings)
    rng = random.Random(42)  # noqa: S311 - demo data, not security
    batch = 500
    try:
        async with create_sessionmaker(engine)() as session:
            # One hash for all: hashing each demo password would take ~50 ms apiece.
            hashed = await PasswordHasher.from_settings(settings).hash(DEMO_PASSWORD)
            start = (await session.execute(select(func.count(User.id)))).scalar_one()
            with Progress(console=console) as progress:
                task = progress.add_task("users", total=user_count)
                for n in range(start, start + user_count):
                    session.add(
                        User(username=f"demo{n}", email=f"demo{n}@example.com",
                             hashed_password=hashed, full_name=f"Demo User {n}", is_verified=True)
                    )  # fmt: skip
                    if (n - start + 1) % batch == 0:
                        await session.commit()
                    progress.advance(task)
                await session.commit()
                owner_ids = (await session.execute(select(User.id))).scalars().all()
                task = progress.add_task("items", total=item_count)
                for n in range(item_count):
                    if not owner_ids:
                        break
                    title = f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} #{n}"
                    session.add(
                        Item(title=title, description=f"Demo item {n}",
                             price=Decimal(rng.randint(100, 100_000)) / 100,
                             currency=rng.choice(list(Currency)), owner_id=rng.choice(owner_ids))
                    )  # fmt: skip
                    if (n + 1) % batch == 0:
                        await session.commit()
                    progress.advance(task)
                await session.commit()
    finally:
        await engine.dispose()


@cli.command("purge-files")
def purge_files(
    older_than_hours: Annotated[
        float, typer.Option(min=0, help="Only what was unlinked or written before this")
    ] = 24.0,
) -> None:
    """Remove unlinked files (soft-deleted item images), objects without a row, stale temp files."""
    settings = _settings()
    report = asyncio.run(_purge_files(settings, older_than_hours))
    console.print(
        f"Removed {report.unlinked_rows} unlinked files, {report.orphan_objects} orphan objects"
        f" and {report.temp_files} stale temp files."
    )


async def _purge_files(settings: Settings, older_than_hours: float) -> "PurgeReport":
    from datetime import timedelta

    from app.core.db import create_engine, create_sessionmaker
    from app.core.storage import create_storage
    from app.files.service import purge_orphans

    engine = create_engine(settings)
    storage = create_storage(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            return await purge_orphans(
                session=session, storage=storage, older_than=timedelta(hours=older_than_hours)
            )
    finally:
        await storage.close()
        await engine.dispose()


@cli.command("env-example")
def env_example() -> None:
    """Print .env.example: every setting, its default and what it does."""
    from app.core.env_example import render

    sys.stdout.write(render())


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    cli()
