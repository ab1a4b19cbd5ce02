"""The role-by-endpoint matrix: for every role and every endpoint, an allowed call succeeds
and any other gets 403 and changes nothing (audit head, versions, draft, users, tokens)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.harness import Harness, examples_entries, running_harness

ROLES = ("admin", "security", "owner", "auditor", "agent")
READERS = frozenset({"admin", "security", "owner", "auditor"})
WRITERS = frozenset({"admin", "security"})
ADMIN = frozenset({"admin"})
AUDIT = frozenset({"admin", "security", "auditor"})

PROBE_POLICY = {
    "apiVersion": "septum/v1",
    "kind": "Policy",
    "metadata": {"name": "matrix-probe"},
    "spec": {
        "tier": "shop",
        "appliesTo": 'app == "shop" && role == "web"',
        "ingress": [{"action": "allow", "from": ['app == "shop"'], "ports": ["tcp/9999"]}],
    },
}



def _flow_record(enforcer: str) -> dict[str, Any]:
    """One record as an agent writes it (see examples/flows/shop-agent.jsonl)."""
    return {
        "start": "2026-11-25T09:00:00+00:00",
        "end": "2026-11-25T09:00:50+00:00",
        "enforcer": enforcer,
        "source": "203.0.113.80",
        "destination": "198.18.10.11",
        "protocol": "tcp",
        "port": 443,
        "verdict": "allowed",
        "provenance": ["shop/shop-web/ingress/0"],
        "connections": 3,
        "packets": 36,
        "bytes": 27000,
    }


def _label_change(h: Harness) -> dict[str, str]:
    """Make the draft differ from the active version (as the admin)."""
    h.ok(
        "admin",
        "PATCH",
        "/api/v1/workloads/shop-api-prod-1/labels",
        json={"set": {"matrix": str(h.fingerprint()[0])}},
    )
    return {}


def _new_token(h: Harness) -> dict[str, str]:
    made = h.ok("admin", "POST", "/api/v1/access/users/auditor-user/tokens", json={})
    return {"token": made["id"]}


def _new_agent_certificate(h: Harness) -> dict[str, str]:
    """Enrol an agent (as the admin's join token allows) and name its certificate."""
    from septum.server.ca import make_agent_key_and_csr

    join = h.ok("admin", "POST", "/api/v1/enforcers/matrix-host/join-tokens", json={})
    _key, csr = make_agent_key_and_csr("matrix-host")
    enrolled = h.client.post("/agent/v1/enrol", json={"token": join["token"], "csr": csr.decode()})
    assert enrolled.status_code == 201, enrolled.text
    return {"serial": enrolled.json()["serial"]}


@dataclass(frozen=True)
class Endpoint:
    method: str
    route: str  # the route's path template, as FastAPI knows it
    path: str  # a concrete path ({placeholders} filled by ``prepare``)
    allowed: frozenset[str]
    json: Any = None
    prepare: Callable[[Harness], dict[str, str]] | None = None
    public: bool = False
    params: dict[str, str] = field(default_factory=dict)


ENDPOINTS = [
    Endpoint("GET", "/healthz", "/healthz", frozenset(ROLES), public=True),
    Endpoint("GET", "/readyz", "/readyz", frozenset(ROLES), public=True),
    Endpoint("GET", "/metrics", "/metrics", frozenset(ROLES), public=True),
    Endpoint("GET", "/api/v1/whoami", "/api/v1/whoami", frozenset(ROLES)),
    Endpoint("GET", "/api/v1/enforcers", "/api/v1/enforcers", WRITERS | {"auditor"}),
    Endpoint("GET", "/api/v1/{collection}", "/api/v1/workloads", READERS),
    Endpoint("GET", "/api/v1/{collection}/{name}", "/api/v1/workloads/shop-web-prod-1", READERS),
    Endpoint(
        "PUT",
        "/api/v1/{collection}/{name}",
        "/api/v1/policies/matrix-probe",
        READERS - {"auditor"},
        json=PROBE_POLICY,
    ),
    Endpoint(
        "PATCH",
        "/api/v1/{collection}/{name}/labels",
        "/api/v1/workloads/shop-web-prod-1/labels",
        WRITERS,
        json={"set": {"matrix": "patched"}},
    ),
    Endpoint(
        "DELETE",
        "/api/v1/{collection}/{name}",
        "/api/v1/policies/matrix-probe",
        READERS - {"auditor"},
        prepare=lambda h: (
            h.ok("admin", "PUT", "/api/v1/policies/matrix-probe", json=PROBE_POLICY) and {}
        ),
    ),
    Endpoint("GET", "/api/v1/repository", "/api/v1/repository", READERS),
    Endpoint(
        "PUT",
        "/api/v1/draft",
        "/api/v1/draft",
        WRITERS,
        json={"documents": examples_entries()},
        prepare=_label_change,
    ),
    Endpoint("POST", "/api/v1/draft/reset", "/api/v1/draft/reset", WRITERS, prepare=_label_change),
    Endpoint("POST", "/api/v1/draft/validate", "/api/v1/draft/validate", READERS),
    Endpoint("POST", "/api/v1/assertions/run", "/api/v1/assertions/run", READERS),
    Endpoint(
        "POST",
        "/api/v1/provision",
        "/api/v1/provision",
        WRITERS,
        json={"note": "matrix (TICKET-2)"},
        prepare=_label_change,
    ),
    Endpoint("GET", "/api/v1/versions", "/api/v1/versions", READERS),
    Endpoint("GET", "/api/v1/versions/{number}", "/api/v1/versions/1", READERS),
    Endpoint("GET", "/api/v1/diff", "/api/v1/diff", READERS, params={"from": "0", "to": "active"}),
    Endpoint(
        "POST",
        "/api/v1/versions/{number}/rollback",
        "/api/v1/versions/1/rollback",
        WRITERS,
        json={"note": "matrix rollback (TICKET-3)"},
    ),
    Endpoint("GET", "/api/v1/audit", "/api/v1/audit", AUDIT),
    Endpoint("GET", "/api/v1/audit/verify", "/api/v1/audit/verify", AUDIT),
    Endpoint("GET", "/api/v1/access/users", "/api/v1/access/users", ADMIN),
    Endpoint(
        "POST",
        "/api/v1/access/users",
        "/api/v1/access/users",
        ADMIN,
        json={"name": "matrix-new", "role": "auditor"},
    ),
    Endpoint(
        "POST",
        "/api/v1/access/users/{name}/tokens",
        "/api/v1/access/users/auditor-user/tokens",
        ADMIN,
        json={"description": "matrix"},
    ),
    Endpoint(
        "DELETE",
        "/api/v1/access/tokens/{token_id}",
        "/api/v1/access/tokens/{token}",
        ADMIN,
        prepare=_new_token,
    ),
    Endpoint(
        "POST",
        "/api/v1/enforcers/{name}/join-tokens",
        "/api/v1/enforcers/matrix-host/join-tokens",
        WRITERS,
        json={"ttl_seconds": 600},
    ),
    Endpoint("GET", "/api/v1/agent-certificates", "/api/v1/agent-certificates", WRITERS),
    Endpoint(
        "POST",
        "/api/v1/agent-certificates/{serial}/revoke",
        "/api/v1/agent-certificates/{serial}/revoke",
        WRITERS,
        prepare=_new_agent_certificate,
    ),
    Endpoint("GET", "/api/v1/flows", "/api/v1/flows", READERS),
    # The agent's token is for enforcer host-shop-web-prod-1: its own records only.
    Endpoint(
        "POST",
        "/api/v1/flows",
        "/api/v1/flows",
        WRITERS | {"agent"},
        json={"records": [_flow_record("host-shop-web-prod-1")]},
    ),
    Endpoint(
        "POST",
        "/api/v1/flows",
        "/api/v1/flows",
        WRITERS,
        json={"records": [_flow_record("host-shop-api-prod-1")]},
    ),
]


def _routes(routes: Any) -> Any:
    """Every route, with those of included routers (FastAPI includes them lazily, as one
    entry holding the router; none has a prefix)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _routes(included.routes) if included is not None else (route,)


def test_matrix_covers_every_route(tmp_path: Path) -> None:
    from septum.server.app import AppContext, create_app
    from septum.server.db import Database
    from septum.server.settings import ServerSettings

    settings = ServerSettings(tmp_path)
    app = create_app(AppContext(settings, Database(settings.url)))
    routes = {
        (method, route.path)  # type: ignore[attr-defined]
        for route in _routes(app.routes)
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD"
        and route.path not in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")  # type: ignore[attr-defined]
        # Agent routes authenticate agents (client certificate or agent token), not the
        # roles of this matrix: tests/server/test_enrolment.py covers them.
        and not route.path.startswith("/agent/v1/")  # type: ignore[attr-defined]
    }
    covered = {(e.method, e.route) for e in ENDPOINTS}
    assert routes == covered


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(role: str, database_url: str, tmp_path: Path) -> None:
    with running_harness(database_url, tmp_path) as h:
        for e in ENDPOINTS:
            values = e.prepare(h) if e.prepare else {}
            path = e.path.format(**values)
            before = h.fingerprint()
            response = h.call(role, e.method, path, json=e.json, params=e.params)
            where = f"{role} {e.method} {path}: {response.status_code} {response.text[:300]}"
            if role in e.allowed:
                assert response.status_code < 300, where
            else:
                assert response.status_code == 403, where
                assert h.fingerprint() == before, where
        # Unauthenticated callers get 401 everywhere but the public operations endpoints.
        for e in ENDPOINTS:
            if not e.public:
                values = e.prepare(h) if e.prepare else {}
                before = h.fingerprint()
                response = h.call(None, e.method, e.path.format(**values), json=e.json)
                assert response.status_code == 401, (e.method, e.path, response.text)
                assert h.fingerprint() == before
