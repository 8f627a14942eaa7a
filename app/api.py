"""Assembles /api/v1 and /api/v2 from the domain routers."""

from fastapi import APIRouter

from app.admin.router import router as admin_router
from app.auth.router import router as auth_router
from app.core.errors import ERROR_RESPONSES
from app.email.router import campaigns_router, email_router
from app.exports.router import router as exports_router
from app.files import router as files
from app.images.router import router as images_router
from app.items import router as items
from app.jobs.router import router as tasks_router
from app.realtime import router as realtime
from app.realtime import sse
from app.reports.router import router as reports_router
from app.users.router import router as users_router

api_v1 = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
api_v1.include_router(auth_router)
api_v1.include_router(users_router)
api_v1.include_router(items.list_v1)
api_v1.include_router(items.router)
api_v1.include_router(files.item_images)
api_v1.include_router(files.router)
api_v1.include_router(exports_router)
api_v1.include_router(tasks_router)
api_v1.include_router(realtime.chat_router)
api_v1.include_router(sse.router)  # before /notifications/{id}/...: nothing shadows /stream
api_v1.include_router(realtime.notifications_router)
api_v1.include_router(reports_router)
api_v1.include_router(admin_router)
api_v1.include_router(images_router)
api_v1.include_router(email_router)
api_v1.include_router(campaigns_router)

# v2 changes what matters: the item listing pages by cursor. Everything else stays on v1.
api_v2 = APIRouter(prefix="/api/v2", responses=ERROR_RESPONSES)
api_v2.include_router(items.list_v2)
api_v2.include_router(items.router)
