"""Agent enrolment and agent identity: the control plane's CA, one-time join tokens, the
client certificates they buy, and who a request with such a certificate is.

How an enforcer's agent joins (see ``ca`` for the certificate side)::

    admin/security ── create_join_token(E) ─► sepj_<id>_<secret>  (shown once, 1 h by default)
          │ hands the token and the CA fingerprint to the host (out of band)
    agent ── GET ca_certificate ─► checks sha256 against the fingerprint, then trusts only it
    agent ── enrol(token, CSR) ───► token found, unused, unexpired: one write transaction
                                     signs the CSR for E, marks the token used, records the
                                     certificate, appends the audit entry
    agent ── mutual TLS ──────────► agent_principal(certificate): issued here, not revoked,
                                     not expired ─► Principal(agent:E, AGENT, enforcer=E)

Design:

- **The enforcer comes from the join token**, never from the CSR or the caller: a token names
  one enforcer when it is made, and ``enrol`` certifies exactly that name.
- **One use, all or nothing.** Checking the token, signing, marking the token used and
  recording the certificate happen in one write transaction (under the control row's lock), so
  two agents racing with one token get one certificate and one 401, and a refused CSR leaves
  the token usable.
- **Only hashes of secrets are stored**, and the secret is compared in constant time
  (``auth.secret_matches``). The audit log names tokens by id, never by secret.
- **Revocation is checked here on every agent request** (``agent_principal``): TLS accepts any
  unexpired certificate of the CA, revoked or not (``tls`` explains why).
- **One CA for every replica**, in the ``authority`` row, made on first use inside a write
  transaction: replicas racing to make it serialize on the control row and make exactly one.

Every function takes ``now`` (timezone-aware); none reads the clock. Costs: a join token is one
write; an enrolment one write and one ECDSA signature; ``agent_principal`` one certificate
parse and one primary-key read.
"""

from __future__ import annotations

import re
import secrets
import weakref
from collections.abc import Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from septum.errors import SeptumError
from septum.server import audit
from septum.server.auth import Permission, Principal, Role, hash_secret, secret_matches
from septum.server.ca import (
    CertificateAuthority,
    CertificateError,
    IssuedCertificate,
    enforcer_of,
    fingerprint_of,
    load_certificate,
)

# The CA's rule for names it can certify; a join token for a name it cannot is refused when
# the token is made, not when the agent enrols an hour later.
from septum.server.ca import _check_enforcer as check_enforcer_name
from septum.server.db import (
    AUTH_CHANNEL,
    AgentCertificate,
    Authority,
    Control,
    Database,
    JoinToken,
    notify,
)
from septum.server.service import Conflict, Forbidden, NotFound, Unauthorized, require

__all__ = [
    "AUTHORITY_NAME",
    "DEFAULT_JOIN_TOKEN_TTL",
    "JOIN_TOKEN_PREFIX",
    "agent_principal",
    "authority",
    "ca_certificate",
    "ca_fingerprint",
    "create_join_token",
    "enrol",
    "list_certificates",
    "revoke_certificate",
    "server_certificate",
]

JOIN_TOKEN_PREFIX = "sepj_"
DEFAULT_JOIN_TOKEN_TTL = timedelta(hours=1)
#: The CA certificate's common name.
AUTHORITY_NAME = "Septum control plane CA"

_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
#: ``secrets.token_urlsafe`` text; anything else (e.g. unencodable text) is not a secret of ours.
_TOKEN_SECRET = re.compile(r"[A-Za-z0-9_-]{1,100}")
#: A certificate serial as written here: lowercase hex; 159 random bits fit in 40 digits.
_SERIAL = re.compile(r"[0-9a-fA-F]{1,40}")

#: The CA never changes once made, so each Database loads it once.
_authorities: weakref.WeakKeyDictionary[Database, CertificateAuthority] = (
    weakref.WeakKeyDictionary()
)


# ------------------------------------------------------------------ the authority


def authority(db: Database, now: datetime) -> CertificateAuthority:
    """The control plane's CA, made on first use (with its audit entry). Cached per database."""
    cached = _authorities.get(db)
    if cached is not None:
        return cached
    with db.read() as s:
        row = s.get(Authority, 1)
        if row is not None:
            return _remember(db, row)
    with db.write() as (s, control):
        return _authority_in(db, s, control, now)


