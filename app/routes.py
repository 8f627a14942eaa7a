"""Every router of the API process, assembled in one place: v1 (under API_V1_PREFIX, /api/v1
by default), /api/v2, health and ops, the WebSockets and the pages. `create_app` calls
`include_routes` and nothing else.

Each router is included into the app directly (not through one umbrella router), so a request
is matched through as few levels of included routers as before this module existed.
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

# Its prefix is the setting, given at inclusion: including copies the routes, so apps built
# with different settings in one process each get their own paths.
api_v1 = APIRouter(responses=ERROR_RESPONSES)
api_v1.include_router(auth_router)
api_v1.include_router(users_router)
api_v1.include_router(items.by_user)
api_v1.include_router(items.list_v1)
api_v1.include_router(items.router)
api_v1.include_router(item_images.router)
api_v1.include_router(files.router)
api_v1.include_router(exports_router)
api_v1.include_router(tasks_router)
api_v1.include_router(realtime.chat_router)
api_v1.include_router(sse.router)  # before /notifications/{id}/...: nothing shadows /stream
api_v1.include_router(realtime.notifications_router)
api_v1.include_router(reports_router)
api_v1.include_router(admin_router)
api_v1.include_router(admin_users_router)
api_v1.include_router(images_router)
api_v1.include_router(test_mail.router)
api_v1.include_router(free_mail.router)
api_v1.include_router(campaigns_router)
api_v1.include_router(orders_router)
api_v1.include_router(articles_router)
api_v1.include_router(search_router)
api_v1.include_router(posts_router)

# v2 changes what matters: the item listing pages by cursor. Everything else stays on v1.
api_v2 = APIRouter(prefix=API_V2_PREFIX, responses=ERROR_RESPONSES)
api_v2.include_router(items.list_v2)
api_v2.include_router(items.router)

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
        app.include_router(router)
    app.include_router(api_v1, prefix=settings.api_v1_prefix)
    for router in AFTER_V1:
        app.include_router(router)
