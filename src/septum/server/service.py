"""What the server does, one function per operation; the HTTP routes only call these.

Each operation takes the database, the calling ``Principal`` and its arguments (and ``now``),
checks the caller may do it, does it in one transaction with its audit entry, and returns
plain JSON-ready data. Errors are the exceptions below; the app maps them to status codes.

The repository lives in two places: the shared **draft** (one row per document, changed by
every write) and immutable numbered **versions** (the whole repository, compressed). The
active version is what agents enforce. ``provision`` turns the draft into the next version;
``rollback`` makes an old version's documents the next version (and the draft).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from septum.engine.assertions import run_assertions
from septum.engine.containment import counterexample
from septum.errors import SelectorSyntaxError, SeptumError
from septum.model.resources import Repository, Workload
from septum.model.selector import ALL, Selector, parse_selector
from septum.server import audit
from septum.server.auth import (
    Permission,
    Principal,
    Role,
    new_token,
    secret_matches,
    split_token,
    token_usable,
)
from septum.server.builds import ActiveBuild, Builds, next_change, relabel, relabelled
from septum.server.db import (
    AUTH_CHANNEL,
    GENESIS_HASH,
    ApiToken,
    AuditEntry,
    Control,
    Database,
    DraftDocument,
    User,
    Version,
    notify,
)
from septum.server.desired import DesiredState, EnforcerPlan, plan_desired_state
from septum.server.documents import (
    INVENTORY_KINDS,
    DocumentError,
    FieldProblem,
    StoredDocument,
    build_repository,
    check_document,
    decode_documents,
    default_path,
    diff_documents,
    documents_digest,
    encoded_documents,
    envelope,
    parse_workload,
)
from septum.server.states import parts_loader, publish, stored_skeletons

__all__ = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "ProvisionRefused",
    "Unauthorized",
]


class Unauthorized(SeptumError):
    """No valid credentials."""


class Forbidden(SeptumError):
    """Valid credentials, but not allowed to do this."""


class NotFound(SeptumError):
    pass


class Conflict(SeptumError):
    pass


class ProvisionRefused(SeptumError):
    """Provisioning refused: the draft is invalid or an assertion fails."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


#: Kinds only the security team (and admins) write: they shape every tier.
GLOBAL_KINDS = frozenset({"Tier", "Service", "Segment", "Settings", "Assertion"})


# ------------------------------------------------------------------ authentication


def authenticate(db: Database, token: str, now: datetime) -> Principal:
    parts = split_token(token)
    if parts is None:
        raise Unauthorized("malformed API token")
    token_id, secret = parts
    with db.read() as s:
        row = s.get(ApiToken, token_id)
        if row is None or not secret_matches(secret, row.secret_hash):
            raise Unauthorized("unknown API token")
        if not token_usable(row.expires_at, row.revoked_at, now):
            raise Unauthorized("the API token is revoked or expired")
        user = s.get(User, row.user)
        if user is None or user.disabled:
            raise Unauthorized("the token's user is disabled")
        return principal_of(user)


