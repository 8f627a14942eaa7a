"""Property-based fuzzing of the whole OpenAPI schema with Schemathesis (QA-2).

How it runs:

* One test per backend (the ``backend`` fixture) and caller role (superuser, plain user).
  Each test fuzzes every operation of the live app's own schema, one pytest subtest per
  operation, so a failure names its operation. The app, its lifespan and the accounts are
  built once per test: an account costs two Argon2 hashes, so one test per operation would
  spend most of the time budget in fixtures.
* Cases come from Schemathesis's Hypothesis strategies (``APIOperation.as_strategy``, in
  positive and negative mode), with ``max_examples`` per operation. They are encoded exactly
  as Schemathesis's own transport encodes them, then sent in-process through the ``client``
  fixture (httpx over ASGI) on the pytest-asyncio session loop that ran the app's lifespan,
  so they reach the same engine and ``app.state`` as every other test.
  ``case.call(app=...)`` is not used: Schemathesis runs an ASGI app on its own event-loop
  thread and starts a second lifespan there, whose engine would belong to another loop and
  never be disposed. ``schemathesis.pytest.from_fixture`` is not used either: with pytest 9.2
  it fails on ``request.node._nodeid``, which pytest no longer has.
* Some examples get inputs no generator can guess (ids of existing rows, the caller's
  password, a live refresh token, a real cursor), so success paths are checked as well.
* Every call carries the caller's bearer token. ``case.validate_response`` checks each
  answer: no 5xx, body and content type as documented, and no 401 from an operation that
  needs a token (the token is always live, so a 401 means the protected code was never
  reached). It also checks that the schema is the validation: a positive case must not be
  refused as invalid (the schema would be looser than the code) and a negative case must be
  refused (stricter). Rules no JSON schema can state are in ``CODE_ONLY_RULES``, each with
  the answer it gives and why; tests/core/test_schema_patterns.py checks the patterns that
  stand in the document for validators.
* Runs are derandomized so that CI is reproducible. ``FUZZ_MAX_EXAMPLES=300 FUZZ_RANDOM=1``
  gives a longer, different run locally.
"""

import asyncio
import copy
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
)

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.core.pagination import encode_cursor
from tests.support.factories import DEFAULT_PASSWORD as PASSWORD
from tests.support.factories import Account, Factory

pytestmark = pytest.mark.fuzz

BASE_URL = "http://testserver"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
# Valid input to these costs an Argon2 hash or verification whatever the outcome (an unknown
# login burns a dummy verification), so they get fewer examples.
HASHING_OPERATIONS = frozenset(
    {"POST /api/v1/auth/register", "POST /api/v1/auth/token", "POST /api/v1/auth/password"}
)
# Success here may end the caller's own session: logout and logout-all end it, and an admin's
# PATCH of their own account with a `role` (only their current one is allowed) revokes all of
# their sessions. The caller gets a new session after each such success.
SESSION_ENDING_OPERATIONS = frozenset(
    {
        "POST /api/v1/auth/logout",
        "POST /api/v1/auth/logout-all",
        "PATCH /api/v1/users/{user_id}",
    }
)
# A stream that never ends by design (SSE): the in-process transport waits for the end of a
# body, so it would hang here. tests/realtime covers it over real sockets.
ENDLESS_OPERATIONS = frozenset({"GET /api/v1/notifications/stream"})
# Path parameters that name rows. Generated ids nearly always miss (404), so some examples use
# ids of rows that exist (seeded, or created by earlier examples): updates and deletes run.
ID_PARAMETERS = {
    "user_id": "users",
    "item_id": "items",
    "order_id": "orders",
    "post_id": "posts",
    "comment_id": "comments",
}
# Schemathesis's generic types, for any OpenAPI operation.
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]
REQUEST_ARGUMENTS = ("method", "url", "headers", "params", "cookies", "data", "json", "files")


