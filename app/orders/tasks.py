"""Orders' scheduled task, sent by beat to the maintenance queue."""

import logging
from typing import Any

from app.core.db import utcnow
from app.jobs.base import JobTask, job
from app.orders import service

logger = logging.getLogger(__name__)


@job("app.maintenance.purge_order_keys", title="Order Idempotency-Key purge")
def purge_order_keys(task: JobTask) -> dict[str, Any]:
    """Idempotency-Keys past ORDER_IDEMPOTENCY_TTL_SECONDS, cleared (the orders stay), so the
    expired keys don't pile up. Idempotent: a re-delivery finds nothing more to clear."""
    batch_size = task.runtime.settings.order_idempotency_purge_batch_size
    keys = task.in_session(
        lambda session: service.purge_expired_keys(
            session=session, expired_before=utcnow(), batch_size=batch_size
        )
    )
    logger.info("purged %d expired order idempotency keys", keys)
    return {"keys": keys}