def principal_of_name(db: Database, name: str) -> Principal:
    """The principal of a user by name (for the CLI's direct database commands)."""
    with db.read() as s:
        user = s.get(User, name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        return principal_of(user)


def principal_of(user: User) -> Principal:
    return Principal.of(user.name, user.role, user.scope, list(user.teams), user.enforcer)


def require(p: Principal, permission: Permission) -> None:
    if not p.may(permission):
        raise Forbidden(f"{p.role.value} {p.name!r} may not {permission.value}")


# ------------------------------------------------------------------ visibility


def _implicit_labels(doc: StoredDocument) -> dict[str, str]:
    meta = doc.body.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    out = {k: v for k, v in (labels or {}).items() if isinstance(v, str)}
    spec = doc.body.get("spec")
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if isinstance(kind, str):
        out["septum.io/kind"] = kind
    out["septum.io/name"] = doc.name
    return out


def visible(p: Principal, doc: StoredDocument) -> bool:
    """Owners see workloads inside their scope only, and no users (people's addresses);
    every other role that may read sees everything."""
    if not p.scoped:
        return True
    if doc.kind == "Workload":
        return p.scope is not None and p.scope.matches(_implicit_labels(doc))
    return doc.kind not in ("User", "UserGroup")


def _readable_kind(p: Principal, kind: str) -> None:
    require(p, Permission.READ_INVENTORY if kind in INVENTORY_KINDS else Permission.READ_POLICY)


# ------------------------------------------------------------------ draft


def _draft_rows(s: Session, kind: str | None = None) -> list[DraftDocument]:
    q = select(DraftDocument)
    if kind is not None:
        q = q.where(DraftDocument.kind == kind)
    return list(s.execute(q).scalars())


def _stored(row: DraftDocument) -> StoredDocument:
    return StoredDocument(row.kind, row.name, row.path, row.position, row.body)


def draft_documents(s: Session) -> list[StoredDocument]:
    # Columns, not ORM objects: a provision reads the whole draft, thousands of rows.
    rows = s.execute(
        select(
            DraftDocument.kind,
            DraftDocument.name,
            DraftDocument.path,
            DraftDocument.position,
            DraftDocument.body,
        )
    )
    return [StoredDocument(k, n, path, pos, body) for k, n, path, pos, body in rows]


def _version_row(s: Session, number: int) -> Version:
    row = s.get(Version, number)
    if row is None:
        raise NotFound(f"no version {number}")
    return row


def active_documents(s: Session, control: Control | None = None) -> list[StoredDocument]:
    control = control or s.get(Control, 1)
    if control is None or control.active_version is None:
        return []
    return decode_documents(_version_row(s, control.active_version).documents)


def _state_documents(s: Session, state: str) -> list[StoredDocument]:
    if state == "draft":
        return draft_documents(s)
    if state == "active":
        return active_documents(s)
    try:
        number = int(state)
    except ValueError:
        raise NotFound(f"state {state!r}: use draft, active or a version number") from None
    if number == 0:
        return []
    return decode_documents(_version_row(s, number).documents)


def list_documents(
    db: Database, p: Principal, kind: str, state: str = "active"
) -> list[dict[str, Any]]:
    _readable_kind(p, kind)
    with db.read() as s:
        docs = [d for d in _state_documents(s, state) if d.kind == kind and visible(p, d)]
    return [dict(d.body) for d in sorted(docs, key=lambda d: d.name)]


def get_document(
    db: Database, p: Principal, kind: str, name: str, state: str = "active"
) -> dict[str, Any]:
    _readable_kind(p, kind)
    with db.read() as s:
        for d in _state_documents(s, state):
            if d.key == (kind, name) and visible(p, d):
                return dict(d.body)
    raise NotFound(f"no {kind} {name!r} in the {state} repository")


def _check_write(
    s: Session, p: Principal, kind: str, before: StoredDocument | None, after: StoredDocument | None
) -> None:
    """May ``p`` change this document from ``before`` to ``after`` (None: absent)?"""
    if kind in INVENTORY_KINDS:
        require(p, Permission.WRITE_INVENTORY)
        return
    if kind in GLOBAL_KINDS:
        require(p, Permission.WRITE_GLOBAL)
        return
    require(p, Permission.WRITE_POLICY)
    if not p.scoped:
        return
    for doc in (before, after):
        if doc is not None:
            _check_owner_policy(s, p, doc)


def _check_owner_policy(s: Session, p: Principal, doc: StoredDocument) -> None:
    spec = doc.body.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    tier = spec.get("tier")
    tier_row = s.get(DraftDocument, ("Tier", tier)) if isinstance(tier, str) else None
    owners: tuple[str, ...] = ()
    if tier_row is not None:
        tier_spec = tier_row.body.get("spec")
        raw = tier_spec.get("owners") if isinstance(tier_spec, dict) else None
        owners = tuple(o for o in (raw or []) if isinstance(o, str))
    if not p.owns_tier(owners):
        raise Forbidden(
            f"Policy/{doc.name}: tier {tier!r} is not owned by {p.name!r} or its teams "
            f"({', '.join(p.teams) or 'none'})"
        )
    text = spec.get("appliesTo")
    try:
        applies: Selector = parse_selector(text) if isinstance(text, str) else ALL
    except SelectorSyntaxError as exc:
        problem = FieldProblem(f"Policy/{doc.name}", "spec.appliesTo", str(exc))
        raise DocumentError([problem]) from None
    assert p.scope is not None
    witness = counterexample(applies, p.scope)
    if witness is not None:
        raise Forbidden(
            f"Policy/{doc.name}: appliesTo {applies.text!r} is not inside the scope "
            f"{p.scope.text!r} of {p.name!r}: it also selects labels {witness}"
        )


def put_document(
    db: Database,
    p: Principal,
    kind: str,
    name: str,
    body: Any,
    now: datetime,
    *,
    path: str | None = None,
) -> dict[str, Any]:
    """Create or replace one document of the draft."""
    body_kind, body_name = envelope(body, f"{kind}/{name}")
    if (body_kind, body_name) != (kind, name):
        raise DocumentError(
            [
                FieldProblem(
                    f"{kind}/{name}",
                    "kind" if body_kind != kind else "metadata.name",
                    f"the body is {body_kind}/{body_name}, the address {kind}/{name}",
                )
            ]
        )
    with db.write() as (s, control):
        control.draft_revision += 1
        row = s.get(DraftDocument, (kind, name))
        before = _stored(row) if row is not None else None
        after = StoredDocument(
            kind,
            name,
            path or (row.path if row is not None else default_path(kind, name)),
            row.position if row is not None else 0,
            body,
        )
        _check_write(s, p, kind, before, after)
        check_document(after)
        if row is None:
            s.add(_draft_row(after, now, p.name))
        elif row.body == body and row.path == after.path:
            return dict(body)
        else:
            row.body, row.path, row.updated_at, row.updated_by = dict(body), after.path, now, p.name
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="draft.put",
            target=f"{kind}/{name}",
            before=before.body if before else None,
            after=body,
        )
    return dict(body)


