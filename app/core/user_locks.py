"""A per-user mutex in the database, for checks that must see every concurrent write.

Quotas are "count, compare, insert": two requests of one user racing through that sequence
would both see room for one more. Each takes this lock first, in the transaction that inserts,
so the second one counts after the first has committed (or rolled back). An UPDATE locks on
both databases: PostgreSQL holds the row lock until commit, SQLite takes its write lock (it
has no FOR UPDATE). The lock is released by the caller's commit or rollback.
"""

from sqlalchemy import Integer, String, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK


class UserLock(Base):
    __tablename__ = "user_locks"

    # No foreign key: core knows no domain's table; a row left by a deleted user is inert.
    user_id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    taken: Mapped[int] = mapped_column(Integer, default=0)


async def lock_user(*, session: AsyncSession, user_id: int, scope: str) -> None:
    """Hold `scope`'s lock for `user_id` until the session's transaction ends."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(UserLock)
        .values(user_id=user_id, scope=scope, taken=0)
        .on_conflict_do_nothing(index_elements=["user_id", "scope"])
    )
    await session.execute(
        update(UserLock)
        .where(UserLock.user_id == user_id, UserLock.scope == scope)
        .values(taken=UserLock.taken + 1)
    )
