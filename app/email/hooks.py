"""The outbox's one extension point: mail that belongs to a campaign.

A campaign's mail is an ordinary outbox row with `campaign_id` set, but its body is read from
the campaign when it is sent, and each final mail counts towards the campaign's progress.
Campaigns (app.campaigns) are a feature above the outbox in the layers, so the outbox cannot
import them: the campaigns package registers these hooks when its tasks module is imported
(every worker imports it, app/worker.py).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class CampaignHooks:
    # The template context of a campaign's mail.
    body_context: Callable[[AsyncSession, int], Awaitable[dict[str, Any]]]
    # One of the campaign's mails is final (sent, failed or cancelled).
    record_progress: Callable[[AsyncSession, int], Awaitable[object]]
    # The ids of the campaigns still sending, for the sweep to bring up to date.
    in_progress: Callable[[AsyncSession], Awaitable[list[int]]]


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
