"""Flows over the API: agents (and people allowed to write flows) hand the server batches of
flow records, which go into the server's flow store; readers query them back as flow groups.

::

    ingest_flows(records) ─► may the caller write these? (an agent: its own enforcer only)
        │                     └─ Forbidden naming records[i]; nothing stored
        ├─► read_records: the agent importer, one record at a time (the one parser)
        │                 └─ DocumentError naming records[i].<field>; nothing stored
        └─► Row batch ─► temporary Parquet file ─► FlowStore.import_file
                          (attributed with the active version's inventory; all or nothing)

    query_flows(since, until) ─► FlowStore.groups (identities of the active version)
        └─► owners: groups touching their scope, the far side reduced to its kind

Flows are observations, not configuration: ingesting them writes nothing to the database
and no audit entry (the store is files under ``ServerSettings.flows_dir``); the database is
only read, for the active version. The flow
modules (DuckDB, Arrow) are imported on first use, like ``service``'s replay, so that the
server starts without them.
"""

from __future__ import annotations

import functools
import io
import json
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from septum.engine.attribution import EndpointKind
from septum.engine.explain import Evaluator, Flow
from septum.errors import SeptumError
from septum.model.resources import Protocol, Repository
from septum.server.auth import Permission, Principal, Role
from septum.server.db import Control, Database, Version
from septum.server.documents import (
    DocumentError,
    FieldProblem,
    StoredDocument,
    build_repository,
)
from septum.server.service import Conflict, Forbidden, active_documents, require, visible
from septum.server.settings import ServerSettings

if TYPE_CHECKING:
    from septum.engine.observed import FlowGroup, Identity
    from septum.flows.importers import ImportOptions
    from septum.flows.records import Row

__all__ = [
    "MAX_LIMIT",
    "MAX_RECORDS",
    "BatchTooLarge",
    "evaluator_of",
    "ingest_flows",
    "probe_record",
    "query_flows",
    "read_records",
    "with_provenance",
]

#: Records one request may carry: an agent's interval is far smaller, and a bigger batch
#: would hold the store's writer lock (which serializes every ingest) for seconds.
MAX_RECORDS = 50_000
#: Flow groups one query returns at most.
MAX_LIMIT = 10_000
#: Refused records whose field is located and reported; the others are only counted (each
#: located one costs a dozen one-line parses).
_PROBLEMS_KEPT = 20
#: How far ahead of the server's clock a record may end: agents' clocks drift, but a record
#: from further ahead is bogus, and would sit in a partition that retention never reaches.
_AHEAD = timedelta(days=1)
#: The store's counters are 64-bit.
_INT64_MAX = 2**63 - 1


class BatchTooLarge(SeptumError):
    """More records in one request than ``MAX_RECORDS`` (the HTTP route answers 413)."""


# ------------------------------------------------------------------ the active inventory


@dataclass(frozen=True, slots=True)
class ActiveInventory:
    """The active version's documents and the repository they build (None: no version)."""

    version: int | None
    documents: tuple[StoredDocument, ...]
    repository: Repository

    def workloads_in_scope(self, p: Principal) -> frozenset[str]:
        """Names of the workloads ``p`` sees (every one for unscoped callers)."""
        return frozenset(d.name for d in self.documents if d.kind == "Workload" and visible(p, d))


#: Repositories by version digest: every agent's ingest attributes with the active
#: version, and building it (validation included) costs far more than the import of a
#: typical batch. A digest names the documents exactly, so an entry is never stale.
_BUILT: dict[str, ActiveInventory] = {}
_BUILT_KEPT = 4
_BUILT_LOCK = threading.Lock()


