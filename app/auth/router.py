from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Header, Response, status

from app.auth import events, service, verification
from app.auth.dependencies import (
    CurrentPrincipal,
    CurrentUser,
    LoginThrottleDep,
    limit_login,
    limit_password_reset,
    limit_register,
    limit_verification,
)
from app.auth.schemas import (
    Accepted,
    ChangePasswordRequest,
    LoginForm,
    LogoutRequest,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    RegistrationAccepted,
    TokenResponse,
    VerifyEmailRequest,
)
from app.core.dependencies import (
    CacheDep,
    HasherDep,
    HubDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from app.core.errors import ErrorResponse
from app.email import service as outbox
from app.jobs.dependencies import JobsDep

router = APIRouter(prefix="/auth", tags=["auth"])


def _token_response(pair: service.TokenPair, response: Response) -> TokenResponse:
    # RFC 6749 5.1: responses carrying tokens must not be cached by anything on the way.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        scope=" ".join(pair.scopes),
    )


REGISTER_ACCEPTED = "Check your inbox to finish signing up."


@router.post(
    "/register",
    response_model=RegistrationAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(limit_register)],
    responses={
        409: {
            "model": ErrorResponse,
            "description": "The username is taken (usernames are public; an email never is 409)",
        },
        429: {
            "model": ErrorResponse,
            "description": "Too many sign-ups from this client, or mails to this address",
        },
    },
)
async def register(
    data: RegisterRequest,
    session: SessionDep,
    hasher: HasherDep,
    settings: SettingsDep,
    jobs: JobsDep,
    background: BackgroundTasks,
) -> RegistrationAccepted:
    """Sign up. The answer is the same whether or not the email already has an account (no
    one learns who has one): a new address gets its account and a welcome mail, an existing
    one a mail telling its owner about the attempt, and no second account. A taken username
    is a 409: usernames are public handles."""
    registration = await service.register(
        session=session, hasher=hasher, settings=settings, data=data
    )
    # After the answer has gone: sign-up never waits on the broker (the outbox sweep sends
    # the mail if this is lost), and the analytics event may be lost.
    background.add_task(outbox.dispatch, jobs=jobs, email_ids=registration.email_ids)
    if registration.user_id is not None:
        background.add_task(events.user_signed_up, user_id=registration.user_id)
    return RegistrationAccepted(detail=REGISTER_ACCEPTED)


@router.post("/token", response_model=TokenResponse, dependencies=[Depends(limit_login)])
async def login(
    form: Annotated[LoginForm, Form()],
    response: Response,
    session: SessionDep,
    hasher: HasherDep,
    settings: SettingsDep,
    throttle: LoginThrottleDep,
    user_agent: Annotated[str | None, Header(max_length=1000)] = None,
) -> TokenResponse:
    """Log in with the OAuth2 password form (username or email) for an access/refresh pair."""
    user = await service.authenticate(
        session=session,
        hasher=hasher,
        throttle=throttle,
        login=form.username,
        password=form.password,
    )
    pair = await service.start_session(
        session=session,
        settings=settings,
        user=user,
        requested_scopes=form.requested_scopes(),
        user_agent=user_agent,
    )
    return _token_response(pair, response)


@router.post("/refresh", response_model=TokenResponse)
async def refresh(
    data: RefreshRequest,
    response: Response,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
) -> TokenResponse:
    """Trade a refresh token (once) for a new pair; reusing one revokes its whole session."""
    pair = await service.rotate_refresh_token(
        session=session, cache=cache, hub=hub, settings=settings, raw_token=data.refresh_token
    )
    return _token_response(pair, response)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    principal: CurrentPrincipal,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
    data: LogoutRequest | None = None,
) -> None:
    """End this session: its access and refresh tokens stop working at once, everywhere, and
    its WebSockets (4401) and SSE streams end."""
    await service.logout(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        principal=principal,
        refresh_token=data.refresh_token if data else None,
    )


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(
    principal: CurrentPrincipal,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
) -> None:
    """End every session of the caller, on every device, with their live connections."""
    await service.logout_all(
        session=session, cache=cache, hub=hub, settings=settings, user_id=principal.id
    )


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    data: ChangePasswordRequest,
    user: CurrentUser,
    principal: CurrentPrincipal,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
    hasher: HasherDep,
) -> None:
    """Change the password; every other session is logged out."""
    await service.change_password(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        hasher=hasher,
        user=user,
        current_session_id=principal.session_id,
        current_password=data.current_password,
        new_password=data.new_password,
    )


RESET_ACCEPTED = "If an account has this address, a reset link is on its way."


@router.post(
    "/verify/request",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(limit_verification)],
)
async def request_verification(
    user: CurrentUser, session: SessionDep, settings: SettingsDep, jobs: JobsDep
) -> Accepted:
    """Email a verification link to the caller's address (409 if already verified)."""
    await verification.request_verification(
        session=session, settings=settings, jobs=jobs, user=user
    )
    return Accepted(detail="A verification link is on its way.")


@router.post("/verify", status_code=status.HTTP_200_OK, response_model=Accepted)
async def verify_email(data: VerifyEmailRequest, session: SessionDep, cache: CacheDep) -> Accepted:
    """Spend a verification token: the account's email address is verified."""
    await verification.verify_email(session=session, cache=cache, token=data.token)
    return Accepted(detail="Your email address is verified.")


@router.post(
    "/password-reset/request",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(limit_password_reset)],
)
async def request_password_reset(
    data: PasswordResetRequest,
    background: BackgroundTasks,
    services: ServicesDep,
    jobs: JobsDep,
) -> Accepted:
    """Always 202: whether the address has an account is never revealed, not even by timing
    (the lookup and the mail happen after the answer)."""
    background.add_task(
        verification.request_password_reset,
        sessionmaker=services.sessionmaker,
        settings=services.settings,
        jobs=jobs,
        address=data.email,
    )
    return Accepted(detail=RESET_ACCEPTED)


@router.post("/password-reset", status_code=status.HTTP_204_NO_CONTENT)
async def reset_password(
    data: PasswordResetConfirm,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
    hasher: HasherDep,
    throttle: LoginThrottleDep,
) -> None:
    """Spend a reset token: new password, and every session of the account ends; the
    account's failed-login counts start again."""
    await verification.reset_password(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        hasher=hasher,
        throttle=throttle,
        token=data.token,
        new_password=data.new_password,
    )
