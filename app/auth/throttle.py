"""Failed logins, counted per account: whatever name was typed, and without handing a stranger
the power to lock the owner out.

Two budgets per account: failures from one client (RATE_LIMIT_LOGIN_ACCOUNT, keyed on the
account and `client_key`), so guesses from elsewhere never block the owner's own device; and
failures from everywhere (RATE_LIMIT_LOGIN_ACCOUNT_GLOBAL), against guessing spread over many
addresses. When the global one is spent the owner gets back in through the password reset mail:
a completed reset clears both counts, and a successful login clears its client's.

An attempt is counted before the password is checked and given back if it succeeds: counting
only after a failure would let concurrent guesses all pass the check before any is counted.

The account is the user's id when the name is known (username and email share one budget), and
the normalised name otherwise: an unknown name is counted, answered and timed the same way (the
hasher verifies a dummy hash), so the budgets can't tell whether an account exists.
"""

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from app.core.dependencies import services_of
from app.core.limits import RateLimited, check, client_of
from app.core.ratelimit import Decision, Policy, RateLimiter

# The same words for every account, known or not: it must not reveal whether one exists.
TOO_MANY_FAILURES = "Too many failed logins (a password reset lifts this)"


def account_key(*, user_id: int | None, login: str) -> str:
    """The account a login counts against: the user when the name is known, else the name
    normalised exactly as the lookup normalises it. No further (say, `address_key` for an
    email): two spellings that find no account must keep separate budgets, as they do when one
    of them finds an account, or the budgets would tell which addresses have one."""
    if user_id is not None:
        return f"user:{user_id}"
    return "name:" + login.lower()


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt counted on both budgets, to be settled by `LoginThrottle.succeeded`."""

    account: str
    # None: the store was down and the policy let it through.
    per_client: Decision | None
    everywhere: Decision | None


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    limiter: RateLimiter
    per_client: Policy
    everywhere: Policy
    client: str  # client_key of the caller

    @classmethod
    def of(cls, connection: HTTPConnection) -> "LoginThrottle":
        services = services_of(connection)
        return cls(
            limiter=services.limiter,
            per_client=services.policies.login_account,
            everywhere=services.policies.login_account_global,
            client=client_of(connection),
        )

    async def attempt(self, account: str) -> Attempt:
        """Count an attempt on the account: 429 when either budget is spent (503 when the
        counters can't be reached: these limits fail closed)."""
        local = await check(
            self.limiter, self.per_client, account, self.client, message=TOO_MANY_FAILURES
        )
        try:
            everywhere = await check(
                self.limiter, self.everywhere, account, message=TOO_MANY_FAILURES
            )
        except RateLimited:
            # Refused before the password was looked at: not a failure of this client's.
            if local is not None:
                await self.limiter.refund(self.per_client, local)
            raise
        return Attempt(account, local, everywhere)

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: this client's failures are forgiven and the attempt is
        given back to the global budget (only a reset clears that one)."""
        await self.limiter.clear(self.per_client, attempt.account, self.client)
        if attempt.everywhere is not None:
            await self.limiter.refund(self.everywhere, attempt.everywhere)

    async def not_checked(self, attempt: Attempt) -> None:
        """The password was never checked (the hasher refused the work): not a failure."""
        if attempt.per_client is not None:
            await self.limiter.refund(self.per_client, attempt.per_client)
        if attempt.everywhere is not None:
            await self.limiter.refund(self.everywhere, attempt.everywhere)

    async def reset(self, account: str) -> None:
        """The owner proved it holds the mailbox: both counts start again."""
        await self.limiter.clear(self.per_client, account, self.client)
        await self.limiter.clear(self.everywhere, account)
