"""A control-plane server over a real database for API tests: the examples pushed and
provisioned as version 1, and one user with a token per role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from septum.cli.server import repository_entries
from septum.server import service
from septum.server.app import AppContext, create_app
from septum.server.db import Database
from septum.server.settings import ServerSettings
from tests.conftest import EXAMPLES, EXAMPLES_AT

OWNER_SCOPE = 'app == "shop"'


@dataclass
class Harness:
    db: Database
    client: TestClient
    tokens: dict[str, str]
    data: Path

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(self, role: str | None, method: str, path: str, **kwargs: Any) -> Any:
        headers = self.headers(role) if role else {}
        return self.client.request(method, path, headers=headers, **kwargs)

    def ok(self, role: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(role, method, path, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything a write could change: audit head, active version, draft digest,
        versions and users."""
        from sqlalchemy import func, select

        from septum.server.db import ApiToken, Control, User, Version
        from septum.server.documents import documents_digest

        with self.db.read() as s:
            control = s.get(Control, 1)
            assert control is not None
            return (
                control.audit_seq,
                control.audit_hash,
                control.active_version,
                control.revision,
                documents_digest(service.draft_documents(s)),
                s.execute(select(func.count()).select_from(Version)).scalar(),
                s.execute(select(func.count()).select_from(User)).scalar(),
                tuple(
                    (t.id, t.revoked_at)
                    for t in s.execute(select(ApiToken).order_by(ApiToken.id)).scalars()
                ),
            )


@contextmanager
def running_harness(
    database_url: str, data: Path, *, provisioned: bool = True, poll_interval: float = 2.0
) -> Iterator[Harness]:
    settings = ServerSettings(data_dir=data, database_url=database_url, poll_interval=poll_interval)
    db = Database(settings.url)
    db.migrate()
    now = EXAMPLES_AT
    admin = service.bootstrap_admin(db, "root", now)
    assert admin is not None
    tokens = {"admin": admin["token"]}
    root = service.principal_of_name(db, "root")
    users = {
        "security": {"role": "security", "teams": ["security-team"]},
        "owner": {"role": "owner", "scope": OWNER_SCOPE, "teams": ["shop-team"]},
        "auditor": {"role": "auditor"},
        "agent": {"role": "agent", "enforcer": "host-shop-web-prod-1"},
    }
    for role, spec in users.items():
        name = f"{role}-user"
        service.create_user(
            db,
            root,
            name,
            spec["role"],  # type: ignore[arg-type]
            now,
            scope=spec.get("scope"),  # type: ignore[arg-type]
            teams=spec.get("teams", []),  # type: ignore[arg-type]
            enforcer=spec.get("enforcer"),  # type: ignore[arg-type]
        )
        tokens[role] = service.create_token(db, root, name, now)["token"]
    app = create_app(AppContext(settings, db, clock=lambda: fixed_now(now)))
    with TestClient(app) as client:
        h = Harness(db, client, tokens, data)
        if provisioned:
            h.ok("security", "PUT", "/api/v1/draft", json={"documents": examples_entries()})
            h.ok("security", "POST", "/api/v1/provision", json={"note": "initial (TICKET-1)"})
        try:
            yield h
        finally:
            db.dispose()


def fixed_now(now: datetime) -> datetime:
    return now


_ENTRIES: list[dict[str, Any]] | None = None


def examples_entries() -> list[dict[str, Any]]:
    global _ENTRIES
    if _ENTRIES is None:
        _ENTRIES = repository_entries(EXAMPLES)
    return _ENTRIES
