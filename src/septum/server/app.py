"""The HTTP front end: FastAPI routes that parse a request, authenticate the caller, call
one ``service`` function and return its result. No policy logic lives here.

Status codes: 401 no or bad token; 403 not allowed (nothing changed); 404 unknown name;
409 conflict (nothing to provision, a concurrent change); 422 invalid input, with
``problems`` naming the document and field, or a refused provision with its report.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from septum.errors import SeptumError
from septum.runtime import gc_paused
from septum.server import service
from septum.server.auth import Principal
from septum.server.builds import Builds
from septum.server.db import Database
from septum.server.documents import COLLECTIONS, DocumentError, FieldProblem
from septum.server.service import (
    Conflict,
    Forbidden,
    NotFound,
    ProvisionRefused,
    ReplaySource,
    Unauthorized,
)
from septum.server.settings import ServerSettings
from septum.server.states import StateAnswers
from septum.server.watch import StateBoard

__all__ = ["AppContext", "create_app"]

log = logging.getLogger("septum.server")
access_log = logging.getLogger("septum.server.access")


@dataclass
class AppContext:
    settings: ServerSettings
    db: Database
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Collection(enum.Enum):
    workloads = "workloads"
    networks = "networks"
    users = "users"
    usergroups = "usergroups"
    services = "services"
    segments = "segments"
    tiers = "tiers"
    policies = "policies"
    assertions = "assertions"
    settings = "settings"

    @property
    def kind(self) -> str:
        return COLLECTIONS[self.value]


# ------------------------------------------------------------------ request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoteRequest(_Body):
    note: str = Field(min_length=1, max_length=10_000, description="Why (e.g. a ticket).")


class LabelPatch(_Body):
    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class DocumentEntry(_Body):
    path: str | None = Field(default=None, max_length=1024)
    body: dict[str, Any]


class DraftReplace(_Body):
    documents: list[DocumentEntry]


class UserCreate(_Body):
    name: str = Field(min_length=1, max_length=253)
    role: str
    scope: str | None = Field(default=None, max_length=10_000)
    teams: list[str] = Field(default_factory=list)
    enforcer: str | None = Field(default=None, max_length=253)


class TokenCreate(_Body):
    description: str = Field(default="", max_length=1000)
    expires_at: datetime | None = None


State = Annotated[
    str,
    Query(
        pattern=r"^(draft|active|[0-9]{1,9})$",
        description="draft, active, or a version number",
    ),
]


#: Status codes of the service's plain errors (any other SeptumError is a 400).
_STATUS: dict[type[Exception], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
}

# ------------------------------------------------------------------ the caller


def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The authenticated principal of a request (``Authorization: Bearer <token>``)."""
    if not authorization:
        raise Unauthorized("an API token is required (Authorization: Bearer …)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use Authorization: Bearer <token>")
    ctx: AppContext = request.app.state.ctx
    p = service.authenticate(ctx.db, token.strip(), ctx.clock())
    request.state.principal = p.name
    return p


Caller = Annotated[Principal, Depends(caller)]

# ------------------------------------------------------------------ the app