def active_inventory(db: Database) -> ActiveInventory:
    """The active version, built once per version (see ``_BUILT``). Cost: one small query
    when cached, else decoding and validating the version's documents."""
    with db.read() as s:
        control = s.get(Control, 1)
        number = control.active_version if control is not None else None
        if number is None:
            return ActiveInventory(None, (), Repository())
        digest = s.execute(select(Version.digest).where(Version.number == number)).scalar_one()
        with _BUILT_LOCK:
            cached = _BUILT.get(digest)
        if cached is not None:
            return ActiveInventory(number, cached.documents, cached.repository)
        docs = tuple(active_documents(s, control))
    built = ActiveInventory(number, docs, build_repository(docs))
    with _BUILT_LOCK:
        while len(_BUILT) >= _BUILT_KEPT:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[digest] = built
    return built


#: Evaluators by version (for provenance), alongside ``_BUILT``.
_EVALUATORS: dict[int, Evaluator] = {}


def evaluator_of(active: ActiveInventory) -> Evaluator:
    """The evaluator of the active version, made once per version (agents' flow ingests
    and their questions about connections to cut share it)."""
    assert active.version is not None
    with _BUILT_LOCK:
        evaluator = _EVALUATORS.get(active.version)
    if evaluator is None:
        evaluator = Evaluator(active.repository)
        with _BUILT_LOCK:
            if len(_EVALUATORS) >= _BUILT_KEPT:
                _EVALUATORS.pop(next(iter(_EVALUATORS)))
            _EVALUATORS[active.version] = evaluator
    return evaluator


def with_provenance(rows: Sequence[Row], active: ActiveInventory) -> list[Row]:
    """Allowed records that came without provenance get it from the active version: the
    deciding rule of each side, as an agent that holds its repository records it. Agents
    that follow the control plane hold rulesets, not the repository that explains them,
    and the kernel logs only denies. Records with provenance keep theirs. Cost: one
    ``explain`` per distinct (source, destination, protocol, port, start)."""
    if active.version is None:
        return list(rows)
    missing = [i for i, r in enumerate(rows) if r[11] == "allowed" and r[12] is None]
    if not missing:
        return list(rows)
    evaluator = evaluator_of(active)
    out = list(rows)
    memo: dict[tuple[object, ...], str | None] = {}
    for i in missing:
        r = rows[i]
        key = (r[2], r[3], r[6], r[5], r[0])
        if key not in memo:
            try:
                protocol = Protocol(r[6])
            except ValueError:  # a protocol the policy model has no rules for
                memo[key] = None
                continue
            port = r[5] if protocol.has_ports else 0
            flow = Flow(ip_address(r[2]), ip_address(r[3]), protocol, port, r[0])
            sides = evaluator.explain(flow).sides
            memo[key] = ",".join(side.provenance for side in sides) or None
        out[i] = (*r[:12], memo[key])
    return out


# ------------------------------------------------------------------ reading records


def _options(now: datetime) -> ImportOptions:
    from septum.flows.importers import ImportOptions

    return ImportOptions(now=now)


def _read_one(record: Mapping[str, Any], options: ImportOptions) -> Row | str:
    """The agent importer's row for one record, or why it refused it.

    One record at a time, so that a refusal is tied to its index, and so that an exception
    the importer lets through (a time zone offset pushing a time past what a datetime
    holds raises OverflowError, not ValueError) refuses that record instead of the request.
    """
    from septum.flows.importers.agent import IMPORTER
    from septum.flows.records import Malformed

    try:
        line = json.dumps(record, default=str).encode()
        for item in IMPORTER.read(io.BytesIO(line), "records", options):
            if isinstance(item, Malformed):
                return item.reason
            if isinstance(item, tuple):
                counters = zip(("packets", "bytes", "connections"), item[7:10], strict=True)
                too_big = [name for name, value in counters if value > _INT64_MAX]
                if too_big:
                    return f"{too_big[0]}: more than the store's 64-bit counters hold"
                return item
    except (ArithmeticError, ValueError, TypeError, RecursionError, SeptumError) as e:
        return f"not a flow record: {e}"
    return "not a flow record"