@dataclass(frozen=True)
class CodeOnlyRule:
    """A rule enforced in code that a JSON schema cannot state (the OpenAPI document says it
    in words): a generated "valid" case may break it, and the answer must then be this one."""

    status: int
    code: str
    fragment: str  # of the detail's message (or of the error's message when it has none)
    field: str | None  # the detail's field; None for an error without details
    why: str


# A positive case answered with one of these is not a schema looser than the validation.
CODE_ONLY_RULES: dict[str, list[CodeOnlyRule]] = {
    "POST /api/v1/auth/register": [
        CodeOnlyRule(
            422, "validation_error", "passwords do not match", "body.password_confirm",
            "password_confirm must equal password: a relation between two fields",
        ),
    ],
    "POST /api/v1/auth/password": [
        CodeOnlyRule(
            422, "validation_error", "must differ from the current one", "body.new_password",
            "new_password must differ from current_password: a relation between two fields",
        ),
        CodeOnlyRule(
            400, "invalid_credentials", "current password is incorrect", None,
            "which password is the caller's is a fact of the database, not of the schema",
        ),
    ],
    **{
        label: [
            CodeOnlyRule(
                400, "invalid_token", "invalid, expired or already used", None,
                "only a token the API mailed is valid: a fact of the database",
            )
        ]
        for label in ("POST /api/v1/auth/verify", "POST /api/v1/auth/password-reset")
    },
    **{
        label: [
            CodeOnlyRule(
                415, "unsupported_media_type", fragment, None,
                "the file's name and first bytes decide its type: a binary part has no schema",
            )
            for fragment in ("are not accepted", "The content is not a")
        ]
        for label in ("POST /api/v1/files", "POST /api/v1/items/{item_id}/images")
    },
    "GET /api/v1/files/{file_id}/content": [
        CodeOnlyRule(
            416, "range_not_satisfiable", "not satisfiable", None,
            "whether a well-formed range fits depends on the file's size",
        ),
    ],
    "POST /api/v1/reports": [
        CodeOnlyRule(
            422, "validation_error", fragment, "body",
            "start <= end <= today, at most a year: relations between fields and the clock",
        )
        for fragment in ("start must not be after end", "end must not be after today",
                         "a report covers at most")
    ],
    "POST /api/v1/email/send": [
        CodeOnlyRule(
            422, "validation_error", "over this server's limit", field,
            "EMAIL_SEND_MAX_RECIPIENTS and EMAIL_SEND_MAX_BODY_CHARS are the operator's settings;"
            " the document states only their ceilings",
        )
        for field in ("body.to", "body.text", "body.html")
    ],
    "POST /api/v1/reports/user-activity": [
        CodeOnlyRule(
            422, "validation_error", "over this server's limit", "body.days",
            "USER_REPORT_MAX_DAYS is the operator's setting; the document states its ceiling",
        ),
    ],
    **{
        label: [
            CodeOnlyRule(
                422, "validation_error", "not a cursor we issued", "query.cursor",
                "a cursor is opaque: only ones the API issued decode to a position",
            )
        ]
        for label in ("GET /api/v2/items/", "GET /api/v1/chat/rooms/{room}/messages",
                      "GET /api/v1/notifications", "GET /api/v1/orders/", "GET /api/v1/posts/",
                      "GET /api/v1/posts/{post_id}/comments/")
    },
    "PATCH /api/v1/orders/{order_id}/status": [
        CodeOnlyRule(
            428, "precondition_required", "Send If-Match", None,
            "If-Match is optional in the schema so that its absence is a 428, not a 422",
        ),
        CodeOnlyRule(
            412, "precondition_failed", "changed since you read it", None,
            "whether a tag is the order's current ETag is a fact of the database",
        ),
    ],
}  # fmt: skip


def _breaks_only_code_rules(case: Case, response: Any) -> bool:
    rules = CODE_ONLY_RULES.get(case.operation.label, [])
    if not any(rule.status == response.status_code for rule in rules):
        return False
    error = response.json()["error"]
    details = error["details"] or [{"field": None, "message": error["message"]}]
    return all(
        any(
            (rule.status, rule.code, rule.field)
            == (response.status_code, error["code"], d["field"])
            and rule.fragment in d["message"]
            for rule in rules
        )
        for d in details
    )


