"""HTTP routes that agents follow: their enforcer's desired state (long-poll) and their
status reports; and the operators' view of every enforcer.

``GET /agent/v1/state?revision=N&wait=S`` answers at once when the enforcer's revision is
not N (a delta or the whole table, see ``states``), else waits up to S seconds for a change
(``watch.StateBoard``) and answers ``unchanged`` when none came. An agent loops on it with
the revision it holds; one request per agent is open at any time, each costing a coroutine,
not a thread.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from septum.engine.explain import Flow, Verdict
from septum.model.resources import Protocol
from septum.server.app import AppContext, Caller
from septum.server.auth import Permission, Principal
from septum.server.db import AgentCertificate, Database, EnforcerState, EnforcerStatus
from septum.server.flows_api import active_inventory, evaluator_of
from septum.server.routes_enrolment import AgentCaller
from septum.server.routes_flows import FlowBatch, post_agent_flows
from septum.server.service import Forbidden
from septum.server.states import StateAnswers, unchanged
from septum.server.watch import StateBoard

__all__ = ["router"]

router = APIRouter()

#: The longest a long-poll may wait (seconds); proxies commonly cut idle requests at 60.
MAX_WAIT = 55.0
#: Connections one verdicts request may ask about.
MAX_VERDICTS = 20_000


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int | None = Field(default=None, ge=0, le=2**62, description="Applied revision.")
    outcome: str = Field(min_length=1, max_length=32, description="full, delta, failed, …")
    error: str | None = Field(default=None, max_length=10_000)
    counters: dict[str, int] = Field(default_factory=dict, max_length=64)


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _enforcer(p: Principal) -> str:
    if p.enforcer is None:
        raise Forbidden(f"agent {p.name!r} is bound to no enforcer")
    return p.enforcer


@router.get("/agent/v1/state", tags=["agent"])
async def agent_state(
    request: Request,
    p: AgentCaller,
    revision: Annotated[int, Query(ge=0, le=2**62)] = 0,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 25.0,
) -> Response:
    """The caller's desired state newer than ``revision``: ``full`` (``ruleset``), ``delta``
    (``deltas`` from ``from``), or ``unchanged`` after waiting ``wait`` seconds."""
    enforcer = _enforcer(p)
    board: StateBoard = request.app.state.board
    answers: StateAnswers = request.app.state.answers
    await board.ensure_started()
    deadline = time.monotonic() + wait
    woken = False
    while True:
        known = board.revisions.get(enforcer)
        if woken and known is not None and known != revision:
            # Woken by a refresh of the board, which made the answers of the enforcers it
            # saw move (``StateAnswers.prefetch``): no thread hop and no query for the
            # thousand agents one provision may wake. (A first request goes to the
            # database: the board may lag a provision that just returned.)
            hit = answers.cached(enforcer, revision, known)
            if hit is not None:
                return Response(hit, media_type="application/json")
        if wait > 0 and not woken and (known or 0) == revision:
            # Current as far as the board knows: wait without a query. (Were the board
            # behind a provision that just committed, that provision's refresh of the
            # board is still to come and wakes this wait.) Each of a thousand agents
            # re-polls the moment it gets an answer; a query each would queue them all in
            # the thread pool, ahead of people's requests.
            found = None
        else:
            found = await run_in_threadpool(answers.answer, enforcer, revision)
        if found is not None:
            return Response(found[1], media_type="application/json")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Response(unchanged(enforcer, revision, None), media_type="application/json")
        await board.wait_changed(enforcer, revision, remaining)
        woken = True


@router.post("/agent/v1/status", tags=["agent"])
def agent_status(report: StatusReport, request: Request, p: AgentCaller) -> dict[str, Any]:
    """Record what the caller's agent applied (its revision, the outcome, its counters)."""
    ctx = _ctx(request)
    enforcer = _enforcer(p)
    now = ctx.clock()
    _record_status(ctx.db, enforcer, report, now)
    return {"enforcer": enforcer, "recorded_at": now.isoformat()}


