"""Agent enrolment on real SQLite and real PostgreSQL: join tokens (made, spent once, expired,
guessed), certificates bound to the token's enforcer, revocation, who may enrol agents, the
audit trail; and one agent's whole life through a real uvicorn with mutual TLS on 127.0.0.1."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select

from septum.server import enrolment
from septum.server.app import AppContext, create_app
from septum.server.auth import Role
from septum.server.ca import (
    CertificateAuthority,
    enforcer_of,
    load_certificate,
    make_agent_key_and_csr,
    serial_of,
)
from septum.server.db import AgentCertificate, AuditEntry, Authority, Database, JoinToken
from septum.server.service import Conflict, Forbidden, NotFound, Unauthorized
from septum.server.service import principal_of_name as principal
from septum.server.tls import (
    agent_ssl_context,
    enrolment_ssl_context,
    server_ssl_config,
)
from tests.conftest import EXAMPLES_AT
from tests.server.harness import Harness, running_harness
from tests.server.test_tls import _serve

HOST = "127.0.0.1"
NOW = EXAMPLES_AT  # the harness's clock
ENROLMENT_ACTIONS = ("authority.create", "join-token.create", "agent.enrol")


@pytest.fixture
def h(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    with running_harness(database_url, tmp_path, provisioned=False) as harness:
        yield harness


def _fingerprint(cert_pem: str) -> str:
    """What an agent computes to check a certificate: sha256 of its DER, independently of
    ``ca.fingerprint_of``."""
    der = load_certificate(cert_pem.encode()).public_bytes(Encoding.DER)
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


def _csr(claims: str = "host-a") -> tuple[bytes, bytes]:
    return make_agent_key_and_csr(claims)


def _enrol(h: Harness, token: str, csr: bytes) -> httpx.Response:
    response: httpx.Response = h.client.post(
        "/agent/v1/enrol", json={"token": token, "csr": csr.decode()}
    )
    return response


def _join(h: Harness, enforcer: str = "host-a", role: str = "security", **body: Any) -> Any:
    return h.ok(role, "POST", f"/api/v1/enforcers/{enforcer}/join-tokens", json=body)


def _audit(h: Harness) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = h.ok("auditor", "GET", "/api/v1/audit")["entries"]
    return entries


def _counts(h: Harness) -> tuple[int, int, int]:
    with h.db.read() as s:
        return (
            s.execute(select(func.count()).select_from(JoinToken)).scalar_one(),
            s.execute(select(func.count()).select_from(AgentCertificate)).scalar_one(),
            s.execute(select(func.count()).select_from(Authority)).scalar_one(),
        )


def test_public_surface() -> None:
    assert set(enrolment.__all__) <= set(dir(enrolment))


# ---- the join token's life ----------------------------------------------------------------


def test_a_join_token_enrols_one_agent_once(h: Harness) -> None:
    join = _join(h, "host-a", ttl_seconds=600)
    assert set(join) == {"token", "id", "enforcer", "expires_at", "ca_fingerprint", "server"}
    assert join["token"].startswith(f"sepj_{join['id']}_")
    assert join["enforcer"] == "host-a"
    assert datetime.fromisoformat(join["expires_at"]) == NOW + timedelta(seconds=600)

    # The CA an agent downloads is the one the fingerprint names.
    ca = h.client.get("/agent/v1/ca").json()
    assert ca["fingerprint"] == join["ca_fingerprint"] == _fingerprint(ca["certificate"])

    _key, csr = _csr("host-a")
    response = _enrol(h, join["token"], csr)
    assert response.status_code == 201, response.text
    enrolled = response.json()
    assert set(enrolled) == {"certificate", "ca", "enforcer", "serial", "not_after"}
    assert enrolled["ca"] == ca["certificate"]
    cert_pem = enrolled["certificate"].encode()
    assert enforcer_of(cert_pem) == enrolled["enforcer"] == "host-a"
    assert f"{serial_of(cert_pem):x}" == enrolled["serial"]
    load_certificate(cert_pem).verify_directly_issued_by(
        load_certificate(ca["certificate"].encode())
    )

    # Spent: a second use is refused and changes nothing.
    before = (h.fingerprint(), _counts(h))
    again = _enrol(h, join["token"], _csr()[1])
    assert again.status_code == 401
    assert "was used" in again.json()["error"]
    assert (h.fingerprint(), _counts(h)) == before

    with h.db.read() as s:
        row = s.get(JoinToken, join["id"])
        assert row is not None
        assert row.used_at == NOW
        assert row.serial == enrolled["serial"]
        assert row.secret_hash not in join["token"]
    [listed] = h.ok("admin", "GET", "/api/v1/agent-certificates")
    assert listed["serial"] == enrolled["serial"]
    assert listed["enforcer"] == "host-a"
    assert listed["revoked_at"] is None
    assert listed["fingerprint"] == _fingerprint(enrolled["certificate"])

    # Audited: the CA, the token (by id only) and the enrolment, on an intact chain.
    entries = _audit(h)
    ours = [e for e in entries if e["action"] in ENROLMENT_ACTIONS]
    assert [(e["action"], e["actor"]) for e in ours] == [
        ("authority.create", "septum"),
        ("join-token.create", "security-user"),
        ("agent.enrol", "agent:host-a"),
    ]
    assert ours[2]["after"]["join_token"] == join["id"]
    secret = join["token"].rsplit("_", 1)[1]
    assert secret not in str(entries)
    assert h.ok("auditor", "GET", "/api/v1/audit/verify")["ok"]


def test_the_certificate_names_the_tokens_enforcer_not_the_csrs(h: Harness) -> None:
    join = _join(h, "host-a")
    _key, csr = _csr("host-db-prod-1")  # asks for another enforcer
    enrolled = _enrol(h, join["token"], csr).json()
    assert enrolled["enforcer"] == "host-a"
    cert = load_certificate(enrolled["certificate"].encode())
    assert enforcer_of(enrolled["certificate"].encode()) == "host-a"
    assert cert.subject.rfc4514_string() == "CN=host-a"


def test_expired_guessed_and_malformed_tokens_are_refused(h: Harness) -> None:
    security = principal(h.db, "security-user")
    join = enrolment.create_join_token(h.db, security, "host-b", NOW, timedelta(minutes=1))
    token_id = join["id"]
    before = (h.fingerprint(), _counts(h))
    _key, csr = _csr("host-b")
    refused = {
        "expired at": (join["token"], NOW + timedelta(minutes=1)),
        "unknown join token": (f"sepj_{token_id}_wrongsecretwrongsecret", NOW),
        "unknown join token ": (f"sepj_{'0' * 16}_secret", NOW),
        "malformed": ("sep_0123456789abcdef_secret", NOW),
        "malformed ": (f"sepj_{token_id}_sec ret", NOW),
    }
    for message, (token, when) in refused.items():
        with pytest.raises(Unauthorized, match=message.strip()):
            enrolment.enrol(h.db, token, csr, when)
    assert (h.fingerprint(), _counts(h)) == before
    # Over HTTP: 401 with an explanation.
    response = _enrol(h, "sepj_nothing", csr)
    assert response.status_code == 401
    assert "malformed join token" in response.json()["error"]
    # None of that spent the token: it still works a second before it expires.
    enrolled = enrolment.enrol(h.db, join["token"], csr, NOW + timedelta(seconds=59))
    assert enrolled["enforcer"] == "host-b"


def test_a_bad_csr_leaves_the_token_unused(h: Harness) -> None:
    join = _join(h, "host-c")
    for csr in (
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        response = h.client.post("/agent/v1/enrol", json={"token": join["token"], "csr": csr})
        assert response.status_code == 400, response.text
        assert "certificate signing request" in response.json()["error"]
    assert _enrol(h, join["token"], _csr()[1]).status_code == 201


def test_input_is_checked_at_the_boundary(h: Harness) -> None:
    before = (h.fingerprint(), _counts(h))
    for name in ("x" * 65, "a%00b", "%20padded"):
        response = h.call("security", "POST", f"/api/v1/enforcers/{name}/join-tokens", json={})
        assert response.status_code == 400, (name, response.text)
        assert "enforcer name" in response.json()["error"]
    for body in ({"ttl_seconds": 59}, {"ttl_seconds": 30 * 86400 + 1}, {"ttl": 600}):
        response = h.call("security", "POST", "/api/v1/enforcers/host-a/join-tokens", json=body)
        assert response.status_code == 422, (body, response.text)
    response = h.client.post("/agent/v1/enrol", json={"token": "x", "csr": "y", "extra": 1})
    assert response.status_code == 422
    assert (h.fingerprint(), _counts(h)) == before
    # No body at all: the default lifetime (one hour).
    made = h.ok("security", "POST", "/api/v1/enforcers/host-a/join-tokens")
    assert datetime.fromisoformat(made["expires_at"]) == NOW + timedelta(hours=1)


def test_two_agents_racing_with_one_token_get_one_certificate(h: Harness) -> None:
    join = _join(h, "host-d")
    csrs = [_csr("host-d")[1] for _ in range(4)]

    def attempt(csr: bytes) -> str:
        try:
            enrolment.enrol(h.db, join["token"], csr, NOW)
        except Unauthorized:
            return "refused"
        return "enrolled"

    with ThreadPoolExecutor(len(csrs)) as pool:
        outcomes = sorted(pool.map(attempt, csrs))
    assert outcomes == ["enrolled", "refused", "refused", "refused"]
    assert _counts(h)[1] == 1


def test_replicas_racing_make_one_authority(database_url: str, tmp_path: Path) -> None:
    with running_harness(database_url, tmp_path, provisioned=False) as h:
        replicas = [Database(h.db.url) for _ in range(4)]
        try:
            with ThreadPoolExecutor(len(replicas)) as pool:
                made = list(pool.map(lambda db: enrolment.authority(db, NOW), replicas))
        finally:
            for db in replicas:
                db.dispose()
        assert len({ca.cert_pem for ca in made}) == 1
        assert enrolment.authority(h.db, NOW) == made[0]
        assert _counts(h)[2] == 1
        with h.db.read() as s:
            creations = s.execute(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action == "authority.create")
            ).scalar_one()
        assert creations == 1


# ---- certificates: who the caller is, revocation --------------------------------------------


def test_agent_principal_and_revocation(h: Harness) -> None:
    join = _join(h, "host-e")
    enrolled = _enrol(h, join["token"], _csr()[1]).json()
    cert = enrolled["certificate"].encode()
    der = load_certificate(cert).public_bytes(Encoding.DER)

    for form in (cert, der):
        p = enrolment.agent_principal(h.db, form, NOW)
        assert (p.name, p.role, p.enforcer) == ("agent:host-e", Role.AGENT, "host-e")

    # Past its end: refused even if TLS let it through.
    not_after = datetime.fromisoformat(enrolled["not_after"])
    with pytest.raises(Unauthorized, match="expired"):
        enrolment.agent_principal(h.db, cert, not_after)

    # Signed by our CA but never recorded (not enrolled here): unknown.
    ca = enrolment.authority(h.db, NOW)
    stray = ca.issue_agent_certificate("host-e", now=NOW)
    with pytest.raises(Unauthorized, match="not issued"):
        enrolment.agent_principal(h.db, stray.cert_pem, NOW)
    with pytest.raises(Unauthorized, match="names no agent"):
        enrolment.agent_principal(h.db, ca.cert_pem, NOW)
    with pytest.raises(Unauthorized, match="names no agent"):
        enrolment.agent_principal(h.db, b"garbage", NOW)

    serial = enrolled["serial"]
    revoked = h.ok("security", "POST", f"/api/v1/agent-certificates/{serial.upper()}/revoke")
    assert revoked["revoked_by"] == "security-user"
    assert revoked["revoked_at"] == NOW.isoformat()
    with pytest.raises(Forbidden, match=f"certificate {serial} is revoked"):
        enrolment.agent_principal(h.db, cert, NOW)

    before = h.fingerprint()
    again = h.call("admin", "POST", f"/api/v1/agent-certificates/{serial}/revoke")
    assert again.status_code == 409
    assert "security-user" in again.json()["error"]
    for unknown in ("abc123", "not-hex", "f" * 41):
        response = h.call("admin", "POST", f"/api/v1/agent-certificates/{unknown}/revoke")
        assert response.status_code == 404, response.text
    assert h.fingerprint() == before

    [entry] = [e for e in _audit(h) if e["action"] == "agent-certificate.revoke"]
    assert entry["actor"] == "security-user"
    assert entry["target"] == f"enforcer/host-e/certificate/{serial}"
    assert entry["before"]["revoked_at"] is None
    assert h.ok("auditor", "GET", "/api/v1/audit/verify")["ok"]

    security = principal(h.db, "security-user")
    with pytest.raises(Conflict):
        enrolment.revoke_certificate(h.db, security, serial, NOW)
    with pytest.raises(NotFound):
        enrolment.revoke_certificate(h.db, security, "1", NOW)


@pytest.mark.parametrize("role", ["owner", "auditor", "agent"])
def test_only_admin_and_security_enrol_agents(h: Harness, role: str) -> None:
    join = _join(h, "host-f", role="admin")
    serial = _enrol(h, join["token"], _csr()[1]).json()["serial"]
    before = (h.fingerprint(), _counts(h))
    calls = [
        ("POST", "/api/v1/enforcers/host-f/join-tokens", {}),
        ("GET", "/api/v1/agent-certificates", None),
        ("POST", f"/api/v1/agent-certificates/{serial}/revoke", None),
    ]
    for method, path, body in calls:
        response = h.call(role, method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert "enrol-agents" in response.json()["error"]
        assert h.call(None, method, path, json=body).status_code == 401
    assert (h.fingerprint(), _counts(h)) == before
    with pytest.raises(Forbidden):
        enrolment.create_join_token(h.db, principal(h.db, f"{role}-user"), "host-f", NOW)
    assert h.ok("admin", "GET", "/api/v1/agent-certificates")[0]["revoked_at"] is None


def test_agent_routes_take_agent_tokens_only(h: Harness) -> None:
    assert h.ok("agent", "GET", "/agent/v1/whoami") == {
        "enforcer": "host-shop-web-prod-1",
        "name": "agent-user",
        "via": "token",
    }
    for role in ("admin", "security", "owner", "auditor"):
        response = h.call(role, "GET", "/agent/v1/whoami")
        assert response.status_code == 403
        assert response.json() == {"error": "agent routes are for agents"}
    assert h.call(None, "GET", "/agent/v1/whoami").status_code == 401


# ---- one agent's life over real mutual TLS ------------------------------------------------


def test_an_agent_enrols_and_calls_over_mutual_tls(tmp_path: Path) -> None:
    with running_harness(
        f"sqlite+pysqlite:///{tmp_path / 'septum.db'}", tmp_path, provisioned=False
    ) as h:
        # The TLS handshake checks validity against the real clock, so this server uses it
        # (the harness's own app, with its fixed clock, is not used for CA calls).
        now = datetime.now(UTC)
        ca = enrolment.authority(h.db, now)
        issued = enrolment.server_certificate(h.db, [HOST, "localhost"], now)
        assert issued.key_pem is not None
        options = server_ssl_config(
            tmp_path / "tls", ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem
        )
        app = create_app(AppContext(h.client.app.state.ctx.settings, h.db))
        with _serve(app, dict(options)) as url:
            people = httpx.Client(verify=enrolment_ssl_context(ca.cert_pem), timeout=10)
            with people:
                made = people.post(
                    f"{url}/api/v1/enforcers/host-tls-1/join-tokens",
                    headers=h.headers("security"),
                    json={},
                )
                assert made.status_code == 201, made.text
                join = made.json()
                assert join["server"] == url

                # The agent: it trusts nothing yet, so it checks the CA it fetches against
                # the fingerprint that came with its token.
                with httpx.Client(verify=False, timeout=10) as bare:
                    fetched = bare.get(f"{url}/agent/v1/ca").json()
                assert _fingerprint(fetched["certificate"]) == join["ca_fingerprint"]
                ca_pem = fetched["certificate"].encode()

                key_pem, csr = make_agent_key_and_csr("host-tls-1")
                with httpx.Client(verify=enrolment_ssl_context(ca_pem), timeout=10) as enrolling:
                    response = enrolling.post(
                        f"{url}/agent/v1/enrol", json={"token": join["token"], "csr": csr.decode()}
                    )
                    assert response.status_code == 201, response.text
                    enrolled = response.json()
                    # Without a certificate, agent routes want a token.
                    assert enrolling.get(f"{url}/agent/v1/whoami").status_code == 401

                context = agent_ssl_context(ca_pem, enrolled["certificate"].encode(), key_pem)
                with httpx.Client(verify=context, timeout=10) as agent:
                    whoami = agent.get(f"{url}/agent/v1/whoami")
                    assert whoami.status_code == 200, whoami.text
                    assert whoami.json() == {
                        "enforcer": "host-tls-1",
                        "name": "agent:host-tls-1",
                        "via": "certificate",
                    }

                    revoked = people.post(
                        f"{url}/api/v1/agent-certificates/{enrolled['serial']}/revoke",
                        headers=h.headers("admin"),
                    )
                    assert revoked.status_code == 200, revoked.text
                    refused = agent.get(f"{url}/agent/v1/whoami")  # same connection
                    assert refused.status_code == 403
                    assert "is revoked" in refused.json()["error"]

                # An agent token still works over TLS without a certificate.
                by_token = people.get(f"{url}/agent/v1/whoami", headers=h.headers("agent"))
                assert by_token.json()["via"] == "token"

            # A certificate from another CA (same enforcer name) fails the handshake: no
            # request reaches the app.
            other = CertificateAuthority.create("Impostor CA", now=now, days=2)
            foreign = other.issue_agent_certificate("host-tls-1", now=now)
            assert foreign.key_pem is not None
            context = agent_ssl_context(ca_pem, foreign.cert_pem, foreign.key_pem)
            context.maximum_version = ssl.TLSVersion.TLSv1_2  # the failure shows in connect
            with (
                httpx.Client(verify=context, timeout=10) as impostor,
                pytest.raises(httpx.ConnectError),
            ):
                impostor.get(f"{url}/agent/v1/whoami")
