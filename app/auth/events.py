"""Analytics events: run after the response as FastAPI background tasks (JOBS-8).

Nothing here must survive a crash: a lost event costs a data point, never a user's work
(the welcome email, which must not be lost, is a Celery job).
"""

import logging

from app.core import metrics

logger = logging.getLogger("app.analytics")


def user_signed_up(*, user_id: int) -> None:
    metrics.SIGNUPS.inc()
    # The id only: names and addresses stay out of analytics logs.
    logger.info("user_signed_up", extra={"user_id": user_id})
