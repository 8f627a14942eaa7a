"""Every router of the API process, assembled in one place: v1 (under API_V1_PREFIX, /api/v1
by default), /api/v2, health and ops, the WebSockets and the pages. `create_app` calls
`include_routes` and nothing else.

Routers are included by copying their routes (app/core/routing.py): the app matches a request
against one flat list, not through FastAPI's lazily included routers, whose per-request cost
grows with every router before the one that matches.
"""

from fastapi import APIRouter, FastAPI

from app.admin.router import router as admin_router
from app.articles.router import router as articles_router
from app.auth.pages import router as auth_pages
from app.auth.router import router as auth_router
from app.campaigns import free_mail, test_mail
from app.campaigns.router import router as campaigns_router
from app.core.config import API_V2_PREFIX, Settings
from app.core.errors import ERROR_RESPONSES
from app.core.routing import include_flat
from app.exports.router import router as exports_router
from app.files import router as files
from app.health.router import ops_router
from app.health.router import router as health_router
from app.images.router import router as images_router
from app.items import images as item_images
from app.items import router as items
from app.orders.router import router as orders_router
from app.posts.router import router as posts_router
from app.realtime import chat, notifications, page, sse
from app.realtime import router as realtime
from app.reports.router import router as reports_router
from app.search.router import router as search_router
from app.task_api.router import router as tasks_router
from app.users.router import admin_router as admin_users_router
from app.users.router import router as users_router

# In this order, which is the order routes are matched in (routing.py: one flat list).
V1_ROUTERS: tuple[APIRouter, ...] = (
    auth_router,
    users_router,
    items.by_user,
    items.list_v1,
    items.router,
    item_images.router,
    files.router,
    exports_router,
    tasks_router,
    realtime.chat_router,
    sse.router,  # before /notifications/{id}/...: nothing shadows /stream
    realtime.notifications_router,
    reports_router,
    admin_router,
    admin_users_router,
    images_router,
    test_mail.router,
    free_mail.router,
    campaigns_router,
    orders_router,
    articles_router,
    search_router,
    posts_router,
)
# v2 changes what matters: the item listing pages by cursor. Everything else stays on v1.
V2_ROUTERS: tuple[APIRouter, ...] = (items.list_v2, items.router)

# Its prefix is the setting, given at inclusion: including copies the routes, so apps built
# with different settings in one process each get their own paths.
api_v1 = APIRouter(responses=ERROR_RESPONSES)
api_v2 = APIRouter(prefix=API_V2_PREFIX, responses=ERROR_RESPONSES)
for _router in V1_ROUTERS:
    include_flat(api_v1, _router)
for _router in V2_ROUTERS:
    include_flat(api_v2, _router)

# Included in this order, which is the order routes are matched in.
BEFORE_V1: tuple[APIRouter, ...] = (
    health_router,  # /health, /health/ready
    ops_router,  # /metrics
)
AFTER_V1: tuple[APIRouter, ...] = (
    api_v2,
    chat.router,  # WS /ws/chat/{room}
    notifications.router,  # WS /ws/notifications
    page.router,  # /chat: the try-it page
    auth_pages,  # /verify-email, /reset-password: the pages behind the mailed links
)


def include_routes(app: FastAPI, settings: Settings) -> None:
    for router in BEFORE_V1:
        include_flat(app, router)
    include_flat(app, api_v1, prefix=settings.api_v1_prefix)
    for router in AFTER_V1:
        include_flat(app, router)
