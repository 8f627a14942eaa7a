"""structlog on top of the standard library: JSON lines in production, readable console in
development. Every line of a request carries its request ID (and the user, once known)."""

import json
import logging
import re
import sys
from collections.abc import MutableMapping, Sequence
from typing import IO, Any

import orjson
import structlog
from structlog.types import Processor

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


_ORJSON = orjson.OPT_NON_STR_KEYS  # the standard library writes them as strings too


def dumps(event: Any, **kwargs: Any) -> str:
    """JSON for a log line: orjson, about 6x faster than the standard library's encoder, which
    was 40% of an access line's cost under load (bench/RESULTS.md). orjson also writes dates,
    UUIDs, enums and dataclasses as their values where the standard library fell back to
    repr(). What it refuses (an integer over 64 bits, say) is written by the standard library,
    so no line is lost to the faster encoder."""
    try:
        return orjson.dumps(event, default=kwargs.get("default"), option=_ORJSON).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(event, **kwargs)


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


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]  # of IO[str]
    """The handler configure_logging installs: the standard library's stream handler, which
    can also write an event dict that has been through the shared processors already (see
    AccessLog). The formatter would turn such a record into exactly this line by its last
    processor alone (the two before it only remove its own keys and format exc_info)."""

    def __init__(self, stream: IO[str] | None, renderer: Processor) -> None:
        super().__init__(stream)
        self.renderer = renderer

    def write_event(self, logger: logging.Logger, event: MutableMapping[str, Any]) -> None:
        try:
            line = self.renderer(logger, "info", event)
            if isinstance(line, bytes | bytearray):  # a JSON renderer over orjson, say
                line = line.decode()
            with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
                self.stream.write(f"{line}{self.terminator}")
                self.flush()
        except Exception:  # as emit does: report to stderr, never raise into the caller
            self.handleError(logging.makeLogRecord({"name": logger.name, "msg": event}))


# Sentry's logging integration (and any like it) hooks this method to see every record.
_CALL_HANDLERS = logging.Logger.callHandlers


class AccessLog:
    """Writes what `structlog.stdlib.get_logger(name).info(event, **fields)` would, for less.

    Under configure_logging's setup it runs the shared processors itself. When the line can
    reach nothing but that setup's own LineHandler (no other handler or filter on the way, the
    standard library's dispatch not hooked), the handler renders and writes it straight away:
    the record path builds two LogRecords (the formatter copies one) and cost 29 µs a line in
    process against 10 (bench/RESULTS.md). Anything else, such as a test's log capture or an
    error tracker's hook, gets the record, as from any other logger. No bound logger to
    resolve, no context copy, no search for the caller's frame (no formatter prints it), and
    with the level above INFO no work at all. Any other structlog setup gets the ordinary call.
    Like a structlog logger cached on first use, it reads the setup once, at its first line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stdlib = logging.getLogger(name)
        self.chain: Sequence[Processor] | None = None  # None: not resolved yet
        self.direct = False

    def _resolve(self) -> Sequence[Processor]:
        config = structlog.get_config()
        processors: list[Processor] = list(config["processors"])
        self.direct = (
            isinstance(config["logger_factory"], structlog.stdlib.LoggerFactory)
            and bool(processors)
            and processors[-1] is structlog.stdlib.ProcessorFormatter.wrap_for_formatter
        )
        self.chain = processors[:-1]
        return self.chain

    def _sole_handler(self) -> LineHandler | None:
        """configure_logging's handler, if it is the only thing this logger's lines reach."""
        if logging.Logger.callHandlers is not _CALL_HANDLERS:
            return None
        logger = self.stdlib
        while logger.parent is not None:  # the loggers below the root: none may see it
            if logger.handlers or logger.filters or not logger.propagate:
                return None
            logger = logger.parent
        if logger.filters or len(logger.handlers) != 1:
            return None
        handler = logger.handlers[0]
        if (
            type(handler) is not LineHandler
            or handler.level > logging.INFO
            or any(type(f) is not ScrubQuerySecrets for f in handler.filters)  # lets ours by
        ):
            return None
        return handler

    def info(self, fields: dict[str, Any]) -> None:
        """`fields` in the order structlog would make them: the keywords, then "event"."""
        chain = self.chain if self.chain is not None else self._resolve()
        if not self.direct:
            event = fields.pop("event")
            structlog.stdlib.get_logger(self.name).info(event, **fields)
            return
        logger = self.stdlib
        if logger.disabled or not logger.isEnabledFor(logging.INFO):  # cached by the stdlib
            return
        event_dict: Any = fields
        for processor in chain:
            event_dict = processor(logger, "info", event_dict)
        handler = self._sole_handler()
        if handler is not None:
            handler.write_event(logger, event_dict)
            return
        record = logger.makeRecord(
            self.name, logging.INFO, "(unknown file)", 0, event_dict, (), None,
            extra={"_logger": logger, "_name": "info"},
        )  # fmt: skip
        logger.handle(record)


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
        structlog.processors.JSONRenderer(serializer=dumps)
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
    handler = LineHandler(stream, renderer)
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