def patch_labels(
    db: Database,
    p: Principal,
    kind: str,
    name: str,
    set_labels: Mapping[str, str],
    remove: Sequence[str],
    now: datetime,
) -> dict[str, Any]:
    """Set and remove labels of one draft document (a workload moving between groups)."""
    with db.read() as s:
        row = s.get(DraftDocument, (kind, name))
        if row is None:
            raise NotFound(f"no {kind} {name!r} in the draft")
        body: dict[str, Any] = dict(row.body)
    meta = dict(body.get("metadata") or {})
    labels = dict(meta.get("labels") or {})
    for key in remove:
        labels.pop(key, None)
    labels.update(set_labels)
    meta["labels"] = labels
    body["metadata"] = meta
    return put_document(db, p, kind, name, body, now)


def delete_document(db: Database, p: Principal, kind: str, name: str, now: datetime) -> None:
    with db.write() as (s, control):
        control.draft_revision += 1
        row = s.get(DraftDocument, (kind, name))
        if row is None:
            raise NotFound(f"no {kind} {name!r} in the draft")
        before = _stored(row)
        _check_write(s, p, kind, before, None)
        s.delete(row)
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="draft.delete",
            target=f"{kind}/{name}",
            before=before.body,
        )


def _change_list(
    before: Iterable[StoredDocument], after: Iterable[StoredDocument]
) -> list[dict[str, Any]]:
    return [c.to_json() for c in diff_documents(before, after)]


def replace_draft(
    db: Database, p: Principal, entries: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    """Make the draft exactly these documents (``septum push``): all or nothing. Each entry
    is ``{"path", "body"}``; the order of entries with one path is their order in the file."""
    require(p, Permission.WRITE_INVENTORY)
    require(p, Permission.WRITE_GLOBAL)
    require(p, Permission.WRITE_POLICY)
    docs: list[StoredDocument] = []
    positions: dict[str, int] = {}
    problems: list[FieldProblem] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries):
        where = f"documents[{i}]"
        try:
            kind, name = envelope(entry.get("body"), where)
        except DocumentError as exc:
            problems.extend(exc.problems)
            continue
        if (kind, name) in seen:
            problems.append(FieldProblem(f"{kind}/{name}", "", "defined twice"))
            continue
        seen.add((kind, name))
        path = entry.get("path")
        path = path if isinstance(path, str) and path else default_path(kind, name)
        position = positions.get(path, 0)
        positions[path] = position + 1
        docs.append(StoredDocument(kind, name, path, position, entry["body"]))
    if problems:
        raise DocumentError(problems)
    build_repository(docs)  # the whole draft must validate, references included
    with db.write() as (s, control):
        old = draft_documents(s)
        changes = _change_list(old, docs)
        if not changes and {(d.key, d.path, d.position) for d in old} == {
            (d.key, d.path, d.position) for d in docs
        }:
            return {"changed": 0, "digest": documents_digest(docs)}
        _swap_draft(s, control, old, docs, changes, now, p.name, "draft.replace")
    return {"changed": len(changes), "digest": documents_digest(docs)}


