"""Incremental against full: imports in pieces (and compaction) give the store one import
of everything gives; replay over the store's groups counts what explaining every record
one by one counts."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import BinaryIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.engine.explain import Evaluator, Flow, Verdict
from septum.engine.observed import protocol_of
from septum.engine.replay import replay
from septum.flows.importers import ImportOptions
from septum.flows.query import FlowQuery, query_flows
from septum.flows.records import Malformed, Row, Skipped
from septum.flows.store import FlowStore, StoreSettings
from septum.model.resources import Repository
from septum.testing.builders import net, network, policy, repo, rule, tier, user, workload

DAY = datetime(2026, 11, 24, tzinfo=UTC)
NOW = DAY + timedelta(days=2)
ADDRESSES = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.9.9", "203.0.113.5", "2001:db8::7"]


def estate() -> Repository:
    return repo(
        workload("web", "198.18.0.1", app="web", env="prod"),
        workload("api", ("198.18.0.2", DAY, DAY + timedelta(hours=12)), app="api", env="prod"),
        workload("batch", ("198.18.0.2", DAY + timedelta(hours=12), None), app="batch"),
        workload("db", "198.18.0.3", "2001:db8::7", app="db", env="prod"),
        user("ops", ("198.18.9.9", DAY, DAY + timedelta(hours=6)), role="ops"),
        network("internet", "0.0.0.0/0", excepts=["198.18.0.0/15"]),
        tier("apps", 100),
        policy("db", "apps", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "api"', ports=["tcp/5432"])]),
        policy("api", "apps", applies_to='app == "api"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/8080"])],
               egress=[rule("allow", 'app == "db"', ports=["tcp/5432"])]),
        policy("web", "apps", applies_to='app == "web"',
               ingress=[rule("allow", net("internet"), ports=["tcp/443"])],
               egress=[rule("allow", "all()")]),
    )  # fmt: skip


rows = st.lists(
    st.tuples(
        st.integers(0, 47 * 60),  # minute of two days
        st.sampled_from(ADDRESSES),
        st.sampled_from(ADDRESSES),
        st.sampled_from([("tcp", 443), ("tcp", 8080), ("tcp", 5432), ("udp", 53), ("icmp", 0)]),
        st.sampled_from(["allowed", "denied", "would-deny", "unknown"]),
        st.integers(0, 10_000),
    ).map(
        lambda t: (
            DAY + timedelta(minutes=t[0]),
            DAY + timedelta(minutes=t[0], seconds=30),
            t[1],
            t[2],
            40000,
            t[3][1],
            t[3][0],
            1,
            t[5],
            1,
            "r",
            t[4],
            None,
        )
    ),
    min_size=1,
    max_size=60,
)


class Rows:
    name = "fake"

    def __init__(self, items: list[Row]) -> None:
        self.items = items

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        yield from self.items


def _store(root: Path, chunks: list[list[Row]], model: Repository) -> FlowStore:
    store = FlowStore(root)
    store.configure(StoreSettings(retention_days=None, compact_min_files=2))
    source = root.parent / f"{root.name}.in"
    source.write_text("x")
    for chunk in chunks:
        report = store.import_file(source, Rows(chunk), ImportOptions(now=NOW), model)  # type: ignore[arg-type]
        assert report.ok, report.error
    return store


def _snapshot(store: FlowStore) -> tuple[object, ...]:
    groups = sorted(
        (str(g.source), str(g.destination), g.protocol.value, g.port, g.records, g.bytes,
         g.first_seen, g.last_seen, str(g.source_identity), str(g.destination_identity),
         tuple(sorted((v.value, n) for v, n in g.verdicts.items())))
        for g in store.groups()
    )  # fmt: skip
    result = query_flows(store, FlowQuery(group_by=("app", "env")))
    edges = sorted((*r[:2], tuple(r[2]), *r[3:]) for r in result.rows)
    return (store.count(), tuple(groups), tuple(edges))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.integers(1, 4), st.booleans())
def test_imports_in_pieces_equal_one_import(
    all_rows: list[Row], pieces: int, compact: bool
) -> None:
    model = estate()
    size = -(-len(all_rows) // pieces)
    chunks = [all_rows[i : i + size] for i in range(0, len(all_rows), size)]
    with tempfile.TemporaryDirectory() as tmp:
        whole = _store(Path(tmp) / "whole", [all_rows], model)
        parts = _store(Path(tmp) / "parts", chunks, model)
        if compact:
            parts.compact(NOW)
        assert _snapshot(parts) == _snapshot(whole)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_replay_counts_what_explaining_every_record_counts(all_rows: list[Row]) -> None:
    active = estate()
    draft = repo(*[p for p in active.policies if p.name != "db"], *active.workloads,
                 *active.users, *active.networks, *active.tiers)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp) / "s", [all_rows], active)
        report = replay(draft, store.groups(), active)
        recorded = replay(draft, store.groups())
    after, before = Evaluator(draft), Evaluator(active)
    expected: Counter[str] = Counter()
    expected_recorded: Counter[str] = Counter()
    for r in all_rows:
        protocol = protocol_of(r[6])
        assert protocol is not None
        flow = Flow(ip_address(r[2]), ip_address(r[3]), protocol, r[5], r[0])
        a, b = after.explain(flow).verdict, before.explain(flow).verdict
        if a is not b:
            expected["denied" if a is Verdict.DENY else "allowed"] += 1
        was_denied = r[11] == "denied"
        if a is Verdict.DENY and not was_denied:
            expected_recorded["denied"] += 1
        if a is Verdict.ALLOW and was_denied:
            expected_recorded["allowed"] += 1
    assert (report.newly_denied, report.newly_allowed) == (expected["denied"], expected["allowed"])
    assert (recorded.newly_denied, recorded.newly_allowed) == (
        expected_recorded["denied"],
        expected_recorded["allowed"],
    )