def valid_data_is_accepted(ctx: Any, response: Any, case: Case) -> bool | None:
    """Schemathesis's positive_data_acceptance, but for the listed code-only rules."""
    __tracebackhide__ = True
    if _breaks_only_code_rules(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


# Refusals other than Schemathesis's defaults (400, 422, ...) that the document declares: a
# malformed Range is answered 416, as RFC 9110 allows, not 422.
REFUSAL_STATUSES: dict[str, frozenset[int]] = {
    "GET /api/v1/files/{file_id}/content": frozenset({416}),
}
# Any operation: a JSON body past JSON_MAX_DEPTH or JSON_MAX_ITEMS is refused with 413 before
# validation reads it. Invalid data may be that big (a list of 5,000 lists where the schema
# wants integers); valid data never is, since the schema's own maxItems stay below the limit.
REFUSED_BEFORE_VALIDATION = frozenset({413})


def invalid_data_is_refused(ctx: Any, response: Any, case: Case) -> bool | None:
    """Schemathesis's negative_data_rejection, with the refusals listed above."""
    __tracebackhide__ = True
    refusals = REFUSED_BEFORE_VALIDATION | REFUSAL_STATUSES.get(case.operation.label, frozenset())
    if response.status_code in refusals:
        return None
    return negative_data_rejection(ctx, response, case)


def authenticated_call_is_accepted(ctx: Any, response: Any, case: Case) -> None:
    """Every call carries a live token, so a protected operation must never answer 401."""
    if response.status_code == 401 and case.operation.definition.raw.get("security"):
        raise AssertionError(f"401 to a live bearer token: {response.text[:500]}")


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    authenticated_call_is_accepted,
    valid_data_is_accepted,
    invalid_data_is_refused,
]


