"""``septum test`` engine: flow assertions, never/always invariants, and the key property:
deciding invariants over classes gives exactly the brute-force answer."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.engine.assertions import (
    AssertionKind,
    AssertionReport,
    _InvariantContext,
    _run_invariant,
    _run_invariant_blocks,
    run_assertions,
)
from septum.engine.classes import build_partition
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.model.resources import (
    Assertion,
    Expect,
    FlowAssertion,
    Invariant,
    InvariantKind,
    IPAddress,
    Mode,
    Protocol,
    Repository,
)
from septum.model.selector import parse_selector
from septum.testing.builders import (
    T0,
    cidr,
    network,
    parse_port,
    policy,
    repo,
    rule,
    tier,
    user,
    workload,
)
from septum.testing.builders import (
    settings as repo_settings,
)
from septum.testing.strategies import PORT_SPACE, invariants, repositories, with_invariants


def inv(kind: str, source: str, target: str, *ports: str) -> Invariant:
    return Invariant(
        InvariantKind(kind),
        parse_selector(source),
        parse_selector(target),
        tuple(parse_port(p) for p in ports),
    )


def check(name: str, c: Invariant | FlowAssertion) -> Assertion:
    return Assertion(name, c)


def fa(src: str, dst: str, port: str, expect: str, **kw: object) -> FlowAssertion:
    return FlowAssertion(src, dst, parse_port(port), Expect(expect), **kw)  # type: ignore[arg-type]


def shop(*extra: object) -> Repository:
    """web -> db on tcp/5432 only; dev isolated from prod by a deny in a security tier."""
    return repo(
        tier("security", 10, "pass"),
        tier("app", 20),
        workload("web-1", "198.18.0.1", app="web", env="prod"),
        workload("web-2", "198.18.0.2", app="web", env="prod"),
        workload("db-1", "198.18.0.3", app="db", env="prod"),
        workload("dev-1", "198.18.0.4", app="web", env="dev"),
        policy("isolate", "security", ingress=[rule("deny", 'env == "dev"')],
               applies_to='env == "prod"'),
        policy("db", "app", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])], egress=[]),
        policy("web", "app", applies_to='app == "web"', egress=[rule("allow")],
               ingress=[rule("allow", 'app == "web"', ports=["tcp/443"])]),
        *extra,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- flow assertions


def test_flow_assertion_pass_and_fail_with_counterexample() -> None:
    r = shop(
        check("web-db", fa("web-1", "db-1", "tcp/5432", "allow")),
        check("web-db-ssh", fa("web-1", "198.18.0.3", "tcp/22", "allow")),
        check("dev-db", fa("dev-1", "db-1", "tcp/5432", "deny")),
    )
    report = run_assertions(r, T0)
    by_name = {x.name: x for x in report.results}
    assert by_name["web-db"].passed
    assert by_name["web-db"].actual is Verdict.ALLOW
    assert by_name["dev-db"].passed
    failed = by_name["web-db-ssh"]
    assert not failed.passed
    assert failed.kind is AssertionKind.FLOW
    assert failed.flows_evaluated == 1
    assert failed.expected is Verdict.ALLOW
    assert failed.actual is Verdict.DENY
    ce = failed.counterexample
    assert ce is not None
    assert ce.flow == Flow(ip_address("198.18.0.1"), ip_address("198.18.0.3"), Protocol.TCP, 22,
                           T0)
    assert (ce.source_name, ce.target_name) == ("web-1", "db-1")
    assert ce.explanation.verdict is Verdict.DENY
    assert report.failures == (failed,)
    assert not report.passed


def test_flow_assertion_uses_its_own_time_and_address_valid_then() -> None:
    later = T0 + timedelta(days=2)
    r = repo(
        tier("app", 1),
        workload("a", ("198.18.0.1", None, T0 + timedelta(days=1)),
                 ("198.18.0.9", T0 + timedelta(days=1), None), app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("b", "app", applies_to='app == "b"',
               ingress=[rule("allow", 'app == "a"', ports=["tcp/80"],
                             expires=T0 + timedelta(days=1))]),
        repo_settings("allow"),
        check("now", fa("a", "b", "tcp/80", "allow")),
        check("later", fa("a", "b", "tcp/80", "deny", at=later)),
    )
    report = run_assertions(r, T0)
    assert report.passed, report.to_json()
    later_result = next(x for x in report.results if x.name == "later")
    assert later_result.counterexample is None
    # the address valid at the assertion's own time was used
    assert run_assertions(replace(r, assertions=(check("x", fa("a", "b", "tcp/80", "allow",
                                                                at=later)),)), T0) \
        .results[0].counterexample.flow.source == ip_address("198.18.0.9")  # type: ignore[union-attr]


def test_flow_assertion_icmp_and_literal_addresses() -> None:
    r = repo(
        tier("app", 1),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("b", "app", applies_to='app == "b"', ingress=[rule("allow", ports=["icmp"])]),
        repo_settings("allow"),
        check("ping", fa("198.18.0.1", "198.18.0.2", "icmp", "allow")),
        check("tcp", fa("198.18.0.1", "198.18.0.2", "tcp/1", "deny")),
    )
    assert run_assertions(r, T0).passed


@pytest.mark.parametrize(
    ("source", "target", "port", "message"),
    [
        ("nope", "b", "tcp/1", "neither a workload name nor an address"),
        ("a", "late", "tcp/1", "holds no address"),
        ("a", "b", "any", "one protocol"),
        ("a", "2001:db8::1", "tcp/1", "IP version"),
    ],
)
def test_flow_assertion_errors_fail_without_counterexample(
    source: str, target: str, port: str, message: str
) -> None:
    r = repo(
        workload("a", "198.18.0.1"),
        workload("b", "198.18.0.2"),
        workload("late", ("198.18.0.3", T0 + timedelta(days=1), None)),
        check("x", fa(source, target, port, "allow")),
    )
    result = run_assertions(r, T0).results[0]
    assert not result.passed
    assert result.error is not None
    assert message in result.error
    assert result.counterexample is None
    assert result.flows_evaluated == 0


def test_flow_assertion_effective_verdict_under_modes() -> None:
    """visibility mode: the policy denies but the packet is allowed (effective verdict)."""
    r = repo(
        tier("app", 1),
        workload("a", "198.18.0.1"),
        workload("b", "198.18.0.2", mode=Mode.VISIBILITY),
        policy("b", "app", ingress=[]),
        repo_settings("allow"),
        check("x", fa("a", "b", "tcp/1", "allow")),
    )
    assert run_assertions(r, T0).passed


# ---------------------------------------------------------------------------------- invariants


def test_never_passes_and_fails_with_counterexample() -> None:
    r = shop(
        check("dev-prod", inv("never", 'env == "dev"', 'env == "prod"')),
        check("web-db-ssh", inv("never", 'app == "web"', 'app == "db"', "tcp/22")),
        check("web-db", inv("never", 'app == "web"', 'app == "db"')),
    )
    report = run_assertions(r, T0)
    res = {x.name: x for x in report.results}
    assert res["dev-prod"].passed
    assert res["dev-prod"].kind is AssertionKind.NEVER
    assert res["dev-prod"].flows_evaluated > 0
    assert res["web-db-ssh"].passed
    failed = res["web-db"]
    assert not failed.passed
    ce = failed.counterexample
    assert ce is not None
    assert ce.explanation.verdict is Verdict.ALLOW
    assert ce.flow.protocol is Protocol.TCP
    assert ce.flow.port == 5432
    assert ce.source_name in {"web-1", "web-2"}
    assert ce.target_name == "db-1"
    assert ce.explanation.sides  # causes are there
    json.dumps(report.to_json())


def test_always_passes_and_fails() -> None:
    r = shop(
        check("web-db-pg", inv("always", 'env == "prod" && app == "web"', 'app == "db"',
                               "tcp/5432")),
        check("web-db-all", inv("always", 'app == "web"', 'app == "db"', "tcp/5432")),
    )
    res = {x.name: x for x in run_assertions(r, T0).results}
    assert res["web-db-pg"].passed
    assert res["web-db-pg"].kind is AssertionKind.ALWAYS
    failed = res["web-db-all"]
    assert not failed.passed
    assert failed.counterexample is not None
    assert failed.counterexample.source_name == "dev-1"
    assert failed.counterexample.explanation.verdict is Verdict.DENY


def test_same_class_needs_two_distinct_workloads() -> None:
    lone = repo(
        tier("app", 1),
        workload("solo", "198.18.0.1", "198.18.0.9", app="web"),
        workload("other", "198.18.0.2", app="db"),
        policy("deny-all", "app", ingress=[], egress=[]),
        check("web-web", inv("always", 'app == "web"', 'app == "web"')),
    )
    # one workload with two addresses talking to itself is not a flow that counts
    result = run_assertions(lone, T0).results[0]
    assert result.passed
    assert result.flows_evaluated == 0
    pair = repo(
        *lone.workloads, *lone.tiers, *lone.policies,
        workload("solo-2", "198.18.0.3", app="web"),
        check("web-web", inv("always", 'app == "web"', 'app == "web"')),
    )
    result = run_assertions(pair, T0).results[0]
    assert not result.passed
    ce = result.counterexample
    assert ce is not None
    assert ce.source_name != ce.target_name
    assert {ce.source_name, ce.target_name} == {"solo", "solo-2"}


def test_network_targets_and_held_addresses() -> None:
    r = repo(
        tier("app", 1),
        workload("web", "198.18.0.1", app="web"),
        workload("squatter", "198.19.0.0"),  # holds the lowest address of the network
        network("internet", "198.19.0.0/29", excepts=["198.19.0.4/30"], zone="internet"),
        policy("web", "app", applies_to='app == "web"',
               egress=[rule("allow", cidr("198.19.0.2/31"), ports=["tcp/443"])]),
        check("no-egress", inv("never", 'app == "web"', 'zone == "internet"')),
        check("reach-443", inv("always", 'app == "web"', 'zone == "internet"', "tcp/443")),
    )
    res = {x.name: x for x in run_assertions(r, T0).results}
    failed = res["no-egress"]
    assert not failed.passed
    ce = failed.counterexample
    assert ce is not None
    assert ce.target_name == "internet"
    assert ce.flow.destination in IPv4Network("198.19.0.2/31")
    failed = res["reach-443"]
    assert not failed.passed
    ce = failed.counterexample
    assert ce is not None
    # the lowest free address (198.19.0.0 is held by a workload, so not a network endpoint)
    assert ce.flow.destination == ip_address("198.19.0.1")


def test_network_to_network_pairs_need_two_addresses() -> None:
    r = repo(
        workload("w", "198.18.0.1"),
        network("one", "198.19.0.7/32", zone="z"),
        check("one-one", inv("never", 'zone == "z"', 'zone == "z"')),
    )
    assert run_assertions(r, T0).results[0].passed  # a single address: no pair
    r2 = replace(r, networks=(network("two", "198.19.0.6/31", zone="z"),))
    result = run_assertions(r2, T0).results[0]
    assert not result.passed  # nobody evaluates network-to-network traffic: allowed
    ce = result.counterexample
    assert ce is not None
    assert ce.flow.source != ce.flow.destination


def test_ipv6_and_icmpv6() -> None:
    r = repo(
        tier("app", 1),
        workload("a", "2001:db8::1", "198.18.0.1", app="a"),
        workload("b", "2001:db8::2", app="b"),
        policy("b", "app", applies_to='app == "b"', ingress=[rule("allow", ports=["icmpv6"])]),
        repo_settings("allow"),
        check("ping6", inv("always", 'app == "a"', 'app == "b"', "icmpv6")),
        check("no-ping4", inv("never", 'app == "a"', 'app == "b"', "icmp")),
        check("no-tcp", inv("never", 'app == "a"', 'app == "b"', "tcp", "udp")),
    )
    report = run_assertions(r, T0)
    assert report.passed, report.to_json()
    assert {x.name: x.flows_evaluated for x in report.results}["no-ping4"] == 0


def test_user_sessions_are_not_network_endpoints() -> None:
    r = repo(
        workload("w", "198.18.0.1", app="w"),
        network("net", "198.19.0.0/31", zone="z"),
        user("alice", "198.19.0.0"),
        policy("deny", "t", applies_to="all()", egress=[rule("deny", cidr("198.19.0.0/32"))]),
        tier("t", 1, "pass"),
        repo_settings("allow"),
        check("reach", inv("always", 'app == "w"', 'zone == "z"')),
    )
    assert run_assertions(r, T0).results[0].passed


def test_report_json_shape() -> None:
    r = shop(check("dev-prod", inv("never", 'env == "dev"', 'env == "prod"')),
             check("f", fa("web-1", "db-1", "tcp/22", "allow")))
    report = run_assertions(r, T0, Evaluator(r))
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"at", "passed", "total", "failed", "flows_evaluated", "results"}
    assert data["total"] == 2
    assert data["failed"] == 1
    assert data["passed"] is False
    results = data["results"]
    assert isinstance(results, list)
    ce = results[1]["counterexample"]
    assert set(ce) == {"flow", "source", "target", "verdict", "summary", "explanation"}
    assert results[0]["classes"]["source"] >= 1


def test_empty_report_passes() -> None:
    report = run_assertions(repo(), T0)
    assert report.passed
    assert report.failures == ()
    assert report.to_json()["total"] == 0
    assert isinstance(report, AssertionReport)


def test_scale_10k_workloads_1k_policies() -> None:
    """Invariants are decided over classes: 10k workloads and 1k policies stay fast."""
    apps = [f"app{i}" for i in range(50)]
    workloads = [
        workload(f"w{i}", f"198.18.{i // 250}.{i % 250 + 1}", app=apps[i % 50],
                 env=("prod", "dev")[i % 2])
        for i in range(10_000)
    ]
    policies = [
        policy(f"p{i}", "app", applies_to=f'app == "{apps[i % 50]}"', order=i,
               ingress=[rule("allow", f'app == "{apps[(i + 1) % 50]}"',
                             ports=[f"tcp/{1000 + i}"])],
               egress=[rule("allow")])
        for i in range(1000)
    ]
    r = repo(
        tier("security", 1, "pass"), tier("app", 2),
        policy("iso", "security", applies_to='env == "prod"',
               ingress=[rule("deny", 'env == "dev"')]),
        *workloads, *policies,
        check("dev-prod", inv("never", 'env == "dev"', 'env == "prod"', "tcp/1000-1010")),
        check("app2-app1", inv("never", 'app == "app2"', 'app == "app1"')),
    )
    report = run_assertions(r, T0)  # timing lives in bench/compile.py, not in a pass/fail test
    failed, passed = report.results  # sorted by name
    assert passed.passed
    assert passed.source_classes == 25
    assert passed.target_classes == 25
    # side decomposition: (group, view) cells per direction, never one per pair of classes
    assert 0 < passed.blocks < 25 * 25
    assert passed.flows_evaluated < 25 * 25
    assert not failed.passed
    assert failed.counterexample is not None
    assert failed.counterexample.flow.port == 1001


# ---------------------------------------------------------------------- brute-force property

_PORTS = {
    Protocol.TCP: (*range(PORT_SPACE + 2), 65535),
    Protocol.UDP: (*range(PORT_SPACE + 2), 65535),
    Protocol.SCTP: (1, 65535),
    Protocol.ICMP: (0,),
    Protocol.ICMPV6: (0,),
}


def _endpoints(r: Repository) -> list[tuple[IPAddress, str, list[object]]]:
    """Every endpoint at T0: (address, identity, labels of what it is attributed to)."""
    held = {b.address for w in r.workloads for b in w.addresses if b.valid_at(T0)}
    held |= {b.address for u in r.users for b in u.sessions if b.valid_at(T0)}
    out: list[tuple[IPAddress, str, list[object]]] = [
        (b.address, f"w:{w.name}", [w.labels])
        for w in r.workloads for b in w.addresses if b.valid_at(T0)
    ]
    seen: set[IPAddress] = set()
    for n in r.networks:
        for c in n.cidrs:
            for a in c:
                if a in held or a in seen:
                    continue
                seen.add(a)
                containing = [m.labels for m in r.networks if m.contains(a)]
                if containing:
                    out.append((a, f"a:{a}", list(containing)))
    return out


def brute_force(r: Repository, invariant: Invariant, ev: Evaluator) -> bool:
    """Whether the invariant holds, by explaining every pair of distinct endpoints and every
    protocol and port that can make a difference."""
    eps = _endpoints(r)

    def selected(sel: object, labels: list[object]) -> bool:
        return any(sel.matches(lbl) for lbl in labels)  # type: ignore[attr-defined]

    sources = [e for e in eps if selected(invariant.source, e[2])]
    targets = [e for e in eps if selected(invariant.target, e[2])]
    never = invariant.kind is InvariantKind.NEVER
    for s_addr, s_id, _ in sources:
        for t_addr, t_id, _ in targets:
            if s_id == t_id or s_addr.version != t_addr.version:
                continue
            icmp = Protocol.ICMP if s_addr.version == 4 else Protocol.ICMPV6
            for protocol in (Protocol.TCP, Protocol.UDP, Protocol.SCTP, icmp):
                for port in _PORTS[protocol]:
                    if invariant.services and not any(
                        sp.matches(protocol, port) for sp in invariant.services
                    ):
                        continue
                    verdict = ev.explain(Flow(s_addr, t_addr, protocol, port, T0)).verdict
                    if (verdict is Verdict.ALLOW) is never:
                        return False
    return True


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories(), st.lists(invariants(), min_size=1, max_size=3))
def test_invariants_agree_with_brute_force(base: Repository, checks: list[Invariant]) -> None:
    r = with_invariants(base, checks)
    ev = Evaluator(r)
    report = run_assertions(r, T0, ev)
    for invariant, result in zip(checks, report.results, strict=True):
        expected = brute_force(r, invariant, ev)
        assert result.passed is expected, (invariant, result.to_json())
        if not result.passed:
            ce = result.counterexample
            assert ce is not None
            flow = ce.flow
            assert flow.source != flow.destination
            again = ev.explain(flow)
            assert again.verdict is ce.explanation.verdict
            assert (again.verdict is Verdict.ALLOW) is (invariant.kind is InvariantKind.NEVER)
            assert not again.self_traffic
            src_labels = [again.source.labels] if again.source.workload else [
                n.labels for n in again.source.networks]
            dst_labels = [again.destination.labels] if again.destination.workload else [
                n.labels for n in again.destination.networks]
            assert any(invariant.source.matches(x) for x in src_labels)
            assert any(invariant.target.matches(x) for x in dst_labels)
            if invariant.services:
                assert any(sp.matches(flow.protocol, flow.port) for sp in invariant.services)


def test_ipv6_network_brute_force_smoke() -> None:
    """The oracle itself sees IPv6 network addresses."""
    r = repo(network("n", "2001:db8:1::/126", zone="x"), workload("w", "2001:db8::1"))
    eps = _endpoints(r)
    assert sum(1 for e in eps if e[0] in IPv6Network("2001:db8:1::/126")) == 4


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories(), st.lists(invariants(), min_size=1, max_size=3))
def test_side_decomposition_agrees_with_block_reference(
    base: Repository, checks: list[Invariant]
) -> None:
    """The side-decomposition checker, the block-based reference and brute force agree."""
    r = with_invariants(base, checks)
    ev = Evaluator(r)
    selectors = [s for c in checks for s in (c.source, c.target)]
    ctx = _InvariantContext(
        r, build_partition(r, T0, selectors, selectors), {w.name: w for w in r.workloads}
    )
    for assertion, invariant in zip(r.assertions, checks, strict=True):
        fast = _run_invariant(assertion, invariant, ctx, T0, ev)
        reference = _run_invariant_blocks(assertion, invariant, ctx, T0, ev)
        assert fast.passed is reference.passed, (invariant, fast.to_json(), reference.to_json())
        assert fast.passed is brute_force(r, invariant, ev), invariant
        if fast.counterexample is not None:
            again = ev.explain(fast.counterexample.flow)
            assert (again.verdict is Verdict.ALLOW) is (invariant.kind is InvariantKind.NEVER)


def test_side_decomposition_skips_pairs_denied_at_egress() -> None:
    """dev -> prod is denied at egress by one policy: the egress side decides for every
    target view at once, and no ingress side of a prod workload is ever evaluated."""
    r = repo(
        tier("security", 1, "pass"),
        tier("app", 2),
        *(workload(f"d{i}", f"198.18.0.{i + 1}", app=f"a{i}", env="dev") for i in range(20)),
        *(workload(f"p{i}", f"198.18.1.{i + 1}", app=f"a{i}", env="prod") for i in range(20)),
        policy("iso", "security", applies_to='env == "dev"',
               egress=[rule("deny", 'env == "prod"'), rule("pass")]),
        *(policy(f"a{i}", "app", applies_to=f'app == "a{i}"',
                 ingress=[rule("allow", ports=[f"tcp/{1000 + i}"])], egress=[rule("allow")])
          for i in range(20)),
        check("dev-prod", inv("never", 'env == "dev"', 'env == "prod"')),
    )
    result = run_assertions(r, T0).results[0]
    assert result.passed
    assert result.source_classes == 20
    assert result.target_classes == 20
    # one egress group per dev app, each with one view of the prod targets; no ingress
    assert result.blocks == 20
    # one side program run per (group, view) cell: all port intervals at once
    assert result.flows_evaluated == 20