def export_documents(db: Database, p: Principal, state: str = "active") -> list[dict[str, Any]]:
    """Every document of a state with its file and order (``septum pull``)."""
    require(p, Permission.READ_POLICY)
    with db.read() as s:
        docs = _state_documents(s, state)
    out = []
    for d in sorted(docs, key=lambda d: (d.path, d.position)):
        if visible(p, d) and (d.kind not in INVENTORY_KINDS or p.may(Permission.READ_INVENTORY)):
            out.append({"path": d.path, "body": dict(d.body)})
    return out


def reset_draft(db: Database, p: Principal, now: datetime) -> dict[str, Any]:
    """Throw away the draft's changes: the draft becomes the active version again."""
    require(p, Permission.PROVISION)
    with db.write() as (s, control):
        active = active_documents(s, control)
        old = draft_documents(s)
        changes = _change_list(old, active)
        if changes:
            _swap_draft(s, control, old, active, changes, now, p.name, "draft.reset")
    return {"changed": len(changes)}


def _swap_draft(
    s: Session,
    control: Control,
    old: Sequence[StoredDocument],
    new: Sequence[StoredDocument],
    changes: list[dict[str, Any]],
    now: datetime,
    actor: str,
    action: str,
) -> None:
    """Make the draft ``new`` (it was ``old``), with its audit entry."""
    _set_draft(s, new, now, actor)
    audit.append(
        s,
        control,
        at=now,
        actor=actor,
        action=action,
        target="draft",
        before={"digest": documents_digest(old)},
        after={"digest": documents_digest(new), "changes": changes},
    )


def _draft_row(d: StoredDocument, now: datetime, actor: str) -> DraftDocument:
    return DraftDocument(
        kind=d.kind,
        name=d.name,
        path=d.path,
        position=d.position,
        body=dict(d.body),
        updated_at=now,
        updated_by=actor,
    )


def _set_draft(s: Session, docs: Sequence[StoredDocument], now: datetime, actor: str) -> None:
    control = s.get(Control, 1)
    if control is not None:
        control.draft_revision += 1
    s.execute(delete(DraftDocument))
    s.add_all(_draft_row(d, now, actor) for d in docs)


def validate_draft(db: Database, p: Principal) -> dict[str, Any]:
    require(p, Permission.READ_POLICY)
    with db.read() as s:
        docs = draft_documents(s)
    try:
        repo = build_repository(docs)
    except DocumentError as exc:
        return {"valid": False, "problems": [x.to_json() for x in exc.problems]}
    return {"valid": True, "problems": [], "counts": _counts(repo)}


def _counts(repo: Repository) -> dict[str, int]:
    return {
        "workloads": len(repo.workloads),
        "networks": len(repo.networks),
        "users": len(repo.users),
        "tiers": len(repo.tiers),
        "policies": len(repo.policies),
        "assertions": len(repo.assertions),
    }


def check_assertions(
    db: Database, p: Principal, now: datetime, state: str = "draft"
) -> dict[str, Any]:
    require(p, Permission.RUN_ASSERTIONS)
    with db.read() as s:
        docs = _state_documents(s, state)
    report = run_assertions(build_repository(docs), now)
    out = report.to_json()
    if p.scoped:
        # Counter-examples name workloads; owners see only those in scope.
        out["results"] = [
            {k: v for k, v in r.to_json().items() if k != "counterexample"} for r in report.results
        ]
    return out


# ------------------------------------------------------------------ provision


