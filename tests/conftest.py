"""Shared fixtures. Tests that need root and nftables skip outside CI and fail inside it
(CI=true), so that a machine missing them can never pass CI silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: A fixed evaluation time, so that expiring rules and address validity are deterministic.
EXAMPLES_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


#: One prefix per test run, so that namespaces are recognisably ours and never collide.
NETNS_PREFIX = f"septum-t{uuid.uuid4().hex[:6]}-"


def require_root_nft() -> str:
    """The nft binary, when this process may use it (root, with iproute2 for namespaces).
    Outside CI a machine without them skips; in CI (CI=true) the test fails instead."""
    nft = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)
    if os.geteuid() == 0 and nft is not None and shutil.which("ip") is not None:
        return nft
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run this test: it needs root, nftables and iproute2 (.ci/run)")
    pytest.skip("needs root, nftables and iproute2")


@pytest.fixture
def nft() -> str:
    """Path of the nft binary, when this process may use it (root)."""
    return require_root_nft()


@contextmanager
def netns_context() -> Iterator[str]:
    """A fresh, empty network namespace with this run's prefix, deleted on exit even when
    the body fails (root only: see ``require_root_nft``)."""
    require_root_nft()
    name = NETNS_PREFIX + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted when the test ends, even when it fails."""
    with netns_context() as name:
        yield name


# --- PostgreSQL: a private cluster per session, a database per test (tests/postgres.py) ------
# Imported here rather than at the top to keep this block in one piece; tests/postgres.py
# imports psycopg only when a server starts.
from typing import NoReturn  # noqa: E402

from tests.postgres import (  # noqa: E402
    PostgresInstall,
    PostgresServer,
    PostgresUnavailable,
    find_postgres,
    running_postgres,
)


def require_postgres() -> PostgresInstall:
    """The PostgreSQL server programs and whom to run them as, when this machine has them.
    Outside CI a machine without them skips; in CI (CI=true) the test fails instead."""
    try:
        return find_postgres()
    except PostgresUnavailable as e:
        _postgres_unavailable(str(e))


def _postgres_unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"CI must run this test: it needs PostgreSQL, which scripts/test.sh installs "
            f"(Debian package postgresql): {reason}"
        )
    pytest.skip(f"needs PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on 127.0.0.1 for the whole session, started on first use
    and stopped (its directory deleted) at the end, even when tests fail."""
    install = require_postgres()
    with running_postgres(install) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg) of a new, empty database for this test alone,
    dropped afterwards (ending any session the test left connected)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of an empty database, once on SQLite (a file in tmp_path) and once on
    PostgreSQL (``postgres_url``), so that one test covers both storage back ends."""
    if request.param == "sqlite":
        return f"sqlite+pysqlite:///{tmp_path / 'septum.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