def _authority_in(
    db: Database, s: Session, control: Control, now: datetime
) -> CertificateAuthority:
    """The CA inside a write transaction, made if missing. The caller holds the control row's
    lock, so a replica that made it a moment ago has committed and its row is seen here."""
    cached = _authorities.get(db)
    if cached is not None:
        return cached
    row = s.get(Authority, 1)
    if row is None:
        made = CertificateAuthority.create(AUTHORITY_NAME, now=now)
        row = Authority(
            id=1,
            certificate=made.cert_pem.decode("ascii"),
            private_key=made.key_pem.decode("ascii"),
            created_at=now,
        )
        s.add(row)
        audit.append(
            s,
            control,
            at=now,
            actor="septum",
            action="authority.create",
            target="authority",
            after={
                "fingerprint": ca_fingerprint(made),
                "not_after": made.certificate.not_valid_after_utc.isoformat(),
            },
        )
        s.flush()
        # Not cached yet: the transaction may still roll back.
        return made
    return _remember(db, row)


def _remember(db: Database, row: Authority) -> CertificateAuthority:
    ca = CertificateAuthority(
        key_pem=row.private_key.encode("ascii"), cert_pem=row.certificate.encode("ascii")
    )
    _authorities[db] = ca
    return ca


def ca_fingerprint(ca: CertificateAuthority) -> str:
    """``sha256:<hex>`` of the CA certificate's DER: what an agent checks before trusting it."""
    return f"sha256:{fingerprint_of(ca.cert_pem)}"


def ca_certificate(db: Database, now: datetime) -> str:
    """The CA certificate (PEM). Public: agents fetch it before they have any credential and
    check it against the fingerprint that came with their join token."""
    return authority(db, now).cert_pem.decode("ascii")


def server_certificate(db: Database, names: Sequence[str], now: datetime) -> IssuedCertificate:
    """A fresh TLS server certificate from the CA for these names: each an IP address or a DNS
    name. Its key is made here and returned (for the server's 0600 key file)."""
    hostnames: list[str] = []
    addresses: list[IPv4Address | IPv6Address] = []
    for name in names:
        try:
            addresses.append(ip_address(name))
        except ValueError:
            hostnames.append(name)
    return authority(db, now).issue_server_certificate(hostnames, addresses, now=now)


# ------------------------------------------------------------------ join tokens