@dataclass(frozen=True, slots=True)
class ReplaySource:
    """Where provision finds recorded flows to replay (a flow store directory)."""

    directory: Path | None
    days: int = 7


def _replay(
    source: ReplaySource,
    draft: Repository,
    active_repo: Repository | None,
    active_documents: Sequence[StoredDocument],
    now: datetime,
) -> dict[str, Any]:
    if source.directory is None or not (source.directory / "flows").exists():
        return {"records": 0, "note": "no recorded flows"}
    # Built only here: without recorded flows the active repository is not needed, and a
    # large one costs seconds to build.
    active = active_repo
    if active is None and active_documents:
        active = build_repository(active_documents)
    from septum.flows.analysis import replay_store  # the flow engine loads DuckDB
    from septum.flows.store import FlowStore

    store = FlowStore(source.directory, create=False)
    report = replay_store(store, draft, active, since=now - timedelta(days=source.days), until=now)
    return report.to_json()


def provision(
    db: Database,
    p: Principal,
    note: str,
    now: datetime,
    replay_source: ReplaySource,
    builds: Builds | None = None,
) -> dict[str, Any]:
    """Validate the draft, run every assertion, replay recent flows, and make the draft
    the next numbered version, with the new desired state of every enforcer it changes.
    Refuses (changing nothing) when the draft is invalid, an assertion fails, or nothing
    changed."""
    require(p, Permission.PROVISION)
    if not note.strip():
        raise DocumentError([FieldProblem("provision", "note", "a note is required")])
    with db.read() as s:
        control_row = s.get(Control, 1) or Control(draft_revision=0)
        base_version, draft_revision = control_row.active_version, control_row.draft_revision
        draft = draft_documents(s)
        active = active_documents(s, control_row)
    changes = _change_list(active, draft)
    if not changes:
        raise Conflict("the draft equals the active version: nothing to provision")
    # Relabelling only, and this process holds the base version built: the incremental
    # path (``server.builds``); anything else, the full path.
    build = builds.take(base_version) if builds is not None else None
    relabelled_workloads = _relabelled_workloads(build, changes, draft, now)
    draft_repo: Repository | None = None
    if build is not None and relabelled_workloads is not None:
        draft_repo = relabelled(build, relabelled_workloads)
    if draft_repo is None:
        if build is not None and builds is not None:
            builds.put(build)  # untouched: a later relabelling may still use it
        build = None
        try:
            draft_repo = build_repository(draft)
        except DocumentError as exc:
            raise ProvisionRefused(
                "the draft does not validate", {"problems": [x.to_json() for x in exc.problems]}
            ) from None
    report = run_assertions(draft_repo, now)
    if not report.passed:
        if build is not None and builds is not None:
            builds.put(build)
        raise ProvisionRefused(
            f"{len(report.failures)} of {len(report.results)} assertion(s) fail",
            {"assertions": report.to_json()},
        )
    base_repo = build.repo if build is not None else None
    replay_json = _replay(replay_source, draft_repo, base_repo, active, now)
    desired: DesiredState | None = None
    if build is not None and relabelled_workloads is not None:
        desired = relabel(build, relabelled_workloads, now)
        if desired is None:
            build = None  # the compiler rebuilt itself: spent
    if desired is None:
        # Planned outside the lock from the states of ``base_version``; the write below
        # checks that nothing was provisioned meanwhile, so the plan is a diff of the stored.
        with db.read() as s:
            skeletons = stored_skeletons(s)
        desired = plan_desired_state(draft_repo, now, skeletons, parts_loader(db))
    enforcers = _plan_summary(desired.plans)
    summary: dict[str, Any] = {
        "changes": [{k: c[k] for k in ("kind", "name", "change")} for c in changes],
        "counts": _counts(draft_repo),
        "assertions": {"total": len(report.results), "failed": 0},
        "replay": replay_json,
        "enforcers": enforcers,
    }
    with db.write() as (s, control):
        if control.active_version != base_version or control.draft_revision != draft_revision:
            raise Conflict("the draft or the active version changed meanwhile; try again")
        enforcers["revision"] = control.revision + 1  # what ``_new_version`` makes it
        number = _new_version(s, control, draft, p.name, note, "provision", None, summary, now)
        publish(s, control, desired, number, now)
        control.next_change_at = next_change(draft_repo, now)
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="version.provision",
            target=f"version/{number}",
            before={"version": base_version},
            after={"version": number, "note": note, "changes": changes},
        )
    if builds is not None:
        if build is not None:
            build.version, build.repo = number, draft_repo
            builds.incremental += 1
            builds.put(build)
        else:
            builds.prime(number, draft_repo, now, desired.skeletons, desired.layouts)
    return {"version": number, **summary}


