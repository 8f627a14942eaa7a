"""Imports every domain's models so that Base.metadata is complete (Alembic, test schemas)."""

from app.articles import models as articles_models
from app.auth import models as auth_models
from app.campaigns import models as campaigns_models
from app.core import user_locks as core_models
from app.email import models as email_models
from app.files import models as files_models
from app.items import models as items_models
from app.jobs import models as jobs_models
from app.orders import models as orders_models
from app.posts import models as posts_models
from app.realtime import models as realtime_models

__all__ = [
    "articles_models",
    "auth_models",
    "campaigns_models",
    "core_models",
    "email_models",
    "files_models",
    "items_models",
    "jobs_models",
    "orders_models",
    "posts_models",
    "realtime_models",
]
