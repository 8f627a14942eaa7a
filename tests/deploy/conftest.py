"""On a failing test, the tail of every daemon of the live namespace topology goes in the
report: nginx's error log and the APIs' logs say more than the assertion."""

from collections.abc import Generator

import pytest

from tests.deploy.netns import LIVE


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for topology in LIVE:
            for daemon in topology.daemons:
                report.sections.append((f"daemon {daemon.name}", daemon.describe()))
    return report