def _split_join_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed join token, else None."""
    if not text.startswith(JOIN_TOKEN_PREFIX):
        return None
    token_id, sep, secret = text[len(JOIN_TOKEN_PREFIX) :].partition("_")
    if not sep or not _TOKEN_ID.fullmatch(token_id) or not _TOKEN_SECRET.fullmatch(secret):
        return None
    return token_id, secret


def create_join_token(
    db: Database,
    p: Principal,
    enforcer: str,
    now: datetime,
    ttl: timedelta = DEFAULT_JOIN_TOKEN_TTL,
    server_url: str | None = None,
) -> dict[str, Any]:
    """A one-time join token that enrols one agent as ``enforcer`` until ``now + ttl``.

    The token text is in this answer only (its secret's SHA-256 is stored). ``ca_fingerprint``
    goes to the host with it, so that the agent can check the CA it downloads; ``server`` is
    where the agent enrols, when the caller knows it."""
    require(p, Permission.ENROL_AGENTS)
    check_enforcer_name(enforcer)
    if ttl <= timedelta(0):
        raise SeptumError(f"a join token must be valid for some time, not {ttl}")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(20)
    expires_at = now + ttl
    with db.write() as (s, control):
        ca = _authority_in(db, s, control, now)
        s.add(
            JoinToken(
                id=token_id,
                enforcer=enforcer,
                secret_hash=hash_secret(secret),
                created_by=p.name,
                created_at=now,
                expires_at=expires_at,
                used_at=None,
                serial=None,
            )
        )
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="join-token.create",
            target=f"enforcer/{enforcer}/join-token/{token_id}",
            after={"id": token_id, "enforcer": enforcer, "expires_at": expires_at.isoformat()},
        )
    return {
        "token": f"{JOIN_TOKEN_PREFIX}{token_id}_{secret}",
        "id": token_id,
        "enforcer": enforcer,
        "expires_at": expires_at.isoformat(),
        "ca_fingerprint": ca_fingerprint(ca),
        "server": server_url,
    }


def enrol(db: Database, token: str, csr_pem: bytes, now: datetime) -> dict[str, Any]:
    """Spend a join token on a client certificate for the token's enforcer.

    No principal: the token is the credential. Unknown, used or expired tokens are 401
    (``Unauthorized``) and change nothing; a bad CSR is a ``CertificateError`` and leaves the
    token unused. Whatever name the CSR asks for is ignored."""
    parts = _split_join_token(token)
    if parts is None:
        raise Unauthorized(f"malformed join token (expected {JOIN_TOKEN_PREFIX}<id>_<secret>)")
    token_id, secret = parts
    with db.write() as (s, control):
        row = s.get(JoinToken, token_id)
        if row is None or not secret_matches(secret, row.secret_hash):
            raise Unauthorized("unknown join token")
        if row.used_at is not None:
            raise Unauthorized(
                f"join token {token_id} was used at {row.used_at.isoformat()}; ask for a new one"
            )
        if now >= row.expires_at:
            raise Unauthorized(
                f"join token {token_id} expired at {row.expires_at.isoformat()}; ask for a new one"
            )
        ca = _authority_in(db, s, control, now)
        issued = ca.sign_agent_csr(csr_pem, row.enforcer, now=now)
        serial = _serial_text(issued.serial)
        row.used_at = now
        row.serial = serial
        cert = AgentCertificate(
            serial=serial,
            enforcer=row.enforcer,
            fingerprint=issued.fingerprint,
            issued_at=now,
            not_after=issued.not_after,
            revoked_at=None,
            revoked_by=None,
        )
        s.add(cert)
        audit.append(
            s,
            control,
            at=now,
            actor=f"agent:{row.enforcer}",
            action="agent.enrol",
            target=f"enforcer/{row.enforcer}/certificate/{serial}",
            after={**_certificate_json(cert), "join_token": token_id},
        )
    return {
        "certificate": issued.cert_pem.decode("ascii"),
        "ca": ca.cert_pem.decode("ascii"),
        "enforcer": row.enforcer,
        "serial": serial,
        "not_after": issued.not_after.isoformat(),
    }


# ------------------------------------------------------------------ issued certificates


def _serial_text(serial: int) -> str:
    return format(serial, "x")


def _certificate_json(c: AgentCertificate) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "enforcer": c.enforcer,
        "fingerprint": f"sha256:{c.fingerprint}",
        "issued_at": c.issued_at.isoformat(),
        "not_after": c.not_after.isoformat(),
        "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
        "revoked_by": c.revoked_by,
    }


def list_certificates(db: Database, p: Principal) -> list[dict[str, Any]]:
    """Every client certificate issued to an agent, oldest first, revoked ones included."""
    require(p, Permission.ENROL_AGENTS)
    with db.read() as s:
        rows = s.execute(
            select(AgentCertificate).order_by(AgentCertificate.issued_at, AgentCertificate.serial)
        ).scalars()
        return [_certificate_json(c) for c in rows]


def revoke_certificate(db: Database, p: Principal, serial: str, now: datetime) -> dict[str, Any]:
    """Refuse an agent's certificate from now on (its next request gets 403). Revoking one
    twice is a ``Conflict``: the first revocation's time and author stay."""
    require(p, Permission.ENROL_AGENTS)
    if not _SERIAL.fullmatch(serial):
        raise NotFound(f"no agent certificate {serial!r} (serials are hexadecimal)")
    key = _serial_text(int(serial, 16))
    with db.write() as (s, control):
        notify(s, AUTH_CHANNEL)  # replicas forget the agents they verified (at commit)
        row = s.get(AgentCertificate, key)
        if row is None:
            raise NotFound(f"no agent certificate {key}")
        if row.revoked_at is not None:
            raise Conflict(
                f"certificate {key} was revoked at {row.revoked_at.isoformat()} by {row.revoked_by}"
            )
        before = _certificate_json(row)
        row.revoked_at = now
        row.revoked_by = p.name
        after = _certificate_json(row)
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="agent-certificate.revoke",
            target=f"enforcer/{row.enforcer}/certificate/{key}",
            before=before,
            after=after,
        )
    return after


def agent_principal(db: Database, certificate: bytes, now: datetime) -> Principal:
    """Who a request is that presented this client certificate (PEM or DER), which the TLS
    handshake verified against the CA.

    The handshake proves the CA signed it; this adds what TLS here cannot know: that this
    control plane recorded it (``Unauthorized`` if not), that it is not revoked
    (``Forbidden``) and not expired, and that it is the certificate recorded under its
    serial, for the enforcer it names."""
    try:
        cert = load_certificate(certificate)
        enforcer = enforcer_of(certificate)
    except CertificateError as e:
        raise Unauthorized(f"the client certificate names no agent: {e}") from None
    serial = _serial_text(cert.serial_number)
    with db.read() as s:
        row = s.get(AgentCertificate, serial)
    if row is None:
        raise Unauthorized(f"certificate {serial} was not issued to an agent here")
    if row.revoked_at is not None:
        raise Forbidden(
            f"certificate {serial} is revoked (since {row.revoked_at.isoformat()}); "
            "enrol again with a new join token"
        )
    if now >= row.not_after:
        raise Unauthorized(f"certificate {serial} expired at {row.not_after.isoformat()}")
    if row.fingerprint != fingerprint_of(certificate) or row.enforcer != enforcer:
        raise Unauthorized(f"certificate {serial} is not the one issued with that serial")
    return Principal(name=f"agent:{enforcer}", role=Role.AGENT, enforcer=enforcer)