def _relabelled_workloads(
    build: ActiveBuild | None,
    changes: Sequence[Mapping[str, Any]],
    draft: Sequence[StoredDocument],
    now: datetime,
) -> list[Workload] | None:
    """The changed workloads, parsed, when the change is a relabelling the build can
    take incrementally; else None."""
    if build is None or not build.valid_at(now):
        return None
    if not all(c["kind"] == "Workload" and c["change"] == "changed" for c in changes):
        return None
    by_key = {d.key: d for d in draft}
    try:
        return [parse_workload(by_key[("Workload", c["name"])]) for c in changes]
    except DocumentError:
        return None  # the full path reports it, with every other problem


def _plan_summary(plans: Sequence[EnforcerPlan]) -> dict[str, Any]:
    """Which enforcers receive an update, and of which kind."""
    return {
        "updated": len(plans),
        "full": sorted(x.enforcer for x in plans if x.full),
        "delta": sorted(x.enforcer for x in plans if not x.full),
    }


def _new_version(
    s: Session,
    control: Control,
    docs: Sequence[StoredDocument],
    actor: str,
    note: str,
    origin: str,
    rollback_of: int | None,
    summary: dict[str, Any],
    now: datetime,
) -> int:
    last = s.execute(select(func.max(Version.number))).scalar()
    number = (last or 0) + 1
    digest, blob = encoded_documents(docs)  # one serialization for both
    s.add(
        Version(
            number=number,
            created_at=now,
            created_by=actor,
            note=note,
            origin=origin,
            rollback_of=rollback_of,
            digest=digest,
            documents=blob,
            summary=summary,
        )
    )
    control.active_version = number
    control.revision += 1
    return number


def rollback(
    db: Database,
    p: Principal,
    number: int,
    note: str,
    now: datetime,
    builds: Builds | None = None,
) -> dict[str, Any]:
    """A new version with the documents of version ``number``; the draft becomes it too
    (pending draft changes are discarded and recorded in the audit entry)."""
    require(p, Permission.PROVISION)
    if not note.strip():
        raise DocumentError([FieldProblem("rollback", "note", "a note is required")])
    with db.write() as (s, control):
        target = decode_documents(_version_row(s, number).documents)
        active = active_documents(s, control)
        draft = draft_documents(s)
        changes = _change_list(active, target)
        summary: dict[str, Any] = {
            "changes": [{k: c[k] for k in ("kind", "name", "change")} for c in changes],
            "rollback_of": number,
        }
        target_repo = build_repository(target)
        desired = plan_desired_state(target_repo, now, stored_skeletons(s), parts_loader(db))
        enforcers = _plan_summary(desired.plans)
        enforcers["revision"] = control.revision + 1  # what ``_new_version`` makes it
        summary["enforcers"] = enforcers
        new = _new_version(s, control, target, p.name, note, "rollback", number, summary, now)
        publish(s, control, desired, new, now)
        control.next_change_at = next_change(target_repo, now)
        _set_draft(s, target, now, p.name)
        audit.append(
            s,
            control,
            at=now,
            actor=p.name,
            action="version.rollback",
            target=f"version/{new}",
            before={"version": new - 1, "discarded_draft": _change_list(active, draft)},
            after={"version": new, "rollback_of": number, "note": note, "changes": changes},
        )
    if builds is not None:
        builds.prime(new, target_repo, now, desired.skeletons, desired.layouts)
    return {"version": new, **summary}


def replan_due(db: Database, now: datetime) -> bool:
    """Whether the active version's meaning changed by itself since it was planned."""
    with db.read() as s:
        control = s.get(Control, 1)
        return bool(control and control.next_change_at and control.next_change_at <= now)


