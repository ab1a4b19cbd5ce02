"""HTTP routes of agent enrolment (``enrolment``), and ``AgentCaller``: who an agent route's
caller is.

Two kinds of route:

- ``/api/v1/...`` for people (admin, security) with API tokens: make join tokens, list and
  revoke agent certificates.
- ``/agent/v1/...`` for agents: the CA certificate and enrolment (no credential but the join
  token), and routes that take ``AgentCaller``, which accepts a verified client certificate
  (mutual TLS, checked against the database) or an agent user's API token.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from septum.server import enrolment, tls
from septum.server.app import AppContext, Caller, caller
from septum.server.auth import Principal, Role
from septum.server.service import Forbidden

__all__ = ["AgentCaller", "agent_caller", "router"]

router = APIRouter()

#: Join tokens live from a minute (long enough to paste) to 30 days (a staged rollout).
_TTL_MIN = 60
_TTL_MAX = 30 * 24 * 3600


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JoinTokenCreate(_Body):
    ttl_seconds: int | None = Field(
        default=None,
        ge=_TTL_MIN,
        le=_TTL_MAX,
        description="How long the token may be used (default one hour).",
    )


class EnrolRequest(_Body):
    token: str = Field(min_length=1, max_length=200, description="The join token (sepj_…).")
    csr: str = Field(
        min_length=1, max_length=64_000, description="The agent's PEM certificate signing request."
    )


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


# ------------------------------------------------------------------ the agent caller


#: How long a verified agent identity is reused without asking the database again. An
#: agent re-polls the moment an answer arrives, so a provision that wakes a thousand agents
#: would otherwise queue a thousand authentication queries in the thread pool, ahead of the
#: next answers. A revocation clears the cache at once: through this replica directly,
#: through another by PostgreSQL notification (``watch``; when the notification is lost,
#: within this time). Expiry of a certificate or token is also seen within this time.
AGENT_AUTH_TTL = 60.0


def _authenticated_agent(request: Request, authorization: str | None) -> Principal:
    certificate = tls.client_certificate(request)
    if certificate is None:
        p = caller(request, authorization)
        if p.role is not Role.AGENT:
            raise Forbidden("agent routes are for agents")
        return p
    ctx = _ctx(request)
    return enrolment.agent_principal(ctx.db, certificate, ctx.clock())


async def agent_caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The agent calling an agent route: by its client certificate when the TLS connection
    carries one (the certificate wins over any header), else by an agent user's API token.
    Any other role is refused (403): agent routes serve one enforcer's state, not people."""
    cache: dict[object, tuple[Principal, float]] = request.app.state.agent_auth
    key = (tls.client_certificate(request), authorization)
    hit = cache.get(key)
    if hit is not None and hit[1] > time.monotonic():
        p = hit[0]
    else:
        p = await run_in_threadpool(_authenticated_agent, request, authorization)
        if len(cache) > 100_000:
            cache.clear()
        cache[key] = (p, time.monotonic() + AGENT_AUTH_TTL)
    request.state.principal = p.name
    return p


AgentCaller = Annotated[Principal, Depends(agent_caller)]

# ------------------------------------------------------------------ people: /api/v1


@router.post("/api/v1/enforcers/{name}/join-tokens", tags=["agents"], status_code=201)
def create_join_token(
    name: str,
    request: Request,
    p: Caller,
    body: Annotated[JoinTokenCreate | None, Body()] = None,
) -> dict[str, Any]:
    """A one-time token that enrols one agent as enforcer ``name``; its text is shown in this
    response only. Give the host the token and ``ca_fingerprint``."""
    ttl = (
        timedelta(seconds=body.ttl_seconds)
        if body is not None and body.ttl_seconds is not None
        else enrolment.DEFAULT_JOIN_TOKEN_TTL
    )
    ctx = _ctx(request)
    return enrolment.create_join_token(
        ctx.db, p, name, ctx.clock(), ttl, server_url=str(request.base_url).rstrip("/")
    )


@router.get("/api/v1/agent-certificates", tags=["agents"])
def list_agent_certificates(request: Request, p: Caller) -> list[dict[str, Any]]:
    """Every certificate issued to an agent, revoked ones included."""
    return enrolment.list_certificates(_ctx(request).db, p)


@router.post("/api/v1/agent-certificates/{serial}/revoke", tags=["agents"])
def revoke_agent_certificate(serial: str, request: Request, p: Caller) -> dict[str, Any]:
    """Refuse the certificate from now on; its agent must enrol again."""
    ctx = _ctx(request)
    revoked = enrolment.revoke_certificate(ctx.db, p, serial, ctx.clock())
    request.app.state.agent_auth.clear()  # this replica refuses it from the next request
    return revoked


# ------------------------------------------------------------------ agents: /agent/v1


@router.get("/agent/v1/ca", tags=["agent"])
def ca(request: Request) -> dict[str, str]:
    """The CA certificate (public). Check ``fingerprint`` against the one given with the
    join token before trusting it."""
    ctx = _ctx(request)
    authority = enrolment.authority(ctx.db, ctx.clock())
    return {
        "certificate": authority.cert_pem.decode("ascii"),
        "fingerprint": enrolment.ca_fingerprint(authority),
    }


@router.post("/agent/v1/enrol", tags=["agent"], status_code=201)
def enrol(body: EnrolRequest, request: Request) -> dict[str, Any]:
    """Spend a join token on a client certificate for the CSR's key, bound to the token's
    enforcer (whatever the CSR asks for). 401 for an unknown, used or expired token."""
    ctx = _ctx(request)
    return enrolment.enrol(
        ctx.db, body.token, body.csr.encode("utf-8", errors="replace"), ctx.clock()
    )


@router.get("/agent/v1/whoami", tags=["agent"])
def agent_whoami(request: Request, p: AgentCaller) -> dict[str, Any]:
    """The calling agent's enforcer, and how it proved it."""
    via = "certificate" if tls.client_certificate(request) is not None else "token"
    return {"enforcer": p.enforcer, "name": p.name, "via": via}
