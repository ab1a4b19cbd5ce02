"""Least-privilege recommendation from observed flows (septum.engine.recommend).

Flow groups are built directly, their identities filled by the Attributor, like a store
would. Every proposal is checked by evaluation, and its YAML is loaded back by the parser.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from ipaddress import ip_address

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from septum.engine.attribution import Attributor
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.engine.observed import FlowGroup, Identity, RecordedVerdict
from septum.engine.recommend import (
    OutlierReason,
    Recommendation,
    RecommendError,
    RecommendOptions,
    TierReason,
    recommend,
)
from septum.errors import SeptumError
from septum.model.dump import repository_yaml
from septum.model.parse import parse_documents
from septum.model.resources import (
    NAME_LABEL,
    Direction,
    Policy,
    Protocol,
    Repository,
    Workload,
)
from septum.model.selector import parse_selector
from septum.sources.yamldoc import parse_yaml
from septum.testing.builders import (
    T0,
    flow,
    network,
    policy,
    repo,
    rule,
    service,
    tier,
    user,
    workload,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# ------------------------------------------------------------------------------- helpers


def _group(
    r: Repository,
    src: str,
    dst: str,
    svc: str = "tcp/443",
    records: int = 10,
    *,
    at: datetime = T0,
    denied: int = 0,
) -> FlowGroup:
    """A flow group attributed like a store would, over one hour from ``at``."""
    att = Attributor(r)
    f = flow(src, dst, svc, at)

    def ident(addr: str) -> Identity:
        e = att.attribute(ip_address(addr), at)
        return Identity(e.kind, e.name, e.labels)

    verdicts = {RecordedVerdict.ALLOWED: records - denied}
    if denied:
        verdicts[RecordedVerdict.DENIED] = denied
    return FlowGroup(
        f.source, f.destination, f.protocol, f.port, at, at + HOUR,
        records, records, records * 20, records * 1500, ident(src), ident(dst), verdicts,
    )  # fmt: skip


def _options(
    scope: str = "all()", granularity: Sequence[str] = ("app", "env"), **kw: object
) -> RecommendOptions:
    return RecommendOptions(parse_selector(scope), tuple(granularity), T0, **kw)  # type: ignore[arg-type]


def _load(rec: Recommendation, r: Repository) -> Repository:
    """The repository dumped without the replaced policies, plus the proposal's YAML, loaded
    by the parser: must validate with no problems."""
    names = {p.policy.name for p in rec.policies}
    base = Repository(
        workloads=r.workloads, networks=r.networks, services=r.services, segments=r.segments,
        tiers=r.tiers, policies=tuple(p for p in r.policies if p.name not in names),
        users=r.users, user_groups=r.user_groups, settings=r.settings,
    )  # fmt: skip
    docs = []
    for i, text in enumerate((repository_yaml(base), rec.to_yaml())):
        parsed = parse_yaml(text, f"f{i}.yaml")
        assert parsed.problems == []
        docs.extend(parsed.documents)
    return parse_documents(docs)


def _policies(rec: Recommendation) -> dict[str, Policy]:
    return {p.policy.name: p.policy for p in rec.policies}


def _peers(p: Policy, direction: Direction, index: int) -> list[str]:
    rules = p.rules(direction)
    assert rules is not None
    return [str(x) for x in rules[index].peers]


def _ports(p: Policy, direction: Direction, index: int) -> list[str]:
    rules = p.rules(direction)
    assert rules is not None
    return [str(s) for s in rules[index].services]


def _side_allows(ev: Evaluator, w: Workload, direction: Direction, g: FlowGroup) -> bool:
    f = Flow(g.source, g.destination, g.protocol, g.port, g.first_seen)
    return ev.side_decision(w, direction, f).verdict is Verdict.ALLOW


def _allowed_at_scoped_sides(rec: Recommendation, r: Repository, groups: Iterable[FlowGroup],
                             scope: str) -> dict[FlowGroup, bool]:  # fmt: skip
    """Per group, whether every in-scope side allows it on ``r`` with the proposal."""
    ev = Evaluator(rec.apply_to(r))
    sel = parse_selector(scope)
    out: dict[FlowGroup, bool] = {}
    for g in groups:
        expl = ev.explain(Flow(g.source, g.destination, g.protocol, g.port, g.first_seen))
        ok = True
        for side in expl.sides:
            w = r.workload(side.workload)
            assert w is not None
            if sel.matches(w.labels):
                ok = ok and side.verdict is Verdict.ALLOW
        out[g] = ok
    return out


# ---------------------------------------------------------------- a three-tier application


def _shop() -> Repository:
    return repo(
        workload("lb-1", "198.18.0.1", app="lb", env="prod"),
        workload("web-1", "198.18.1.1", app="web", env="prod"),
        workload("web-2", "198.18.1.2", app="web", env="prod"),
        workload("api-1", "198.18.2.1", app="api", env="prod"),
        workload("api-2", "198.18.2.2", app="api", env="prod"),
        workload("db-1", "198.18.3.1", app="db", env="prod"),
        workload("mon-1", "198.18.4.1", app="mon", env="ops"),
        user("alice", ("198.19.0.10", T0 - DAY, T0 + DAY), role="dba"),
        user("bob", ("198.19.0.11", T0 - DAY, T0 + DAY), role="dba"),
        network("partners", "203.0.113.0/24", zone="partner"),
    )


def _shop_groups(r: Repository) -> list[FlowGroup]:
    g = [
        _group(r, "198.18.0.1", "198.18.1.1", "tcp/8080", 100),
        _group(r, "198.18.0.1", "198.18.1.2", "tcp/8080", 90, at=T0 + HOUR),
        _group(r, "198.18.1.1", "198.18.2.1", "tcp/9000", 50),
        _group(r, "198.18.1.2", "198.18.2.2", "tcp/9000", 40),
        _group(r, "198.18.2.1", "198.18.3.1", "tcp/5432", 30),
        _group(r, "198.18.2.2", "198.18.3.1", "tcp/5432", 20),
        _group(r, "198.19.0.10", "198.18.3.1", "tcp/5432", 3),  # alice, a dba
        _group(r, "198.19.0.11", "198.18.3.1", "tcp/5432", 2),  # bob, a dba
        _group(r, "198.18.2.1", "203.0.113.7", "tcp/443", 12),  # a partner network
        _group(r, "192.0.2.10", "198.18.0.1", "tcp/443", 7),  # unknown internet clients
        _group(r, "192.0.2.11", "198.18.0.1", "tcp/443", 7),
        _group(r, "198.18.4.1", "198.18.2.1", "tcp/9100", 5),  # monitoring, out of scope
    ]
    return g


def test_three_tier_application_with_externals_and_users() -> None:
    r = _shop()
    groups = _shop_groups(r)
    rec = recommend(r, groups, _options('env == "prod"', granularity=("app", "env", "role")))
    pols = _policies(rec)
    assert sorted(pols) == ["rec-api-prod", "rec-db-prod", "rec-lb-prod", "rec-web-prod"]
    assert rec.tier.reason is TierReason.NEW_TIER
    assert rec.tier.created is not None
    assert rec.tier.name == "recommended"

    db = pols["rec-db-prod"]
    assert db.applies_to.text == '!has(role) && app == "db" && env == "prod"'
    assert db.egress == ()  # protected: nothing observed, nothing allowed
    assert _peers(db, Direction.INGRESS, 0) == [
        '!has(role) && app == "api" && env == "prod"',
        'users:!has(app) && !has(env) && role == "dba"',
    ]
    assert _ports(db, Direction.INGRESS, 0) == ["tcp/5432"]
    support = rec.policy("rec-db-prod")
    assert support is not None
    s = support.ingress[0]
    assert (s.records, s.groups) == (55, 4)
    assert s.first_seen == T0
    assert s.last_seen == T0 + HOUR
    assert len(s.examples) == 3
    assert s.examples[0].records == 30
    assert s.describe() == "observed 55 flow records 2026-11-01T12:00Z..2026-11-01T13:00Z"

    lb = pols["rec-lb-prod"]
    assert _peers(lb, Direction.INGRESS, 0) == ["cidr:192.0.2.10/31"]  # exact, merged
    api = pols["rec-api-prod"]
    egress = api.egress
    assert egress is not None
    assert [str(p) for p in egress[0].peers] == ["network:partners"]
    # monitoring comes from outside the scope: still an observed dependency of api
    ingress = api.ingress
    assert ingress is not None
    assert len(ingress) == 2

    assert rec.coverage.records_share == 1.0
    assert rec.coverage.groups == len(groups)
    assert rec.outliers == ()
    allowed = _allowed_at_scoped_sides(rec, r, groups, 'env == "prod"')
    assert all(allowed.values())
    loaded = _load(rec, r)
    for p in rec.policies:
        assert next(q for q in loaded.policies if q.name == p.policy.name) == p.policy
    json.dumps(rec.to_json())


def test_proposal_is_deterministic_whatever_the_input_order() -> None:
    r = _shop()
    groups = _shop_groups(r)
    first = recommend(r, groups, _options())
    shuffled = list(groups)
    random.Random(4).shuffle(shuffled)
    assert recommend(r, shuffled, _options()).to_yaml() == first.to_yaml()


# ----------------------------------------------------------------------------- merging


def test_peers_with_equal_services_share_a_rule_and_services_merge() -> None:
    r = repo(
        workload("api-1", "198.18.2.1", app="api"),
        workload("web-1", "198.18.1.1", app="web"),
        workload("lb-1", "198.18.0.1", app="lb"),
        workload("mon-1", "198.18.4.1", app="mon"),
    )
    groups = [
        _group(r, "198.18.1.1", "198.18.2.1", "tcp/8443"),
        _group(r, "198.18.1.1", "198.18.2.1", "tcp/8080"),
        _group(r, "198.18.0.1", "198.18.2.1", "tcp/8080"),
        _group(r, "198.18.0.1", "198.18.2.1", "tcp/8443"),
        _group(r, "198.18.4.1", "198.18.2.1", "tcp/9100"),
    ]
    rec = recommend(r, groups, _options('app == "api"', granularity=("app",)))
    api = _policies(rec)["rec-api"]
    assert api.ingress is not None
    assert len(api.ingress) == 2
    assert _peers(api, Direction.INGRESS, 0) == ['app == "lb"', 'app == "web"']
    assert _ports(api, Direction.INGRESS, 0) == ["tcp/8080", "tcp/8443"]
    assert _peers(api, Direction.INGRESS, 1) == ['app == "mon"']
    assert _ports(api, Direction.INGRESS, 1) == ["tcp/9100"]


def test_groups_with_identical_rules_merge_into_one_policy_on_the_differing_key() -> None:
    r = repo(
        workload("api-p", "198.18.2.1", app="api", env="prod"),
        workload("api-s", "198.18.2.2", app="api", env="staging"),
        workload("db-p", "198.18.3.1", app="db", env="prod"),
        workload("web", "198.18.1.1", app="web", env="ci"),
    )
    groups = [
        _group(r, "198.18.1.1", "198.18.2.1", "tcp/8080"),
        _group(r, "198.18.1.1", "198.18.2.2", "tcp/8080"),
        _group(r, "198.18.1.1", "198.18.3.1", "tcp/8080"),
    ]
    rec = recommend(r, groups, _options('app in {"api", "db"}'))
    pols = _policies(rec)
    # greedy, key by key in granularity order: app first (api-prod + db-prod)
    assert sorted(pols) == ["rec-api-db-prod", "rec-api-staging"]
    merged = pols["rec-api-db-prod"]
    assert merged.applies_to.text == 'app in {"api", "db"} && env == "prod"'
    assert _peers(merged, Direction.INGRESS, 0) == ['app == "web" && env == "ci"']
    support = rec.policy("rec-api-db-prod")
    assert support is not None
    assert support.ingress[0].records == 20
    # by env first instead: api-prod + api-staging
    rec = recommend(r, groups, _options('app in {"api", "db"}', ("env", "app")))
    assert sorted(_policies(rec)) == ["rec-prod-db", "rec-prod-staging-api"]
    assert rec.coverage.records_share == 1.0


def test_single_value_granularity() -> None:
    r = _shop()
    rec = recommend(r, _shop_groups(r), _options('env == "prod"', granularity=("app",)))
    pols = _policies(rec)
    assert pols["rec-db"].applies_to.text == 'app == "db" && env == "prod"'
    assert _peers(pols["rec-db"], Direction.INGRESS, 0) == [
        'app == "api"', 'users:septum.io/name == "alice"', 'users:septum.io/name == "bob"'
    ]  # fmt: skip
    assert any("user alice" in n for n in rec.notes)


def test_workloads_without_the_keys() -> None:
    r = repo(
        workload("bare", "198.18.5.1"),
        workload("half", "198.18.5.2", app="api"),
        workload("full", "198.18.5.3", app="api", env="prod"),
    )
    groups = [
        _group(r, "198.18.5.1", "198.18.5.2", "tcp/80"),
        _group(r, "198.18.5.1", "198.18.5.3", "tcp/81"),
    ]
    rec = recommend(r, groups, _options())
    pols = _policies(rec)
    assert set(pols) == {"rec-bare", "rec-api", "rec-api-prod"}
    assert pols["rec-bare"].applies_to.text == f'{NAME_LABEL} == "bare"'
    half = pols["rec-api"]
    assert half.applies_to.text == '!has(env) && app == "api"'
    assert not half.applies_to.matches({"app": "api", "env": "prod"})  # never the finer group
    assert _peers(half, Direction.INGRESS, 0) == [f'{NAME_LABEL} == "bare"']
    assert rec.notes == ("workload bare has none of the granularity keys app, env: generalised "
                         "to its name",)  # fmt: skip
    # tcp/81 from bare to half was never observed: not allowed
    ev = Evaluator(rec.apply_to(r))
    half_w = r.workload("half")
    assert half_w is not None
    assert not _side_allows(ev, half_w, Direction.INGRESS,
                            _group(r, "198.18.5.1", "198.18.5.2", "tcp/81"))  # fmt: skip
    _load(rec, r)


def test_unknown_addresses_become_exact_cidrs_ipv4_and_ipv6() -> None:
    r = repo(workload("api", "198.18.2.1", "2001:db8::1", app="api"))
    sources = ["2001:db8:ff::", "2001:db8:ff::1", "2001:db8:ff::2", "2001:db8:ff::3",
               "2001:db8:ff::5", "192.0.2.1", "192.0.2.2", "192.0.2.4", "192.0.2.5"]  # fmt: skip
    groups = [_group(r, s, "2001:db8::1" if ":" in s else "198.18.2.1", "tcp/443")
              for s in sources]  # fmt: skip
    rec = recommend(r, groups, _options(granularity=("app",)))
    api = _policies(rec)["rec-api"]
    assert _peers(api, Direction.INGRESS, 0) == [
        "cidr:192.0.2.1/32", "cidr:192.0.2.2/32", "cidr:192.0.2.4/31",  # never widened
        "cidr:2001:db8:ff::/126", "cidr:2001:db8:ff::5/128",
    ]  # fmt: skip
    covered = {ip_address(s) for s in sources}
    ingress = api.ingress
    assert ingress is not None
    for p in ingress[0].peers:
        assert p.cidr is not None
        assert set(p.cidr.hosts()) | {p.cidr.network_address, p.cidr.broadcast_address} <= covered
    _load(rec, r)


# ------------------------------------------------------------------------------ outliers


def test_min_records_outliers() -> None:
    r = _shop()
    groups = _shop_groups(r)
    rec = recommend(r, groups, _options('app == "db"', ("app", "env", "role"), min_records=5))
    below = [o for o in rec.outliers if o.reason is OutlierReason.BELOW_MIN_RECORDS]
    # alice and bob are one peer group (role dba, no app/env): 3 + 2 = 5 records: kept
    assert below == []
    rec = recommend(r, groups, _options('app == "db"', ("app", "env", "role"), min_records=6))
    below = [o for o in rec.outliers if o.reason is OutlierReason.BELOW_MIN_RECORDS]
    assert sorted(str(o.group.source) for o in below) == ["198.19.0.10", "198.19.0.11"]
    assert all(o.direction is Direction.INGRESS and o.workload == "db-1" for o in below)
    db = _policies(rec)["rec-db-prod"]
    assert _peers(db, Direction.INGRESS, 0) == ['!has(role) && app == "api" && env == "prod"']
    assert rec.coverage.records == 55
    assert rec.coverage.records_allowed == 50
    assert rec.coverage.non_outlier_records_share == 1.0
    with pytest.raises(RecommendError):
        recommend(r, groups, _options(min_records=0))


def test_recorded_denied_flows_are_attempts_never_proposed() -> None:
    r = _shop()
    attempt = _group(r, "198.18.1.1", "198.18.3.1", "tcp/5432", 4, denied=4)  # web -> db
    partly = _group(r, "198.18.2.1", "198.18.3.1", "tcp/5432", 10, denied=3)
    rec = recommend(r, [attempt, partly], _options('app == "db"'))
    assert [(o.reason, o.group) for o in rec.outliers] == [(OutlierReason.RECORDED_DENIED, attempt)]
    db = _policies(rec)["rec-db-prod"]
    assert _peers(db, Direction.INGRESS, 0) == ['app == "api" && env == "prod"']
    support = rec.policies[0].ingress[0]
    assert support.records == 7  # denied records are not support
    assert rec.coverage.attempts == 1
    assert rec.coverage.attempts_allowed == 0
    assert rec.coverage.records == 7


def test_self_traffic_and_unsupported_ports_are_outliers() -> None:
    r = _shop()
    own = _group(r, "198.18.2.1", "198.18.2.1", "tcp/80")
    base = _group(r, "198.18.1.1", "198.18.2.1", "tcp/80")
    bad = FlowGroup(base.source, base.destination, Protocol.TCP, 70000, T0, T0, 1, 1, 1, 1,
                    base.source_identity, base.destination_identity)  # fmt: skip
    rec = recommend(r, [own, bad], _options())
    assert [o.reason for o in rec.outliers] == [
        OutlierReason.UNSUPPORTED_PROTOCOL,
        OutlierReason.SELF,
    ]
    assert rec.policies == ()


def test_higher_tier_deny_blocks_a_service_and_coverage_is_computed() -> None:
    r0 = _shop()
    r = repo(
        *r0.workloads, *r0.users, *r0.networks,
        tier("security", 10, "pass"),
        tier("app", 100),
        policy("no-ssh", "security", ingress=[rule("deny", ports=["tcp/22"])]),
    )  # fmt: skip
    groups = [
        _group(r, "198.18.2.1", "198.18.3.1", "tcp/5432", 30),
        _group(r, "198.18.2.1", "198.18.3.1", "tcp/22", 10),
    ]
    rec = recommend(r, groups, _options('app == "db"'))
    assert rec.tier.name == "app"
    assert rec.tier.reason is TierReason.DEFAULT_DENY
    assert [(o.reason, o.group.port) for o in rec.outliers] == [
        (OutlierReason.BLOCKED_BY_HIGHER_TIER, 22)
    ]
    assert "tier security, policy no-ssh" in rec.outliers[0].detail
    assert rec.coverage.records == 40
    assert rec.coverage.records_allowed == 30
    assert rec.coverage.records_share == 0.75
    assert rec.coverage.non_outlier_records_share == 1.0
    db = _policies(rec)["rec-db-prod"]
    assert _ports(db, Direction.INGRESS, 0) == ["tcp/5432"]  # left out, not proposed


def test_earlier_policy_in_the_same_tier_blocks() -> None:
    r0 = _shop()
    r = repo(
        *r0.workloads,
        tier("app", 100),
        policy("guard", "app", order=1, applies_to='app == "db"',
               ingress=[rule("deny", 'app == "api"', ports=["tcp/22"])]),
    )  # fmt: skip
    groups = [_group(r, "198.18.2.1", "198.18.3.1", "tcp/22", 10),
              _group(r, "198.18.2.1", "198.18.3.1", "tcp/5432", 10)]  # fmt: skip
    rec = recommend(r, groups, _options('app == "db"'))
    assert rec.tier.reason is TierReason.HOLDS_SCOPE_POLICIES
    assert [o.reason for o in rec.outliers] == [OutlierReason.BLOCKED_BY_EARLIER_POLICY]
    assert rec.policies[0].policy.order == 11  # after the tier's existing policies


# ---------------------------------------------------------------------------------- tiers


def test_tier_choice() -> None:
    r0 = _shop()
    ws = r0.workloads
    g = [_group(r0, "198.18.2.1", "198.18.3.1", "tcp/5432")]
    both = repo(*ws, tier("base", 10), tier("late", 200), tier("pass", 300, "pass"),
                policy("db", "base", order=50, applies_to='app == "db"', ingress=[]))  # fmt: skip
    rec = recommend(both, g, _options('app == "db"'))
    assert (rec.tier.name, rec.tier.reason) == ("base", TierReason.HOLDS_SCOPE_POLICIES)
    assert rec.policies[0].policy.order == 60
    rec = recommend(both, g, _options('app == "api"'))
    assert (rec.tier.name, rec.tier.reason) == ("late", TierReason.DEFAULT_DENY)
    rec = recommend(both, g, _options('app == "db"', tier="pass"))
    assert (rec.tier.name, rec.tier.reason) == ("pass", TierReason.REQUESTED)
    with pytest.raises(RecommendError, match="'nope'") as info:
        recommend(both, g, _options(tier="nope"))
    assert isinstance(info.value, SeptumError)
    only_pass = repo(*ws, tier("pass", 300, "pass"), tier("recommended", 5, "pass"))
    rec = recommend(only_pass, g, _options())
    assert rec.tier.reason is TierReason.NEW_TIER
    assert rec.tier.created is not None
    assert rec.tier.name == "recommended-2"
    assert rec.tier.created.order > 300
    docs = rec.to_documents()
    assert [d["kind"] for d in docs] == ["Tier", "Policy", "Policy"]
    _load(rec, only_pass)


def test_existing_service_is_referenced_by_name() -> None:
    r0 = _shop()
    r = repo(*r0.workloads, service("postgres", "tcp/5432"), service("web", "tcp/80", "tcp/443"))
    rec = recommend(r, [_group(r, "198.18.2.1", "198.18.3.1", "tcp/5432")], _options())
    db = _policies(rec)["rec-db-prod"]
    ingress = db.ingress
    assert ingress is not None
    assert ingress[0].service_refs == ("postgres",)
    assert "services: [postgres]" in rec.to_yaml()
    loaded = _load(rec, r)
    assert next(p for p in loaded.policies if p.name == "rec-db-prod") == db


# ----------------------------------------------------------------------------- refinement


def _parsed(rec: Recommendation, r: Repository) -> tuple[Policy, ...]:
    loaded = _load(rec, r)
    names = {p.policy.name for p in rec.policies}
    return tuple(p for p in loaded.policies if p.name in names)


def test_refinement_keeps_names_and_rules_and_only_adds() -> None:
    r = _shop()
    d2 = [
        *_shop_groups(r),
        _group(r, "198.18.0.1", "198.18.1.1", "tcp/8443", 5),  # lb -> web, new port
        _group(r, "198.18.4.1", "198.18.3.1", "tcp/5432", 5),  # mon -> db, new peer
        _group(r, "192.0.2.12", "198.18.0.1", "tcp/443", 7),  # one more client
        _group(r, "198.18.0.1", "198.18.4.1", "udp/53", 7),  # lb -> mon (new egress)
    ]
    d1 = [g for g in d2 if g.port != 9000][:8]
    first = recommend(r, d1, _options('env == "prod"'))
    previous = _parsed(first, r)
    second = recommend(r, d2, _options('env == "prod"', previous=previous))
    assert second.tier.reason is TierReason.PREVIOUS
    old, new = _policies(first), _policies(second)
    assert set(old) <= set(new)
    for name, p in old.items():
        q = new[name]
        assert (q.applies_to, q.tier, q.order) == (p.applies_to, p.tier, p.order)
        for d in Direction:
            before, after = p.rules(d) or (), q.rules(d) or ()
            assert len(after) >= len(before)
            for a, b in zip(before, after, strict=False):
                assert set(a.peers) <= set(b.peers)
                assert set(a.services) <= set(b.services)
    # everything the first proposal allowed is still allowed
    allowed_first = _allowed_at_scoped_sides(first, r, d1, 'env == "prod"')
    allowed_second = _allowed_at_scoped_sides(second, r, d1, 'env == "prod"')
    assert all(allowed_second[g] for g, ok in allowed_first.items() if ok)
    assert second.coverage.records_share == 1.0
    web = new["rec-web-prod"]
    assert _ports(web, Direction.INGRESS, 0) == ["tcp/8080", "tcp/8443"]  # same peers: merged
    assert second.policy("rec-web-prod") is not None
    # the previous proposal, refined with no data at all: rules kept, flagged stale
    stale = recommend(r, [], _options('env == "prod"', previous=previous))
    assert _policies(stale) == {p.name: _stale(p) for p in previous}
    assert all(s.stale for p in stale.policies for d in Direction for s in p.support(d))
    _load(second, r)


def _stale(p: Policy) -> Policy:
    """``p`` with every rule described as kept without support."""
    text = "kept from the previous proposal: no flow records observed in this data"
    ingress = tuple(replace(r, description=text) for r in p.ingress or ())
    egress = tuple(replace(r, description=text) for r in p.egress or ())
    return replace(
        p,
        ingress=ingress if p.ingress is not None else None,
        egress=egress if p.egress is not None else None,
    )


# ----------------------------------------------------------------------- property: estates

APPS = ("a", "b", "c")
ENVS = ("p", "s")
PORTS = (80, 443, 5432, 8080)
EXTERNAL = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8:ff::1", "2001:db8:ff::2")


@st.composite
def estates(draw: st.DrawFn) -> tuple[Repository, list[FlowGroup], str, tuple[str, ...]]:
    n = draw(st.integers(2, 7))
    ws = []
    for i in range(n):
        labels: dict[str, str] = {}
        if draw(st.integers(0, 7)):
            labels["app"] = draw(st.sampled_from(APPS))
        if draw(st.booleans()):
            labels["env"] = draw(st.sampled_from(ENVS))
        ws.append(workload(f"w{i}", f"198.18.0.{i + 1}", labels=labels))
    roles = st.sampled_from(("dba", "dev"))
    us = [user(f"u{i}", (f"198.19.0.{i + 1}", T0 - DAY, T0 + DAY), role=draw(roles))
          for i in range(draw(st.integers(0, 2)))]  # fmt: skip
    r = repo(*ws, *us, network("partners", "203.0.113.0/24"))
    workload_addrs = [f"198.18.0.{i + 1}" for i in range(n)]
    sources = workload_addrs + [f"198.19.0.{i + 1}" for i in range(len(us))] + list(EXTERNAL)
    dests = [*workload_addrs, *workload_addrs, "203.0.113.5", *EXTERNAL[:2]]
    pick = st.tuples(st.sampled_from(sources), st.sampled_from(dests), st.sampled_from(PORTS),
                     st.integers(1, 5))  # fmt: skip
    picks = draw(st.lists(pick, min_size=1, max_size=25, unique_by=lambda t: t[:3]))
    groups = [
        _group(r, s, d, f"tcp/{p}", k) for s, d, p, k in picks
        if ip_address(s).version == ip_address(d).version
    ]  # fmt: skip
    scope = draw(st.sampled_from(("all()", 'app == "a"', 'env == "p"', "has(app)")))
    granularity = draw(st.sampled_from((("app", "env"), ("app",), ("env",), ("env", "app"))))
    return r, groups, scope, granularity


def _label_group(w: Workload, granularity: Sequence[str]) -> object:
    values = tuple(w.labels.get(k) for k in granularity)
    return values if any(v is not None for v in values) else w.name


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(estates())
def test_property_covers_observed_and_nothing_more(
    estate: tuple[Repository, list[FlowGroup], str, tuple[str, ...]],
) -> None:
    r, groups, scope, granularity = estate
    rec = recommend(r, groups, _options(scope, granularity))
    outlying = {o.group for o in rec.outliers}
    assert all(o.reason is OutlierReason.SELF for o in rec.outliers)
    allowed = _allowed_at_scoped_sides(rec, r, groups, scope)
    for g in groups:
        if g not in outlying:
            assert allowed[g], g
    assert rec.coverage.non_outlier_records_share == 1.0
    _load(rec, r)

    # least privilege: a (peer group, port) never observed towards a protected group
    sel = parse_selector(scope)
    by_addr = {str(b.address): w for w in r.workloads for b in w.addresses}
    observed: set[tuple[object, object, int]] = set()
    for g in groups:
        src, dst = by_addr.get(str(g.source)), by_addr.get(str(g.destination))
        if src is not None and dst is not None:
            observed.add((_label_group(src, granularity), _label_group(dst, granularity), g.port))
    protected = [w for w in r.workloads if sel.matches(w.labels)
                 and any(by_addr.get(str(g.destination)) == w for g in groups)]  # fmt: skip
    ev = Evaluator(rec.apply_to(r))
    # every never-observed (peer group, port) towards a protected group is denied; the
    # pairs are few, so all of them are checked rather than one drawn at random
    checked = 0
    for target in protected:
        for remote in r.workloads:
            for port in (*PORTS, 22):
                key = (_label_group(remote, granularity), _label_group(target, granularity), port)
                if remote.name == target.name or key in observed:
                    continue
                probe = Flow(remote.addresses[0].address, target.addresses[0].address,
                             Protocol.TCP, port, T0)  # fmt: skip
                decision = ev.side_decision(target, Direction.INGRESS, probe)
                assert decision.verdict is Verdict.DENY, (key, decision.describe())
                checked += 1
    event(f"least-privilege pairs checked: {min(checked, 50) // 10 * 10}+")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(estates(), st.data())
def test_property_refinement_is_a_superset(
    estate: tuple[Repository, list[FlowGroup], str, tuple[str, ...]], data: st.DataObject
) -> None:
    r, groups, scope, granularity = estate
    d1 = data.draw(st.lists(st.sampled_from(groups), unique=True)) if groups else []
    first = recommend(r, d1, _options(scope, granularity))
    previous = _parsed(first, r)
    second = recommend(r, groups, _options(scope, granularity, previous=previous))
    assert {p.policy.name for p in first.policies} <= {p.policy.name for p in second.policies}
    before = _allowed_at_scoped_sides(first, r, d1, scope)
    after = _allowed_at_scoped_sides(second, r, d1, scope)
    assert all(after[g] for g, ok in before.items() if ok)
    assert second.coverage.non_outlier_records_share == 1.0
    _load(second, r)
