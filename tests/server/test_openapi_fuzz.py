"""Schemathesis over the OpenAPI document the server publishes (``/openapi.json``): every
operation is called with generated path parameters, query parameters and JSON bodies, valid
and invalid (Schemathesis' positive and negative modes, in its examples, coverage and fuzzing
phases), as the admin so that calls get past authentication and reach the handlers, against
a server whose repository holds the examples (provisioned as version 1). No answer may be a
5xx, and every 4xx must explain itself (a JSON object with ``error`` or ``detail``).

Generation is derandomized (the same cases on every run, locally and in CI). String
parameters sometimes take names that exist (a workload, a tier, a user: the ``names``
dictionary) so that handlers get past "not found" to the code that writes; a user's role is
sometimes a real one, so that a new user reaches the database. One operation's test gets a
fresh server, so that a failure replays on its own with ``-k``.

Runs on SQLite with more examples, and on PostgreSQL (which, unlike SQLite, refuses some text
outright, e.g. NUL characters) with fewer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from septum.server.app import AppContext, create_app
from septum.server.db import Database
from septum.server.settings import ServerSettings
from tests.server.harness import Harness, running_harness

#: Examples per operation and generation mode in the fuzzing phase (the examples and
#: coverage phases add their own, a fixed set per operation).
SQLITE_EXAMPLES = 25
POSTGRES_EXAMPLES = 8

#: Names that exist on the test server (see examples/ and tests/server/harness.py).
KNOWN_NAMES = ["root", "auditor-user", "shop-web-prod-1", "shop", "settings", "alice"]
ROLES = ["admin", "security", "owner", "auditor", "agent"]
#: Text that databases treat specially: NUL (PostgreSQL refuses it in text), and longer than
#: a name column (253 characters), in ASCII and not.
AWKWARD = ["\x00", "a\x00b", "x" * 300, "é" * 254]
#: Valid RFC 3339 times at the edges of what a datetime holds.
TIMES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "2026-11-25T12:00:00+14:00"]


def _spec_app() -> Any:
    """An app only asked for its OpenAPI document: it never opens its (in-memory) database."""
    return create_app(
        AppContext(ServerSettings(data_dir=Path("/nonexistent")), Database("sqlite://"))
    )


def _schema(max_examples: int) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "dictionaries": {
                "names": {"values": KNOWN_NAMES + AWKWARD},
                "roles": {"values": ROLES},
                "awkward": {"values": AWKWARD},
                "times": {"values": TIMES},
            },
            "parameters": {
                "path.name": {"dictionary": "names", "probability": 0.5},
                "body.name": {"dictionary": "names", "probability": 0.5},
                "body.role": {"dictionary": "roles", "probability": 0.5},
                "body.expires_at": {"dictionary": "times", "probability": 0.3},
            },
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                "dictionaries": {"string": {"dictionary": "awkward", "probability": 0.25}},
            },
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", _spec_app(), config=config)


SQLITE_SCHEMA = _schema(SQLITE_EXAMPLES)
POSTGRES_SCHEMA = _schema(POSTGRES_EXAMPLES)


@schemathesis.check
def explained_client_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A 4xx says why: a JSON object with ``error`` (ours) or ``detail`` (FastAPI's)."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    why = f"{response.status_code} without an explanation: {response.text[:200]}"
    assert isinstance(body, dict), why
    assert "error" in body or "detail" in body, why
    return True


CHECKS = [not_a_server_error, explained_client_error]


def _call(h: Harness, case: schemathesis.Case) -> None:
    # The admin's token replaces any generated Authorization header.
    response = case.call(app=h.client.app, headers=h.headers("admin"))
    case.validate_response(response, checks=CHECKS)


@pytest.fixture
def sqlite_harness(tmp_path: Path) -> Iterator[Harness]:
    with running_harness(f"sqlite+pysqlite:///{tmp_path / 'septum.db'}", tmp_path) as h:
        yield h


@pytest.fixture
def postgres_harness(postgres_url: str, tmp_path: Path) -> Iterator[Harness]:
    with running_harness(postgres_url, tmp_path) as h:
        yield h


@SQLITE_SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_sqlite(case: schemathesis.Case, sqlite_harness: Harness) -> None:
    _call(sqlite_harness, case)


@POSTGRES_SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_postgresql(case: schemathesis.Case, postgres_harness: Harness) -> None:
    _call(postgres_harness, case)


def test_every_operation_is_fuzzed() -> None:
    """The parametrized tests above cover every operation the app publishes."""
    spec = _spec_app().openapi()
    published = {
        f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops
    }
    fuzzed = {op.ok().label for op in SQLITE_SCHEMA.get_all_operations()}
    assert fuzzed == published
    assert len(published) >= 25