@functools.cache
def probe_record() -> dict[str, Any]:
    """A record every field of which the importer accepts, in the agent's field order.
    Its times are the ends of what a datetime holds, so that a refused record's start or
    end put in alone is never out of order with the other. Do not change the result."""
    from septum.agent.capture import FlowRecord, FlowVerdict

    return FlowRecord(
        start=datetime.min.replace(tzinfo=UTC),
        end=datetime.max.replace(tzinfo=UTC),
        enforcer="probe",
        source=ip_address("192.0.2.1"),
        destination=ip_address("192.0.2.2"),
        protocol="tcp",
        port=443,
        verdict=FlowVerdict.ALLOWED,
        provenance=(),
        connections=1,
        packets=1,
        bytes=1,
    ).to_json()


def _problem(index: int, record: object, reason: str, options: ImportOptions) -> FieldProblem:
    """Which field of a refused record is at fault. The importer stays the only judge: each
    field is put alone into a record it accepts (``probe_record``) and read again; the first
    field refused that way is named. When every field reads alone, the fault is between
    fields, and the importer has one such rule: ``end`` not before ``start``."""
    where = f"records[{index}]"
    if not isinstance(record, Mapping):
        return FieldProblem("flows", where, "a flow record must be a JSON object")
    probe = probe_record()
    for name in probe:
        if name not in record:
            return FieldProblem("flows", f"{where}.{name}", "missing")
    for name in probe:
        alone = _read_one({**probe, name: record[name]}, options)
        if isinstance(alone, str):
            return FieldProblem("flows", f"{where}.{name}", alone)
    return FieldProblem("flows", f"{where}.end", reason)


def _after(row: Row, horizon: datetime) -> str | None:
    """The first of start and end that is after ``horizon`` (None: neither)."""
    if row[0] > horizon:
        return "start"
    return "end" if row[1] > horizon else None


def read_records(records: Sequence[object], now: datetime) -> list[Row]:
    """The store rows of agent flow records (what ``FlowRecord.to_json`` writes), read by
    the agent importer (``septum flows import --format agent``); fields it does not know
    are ignored, as that import ignores them. A record may not start or end more than a
    day after ``now`` (``_AHEAD``). Raises DocumentError naming
    ``records[i].<field>`` of the first refused records (all are counted). Cost: a few µs a
    record; a dozen more one-line reads for each refused record reported."""
    options = _options(now)
    horizon = now.astimezone(UTC) + _AHEAD
    rows: list[Row] = []
    problems: list[FieldProblem] = []
    refused = 0
    for i, record in enumerate(records):
        outcome = _read_one(record, options) if isinstance(record, Mapping) else "not an object"
        late = _after(outcome, horizon) if isinstance(outcome, tuple) else None
        if isinstance(outcome, tuple) and late is None:
            rows.append(outcome)
            continue
        refused += 1
        if len(problems) >= _PROBLEMS_KEPT:
            continue
        if late is not None:
            problems.append(
                FieldProblem(
                    "flows",
                    f"records[{i}].{late}",
                    f"after {horizon.isoformat()}: more than "
                    f"{_AHEAD.total_seconds() / 3600:g} hours ahead of the server's clock",
                )
            )
        else:
            problems.append(_problem(i, record, str(outcome), options))
    if refused > len(problems):
        problems.append(
            FieldProblem("flows", "records", f"… and {refused - len(problems)} more refused")
        )
    if problems:
        raise DocumentError(problems)
    return rows


# ------------------------------------------------------------------ ingest


#: One writer at a time per store in this process: the store's own lock does not wait
#: (it refuses a second writer at once), and concurrent requests are the normal case here.
_STORE_LOCKS: dict[Path, threading.Lock] = {}
_STORE_LOCKS_GUARD = threading.Lock()


def _store_lock(root: Path) -> threading.Lock:
    with _STORE_LOCKS_GUARD:
        return _STORE_LOCKS.setdefault(root.resolve(), threading.Lock())


