"""structlog on top of the standard library: JSON lines in production, readable console in
development. Every line of a request carries its request ID (and the user, once known)."""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

from app.core.config import Settings
from app.core.request_context import REQUEST_ID, USER_ID

# Keys whose values never reach a log line, whoever passes them.
SECRET_KEYS = frozenset(
    {"password", "new_password", "current_password", "token", "access_token", "refresh_token",
     "authorization", "cookie", "secret", "secret_key", "api_key"}
)  # fmt: skip


# uvicorn logs each WebSocket handshake with its query string, where a client may have put
# its token (RT-1 accepts one there as a last resort).
_QUERY_SECRET = re.compile(
    rf"([?&](?:{'|'.join(map(re.escape, sorted(SECRET_KEYS)))})=)[^&\s\"']*", re.IGNORECASE
)


class ScrubQuerySecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn"):
            message = record.getMessage()
            scrubbed = _QUERY_SECRET.sub(r"\1[redacted]", message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event.keys() & SECRET_KEYS:
        event[key] = "[redacted]"
    event.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    return event


def add_request_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
        user_id = USER_ID.get()
        if user_id is not None:
            event.setdefault("user_id", user_id)
    return event


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_logs
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # A logger caches these processors at first use: configure before any logging, and
        # get loggers per app or per call (not at import) where tests reconfigure.
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Extras first, so the redaction below also covers `extra={...}` of stdlib loggers.
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ScrubQuerySecrets())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
    # uvicorn's own lines go through the same formatter; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outbound URL at INFO, query strings (and any keys in them) included.
    logging.getLogger("httpx").setLevel(logging.WARNING)
