"""Every tracked task has the title its owner's notification names it by ("Image processing
finished"); `job()` refuses a tracked task without one, so a new domain's task can't ship
with the generic "Your task"."""

import importlib

import pytest

from app.jobs.base import JobTask, job
from app.worker import TASK_MODULES


def _tasks() -> dict[str, JobTask]:
    found: dict[str, JobTask] = {}
    for module in TASK_MODULES:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, JobTask):
                found[value.name] = value
    return found


def test_every_tracked_task_is_titled_for_its_notifications() -> None:
    titles = {name: task.title for name, task in _tasks().items() if task.tracked}
    assert titles["app.images.process"] == "Image processing"
    assert titles["app.reports.activity"] == "Activity report"
    assert titles["app.campaigns.run"] == "Email campaign"
    assert titles["app.email.send_test"] == "Test email"
    assert JobTask.title not in titles.values()


def test_a_tracked_task_without_a_title_is_refused() -> None:
    with pytest.raises(TypeError, match="title"):
        job("app.tests.untitled")
    job("app.tests.untracked", tracked=False)  # internal work notifies nobody: no title needed