def replan(db: Database, now: datetime) -> dict[str, Any] | None:
    """Plan the active version's enforcer states again at ``now`` once a rule expired or an
    address's validity began or ended since they were planned (agents compute nothing, so
    the server must notice the clock for them): the enforcers that change get a new
    revision, the version stays. Recorded in the audit log as the server's own write.
    None when nothing was due (another replica did it, or nothing changed)."""
    with db.write() as (s, control):
        due = control.next_change_at
        if due is None or due > now or control.active_version is None:
            return None
        version = control.active_version
        repo = build_repository(active_documents(s, control))
        desired = plan_desired_state(repo, now, stored_skeletons(s), parts_loader(db))
        control.next_change_at = next_change(repo, now)
        if not desired.plans:
            return None
        control.revision += 1
        revision = publish(s, control, desired, version, now)
        summary = {"version": version, "revision": revision, **_plan_summary(desired.plans)}
        audit.append(
            s,
            control,
            at=now,
            actor="septum-server",
            action="state.replan",
            target=f"version/{version}",
            before={"due": due.isoformat()},
            after=summary,
        )
    return summary


def _version_json(v: Version) -> dict[str, Any]:
    return {
        "version": v.number,
        "created_at": v.created_at.isoformat(),
        "created_by": v.created_by,
        "note": v.note,
        "origin": v.origin,
        "rollback_of": v.rollback_of,
        "digest": v.digest,
    }


def list_versions(db: Database, p: Principal) -> dict[str, Any]:
    require(p, Permission.READ_POLICY)
    with db.read() as s:
        control = s.get(Control, 1)
        rows = s.execute(select(Version).order_by(Version.number)).scalars()
        return {
            "active": control.active_version if control else None,
            "versions": [_version_json(v) for v in rows],
        }


def get_version(db: Database, p: Principal, number: int) -> dict[str, Any]:
    require(p, Permission.READ_POLICY)
    with db.read() as s:
        v = _version_row(s, number)
        docs = decode_documents(v.documents)
        return {
            **_version_json(v),
            "summary": v.summary,
            "documents": [{"path": d.path, "body": d.body} for d in docs if visible(p, d)],
        }


def diff_versions(db: Database, p: Principal, before: str, after: str) -> dict[str, Any]:
    """Documents added, removed and changed from ``before`` to ``after`` (version numbers,
    0 for the empty repository, ``active`` or ``draft``)."""
    require(p, Permission.READ_POLICY)
    with db.read() as s:
        a = [d for d in _state_documents(s, before) if visible(p, d)]
        b = [d for d in _state_documents(s, after) if visible(p, d)]
    return {"from": before, "to": after, "changes": _change_list(a, b)}


# ------------------------------------------------------------------ audit


def audit_entries(db: Database, p: Principal, after: int = 0, limit: int = 1000) -> dict[str, Any]:
    require(p, Permission.READ_AUDIT)
    with db.read() as s:
        rows = audit.database_entries(s, after=after, limit=limit)
        control = s.get(Control, 1)
        head = {"seq": control.audit_seq, "hash": control.audit_hash} if control else None
        return {"entries": [audit.entry_json(e) for e in rows], "head": head}


def verify_audit(db: Database, p: Principal) -> dict[str, Any]:
    require(p, Permission.READ_AUDIT)
    with db.read() as s:
        control = s.get(Control, 1)
        head = (control.audit_seq, control.audit_hash) if control else (0, GENESIS_HASH)
        entries = (
            audit.entry_json(e)
            for e in s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
        )
        count, problems = audit.verify_entries(entries, head)
    return {"ok": not problems, "entries": count, "problems": [x.to_json() for x in problems]}


# ------------------------------------------------------------------ users and tokens


def _user_json(u: User) -> dict[str, Any]:
    return {
        "name": u.name,
        "role": u.role,
        "scope": u.scope,
        "teams": list(u.teams),
        "enforcer": u.enforcer,
        "disabled": u.disabled,
        "created_at": u.created_at.isoformat(),
    }