class _Observe:
    """Metrics and the access log of every HTTP request. Pure ASGI rather than Starlette's
    ``BaseHTTPMiddleware``, which costs a task group and a stream per request: a thousand
    agents re-polling at once pay it a thousand times."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # when the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            took = time.perf_counter() - began
            self.requests.labels(scope["method"], name, str(status)).inc()
            self.latency.labels(name).observe(took)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": name,
                        "status": status,
                        "seconds": round(took, 6),
                        "principal": (scope.get("state") or {}).get("principal"),
                    },
                )


def create_app(ctx: AppContext) -> FastAPI:
    """The API over one database. Several apps (replicas) may share one PostgreSQL."""
    app = FastAPI(
        title="Septum control plane",
        version="1",
        description="Identity-based microsegmentation: inventory, policy, versions, audit.",
    )
    app.state.ctx = ctx
    registry = CollectorRegistry()
    requests = Counter(
        "septum_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "septum_http_request_seconds", "HTTP request latency", ["route"], registry=registry
    )
    replay = ReplaySource(ctx.settings.flows_dir, ctx.settings.replay_days)
    # Desired state: the board that wakes long-polls, and the cached answers to agents.
    builds = Builds()  # the active version kept built, for incremental provisioning
    answers = StateAnswers(ctx.db)
    # Agents' identities verified recently (routes_enrolment.AGENT_AUTH_TTL), forgotten
    # when a credential is revoked here or, by notification, through another replica.
    agent_auth: dict[object, object] = {}
    def tick() -> None:
        # The clock moves the policy too: expiring rules, address validity windows.
        now = ctx.clock()
        if service.replan_due(ctx.db, now):
            with gc_paused():
                service.replan(ctx.db, now)

    board = StateBoard(
        ctx.db,
        ctx.settings.poll_interval,
        on_change=answers.prefetch,
        on_revocation=agent_auth.clear,
        on_tick=tick,
    )
    app.state.board, app.state.answers = board, answers
    app.state.agent_auth = agent_auth
    app.router.add_event_handler("shutdown", board.close)

    app.add_middleware(_Observe, requests=requests, latency=latency)
    # Whole rulesets and repository exports are hundreds of kB of JSON that compresses
    # tenfold; only large answers, and at the fastest level (a thousand agents' first
    # states are compressed one by one). Clients that do not ask for gzip get plain JSON.
    app.add_middleware(GZipMiddleware, minimum_size=64 * 1024, compresslevel=1)

    def _problem(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    async def _plain(_r: Request, exc: Exception) -> JSONResponse:
        return _problem(_STATUS.get(type(exc), 400), str(exc))

    for error in (*_STATUS, SeptumError):
        app.add_exception_handler(error, _plain)

    @app.exception_handler(DocumentError)
    async def _422(_r: Request, exc: DocumentError) -> JSONResponse:
        return _problem(422, str(exc), problems=[p.to_json() for p in exc.problems])

    @app.exception_handler(ProvisionRefused)
    async def _refused(_r: Request, exc: ProvisionRefused) -> JSONResponse:
        return _problem(422, str(exc), **exc.details)

    # ---------------------------------------------------------------- operations

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz(response: Response) -> dict[str, Any]:
        """The database answers and its schema is the one this server needs."""
        try:
            with ctx.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            current, head = ctx.db.schema_revision()
        except Exception as exc:  # any database failure means "not ready", reported
            response.status_code = 503
            return {"ready": False, "reason": f"database: {type(exc).__name__}: {exc}"}
        if current != head:
            response.status_code = 503
            return {"ready": False, "reason": f"schema at {current}, this server needs {head}"}
        return {"ready": True, "schema": current}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/whoami", tags=["identity"])
    def whoami(p: Caller) -> dict[str, Any]:
        return {
            "name": p.name,
            "role": p.role.value,
            "scope": p.scope.text if p.scope else None,
            "teams": list(p.teams),
            "enforcer": p.enforcer,
        }

    # ---------------------------------------------------------------- draft and versions

    @app.get("/api/v1/repository", tags=["draft"])
    def export_repository(p: Caller, state: State = "active") -> dict[str, Any]:
        """Every document with its file and order (``septum pull``)."""
        return {"state": state, "documents": service.export_documents(ctx.db, p, state)}

    @app.put("/api/v1/draft", tags=["draft"])
    def replace_draft(request: DraftReplace, p: Caller) -> dict[str, Any]:
        """Make the draft exactly these documents (``septum push``); all or nothing."""
        entries = [e.model_dump() for e in request.documents]
        with gc_paused():  # a large draft is millions of objects (see septum.runtime)
            return service.replace_draft(ctx.db, p, entries, ctx.clock())

    @app.post("/api/v1/draft/reset", tags=["draft"])
    def reset_draft(p: Caller) -> dict[str, Any]:
        return service.reset_draft(ctx.db, p, ctx.clock())

    @app.post("/api/v1/draft/validate", tags=["draft"])
    def validate_draft(p: Caller) -> dict[str, Any]:
        return service.validate_draft(ctx.db, p)

    @app.post("/api/v1/assertions/run", tags=["draft"])
    def run_assertions(p: Caller, state: State = "draft") -> dict[str, Any]:
        return service.check_assertions(ctx.db, p, ctx.clock(), state)

    @app.post("/api/v1/provision", tags=["versions"])
    def provision(request: NoteRequest, p: Caller) -> dict[str, Any]:
        """Validate the draft, run every assertion, replay recent flows, and make the
        draft the next version. Refused (422, nothing changed) when an assertion fails."""
        with gc_paused():  # builds the estate and every enforcer's ruleset
            result = service.provision(ctx.db, p, request.note, ctx.clock(), replay, builds)
        board.poke()  # this replica's agents hear of it now; others by NOTIFY or polling
        return result

    @app.get("/api/v1/versions", tags=["versions"])
    def versions(p: Caller) -> dict[str, Any]:
        return service.list_versions(ctx.db, p)

    @app.get("/api/v1/versions/{number}", tags=["versions"])
    def version(number: Annotated[int, Path(ge=1, le=10**9)], p: Caller) -> dict[str, Any]:
        return service.get_version(ctx.db, p, number)

    @app.get("/api/v1/diff", tags=["versions"])
    def diff(
        p: Caller,
        from_: Annotated[str, Query(alias="from", pattern=r"^(draft|active|[0-9]{1,9})$")],
        to: State = "draft",
    ) -> dict[str, Any]:
        """Documents added, removed and changed between two versions (0: empty)."""
        return service.diff_versions(ctx.db, p, from_, to)

    @app.post("/api/v1/versions/{number}/rollback", tags=["versions"])
    def rollback(
        number: Annotated[int, Path(ge=1, le=10**9)], request: NoteRequest, p: Caller
    ) -> dict[str, Any]:
        """A new version with the documents of an old one."""
        with gc_paused():
            result = service.rollback(ctx.db, p, number, request.note, ctx.clock(), builds)
        board.poke()
        return result

    # ---------------------------------------------------------------- audit

    @app.get("/api/v1/audit", tags=["audit"])
    def audit_log(
        p: Caller,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        return service.audit_entries(ctx.db, p, after, limit)

    @app.get("/api/v1/audit/verify", tags=["audit"])
    def audit_verify(p: Caller) -> dict[str, Any]:
        """Recompute the hash chain; ``ok`` is false with the first broken entries."""
        return service.verify_audit(ctx.db, p)

    # ---------------------------------------------------------------- identity

    @app.get("/api/v1/access/users", tags=["identity"])
    def users(p: Caller) -> list[dict[str, Any]]:
        return service.list_users(ctx.db, p)

    @app.post("/api/v1/access/users", tags=["identity"], status_code=201)
    def create_user(request: UserCreate, p: Caller) -> dict[str, Any]:
        return service.create_user(
            ctx.db,
            p,
            request.name,
            request.role,
            ctx.clock(),
            scope=request.scope,
            teams=request.teams,
            enforcer=request.enforcer,
        )

    @app.post("/api/v1/access/users/{name}/tokens", tags=["identity"], status_code=201)
    def create_token(name: str, request: TokenCreate, p: Caller) -> dict[str, Any]:
        """A new token for the user; its text is shown in this response only."""
        if request.expires_at is not None and request.expires_at.tzinfo is None:
            raise DocumentError([FieldProblem("token", "expires_at", "a time zone is required")])
        return service.create_token(
            ctx.db,
            p,
            name,
            ctx.clock(),
            description=request.description,
            expires_at=request.expires_at,
        )

    @app.delete("/api/v1/access/tokens/{token_id}", tags=["identity"])
    def revoke_token(token_id: str, p: Caller) -> dict[str, Any]:
        revoked = service.revoke_token(ctx.db, p, token_id, ctx.clock())
        app.state.agent_auth.clear()  # agents' identities verified recently (routes_enrolment)
        return revoked

    # Imported here: routes_enrolment imports this module (Caller, AppContext).
    from septum.server import routes_agent, routes_enrolment

    app.include_router(routes_enrolment.router)
    app.include_router(routes_agent.router)
    from septum.server import routes_flows  # imports this module too (Caller, AppContext)

    app.include_router(routes_flows.router)

    # ---------------------------------------------------------------- resources
    # Last: the generic /api/v1/{collection} paths must not shadow the routes above.

    @app.get("/api/v1/{collection}", tags=["resources"])
    def list_resources(
        collection: Collection, p: Caller, state: State = "active"
    ) -> list[dict[str, Any]]:
        """Documents of one kind in the active repository, the draft, or a version."""
        return service.list_documents(ctx.db, p, collection.kind, state)

    @app.get("/api/v1/{collection}/{name}", tags=["resources"])
    def get_resource(
        collection: Collection, name: str, p: Caller, state: State = "active"
    ) -> dict[str, Any]:
        return service.get_document(ctx.db, p, collection.kind, name, state)

    @app.put("/api/v1/{collection}/{name}", tags=["resources"])
    def put_resource(
        collection: Collection,
        name: str,
        p: Caller,
        body: Annotated[dict[str, Any], Body()],
    ) -> dict[str, Any]:
        """Create or replace a document in the draft."""
        return service.put_document(ctx.db, p, collection.kind, name, body, ctx.clock())

    @app.delete("/api/v1/{collection}/{name}", tags=["resources"], status_code=204)
    def delete_resource(collection: Collection, name: str, p: Caller) -> Response:
        """Delete a document from the draft."""
        service.delete_document(ctx.db, p, collection.kind, name, ctx.clock())
        return Response(status_code=204)

    @app.patch("/api/v1/{collection}/{name}/labels", tags=["resources"])
    def patch_labels(
        collection: Collection, name: str, patch: LabelPatch, p: Caller
    ) -> dict[str, Any]:
        """Set and remove labels of a document in the draft."""
        return service.patch_labels(
            ctx.db, p, collection.kind, name, patch.set, patch.remove, ctx.clock()
        )

    return app


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def json_log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and Septum: JSON lines on stderr."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLogFormatter}},
        "handlers": {"default": handler},
        "loggers": {
            "septum": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
