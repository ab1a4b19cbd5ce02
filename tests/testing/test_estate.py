"""The seeded estate generator: deterministic, fast, realistic, valid, and round-trips
through YAML; its change generators never collide addresses or touch reserved labels."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest

from septum.engine.assertions import run_assertions
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    PeerKind,
    PolicyMode,
    Protocol,
    Repository,
    WorkloadKind,
)
from septum.model.selector import parse_selector
from septum.sources.files import load_repository
from septum.testing.estate import (
    ADDRESS_PLAN,
    AddressChange,
    LabelChange,
    address_changes,
    apply_changes,
    estate_documents,
    estate_yaml,
    generate_estate,
    label_changes,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def small() -> Repository:
    return generate_estate(3, workloads=600, policies=150, enforcers=8, apps=20, users=12)


@pytest.fixture(scope="module")
def full() -> Repository:
    return generate_estate(1)


def _addresses(repo: Repository) -> list[IPv4Address | IPv6Address]:
    return [b.address for w in repo.workloads for b in w.addresses]


def test_full_estate_is_fast_and_has_the_requested_size(full: Repository) -> None:
    start = time.perf_counter()
    again = generate_estate(1)
    assert time.perf_counter() - start < 5
    assert again == full
    assert len(full.workloads) == 10_000
    assert len(full.policies) == 1_000
    assert len(full.enforcers()) == 100
    per_enforcer = Counter(w.enforcer for w in full.workloads)
    assert set(per_enforcer.values()) == {100}


def test_same_seed_same_estate_other_seed_other_estate(small: Repository) -> None:
    kwargs = {"workloads": 600, "policies": 150, "enforcers": 8, "apps": 20, "users": 12}
    assert generate_estate(3, **kwargs) == small
    assert generate_estate(4, **kwargs) != small


def test_addresses_are_unique_and_follow_the_plan(full: Repository) -> None:
    addresses = _addresses(full)
    assert len(addresses) == len(set(addresses))
    v4 = ip_network("198.18.0.0/15")
    v6 = ADDRESS_PLAN["estate-v6"]
    assert all(a in (v4 if a.version == 4 else v6) for a in addresses)
    assert sum(a.version == 6 for a in addresses) > 500
    assert all(w.addresses[0].address.version == 4 for w in full.workloads)
    sessions = [b.address for u in full.users for b in u.sessions]
    assert all(a in ADDRESS_PLAN["vpn"] for a in sessions)
    assert not set(sessions) & set(addresses)


def test_workloads_are_realistic(full: Repository) -> None:
    kinds = Counter(w.kind for w in full.workloads)
    assert {WorkloadKind.HOST, WorkloadKind.VM, WorkloadKind.CONTAINER, WorkloadKind.CLOUD} <= (
        set(kinds)
    )
    assert len({w.mode for w in full.workloads}) == 5
    apps = Counter(w.labels["app"] for w in full.workloads)
    assert 90 <= len(apps) <= 100
    assert max(apps.values()) > 5 * min(apps.values())  # some apps are much bigger
    for w in full.workloads:
        assert {"app", "role", "env", "loc", "team"} <= set(w.labels)
        assert w.labels[KIND_LABEL] == w.kind.value
        assert w.labels[NAME_LABEL] == w.name
        assert w.labels.get(NAMESPACE_LABEL) == w.namespace
    # An enforcer's workloads share its environment.
    envs: dict[str | None, set[str]] = {}
    for w in full.workloads:
        envs.setdefault(w.enforcer, set()).add(w.labels["env"])
    assert all(len(e) == 1 for e in envs.values())
    assert any("pci" in w.labels for w in full.workloads)


def test_references_resolve_and_rules_are_numbered(full: Repository) -> None:
    tiers = {t.name for t in full.tiers}
    services = {s.name for s in full.services}
    networks = {n.name for n in full.networks}
    segments = {s.name for s in full.segments}
    peer_kinds: Counter[PeerKind] = Counter()
    for p in full.policies:
        assert p.tier in tiers
        for rules in (p.ingress, p.egress):
            for i, rule in enumerate(rules or ()):
                assert rule.index == i
                assert set(rule.service_refs) <= services
                for peer in rule.peers:
                    peer_kinds[peer.kind] += 1
                    if peer.kind is PeerKind.NETWORK:
                        assert peer.ref in networks
                    if peer.kind is PeerKind.SEGMENT:
                        assert peer.ref in segments
    assert set(peer_kinds) == set(PeerKind)
    assert any(p.mode is PolicyMode.STAGED for p in full.policies)
    names = [p.name for p in full.policies]
    assert len(names) == len(set(names))
    assert names == sorted(names)


def test_the_call_graph_is_allowed_on_both_sides(small: Repository) -> None:
    """web -> api of one app in one environment is allowed (when neither is quarantined):
    the generated least-privilege policies allow it at the source and at the destination."""
    ev = Evaluator(small)
    services = {s.name: s for s in small.services}
    by_group: dict[tuple[str, str, str], list[str]] = {}
    workloads = {w.name: w for w in small.workloads}
    for w in small.workloads:
        if "quarantine" not in w.labels:
            key = (w.labels["app"], w.labels["env"], w.labels["role"])
            by_group.setdefault(key, []).append(w.name)
    checked = 0
    for (app, env, role), names in sorted(by_group.items()):
        apis = by_group.get((app, env, "api"))
        if role != "web" or not apis:
            continue
        port = services[f"{app}-api"].ports[0].ports.first
        web, api = workloads[names[0]], workloads[apis[0]]
        flow = Flow(web.addresses[0].address, api.addresses[0].address, Protocol.TCP, port, AT)
        assert ev.explain(flow).verdict is Verdict.ALLOW, (web.name, api.name)
        checked += 1
    assert checked > 5


def test_round_trip_through_yaml(small: Repository, tmp_path: Path) -> None:
    (tmp_path / "estate.yaml").write_text(estate_yaml(small), encoding="utf-8")
    assert load_repository(tmp_path) == small


def test_examples_round_trip_through_estate_documents(tmp_path: Path) -> None:
    examples = load_repository(EXAMPLES)
    docs = estate_documents(examples)
    assert Counter(d["kind"] for d in docs)["Assertion"] == len(examples.assertions)
    (tmp_path / "examples.yaml").write_text(estate_yaml(examples), encoding="utf-8")
    assert load_repository(tmp_path) == examples


@pytest.mark.parametrize(
    "at", [datetime(2026, 11, 2, 12, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)]
)
def test_the_examples_assertions_hold(at: datetime) -> None:
    """examples/ is what new users read first: every assertion in it must hold."""
    report = run_assertions(load_repository(EXAMPLES), at)
    assert report.passed, [r.name for r in report.failures]
    assert len(report.results) >= 16


def test_label_changes(small: Repository) -> None:
    changes = label_changes(small, seed=9, n=300)
    assert len(changes) == 300
    assert changes == label_changes(small, seed=9, n=300)
    assert {c.key for c in changes} >= {"role", "env", "app", "loc", "quarantine", "pci"}
    current = {w.name: dict(w.labels) for w in small.workloads}
    for c in changes:
        assert isinstance(c, LabelChange)
        assert not c.key.startswith("septum.io/")
        assert current[c.workload].get(c.key) == c.old != c.new
        if c.new is None:
            del current[c.workload][c.key]
        else:
            current[c.workload][c.key] = c.new
        assert dict(c.labels) == current[c.workload]
    changed = apply_changes(small, changes)
    assert {w.name: dict(w.labels) for w in changed.workloads} == current
    for c in changes[:50]:  # the new labels are still selectable
        assert parse_selector(f'septum.io/name == "{c.workload}"').matches(c.labels)


def test_address_changes_never_collide(small: Repository) -> None:
    changes = address_changes(small, seed=9, n=500)
    assert len(changes) == 500
    assert changes == address_changes(small, seed=9, n=500)
    kinds = Counter((bool(c.removed), bool(c.added)) for c in changes)
    assert set(kinds) == {(True, True), (False, True), (True, False)}
    for c in changes:
        assert isinstance(c, AddressChange)
        assert not set(c.removed) & set(c.added)
        assert set(c.added) <= {b.address for b in c.addresses}
    changed = apply_changes(small, changes)
    addresses = _addresses(changed)
    assert len(addresses) == len(set(addresses))
    assert not set(addresses) & {b.address for u in small.users for b in u.sessions}


def test_small_and_degenerate_sizes() -> None:
    empty = generate_estate(0, workloads=0, policies=0, enforcers=0, users=0)
    assert empty.workloads == ()
    assert empty.policies == ()
    tiny = generate_estate(0, workloads=3, policies=5, enforcers=10, apps=1, users=1)
    assert len(tiny.workloads) == 3
    assert len(tiny.policies) == 5
    assert len(tiny.enforcers()) == 3
    with pytest.raises(ValueError, match="address plan"):
        generate_estate(0, workloads=90_000, enforcers=10)
