"""The admin's test mail (JOBS-2): one message through the outbox, with a task to watch.

Admin mail, like campaigns: it needs auth's admin principal and the admin's account, which
sit above the outbox, so the outbox (app.email) has no routes of its own."""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response, status

from app.auth.dependencies import AdminPrincipal
from app.auth.models import User
from app.campaigns.errors import AddressNotVerified
from app.campaigns.schemas import TestEmailRequest
from app.core.dependencies import SessionDep, SettingsDep, services_of
from app.core.limit_keys import address_key
from app.core.limits import enforce
from app.email import service as outbox
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import TaskAccepted, accepted

router = APIRouter(prefix="/email", tags=["email"])
# Solved once per request: the limit and the route read the same parsed body.
TestMailBody = Annotated[TestEmailRequest | None, Body()]


async def limit_test_mail(
    request: Request, response: Response, admin: AdminPrincipal, data: TestMailBody = None
) -> None:
    """Per admin, and a `to` address also against its mailbox's budget (the one reset and
    verification mails share), so no admin account can be used to flood an inbox."""
    policies = services_of(request).policies
    await enforce(request, response, policies.test_email, f"admin:{admin.id}")
    if data is not None and data.to:
        await enforce(request, response, policies.password_reset, "email:" + address_key(data.to))


@router.post(
    "/test",
    response_model=TaskAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(limit_test_mail)],
)
async def send_test_email(
    admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    data: TestMailBody = None,
) -> TaskAccepted:
    """Send a test message to your own address, which must be verified, or to `to`; watch
    its task. Limited per admin and per target mailbox."""
    user = await session.get(User, admin.id)
    assert user is not None  # the principal was just loaded
    if data is not None and data.to:
        address = data.to
    elif user.is_verified:
        address = user.email
    else:
        raise AddressNotVerified()
    email = outbox.queue(
        session=session,
        settings=settings,
        recipient=address,
        subject=f"Test message from {settings.app_name}",
        template="test",
        context={"requested_by": user.username},
        user_id=user.id,
    )
    await session.flush()
    job = await jobs.enqueue(session, "app.email.send_test", email.id, owner_id=admin.id)
    return accepted(job, settings=settings)
