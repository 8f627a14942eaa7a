"""Connect and presence limits for the realtime endpoints.

Connects are counted on the shared limiter (Redis with it: every process agrees) per client
address and per user, before a WebSocket handshake is accepted or an SSE stream starts, so a
refusal is a plain HTTP 429 in the error envelope with Retry-After. Presence frames (typing)
are counted per connection in process memory: a connection lives in one process, and a
counter in Redis per connection would only add keys and round trips.
"""

import time

from app.core.limit_keys import client_key
from app.core.ratelimit import Decision, Policy
from app.realtime.runtime import Realtime


async def connect_refusal(
    rt: Realtime, *, client: str | None, user_id: int | None
) -> Decision | None:
    """The refusing decision when this connect is over a limit, else None (also when the
    counter store is down: these limits fail open, like the general one)."""
    if client is not None:  # an address; keyed as every per-client limit is (IPv6: its /64)
        key = client_key(client, ipv6_prefix=rt.settings.rate_limit_ipv6_prefix)
        decision = await rt.limiter.hit(rt.policies.realtime_connect_client, key)
        if decision is not None and not decision.allowed:
            return decision
    if user_id is None:
        return None
    decision = await rt.limiter.hit(rt.policies.realtime_connect_user, str(user_id))
    if decision is not None and not decision.allowed:
        return decision
    return None


class LocalWindow:
    """A fixed window counter for one connection (`policy`'s amount per period)."""

    __slots__ = ("_amount", "_count", "_period", "_window")

    def __init__(self, policy: Policy) -> None:
        self._amount = policy.limit.amount
        self._period = policy.limit.get_expiry()
        self._window = -1
        self._count = 0

    def hit(self) -> int | None:
        """None if allowed, else the seconds until the window resets."""
        now = time.monotonic()
        window = int(now // self._period)
        if window != self._window:
            self._window, self._count = window, 0
        self._count += 1
        if self._count <= self._amount:
            return None
        return max(1, int((window + 1) * self._period - now + 0.999))
