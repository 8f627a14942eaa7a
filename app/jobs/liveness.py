"""The liveness file (LIVENESS_FILE): proof for a container probe that a worker or beat is alive.

A probe that asks the worker (`celery inspect ping`) costs a Python start-up and a broker round
trip each time; checking a file's age costs nothing. The file is touched from the loop that
does the work, so a stuck process stops touching it:

* worker: a consumer bootstep schedules the touch on the consumer's timer. With the Redis
  broker that timer is driven by the consumer's own event loop (kombu's hub); with the embedded
  broker (no hub) the timer is a thread, so the touch is handed to the consumer loop, which
  runs it between polls (`Consumer.call_soon`).
* beat: the scheduler (AppScheduler) touches it after every tick, and ticks at least once
  an interval.
"""

import logging
from pathlib import Path
from typing import Any, cast

from celery import bootsteps
from celery.beat import PersistentScheduler
from celery.worker.consumer import Consumer

from app.jobs.celery_app import AppCelery

logger = logging.getLogger("app.jobs.liveness")


def touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as exc:  # a full or read-only disk must not stop the work; the probe fails
        logger.warning("cannot touch the liveness file %s: %s", path, exc)


class ConsumerLiveness(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Touches LIVENESS_FILE from the consumer's loop every LIVENESS_INTERVAL_SECONDS."""

    # Started once the consumer consumes its queues; stopped (and started again) with it, so
    # a consumer reconnecting to a lost broker does not look alive.
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        settings = cast(AppCelery, c.app).settings
        self.path = settings.liveness_file
        self.interval = settings.liveness_interval_seconds
        self.enabled = self.path is not None
        self._entry: Any = None
        self._queued = False
        super().__init__(c, **kwargs)

    def start(self, c: Consumer) -> None:
        assert self.path is not None
        touch(self.path)
        self._entry = c.timer.call_repeatedly(self.interval, self._schedule, (c,))

    def _schedule(self, c: Consumer) -> None:
        if not self._queued:  # a stuck loop must not collect a queue of touches
            self._queued = True
            c.call_soon(self._touch)

    def _touch(self) -> None:
        self._queued = False
        assert self.path is not None
        touch(self.path)

    def stop(self, c: Consumer) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop


class AppScheduler(PersistentScheduler):  # type: ignore[misc]  # celery is untyped
    """Celery's default scheduler, touching LIVENESS_FILE after each tick."""

    def setup_schedule(self) -> None:
        # Its file lives in APP_DATA_DIR, which `celery -A app.worker beat` may meet first.
        cast(AppCelery, self.app).settings.app_data_dir.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        settings = cast(AppCelery, self.app).settings
        if settings.liveness_file is None:
            return interval
        touch(settings.liveness_file)
        # Beat sleeps until the next entry is due (up to 5 minutes): wake up in time to touch.
        return min(interval, settings.liveness_interval_seconds)