def _check_own_enforcer(p: Principal, records: Sequence[object]) -> None:
    """An agent reports only what its own enforcer saw: every record must name it."""
    for i, record in enumerate(records):
        enforcer = record.get("enforcer") if isinstance(record, Mapping) else None
        if p.enforcer is None or enforcer != p.enforcer:
            raise Forbidden(
                f"records[{i}]: agent {p.name!r} reports the flows of enforcer "
                f"{p.enforcer!r} only, not of {enforcer!r}; nothing was stored"
            )


def ingest_flows(
    settings: ServerSettings,
    db: Database,
    p: Principal,
    records: Sequence[object],
    now: datetime,
) -> dict[str, Any]:
    """Store a batch of agent flow records, attributed with the active version's inventory
    (recorded as a snapshot at ``now``, as ``septum flows import --repo`` does), all or
    nothing. Needs write-flows; an agent may send only records of its own enforcer
    (Forbidden otherwise). A record the importer refuses stores nothing (DocumentError
    naming ``records[i].<field>``); so does a batch over ``MAX_RECORDS`` (BatchTooLarge)
    and a store another process is writing to (Conflict: try again).

    Returns ``accepted`` (stored), ``rejected`` (not stored: older than the store's
    retention), ``expired`` (of those, past retention), the partitions written and the
    version attributed with. Cost: reading the records (µs each), then one import; ingests
    into one store run one at a time."""
    require(p, Permission.WRITE_FLOWS)
    if len(records) > MAX_RECORDS:
        raise BatchTooLarge(
            f"{len(records)} records in one batch; send at most {MAX_RECORDS} per request"
        )
    if p.role is Role.AGENT:
        _check_own_enforcer(p, records)
    rows = read_records(records, now)
    active = active_inventory(db)
    if not rows:
        return _ingested(0, 0, 0, [], active.version)
    rows = with_provenance(rows, active)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from septum.flows.importers import importer_for
    from septum.flows.records import rows_to_batch
    from septum.flows.store import FlowStore

    # The rows are already read and checked, so they go in as Parquet: the store's batch
    # input, which it reads without parsing again, through the same all-or-nothing commit.
    with (
        _store_lock(settings.flows_dir),
        tempfile.TemporaryDirectory(prefix="septum-flows-") as tmp,
    ):
        batch_file = Path(tmp) / "records.parquet"
        pq.write_table(pa.Table.from_batches([rows_to_batch(rows)]), batch_file)
        store = FlowStore(settings.flows_dir)
        report = store.import_file(
            batch_file, importer_for("parquet"), _options(now), active.repository
        )
    if not report.ok:
        # Checked rows fail only for the store itself: most often another process (a CLI
        # import, a compaction, another replica) holding its writer lock.
        raise Conflict(f"the flow store took nothing (try again): {report.error}")
    return _ingested(
        report.stored, len(rows) - report.stored, report.expired, report.partitions,
        active.version,
    )  # fmt: skip


def _ingested(
    accepted: int, rejected: int, expired: int, partitions: list[str], version: int | None
) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "rejected": rejected,
        "expired": expired,
        "partitions": partitions,
        "version": version,
    }


# ------------------------------------------------------------------ query


def _window_time(when: datetime, name: str) -> datetime:
    if when.tzinfo is None:
        raise DocumentError([FieldProblem("flows", name, "a time zone is required")])
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise DocumentError(
            [FieldProblem("flows", name, "out of range once converted to UTC")]
        ) from None


def _stored_groups(
    root: Path,
    since: datetime,
    until: datetime | None,
    identities: Mapping[tuple[str, str], Mapping[str, str]],
) -> list[FlowGroup]:
    from septum.flows.store import FlowStore, StoreError

    try:
        store = FlowStore(root, create=False)
    except StoreError:
        return []  # nothing ingested yet
    labels = {**store.identities(), **identities}
    return store.groups(since=since, until=until, identities=labels)


def _endpoint(address: object, identity: Identity, shown: bool) -> dict[str, Any]:
    if not shown:
        return {"kind": identity.kind.value}
    return {
        "address": str(address),
        "kind": identity.kind.value,
        "name": identity.name,
        "labels": dict(identity.labels),
    }


