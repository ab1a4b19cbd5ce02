"""The HTTP front end of flows (``flows_api``): query flow groups, ingest flow records.

Agents send their records to ``/agent/v1/flows``, which authenticates them differently and
calls :func:`post_agent_flows`; the agent's own-enforcer rule is enforced by
``flows_api.ingest_flows`` itself, whoever calls it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from septum.server import flows_api
from septum.server.app import AppContext, Caller
from septum.server.auth import Principal
from septum.server.flows_api import MAX_LIMIT, MAX_RECORDS, BatchTooLarge

__all__ = ["FlowBatch", "post_agent_flows", "router"]

router = APIRouter(tags=["flows"])


class FlowBatch(BaseModel):
    """Flow records as the agent writes them (``septum agent --flows``), one object each."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(
        description=f"Agent flow records; at most {MAX_RECORDS} per request."
    )


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def post_agent_flows(request: Request, p: Principal, body: FlowBatch) -> Any:
    """Ingest ``body`` as ``p``: the counts, or 413 for a batch over ``MAX_RECORDS``
    (the other refusals are service errors, mapped by the app)."""
    ctx = _ctx(request)
    try:
        return flows_api.ingest_flows(ctx.settings, ctx.db, p, body.records, ctx.clock())
    except BatchTooLarge as exc:
        # The app maps SeptumErrors to 400; "too large" has its own status.
        return JSONResponse({"error": str(exc)}, status_code=413)


@router.get("/api/v1/flows")
def get_flows(
    request: Request,
    p: Caller,
    since: Annotated[
        datetime | None,
        Query(description="Flows starting at or after (ISO 8601 with a time zone)."),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Flows starting before (ISO 8601, time zone).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
) -> dict[str, Any]:
    """Flow groups in [since, until) (since: the replay window by default), attributed to
    the active version's workloads, users and networks. Owners see only groups touching
    their scope, any other side reduced to its kind."""
    ctx = _ctx(request)
    return flows_api.query_flows(
        ctx.settings, ctx.db, p, now=ctx.clock(), since=since, until=until, limit=limit
    )


@router.post(
    "/api/v1/flows",
    response_model=None,
    responses={413: {"description": f"More than {MAX_RECORDS} records"}},
)
def post_flows(request: Request, body: FlowBatch, p: Caller) -> Any:
    """Store flow records (all or nothing), attributed with the active version's
    inventory; needs write-flows. A refused record is named (``records[i].field``)."""
    return post_agent_flows(request, p, body)
