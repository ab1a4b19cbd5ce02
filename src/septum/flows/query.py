"""``septum flows query``: filter stored flows and aggregate them into edges between groups.

A query runs in two DuckDB steps over the committed Parquet files:

1. filter (time window, verdicts, services, rule) and aggregate per (source identity,
   destination identity, protocol, port): millions of rows become thousands;
2. join those with a small table that maps every identity to its group (its values of the
   ``group_by`` label keys) and aggregate again into edges.

Selector filters are evaluated in Python over the identities (a few thousand label sets),
never per flow; the matching identities become a table that the flows are semi-joined with.
A selector matches an identity when it matches its labels, for workloads, users and
networks alike (so ``--from 'role == "admin"'`` finds user sessions); unknown addresses are
matched only by ``all()``, as in policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from septum.engine.attribution import EndpointKind
from septum.engine.observed import RecordedVerdict
from septum.flows.store import FlowStore
from septum.model.resources import ServicePort
from septum.model.selector import Selector

__all__ = ["EDGE_COLUMNS", "FlowQuery", "QueryResult", "group_of", "query_flows"]

EDGE_COLUMNS = (
    "source",
    "destination",
    "services",
    "records",
    "connections",
    "packets",
    "bytes",
    "first_seen",
    "last_seen",
    "allowed",
    "denied",
    "would_deny",
)


@dataclass(frozen=True, slots=True)
class FlowQuery:
    """What to select and how to group it. ``rule`` matches records whose deciding rule
    contains the text (e.g. ``security/`` for a tier, ``security/quarantine`` for a
    policy). ``group_by`` empty: one group per identity."""

    source: Selector | None = None
    destination: Selector | None = None
    services: tuple[ServicePort, ...] = ()
    verdicts: tuple[RecordedVerdict, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    rule: str | None = None
    group_by: tuple[str, ...] = ()
    limit: int | None = None
    #: records and bytes only (services, verdict counts, packets, connections and times are
    #: left empty): reads three columns instead of twelve, for dashboards and large stores
    counts_only: bool = False


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Edges, largest first (by records), as rows in ``EDGE_COLUMNS`` order."""

    rows: list[tuple[Any, ...]]
    records: int  # records that matched the filters
    edges: int  # edges before ``limit``

    def to_json(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for row in self.rows:
            item = dict(zip(EDGE_COLUMNS, row, strict=True))
            item["first_seen"] = row[7].isoformat() if row[7] is not None else None
            item["last_seen"] = row[8].isoformat() if row[8] is not None else None
            out.append(item)
        return out


def group_of(kind: str, name: str | None, labels: Mapping[str, str], keys: tuple[str, ...]) -> str:
    """The group text of an identity: ``app=shop,env=prod`` for the keys it has; its name
    when it has none of them (or no keys were asked for); ``user:NAME``/``network:NAME``
    marks non-workloads; ``unknown`` for addresses nobody held."""
    if kind == EndpointKind.UNKNOWN.value or name is None:
        return "unknown"
    if kind == EndpointKind.NETWORK.value:
        return f"network:{name}"
    values = [f"{k}={labels[k]}" for k in keys if k in labels]
    text = ",".join(values) if values else name
    return f"user:{text}" if kind == EndpointKind.USER.value else text


def _service_clause(services: tuple[ServicePort, ...]) -> str:
    parts: list[str] = []
    for s in services:
        if s.protocol is None:
            return "TRUE"
        if not s.protocol.has_ports:
            parts.append(f"protocol = '{s.protocol.value}'")
        else:
            parts.append(
                f"(protocol = '{s.protocol.value}' AND port BETWEEN {s.ports.first} "
                f"AND {s.ports.last})"
            )
    return "(" + " OR ".join(parts) + ")"


def query_flows(
    store: FlowStore,
    query: FlowQuery,
    identities: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> QueryResult:
    """Run ``query`` over ``store`` (module docstring). ``identities``: labels per (kind,
    name), by default those the store recorded. Cost: two DuckDB aggregations; Python work
    is O(identities + edges)."""
    labels = identities if identities is not None else store.identities()
    con = store.connect()
    try:
        kinds: list[str] = []
        names: list[str] = []
        groups: list[str] = []
        source_ok: list[bool] = []
        destination_ok: list[bool] = []
        for (kind, name), lab in sorted(labels.items()):
            kinds.append(kind)
            names.append(name)
            groups.append(group_of(kind, name, lab, query.group_by))
            source_ok.append(query.source is None or query.source.matches(lab))
            destination_ok.append(query.destination is None or query.destination.matches(lab))
        con.register(
            "ident_arrow",
            pa.table(
                {
                    "kind": pa.array(kinds, pa.string()),
                    "name": pa.array(names, pa.string()),
                    "g": pa.array(groups, pa.string()),
                    "src_ok": pa.array(source_ok, pa.bool_()),
                    "dst_ok": pa.array(destination_ok, pa.bool_()),
                }
            ),
        )
        con.execute("CREATE TEMP TABLE ident AS SELECT * FROM ident_arrow")

        clauses: list[str] = []
        params: list[Any] = []
        if query.since is not None:
            clauses.append("start >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("start < ?")
            params.append(query.until)
        if query.verdicts:
            clauses.append("verdict IN (" + ", ".join(f"'{v.value}'" for v in query.verdicts) + ")")
        if query.services:
            clauses.append(_service_clause(query.services))
        if query.rule:
            clauses.append("contains(coalesce(rule, ''), ?)")
            params.append(query.rule)
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        side_filters: list[str] = []
        for side, selector, column in (
            ("source", query.source, "src_ok"),
            ("destination", query.destination, "dst_ok"),
        ):
            if selector is None or selector.is_all:
                continue
            side_filters.append(
                f"(pre.{side}_kind, coalesce(pre.{side}_name, '')) IN "
                f"(SELECT kind, name FROM ident WHERE {column})"
            )
        having = "WHERE " + " AND ".join(side_filters) if side_filters else ""
        pre_aggregates = (
            """count(*) AS r, sum(bytes) AS b, 0 AS c, 0 AS p, NULL::TIMESTAMPTZ AS f,
               NULL::TIMESTAMPTZ AS l, 0 AS a, 0 AS d, 0 AS w, NULL::VARCHAR AS protocol,
               0 AS port"""
            if query.counts_only
            else """protocol, port, count(*) AS r, sum(connections) AS c,
                       sum(packets) AS p, sum(bytes) AS b, min(start) AS f, max("end") AS l,
                       count(*) FILTER (WHERE verdict = 'allowed') AS a,
                       count(*) FILTER (WHERE verdict = 'denied') AS d,
                       count(*) FILTER (WHERE verdict = 'would-deny') AS w"""
        )
        services = (
            "[]::VARCHAR[]"
            if query.counts_only
            else """list(DISTINCT CASE WHEN pre.port = 0 THEN pre.protocol
                                      ELSE pre.protocol || '/' || pre.port END)"""
        )
        rows = con.execute(
            f"""
            WITH pre AS (
                SELECT source_kind, source_name, destination_kind, destination_name,
                       {pre_aggregates}
                FROM flows {where}
                GROUP BY source_kind, source_name, destination_kind, destination_name
                         {"" if query.counts_only else ", protocol, port"}
            )
            SELECT coalesce(si.g, CASE WHEN pre.source_name IS NULL THEN 'unknown'
                                       ELSE pre.source_name END) AS src,
                   coalesce(di.g, CASE WHEN pre.destination_name IS NULL THEN 'unknown'
                                       ELSE pre.destination_name END) AS dst,
                   {services} AS services,
                   sum(r)::BIGINT, sum(c)::BIGINT, sum(p)::BIGINT, sum(b)::BIGINT, min(f),
                   max(l), sum(a)::BIGINT, sum(d)::BIGINT, sum(w)::BIGINT
            FROM pre
            LEFT JOIN ident si ON si.kind = pre.source_kind AND si.name = pre.source_name
            LEFT JOIN ident di ON di.kind = pre.destination_kind
                               AND di.name = pre.destination_name
            {having}
            GROUP BY ALL
            ORDER BY 4 DESC, 1, 2
            """,
            params,
        ).fetchall()
    finally:
        con.close()
    edges = [(r[0], r[1], sorted(r[2], key=_service_order), *r[3:]) for r in rows]
    total = sum(int(r[3]) for r in edges)
    shown = edges[: query.limit] if query.limit is not None else edges
    return QueryResult(rows=shown, records=total, edges=len(edges))


def _service_order(text: str) -> tuple[str, int]:
    protocol, _, port = text.partition("/")
    return (protocol, int(port) if port.isdigit() else -1)
