from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Header, Response, status

from app.auth import events, service
from app.auth.dependencies import (
    CacheDep,
    CurrentPrincipal,
    CurrentUser,
    HasherDep,
    SettingsDep,
    limit_login,
    limit_register,
)
from app.auth.schemas import (
    ChangePasswordRequest,
    LoginForm,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
)
from app.core.db import SessionDep
from app.users.schemas import UserPrivate

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


@router.post(
    "/register",
    response_model=UserPrivate,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(limit_register)],
)
async def register(
    data: RegisterRequest, session: SessionDep, hasher: HasherDep, background: BackgroundTasks
) -> UserPrivate:
    """Create an account."""
    user = await service.register(session=session, hasher=hasher, data=data)
    background.add_task(events.user_signed_up, user_id=user.id)  # after the response is sent
    return UserPrivate.model_validate(user)


@router.post("/token", response_model=TokenResponse, dependencies=[Depends(limit_login)])
async def login(
    form: Annotated[LoginForm, Form()],
    response: Response,
    session: SessionDep,
    hasher: HasherDep,
    settings: SettingsDep,
    user_agent: Annotated[str | None, Header(max_length=1000)] = None,
) -> TokenResponse:
    """Log in with the OAuth2 password form (username or email) for an access/refresh pair."""
    user = await service.authenticate(
        session=session, hasher=hasher, login=form.username, password=form.password
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
    settings: SettingsDep,
) -> TokenResponse:
    """Trade a refresh token (once) for a new pair; reusing one revokes its whole session."""
    pair = await service.rotate_refresh_token(
        session=session, cache=cache, settings=settings, raw_token=data.refresh_token
    )
    return _token_response(pair, response)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    principal: CurrentPrincipal,
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    data: LogoutRequest | None = None,
) -> None:
    """End this session: its access and refresh tokens stop working at once, everywhere."""
    await service.logout(
        session=session,
        cache=cache,
        settings=settings,
        principal=principal,
        refresh_token=data.refresh_token if data else None,
    )


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(
    principal: CurrentPrincipal, session: SessionDep, cache: CacheDep, settings: SettingsDep
) -> None:
    """End every session of the caller, on every device."""
    await service.logout_all(session=session, cache=cache, settings=settings, user_id=principal.id)


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    data: ChangePasswordRequest,
    user: CurrentUser,
    principal: CurrentPrincipal,
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    hasher: HasherDep,
) -> None:
    """Change the password; every other session is logged out."""
    await service.change_password(
        session=session,
        cache=cache,
        settings=settings,
        hasher=hasher,
        user=user,
        current_session_id=principal.session_id,
        current_password=data.current_password,
        new_password=data.new_password,
    )