def _edges(groups: Sequence[FlowGroup], shown: Callable[[Identity], bool]) -> list[dict[str, Any]]:
    """Groups as JSON edges, each side shown in full or reduced to its kind; groups that
    become alike once reduced are summed into one (so the number of hidden peers is not
    told either). Groups with neither side shown are left out. Order: first appearance."""
    edges: dict[str, dict[str, Any]] = {}
    for g in groups:
        source_shown = shown(g.source_identity)
        destination_shown = shown(g.destination_identity)
        if not (source_shown or destination_shown):
            continue
        source = _endpoint(g.source, g.source_identity, source_shown)
        destination = _endpoint(g.destination, g.destination_identity, destination_shown)
        key = json.dumps(
            [source, destination, g.protocol.value, g.port], sort_keys=True, default=str
        )
        edge = edges.get(key)
        if edge is None:
            edges[key] = {
                "source": source,
                "destination": destination,
                "protocol": g.protocol.value,
                "port": g.port,
                "first_seen": g.first_seen,
                "last_seen": g.last_seen,
                "records": g.records,
                "connections": g.connections,
                "packets": g.packets,
                "bytes": g.bytes,
                "verdicts": {v.value: n for v, n in g.verdicts.items()},
            }
            continue
        edge["first_seen"] = min(edge["first_seen"], g.first_seen)
        edge["last_seen"] = max(edge["last_seen"], g.last_seen)
        for counter in ("records", "connections", "packets", "bytes"):
            edge[counter] += getattr(g, counter)
        for v, n in g.verdicts.items():
            edge["verdicts"][v.value] = edge["verdicts"].get(v.value, 0) + n
    out = list(edges.values())
    for edge in out:
        edge["first_seen"] = edge["first_seen"].isoformat()
        edge["last_seen"] = edge["last_seen"].isoformat()
    return out


def query_flows(
    settings: ServerSettings,
    db: Database,
    p: Principal,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """The stored flows whose start is in [since, until), aggregated per (source,
    destination, protocol, port, attribution), with the active version's names and labels.
    ``since`` defaults to the window provision replays (``replay_days`` before ``now``),
    ``until`` to no end. Needs read-flows.

    What a scoped caller (an owner) sees: a flow group only when at least one side is a
    workload inside their scope (their selector matched against the workload's labels in
    the active version, as ``service.visible`` does for documents). A side is shown in full
    (address, kind, name, labels) only when it is such a workload; any other side (a
    workload outside the scope, a user, a network, an unknown address) is reduced to its
    kind, and groups that become alike are summed. Other readers see everything.

    Returns ``flows`` (at most ``limit``), ``total`` (before the limit), ``truncated``, the
    window and the version. Cost: one DuckDB aggregation over the store's files."""
    require(p, Permission.READ_FLOWS)
    if not 1 <= limit <= MAX_LIMIT:
        raise DocumentError([FieldProblem("flows", "limit", f"from 1 to {MAX_LIMIT}")])
    start = (
        _window_time(since, "since")
        if since is not None
        else now.astimezone(UTC) - timedelta(days=settings.replay_days)
    )
    end = _window_time(until, "until") if until is not None else None
    if end is not None and end <= start:
        raise DocumentError([FieldProblem("flows", "until", "must be after since")])
    active = active_inventory(db)
    from septum.flows.store import repository_identities

    groups = _stored_groups(
        settings.flows_dir, start, end, repository_identities(active.repository)
    )
    if p.scoped:
        in_scope = active.workloads_in_scope(p)

        def shown(identity: Identity) -> bool:
            return identity.kind is EndpointKind.WORKLOAD and identity.name in in_scope

        edges = _edges(groups, shown)
    else:
        edges = _edges(groups, lambda _identity: True)
    return {
        "since": start.isoformat(),
        "until": end.isoformat() if end is not None else None,
        "version": active.version,
        "total": len(edges),
        "truncated": len(edges) > limit,
        "flows": edges[:limit],
    }
