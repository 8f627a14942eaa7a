"""Sessions-ended events on the hub: every API process ends the live channels they carry.

A token check happens once per HTTP request, but a WebSocket or an SSE stream is checked
only when it opens. So whatever ends sessions (logout, logout everywhere, a password change
or reset, an admin's role change, deactivation or deletion) publishes one event after its
commit, and each API process closes the matching connections at once (app/realtime).

Pub/sub delivers at most once: an event published while Redis is down, or while a process
is reconnecting, is lost to it. Live connections therefore also re-check their session every
few seconds (`WS_SESSION_RECHECK_SECONDS`), which bounds the loss to that period.
"""

import json
import logging
from dataclasses import dataclass
from enum import StrEnum

from redis.exceptions import RedisError

from app.core.pubsub import Hub

logger = logging.getLogger("app.auth")
CHANNEL = "auth:sessions-ended"


class EndReason(StrEnum):
    LOGOUT = "logout"
    LOGOUT_ALL = "logout_all"
    PASSWORD_CHANGED = "password_changed"
    PASSWORD_RESET = "password_reset"
    REFRESH_REUSE = "reuse_detected"
    ROLE_CHANGED = "role_changed"
    DEACTIVATED = "deactivated"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class SessionsEnded:
    user_id: int
    # None: every session of the user (the account is gone or disabled), whichever it is.
    session_ids: frozenset[str] | None
    reason: EndReason

    def encode(self) -> bytes:
        sessions = sorted(self.session_ids) if self.session_ids is not None else None
        return json.dumps(
            {"user_id": self.user_id, "session_ids": sessions, "reason": str(self.reason)}
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "SessionsEnded | None":
        try:
            data = json.loads(raw)
            sessions = data["session_ids"]
            return cls(
                user_id=int(data["user_id"]),
                session_ids=frozenset(map(str, sessions)) if sessions is not None else None,
                reason=EndReason(data["reason"]),
            )
        except (ValueError, TypeError, KeyError):
            logger.warning("malformed sessions-ended event ignored")
            return None


async def announce(*, hub: Hub, event: SessionsEnded) -> None:
    """After the commit. Never fails the caller: the change is durable already, and the
    periodic re-check of live connections ends them if this event is lost."""
    if event.session_ids is not None and not event.session_ids:
        return
    try:
        await hub.publish(CHANNEL, event.encode())
    except (RedisError, OSError) as exc:
        logger.warning("sessions-ended event not published (%s); re-checks will end them", exc)
