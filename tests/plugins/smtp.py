"""The mail servers the tests send to, one per test module so each module's mail box starts
empty: the real SMTP server (aiosmtpd with STARTTLS and AUTH), and a local transactional-mail
HTTP API standing in for a third-party provider (tests/support/mail_api.py)."""

from collections.abc import Iterator

import pytest

from tests.support.mail_api import MailApiServer
from tests.support.smtp import SmtpServer, start_smtp_server


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    server = start_smtp_server(tmp_path_factory.mktemp("smtp"))
    try:
        yield server
    finally:
        server.controller.stop()


@pytest.fixture(scope="module")
def mail_api() -> Iterator[MailApiServer]:
    server = MailApiServer().start()
    try:
        yield server
    finally:
        server.stop()
