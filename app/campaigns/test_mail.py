"""The admin's test mail (JOBS-2): one message through the outbox, with a task to watch.

Admin mail, like campaigns: it needs auth's admin principal and the admin's account, which
sit above the outbox, so the outbox (app.email) has no routes of its own."""

from fastapi import APIRouter, status

from app.auth.dependencies import AdminPrincipal
from app.auth.models import User
from app.campaigns.schemas import TestEmailRequest
from app.core.dependencies import SessionDep, SettingsDep
from app.email import service as outbox
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import TaskAccepted, accepted

router = APIRouter(prefix="/email", tags=["email"])


@router.post("/test", response_model=TaskAccepted, status_code=status.HTTP_202_ACCEPTED)
async def send_test_email(
    admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    data: TestEmailRequest | None = None,
) -> TaskAccepted:
    """Send a test message (to your own address unless `to` is given); watch its task."""
    user = await session.get(User, admin.id)
    assert user is not None  # the principal was just loaded
    address = data.to if data is not None and data.to else user.email
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
    return accepted(job)
