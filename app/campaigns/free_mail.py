"""Free-form mail (issue 15, item 7): a signed-in user mails their own verified address; an
admin mails a bounded list of addresses, one outbox row per recipient.

Like the admin's test mail, it sits above the outbox (it needs principals and accounts), so it
lives with campaigns. Nothing new on the sending side: each row is an ordinary outbox mail,
claimed, retried and swept like every other, whichever backend (SMTP, HTTP API) delivers it.
"""

from fastapi import APIRouter, BackgroundTasks, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import CurrentUser
from app.auth.models import User
from app.campaigns.errors import AddressNotVerified, OnlyOwnAddress
from app.campaigns.schemas import FreeMailRequest, MailQueued
from app.core.config import Settings
from app.core.dependencies import SessionDep, SettingsDep, services_of
from app.core.errors import OverSetting
from app.core.limits import enforce
from app.email import service as outbox
from app.email.models import Email
from app.jobs.dependencies import JobsDep

TEMPLATE = "message"  # app/email/templates/message.{txt,html}

router = APIRouter(prefix="/email", tags=["email"])


def recipients_for(*, sender: User, to: list[str] | None, settings: Settings) -> list[str]:
    """Who gets the mail: the sender's own verified address, or (admins) the listed ones,
    each once, in the order given."""
    own = sender.email.lower()
    if to is None or (not sender.is_admin and set(to) == {own}):
        if not sender.is_verified:
            raise AddressNotVerified()
        return [own]
    if not sender.is_admin:
        raise OnlyOwnAddress()
    unique = list(dict.fromkeys(address.lower() for address in to))
    limit = settings.email_send_max_recipients
    if len(unique) > limit:
        raise OverSetting("body.to", limit, "EMAIL_SEND_MAX_RECIPIENTS")
    return unique


def check_body(*, data: FreeMailRequest, settings: Settings) -> None:
    limit = settings.email_send_max_body_chars
    for field, value in (("text", data.text), ("html", data.html)):
        if value is not None and len(value) > limit:
            raise OverSetting(f"body.{field}", limit, "EMAIL_SEND_MAX_BODY_CHARS")


def queue_messages(
    *,
    session: AsyncSession,
    settings: Settings,
    sender: User,
    recipients: list[str],
    data: FreeMailRequest,
) -> list[Email]:
    """One outbox row per recipient, added to the session (they exist once it commits)."""
    context = {"body_text": data.text, "body_html": data.html, "sent_by": sender.username}
    return [
        outbox.queue(
            session=session,
            settings=settings,
            recipient=address,
            subject=data.subject,
            template=TEMPLATE,
            context=context,
            user_id=sender.id,
        )
        for address in recipients
    ]


@router.post("/send", response_model=MailQueued, status_code=status.HTTP_202_ACCEPTED)
async def send_mail(
    data: FreeMailRequest,
    user: CurrentUser,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    background: BackgroundTasks,
) -> MailQueued:
    """Send a free-form mail (text, optional HTML). Users: to their own address only, which
    must be verified (403 for any other address, 409 while unverified). Admins: to up to
    EMAIL_SEND_MAX_RECIPIENTS addresses, one mail each. Rate limited per sender."""
    recipients = recipients_for(sender=user, to=data.to, settings=settings)
    check_body(data=data, settings=settings)
    policies = services_of(request).policies
    policy = policies.email_send_admin if user.is_admin else policies.email_send
    # Counted once the request is known to be allowed: refusals cost nothing.
    await enforce(request, response, policy, f"user:{user.id}")
    emails = queue_messages(
        session=session, settings=settings, sender=user, recipients=recipients, data=data
    )
    await session.commit()
    email_ids = [email.id for email in emails]
    # After the response: a broker hiccup costs nothing here, the sweep sends the rows later.
    background.add_task(outbox.dispatch, jobs=jobs, email_ids=email_ids)
    return MailQueued(email_ids=email_ids, recipients=recipients)
