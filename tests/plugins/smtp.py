"""The real SMTP server (aiosmtpd with STARTTLS and AUTH) for the tests that send mail: one per
test module, so each module's mail box starts empty."""

from collections.abc import Iterator

import pytest

from tests.support.smtp import SmtpServer, start_smtp_server


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    server = start_smtp_server(tmp_path_factory.mktemp("smtp"))
    try:
        yield server
    finally:
        server.controller.stop()
