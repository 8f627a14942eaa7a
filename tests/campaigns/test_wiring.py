"""The campaign task keeps the name queued messages carry, and plugs into the outbox."""

import importlib
from pathlib import Path

from app.campaigns import service
from app.email import hooks
from app.worker import TASK_MODULES, create_worker_celery
from tests.support.settings import make_settings


def test_a_worker_has_the_campaign_task_under_its_old_name_and_queue(tmp_path: Path) -> None:
    celery = create_worker_celery(make_settings(tmp_path))
    for module in TASK_MODULES:
        importlib.import_module(module)  # registers the bodies, as `app worker` does
    celery.loader.import_default_modules()
    assert "app.campaigns.run" in celery.tasks
    assert celery.amqp.router.route({}, "app.campaigns.run")["queue"].name == "email"
    registered = hooks.registered()  # importing the campaign tasks plugged them into the outbox
    assert registered is not None
    assert registered.record_progress is service.record_progress