def _record_status(db: Database, enforcer: str, report: StatusReport, now: datetime) -> None:
    # Not under the control row's lock: a report is the agent's own row, and agents report
    # often; one agent per enforcer, so two writers of one row do not race.
    with db.sessions.begin() as s:
        row = s.get(EnforcerStatus, enforcer)
        if row is None:
            row = EnforcerStatus(enforcer=enforcer)
            s.add(row)
        row.applied_revision, row.outcome = report.revision, report.outcome
        row.error, row.counters = report.error, dict(report.counters)
        row.reported_at = now


class FlowQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: IPvAnyAddress
    destination: IPvAnyAddress
    protocol: Protocol
    port: int = Field(default=0, ge=0, le=65535, description="0 for protocols without ports")


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: list[FlowQuestion] = Field(max_length=MAX_VERDICTS)


@router.post("/agent/v1/verdicts", tags=["agent"])
def agent_verdicts(body: VerdictRequest, request: Request, p: AgentCaller) -> dict[str, Any]:
    """Which of the caller's connections the active version denies, so that the agent can
    cut them (conntrack) after applying a change: an agent that follows the control plane
    holds rulesets, not the repository that would answer this. Only connections with an
    end at an address of the caller's own workloads are answered (the others are listed
    in ``skipped``): an agent learns nothing of the policy between other hosts."""
    ctx = _ctx(request)
    enforcer = _enforcer(p)
    now = ctx.clock()
    active = active_inventory(ctx.db)
    if active.version is None:
        return {"version": None, "denied": [], "skipped": list(range(len(body.flows)))}
    version, repo, evaluator = active.version, active.repository, evaluator_of(active)
    mine = {
        b.address
        for w in repo.workloads
        if w.enforcer == enforcer
        for b in w.addresses
        if b.valid_at(now)
    }
    denied: list[int] = []
    skipped: list[int] = []
    for i, q in enumerate(body.flows):
        if q.source not in mine and q.destination not in mine:
            skipped.append(i)
            continue
        port = q.port if q.protocol.has_ports else 0
        flow = Flow(q.source, q.destination, q.protocol, port, now)
        if evaluator.verdict(flow) is Verdict.DENY:
            denied.append(i)
    return {"version": version, "denied": denied, "skipped": skipped}


@router.post("/agent/v1/flows", tags=["agent"])
def agent_flows(body: FlowBatch, request: Request, p: AgentCaller) -> Any:
    """Flow records of the caller's own enforcer, into the flow store (attributed against
    the active version); records of any other enforcer are refused, nothing stored."""
    return post_agent_flows(request, p, body)


@router.get("/api/v1/enforcers", tags=["agents"])
def enforcers(request: Request, p: Caller) -> list[dict[str, Any]]:
    """Every enforcer with a desired state, a certificate or a report: desired revision and
    version, what its agent reported last, and whether it is in sync."""
    if not (p.may(Permission.ENROL_AGENTS) or p.may(Permission.READ_AUDIT)):
        raise Forbidden(f"{p.role.value} {p.name!r} may not list enforcers")
    ctx = _ctx(request)
    with ctx.db.read() as s:
        states = {r.enforcer: r for r in s.execute(select(EnforcerState)).scalars()}
        status = {r.enforcer: r for r in s.execute(select(EnforcerStatus)).scalars()}
        certs: dict[str, int] = {}
        for c in s.execute(select(AgentCertificate)).scalars():
            if c.revoked_at is None:
                certs[c.enforcer] = certs.get(c.enforcer, 0) + 1
    out: list[dict[str, Any]] = []
    for name in sorted(states.keys() | status.keys() | certs.keys()):
        st, rep = states.get(name), status.get(name)
        out.append(
            {
                "enforcer": name,
                "revision": st.revision if st else None,
                "version": st.version if st else None,
                "certificates": certs.get(name, 0),
                "applied_revision": rep.applied_revision if rep else None,
                "outcome": rep.outcome if rep else None,
                "error": rep.error if rep else None,
                "counters": rep.counters if rep else {},
                "reported_at": rep.reported_at.isoformat() if rep else None,
                "in_sync": bool(st and rep and rep.applied_revision == st.revision),
            }
        )
    return out
