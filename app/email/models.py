from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, str_enum, utcnow


class EmailStatus(StrEnum):
    PENDING = "pending"  # waiting for a sender (first try, or a retry)
    SENDING = "sending"  # claimed by a sender until `lease_until`
    SENT = "sent"
    FAILED = "failed"  # final: permanent refusal, or retries used up
    CANCELLED = "cancelled"  # its campaign was cancelled before it went out


class Email(Base):
    """The outbox: one row per mail, written in the transaction that calls for it, so a mail
    exists if and only if its cause was committed. Senders claim rows; see app.email.service."""

    __tablename__ = "emails"
    __table_args__ = (
        # One mail per campaign and user, however often the campaign task runs.
        UniqueConstraint("campaign_id", "user_id", name="uq_emails_campaign_id_user_id"),
        Index("ix_emails_campaign_id_status", "campaign_id", "status"),
        Index("ix_emails_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    template: Mapped[str] = mapped_column(String(32))
    # What the template needs. It may hold a token link: cleared once the mail is final.
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    user_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    # The campaign (app.campaigns) a mail belongs to. Named by table, not imported: campaigns
    # are a feature above the outbox; the outbox reaches them only through app.email.hooks.
    campaign_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    status: Mapped[EmailStatus] = mapped_column(str_enum(EmailStatus), default=EmailStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fixed when the row is made, so every attempt carries the same Message-ID.
    message_id: Mapped[str] = mapped_column(String(255))
    claim: Mapped[str | None] = mapped_column(String(32))  # the current sender's claim
    lease_until: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