def settings_for(label: str) -> hypothesis_settings:
    return hypothesis_settings(
        max_examples=max(1, MAX_EXAMPLES // 3) if label in HASHING_OPERATIONS else MAX_EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        # Hashing makes some examples slow, and Schemathesis filters and builds big inputs.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


@dataclass
class Fuzzer:
    """Sends generated cases to the app as one account, and validates the answers."""

    loop: asyncio.AbstractEventLoop
    app: FastAPI
    client: httpx.AsyncClient
    account: Account
    ids: dict[str, set[int]]
    # Inputs no generator can guess (credentials, tokens, cursors), so that success paths are
    # checked too: Schemathesis fixes these parts of some examples and generates the rest.
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str = ""
    statuses: dict[str, Counter[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token = self.account.access_token

    def fuzz(self, operation: Operation) -> None:
        __tracebackhide__ = True

        @settings_for(operation.label)
        @given(case=self.strategy(operation))
        def run(case: Case) -> None:
            self.check(case)

        run()
        statuses = self.statuses.get(operation.label, Counter())
        # A run where everything was rate limited would pass every check and test nothing.
        assert set(statuses) - {429}, f"no call got past rate limiting: {dict(statuses)}"

    def strategy(self, operation: Operation) -> st.SearchStrategy[Any]:
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        names = [p.name for p in operation.path_parameters if p.name in ID_PARAMETERS]
        if names:
            existing = st.fixed_dictionaries(
                {name: st.sampled_from(sorted(self.ids[ID_PARAMETERS[name]])) for name in names}
            )
            positive = operation.as_strategy(GenerationMode.POSITIVE)
            strategies.append(st.tuples(positive, existing).map(_with_path_parameters))
        if operation.label in self.known:
            strategies.append(
                operation.as_strategy(GenerationMode.POSITIVE, **self.known[operation.label])
            )
        return st.one_of(strategies)

    def check(self, case: Case) -> None:
        __tracebackhide__ = True
        headers = {"Authorization": f"Bearer {self.token}"}
        response = self.loop.run_until_complete(self.send(case, headers))
        self.statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except BaseExceptionGroup as failures:
            # Schemathesis raises a BaseExceptionGroup, which Hypothesis would let through as
            # an interrupt; as an AssertionError it is a failing example, shrunk and reported.
            details = "\n".join(f"- {failure}" for failure in failures.exceptions)
            label = case.operation.label
            raise AssertionError(f"{label}: {failures.message}\n{details}") from None
        finally:
            self.loop.run_until_complete(self.after(case, response))

    async def send(self, case: Case, headers: dict[str, str]) -> httpx.Response:
        """Send the request Schemathesis's transport would send, but through our client."""
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
        prepared = requests.Request(**{k: kwargs[k] for k in REQUEST_ARGUMENTS if k in kwargs})
        wire = prepared.prepare()
        body = wire.body.encode() if isinstance(wire.body, str) else wire.body
        assert body is None or isinstance(body, bytes)  # `requests` streams nothing here
        # Header values go out as latin-1 bytes, as Schemathesis's own transports send them.
        raw_headers = [(_latin1(k), _latin1(v)) for k, v in wire.headers.items()]
        request = self.client.build_request(
            str(wire.method), str(wire.url), headers=raw_headers, content=body
        )
        return await self.client.send(request)

    async def after(self, case: Case, response: httpx.Response) -> None:
        label = case.operation.label
        if response.status_code == 201 and "json" in response.headers.get("content-type", ""):
            created = response.json()
            # (Sign-up answers 202 without the account: no id to learn there, by design.)
            if label.endswith("/items/"):
                self.ids["items"].add(created["id"])
            elif label.endswith("/orders/"):
                self.ids["orders"].add(created["id"])
            elif label.endswith("/posts/"):
                self.ids["posts"].add(created["id"])
            elif label.endswith("/comments/"):
                self.ids["comments"].add(created["id"])
        if label in SESSION_ENDING_OPERATIONS and response.is_success:
            self.token = (await self.new_session()).access_token

    async def new_session(self) -> auth_service.TokenPair:
        """A new session for the caller, without the login endpoint and its Argon2 cost."""
        async with self.app.state.services.sessionmaker() as session:
            user = await session.get(User, self.account.id)
            assert user is not None
            return await auth_service.start_session(
                session=session,
                settings=self.app.state.services.settings,
                user=user,
                requested_scopes=None,
            )

    def summary(self) -> str:
        lines = [f"statuses seen by {self.account.username}:"]
        for label, counts in self.statuses.items():
            seen = ", ".join(f"{code}x{n}" for code, n in sorted(counts.items()))
            lines.append(f"  {label}: {seen}")
        return "\n".join(lines)


def _latin1(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def _with_path_parameters(drawn: tuple[Case, dict[str, int]]) -> Case:
    case, path_parameters = drawn
    case.path_parameters = {**(case.path_parameters or {}), **path_parameters}
    return case


async def _order(client: httpx.AsyncClient, account: Account) -> int:
    line = {"name": "Tea", "quantity": 1, "unit_price": "1.00", "currency": "USD"}
    address = {
        "postal_code": "100-0001",
        "prefecture": "東京都",
        "city": "千代田区",
        "street": "1-1",
    }
    body = {"lines": [line], "shipping_address": address}
    response = await client.post("/api/v1/orders/", json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    order_id: int = response.json()["id"]
    return order_id


async def _seed_post(client: httpx.AsyncClient, author: Account) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/posts/", json={"title": "Seed", "body": "A post"}, headers=author.headers
    )
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


async def _seed_comment(client: httpx.AsyncClient, author: Account, post_id: int) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/posts/{post_id}/comments/", json={"body": "A comment"}, headers=author.headers
    )
    assert response.status_code == 201, response.text
    comment: dict[str, Any] = response.json()
    return comment


# Which backend each caller fuzzes. By default two of the four pairs: the superuser (who
# reaches the most code, admin routes included) on PostgreSQL, the production database, and a
# plain user on SQLite; each pair fuzzes every operation, so the four pairs took twice the CI
# time for little more. FUZZ_ALL_PAIRS=1 runs all four.
PAIRS = [("postgres", Role.SUPERUSER), ("sqlite", Role.USER)]
if os.environ.get("FUZZ_ALL_PAIRS") == "1":
    PAIRS += [("sqlite", Role.SUPERUSER), ("postgres", Role.USER)]


@pytest.fixture
async def fuzzer(role: Role, app: FastAPI, client: httpx.AsyncClient, factory: Factory) -> Fuzzer:
    """The caller, and another user with items (one soft-deleted) for ids in paths to name."""
    caller = await factory.account(role)
    other = await factory.account()
    items = [
        await factory.item(caller),
        await factory.item(other),
        await factory.item(other, description="soft-deleted"),
    ]
    orders = [await _order(client, caller), await _order(client, other)]
    deleted = await client.delete(f"/api/v1/items/{items[-1]['id']}", headers=other.headers)
    assert deleted.status_code == 204, deleted.text
    posts = [await _seed_post(client, caller), await _seed_post(client, other)]
    comments = [
        await _seed_comment(client, caller, posts[1]["id"]),
        await _seed_comment(client, other, posts[0]["id"]),
    ]
    first_page = await client.get("/api/v2/items/", params={"limit": 1})
    cursor = first_page.json()["next_cursor"]
    assert cursor, first_page.text
    fuzzer = Fuzzer(
        loop=asyncio.get_running_loop(),
        app=app,
        client=client,
        account=caller,
        ids={
            "users": {caller.id, other.id},
            "items": {item["id"] for item in items},
            "orders": set(orders),
            "posts": {post["id"] for post in posts},
            "comments": {comment["id"] for comment in comments},
        },
    )
    # A session of its own for /auth/refresh, whose reuse detection revokes the whole session.
    spare = await fuzzer.new_session()
    fuzzer.known = {
        "POST /api/v1/auth/token": {"body": {"username": caller.username, "password": PASSWORD}},
        "POST /api/v1/auth/refresh": {"body": {"refresh_token": spare.refresh_token}},
        # Succeeds once (only the caller's other sessions end), then the password is wrong.
        "POST /api/v1/auth/password": {
            "body": {"current_password": PASSWORD, "new_password": "Fuzzed-password-2"}
        },
        "GET /api/v2/items/": {"query": {"cursor": cursor}},
        # Any current version: the status machine itself runs, not only its 428 and 412.
        "PATCH /api/v1/orders/{order_id}/status": {"headers": {"If-Match": "*"}},
        # Cursors we issued: older than the newest post, and than the newest comment.
        "GET /api/v1/posts/": {"query": {"cursor": encode_cursor(posts[-1]["id"])}},
        "GET /api/v1/posts/{post_id}/comments/": {
            "query": {"cursor": encode_cursor(comments[-1]["id"])}
        },
    }
    return fuzzer


# One test walks every operation (accounts cost Argon2 hashes: see the module docstring), so
# it gets more than the suite's per-test timeout.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    ("backend", "role"), PAIRS, ids=[f"{backend}-{role.value}" for backend, role in PAIRS]
)
def test_openapi(fuzzer: Fuzzer, app: FastAPI, subtests: pytest.Subtests) -> None:
    # The schema the live app serves (`from_dict` may normalize it in place, hence the copy),
    # with default settings, whatever schemathesis.toml may appear in the tree.
    schema = schemathesis.openapi.from_dict(
        copy.deepcopy(app.openapi()), config=schemathesis.Config()
    )
    results = list(schema.get_all_operations())
    assert results
    try:
        for result in results:
            if isinstance(result, Err):  # an operation Schemathesis can't read: a schema bug
                with subtests.test(msg="unreadable operation"):
                    raise result.err()
                continue
            operation = result.ok()
            if operation.label in ENDLESS_OPERATIONS:
                continue
            with subtests.test(msg=operation.label):
                fuzzer.fuzz(operation)
    finally:
        print(fuzzer.summary())  # shown with -s, or when the test fails
