"""Error reporting to Sentry when SENTRY_DSN is set (install the `sentry` extra)."""

from app.core.config import Settings


def init_sentry(settings: Settings) -> bool:
    if settings.sentry_dsn is None:
        return False
    try:
        import sentry_sdk
    except ImportError as exc:  # a DSN without the SDK is a deployment mistake: say so loudly
        message = "SENTRY_DSN is set but sentry-sdk is missing: `uv sync --extra sentry`"
        raise RuntimeError(message) from exc
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        # No user identity, request bodies or local variables (they hold passwords and tokens)
        # leave the service; the SDK still scrubs its default denylist from what remains.
        data_collection={"user_info": False, "http_bodies": [], "stack_frame_variables": False},
    )
    return True
