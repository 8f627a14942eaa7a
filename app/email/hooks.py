"""The outbox's one extension point: mail that belongs to a campaign.

A campaign's mail is an ordinary outbox row with `campaign_id` set, but its body is read from
the campaign when it is sent, and each final mail counts towards the campaign's progress.
Campaigns (app.campaigns) are a feature above the outbox in the layers, so the outbox cannot
import them: the campaigns package registers these hooks when its tasks module is imported
(every worker imports it, app/worker.py).
"""

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession


# Protocols rather than Callable types: the hooks are campaign service functions, which take
# keyword arguments only, and a Callable type cannot say so.
class BodyContext(Protocol):
    """The template context of a campaign's mail."""

    async def __call__(self, *, session: AsyncSession, campaign_id: int) -> dict[str, Any]: ...


class RecordProgress(Protocol):
    """One of the campaign's mails is final (sent, failed or cancelled)."""

    async def __call__(self, *, session: AsyncSession, campaign_id: int) -> object: ...


class InProgress(Protocol):
    """The ids of the campaigns still sending, for the sweep to bring up to date."""

    async def __call__(self, *, session: AsyncSession) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class CampaignHooks:
    body_context: BodyContext
    record_progress: RecordProgress
    in_progress: InProgress


_registered: CampaignHooks | None = None


def register(hooks: CampaignHooks) -> None:
    global _registered  # noqa: PLW0603 - one registration per process, at import
    _registered = hooks


def campaign_hooks() -> CampaignHooks:
    """The registered hooks; a campaign's mail without them is a wiring bug, not a retry."""
    if _registered is None:
        raise RuntimeError("No campaign hooks: the worker must import app.campaigns.tasks")
    return _registered


def registered() -> CampaignHooks | None:
    return _registered