def create_user(
    db: Database | None,
    p: Principal | None,
    name: str,
    role: str,
    now: datetime,
    *,
    scope: str | None = None,
    teams: Sequence[str] = (),
    enforcer: str | None = None,
    session: tuple[Session, Control] | None = None,
) -> dict[str, Any]:
    """Add a user. Owners need a scope; agents an enforcer."""
    if p is not None:
        require(p, Permission.MANAGE_USERS)
    problems: list[FieldProblem] = []
    try:
        r = Role(role)
    except ValueError:
        problems.append(
            FieldProblem(f"User/{name}", "role", f"one of {', '.join(x.value for x in Role)}")
        )
        r = None
    if r is Role.OWNER and not scope:
        problems.append(FieldProblem(f"User/{name}", "scope", "an owner needs a scope selector"))
    if scope:
        try:
            parse_selector(scope)
        except SelectorSyntaxError as exc:
            problems.append(FieldProblem(f"User/{name}", "scope", str(exc)))
    if r is Role.AGENT and not enforcer:
        problems.append(FieldProblem(f"User/{name}", "enforcer", "an agent needs an enforcer"))
    if not name or len(name) > 253:
        problems.append(FieldProblem(f"User/{name}", "name", "1 to 253 characters"))
    if problems:
        raise DocumentError(problems)
    user = User(
        name=name,
        role=role,
        scope=scope or None,
        teams=list(teams),
        enforcer=enforcer,
        created_at=now,
        disabled=False,
    )

    def add(s: Session, control: Control) -> None:
        if s.get(User, name) is not None:
            raise Conflict(f"user {name!r} exists")
        s.add(user)
        audit.append(
            s,
            control,
            at=now,
            actor=p.name if p else "septum",
            action="user.create",
            target=f"user/{name}",
            after=_user_json(user),
        )

    if session is not None:
        add(*session)
    else:
        assert db is not None
        with db.write() as (s, control):
            add(s, control)
    return _user_json(user)


def list_users(db: Database, p: Principal) -> list[dict[str, Any]]:
    require(p, Permission.MANAGE_USERS)
    with db.read() as s:
        return [_user_json(u) for u in s.execute(select(User).order_by(User.name)).scalars()]


def create_token(
    db: Database | None,
    p: Principal | None,
    user: str,
    now: datetime,
    *,
    description: str = "",
    expires_at: datetime | None = None,
    session: tuple[Session, Control] | None = None,
) -> dict[str, Any]:
    """A new API token for ``user``; the token text is returned once and never stored."""
    if p is not None and not (p.may(Permission.MANAGE_USERS)):
        raise Forbidden(f"{p.role.value} {p.name!r} may not {Permission.MANAGE_USERS.value}")
    text, token_id, secret_hash = new_token()

    def add(s: Session, control: Control) -> None:
        if s.get(User, user) is None:
            raise NotFound(f"no user {user!r}")
        s.add(
            ApiToken(
                id=token_id,
                user=user,
                secret_hash=secret_hash,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                description=description,
            )
        )
        audit.append(
            s,
            control,
            at=now,
            actor=p.name if p else "septum",
            action="token.create",
            target=f"user/{user}/token/{token_id}",
            after={"id": token_id, "description": description},
        )

    if session is not None:
        add(*session)
    else:
        assert db is not None
        with db.write() as (s, control):
            add(s, control)
    return {"token": text, "id": token_id, "user": user}


def revoke_token(db: Database, p: Principal, token_id: str, now: datetime) -> dict[str, Any]:
    require(p, Permission.MANAGE_USERS)
    with db.write() as (s, control):
        notify(s, AUTH_CHANNEL)  # replicas forget the agents they verified (at commit)
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        if row.revoked_at is None:
            row.revoked_at = now
            audit.append(
                s,
                control,
                at=now,
                actor=p.name,
                action="token.revoke",
                target=f"user/{row.user}/token/{token_id}",
            )
    return {"id": token_id, "revoked": True}


def bootstrap_admin(db: Database, name: str, now: datetime) -> dict[str, Any] | None:
    """The first admin and a token for it, when the server has no user yet (else None)."""
    with db.write() as (s, control):
        if s.execute(select(User).limit(1)).first() is not None:
            return None
        create_user(None, None, name, Role.ADMIN.value, now, session=(s, control))
        return create_token(None, None, name, now, description="bootstrap", session=(s, control))
