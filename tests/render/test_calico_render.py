"""The Calico renderer: each mapping, each limitation, selector translation, schema validity.

Small repositories built with ``septum.testing.builders``; properties over
``septum.testing.strategies.repositories()``. Manifests are checked against the Calico CRD
schemas by ``septum.render.validate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.model.resources import (
    NAMESPACE_LABEL,
    Direction,
    Mode,
    PolicyMode,
    Repository,
    WorkloadKind,
)
from septum.model.selector import All, And, Compare, Expr, Has, Not, Op, Or, parse_selector
from septum.render.calico import (
    CALICO_NAMESPACE_LABEL,
    SOURCE_ANNOTATION,
    CalicoRenderSettings,
    calico_quote,
    calico_selector,
    render_calico,
)
from septum.render.manifests import Approximation, Limitation, Rendering
from septum.render.validate import validate_manifests
from septum.testing.builders import (
    T0,
    cidr,
    failsafe,
    net,
    network,
    policy,
    repo,
    rule,
    segment,
    segment_def,
    tier,
    user,
    users,
    workload,
)
from septum.testing.builders import settings as repo_settings
from septum.testing.strategies import repositories

POD = WorkloadKind.POD


# ------------------------------------------------------------------------------ helpers


def pod(name: str, address: str, mode: Mode = Mode.ENFORCED, **labels: str) -> Any:
    return workload(name, address, kind=POD, mode=mode, **labels)


def render(r: Repository, **kw: Any) -> Rendering:
    rendering = render_calico(r, T0, CalicoRenderSettings(**kw) if kw else None)
    assert validate_manifests(rendering.manifests) == []
    return rendering


def find(rendering: Rendering, kind: str, name: str) -> dict[str, Any]:
    found = [m for m in rendering.manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} not rendered once"
    return found[0]


def limits(rendering: Rendering, source: str) -> list[Limitation]:
    return [x for x in rendering.limitations if x.source == source]


def calico_rules(m: Mapping[str, Any], direction: str) -> list[dict[str, Any]]:
    return list(m["spec"].get(direction, []))


def stripped(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules without their provenance metadata."""
    return [{k: v for k, v in r.items() if k != "metadata"} for r in rules]


def annotated_sources(rendering: Rendering) -> Iterator[str]:
    for m in rendering.manifests:
        for direction in ("ingress", "egress"):
            for r in m.get("spec", {}).get(direction, []):
                yield r["metadata"]["annotations"][SOURCE_ANNOTATION]


BASIC = repo(
    tier("security", 10, "pass", owners=("secops",)),
    tier("app", 20),
    pod("web-1", "198.18.0.1", app="web"),
    pod("db-1", "198.18.0.2", app="db"),
    policy(
        "db",
        "app",
        order=5,
        applies_to='app == "db"',
        ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])],
    ),
    policy("web", "app", applies_to='app == "web"', egress=[]),
)


# ------------------------------------------------------------------------------ tiers


def test_apply_order_network_sets_then_tiers_then_policies() -> None:
    r = repo(*BASIC.tiers, *BASIC.workloads, *BASIC.policies, network("ext", "203.0.113.0/24"))
    kinds = [m["kind"] for m in render(r).manifests]
    assert kinds == sorted(kinds, key=["GlobalNetworkSet", "Tier", "GlobalNetworkPolicy"].index)


def test_tiers_follow_septum_order_with_default_actions_and_a_final_tier() -> None:
    out = render(BASIC)
    tiers = [m for m in out.manifests if m["kind"] == "Tier"]
    assert [t["metadata"]["name"] for t in tiers] == ["security", "app", "septum-default"]
    assert [t["spec"]["order"] for t in tiers] == [100, 110, 120]
    assert [t["spec"]["defaultAction"] for t in tiers] == ["Pass", "Deny", "Deny"]
    assert tiers[0]["metadata"]["annotations"]["septum.io/order"] == "10"
    assert tiers[0]["metadata"]["annotations"]["septum.io/owners"] == "secops"


def test_tier_order_ties_are_broken_by_name() -> None:
    r = repo(tier("b", 5), tier("a", 5), tier("c", 1))
    names = [m["metadata"]["name"] for m in render(r).manifests if m["kind"] == "Tier"]
    assert names == ["c", "a", "b", "septum-default"]


def test_reserved_and_dotted_tier_names_are_renamed() -> None:
    r = repo(tier("default", 1), tier("team.a", 2), policy("p", "team.a", ingress=[]))
    out = render(r)
    names = [m["metadata"]["name"] for m in out.manifests if m["kind"] == "Tier"]
    assert names[0].startswith("default-")
    assert names[1] == "team-a"
    assert find(out, "GlobalNetworkPolicy", "team-a.p")["spec"]["tier"] == "team-a"
    assert limits(out, "tier/default")
    assert limits(out, "tier/team.a")


def test_old_calico_passes_with_a_last_policy_instead_of_default_action() -> None:
    out = render(BASIC, calico_version=(3, 28))
    security = find(out, "Tier", "security")
    assert "defaultAction" not in security["spec"]
    catch_all = find(out, "GlobalNetworkPolicy", "security.septum-tier-default")
    assert stripped(calico_rules(catch_all, "ingress")) == [{"action": "Pass"}]
    assert stripped(calico_rules(catch_all, "egress")) == [{"action": "Pass"}]
    assert catch_all["spec"]["selector"] == "has(septum.io/kind)"
    assert [x.approximation for x in limits(out, "tier/security")] == [Approximation.REWRITTEN]


# ------------------------------------------------------------------------------ policies


def test_policy_name_order_selector_types_and_rules() -> None:
    out = render(BASIC)
    db = find(out, "GlobalNetworkPolicy", "app.db")
    assert db["spec"]["tier"] == "app"
    assert db["spec"]["order"] == 5
    assert db["spec"]["selector"] == 'app == "db" && has(septum.io/kind)'
    assert db["spec"]["types"] == ["Ingress"]
    assert stripped(calico_rules(db, "ingress")) == [
        {
            "action": "Allow",
            "protocol": "TCP",
            "source": {"selector": 'app == "web" && has(septum.io/kind)'},
            "destination": {"ports": [5432]},
        }
    ]
    assert calico_rules(db, "ingress")[0]["metadata"]["annotations"] == {
        SOURCE_ANNOTATION: "policy/db/ingress/0"
    }


def test_declared_empty_direction_applies_and_matches_nothing() -> None:
    web = find(render(BASIC), "GlobalNetworkPolicy", "app.web")
    assert web["spec"]["types"] == ["Egress"]
    assert "egress" not in web["spec"]


def test_policy_without_directions_is_not_rendered_and_reported() -> None:
    out = render(repo(tier("t", 1), policy("idle", "t")))
    assert not [m for m in out.manifests if m["metadata"]["name"] == "t.idle"]
    assert [x.approximation for x in limits(out, "policy/idle")] == [Approximation.REWRITTEN]


def test_all_four_actions_map_exactly() -> None:
    r = repo(
        tier("t", 1),
        policy(
            "p",
            "t",
            ingress=[rule("log"), rule("pass"), rule("deny"), rule("allow")],
        ),
    )
    p = find(render(r), "GlobalNetworkPolicy", "t.p")
    assert [x["action"] for x in calico_rules(p, "ingress")] == ["Log", "Pass", "Deny", "Allow"]


def test_several_peers_and_protocols_become_consecutive_rules() -> None:
    r = repo(
        tier("t", 1),
        policy(
            "p",
            "t",
            egress=[
                rule("deny", 'app == "a"', cidr("203.0.113.0/24"), ports=["udp/53", "tcp/80"]),
                rule("allow"),
            ],
        ),
    )
    p = find(render(r), "GlobalNetworkPolicy", "t.p")
    got = stripped(calico_rules(p, "egress"))
    sel = {"selector": 'app == "a" && has(septum.io/kind)'}
    nets = {"nets": ["203.0.113.0/24"]}
    assert got == [
        {"action": "Deny", "protocol": "TCP", "destination": {**sel, "ports": [80]}},
        {"action": "Deny", "protocol": "UDP", "destination": {**sel, "ports": [53]}},
        {"action": "Deny", "protocol": "TCP", "destination": {**nets, "ports": [80]}},
        {"action": "Deny", "protocol": "UDP", "destination": {**nets, "ports": [53]}},
        {"action": "Allow"},
    ]


def test_services_ranges_any_and_icmp() -> None:
    r = repo(
        tier("t", 1),
        policy(
            "p",
            "t",
            ingress=[
                rule("allow", ports=["tcp/8000-8099", "tcp/443", "sctp"]),
                rule("allow", ports=["icmp", "tcp/22"]),
                rule("allow", ports=["any", "tcp/22"]),
                rule("allow", cidr("2001:db8::/32"), ports=["icmp", "icmpv6"]),
            ],
        ),
    )
    out = render(r)
    got = stripped(calico_rules(find(out, "GlobalNetworkPolicy", "t.p"), "ingress"))
    assert got == [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [443, "8000:8099"]}},
        {"action": "Allow", "protocol": "SCTP"},
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [22]}},
        {"action": "Allow", "protocol": "ICMP"},
        {"action": "Allow"},
        # icmp (IPv4) with an IPv6 range matches nothing: only ICMPv6 remains
        {"action": "Allow", "protocol": "ICMPv6", "source": {"nets": ["2001:db8::/32"]}},
    ]


def test_all_peer_matches_any_address_and_segment_uses_its_selector() -> None:
    r = repo(
        tier("t", 1),
        segment_def("pci", "has(pci)"),
        policy(
            "p", "t", ingress=[rule("allow", "all()"), rule("deny", segment("pci", "has(pci)"))]
        ),
    )
    got = stripped(calico_rules(find(render(r), "GlobalNetworkPolicy", "t.p"), "ingress"))
    assert got == [
        {"action": "Allow"},
        {"action": "Deny", "source": {"selector": "has(pci) && has(septum.io/kind)"}},
    ]


def test_staged_policy_becomes_staged_global_network_policy() -> None:
    r = repo(tier("t", 1), policy("s", "t", mode=PolicyMode.STAGED, ingress=[rule("deny")]))
    out = render(r)
    staged = find(out, "StagedGlobalNetworkPolicy", "t.s")
    assert staged["spec"]["types"] == ["Ingress"]
    assert out.manifests[-1] is staged
    old = render(r, calico_version=(3, 29))
    assert not [m for m in old.manifests if m["kind"] == "StagedGlobalNetworkPolicy"]
    assert [x.approximation for x in limits(old, "policy/s")] == [Approximation.DROPPED]


def test_underscored_policy_names_are_sanitised_and_tie_breaks_kept() -> None:
    r = repo(
        tier("t", 1),
        policy("a_b", "t", order=1, ingress=[rule("deny")]),
        policy("a-c", "t", order=1, ingress=[rule("allow")]),
    )
    out = render(r)
    # Septum order: "a-c" < "a_b"; Calico names "t.a-b" < "t.a-c" would swap them.
    ab = find(out, "GlobalNetworkPolicy", "t.a-b")
    ac = find(out, "GlobalNetworkPolicy", "t.a-c")
    assert ac["spec"]["order"] < ab["spec"]["order"]
    assert limits(out, "tier/t")
    assert limits(out, "policy/a_b")


# ------------------------------------------------------------------------------ networks


def test_network_becomes_global_network_set_with_excepts_split() -> None:
    r = repo(
        tier("t", 1),
        network("corp", "10.0.0.0/8", excepts=["10.1.0.0/16"], zone="x"),
        policy("p", "t", egress=[rule("allow", net("corp")), rule("deny", 'zone == "x"')]),
    )
    out = render(r)
    gns = find(out, "GlobalNetworkSet", "septum-net-corp")
    labels = gns["metadata"]["labels"]
    assert labels["septum.io/network"] == "corp"
    assert labels["zone"] == "x"
    assert labels["septum.io/kind"] == "network"
    nets = gns["spec"]["nets"]
    assert "10.0.0.0/16" in nets
    assert "10.1.0.0/16" not in nets
    assert "10.128.0.0/9" in nets
    got = stripped(calico_rules(find(out, "GlobalNetworkPolicy", "t.p"), "egress"))
    assert got[0] == {"action": "Allow", "destination": {"selector": 'septum.io/network == "corp"'}}
    assert got[1]["destination"]["selector"] == 'zone == "x" && has(septum.io/kind)'
    assert [x.approximation for x in limits(out, "network/corp")] == [Approximation.REWRITTEN]


def test_network_range_holding_workload_addresses_is_reported() -> None:
    r = repo(
        tier("t", 1),
        pod("w", "10.0.0.5"),
        network("corp", "10.0.0.0/8"),
        policy("p", "t", egress=[rule("allow", net("corp"))], ingress=[rule("deny", "has(zone)")]),
    )
    out = render(r)
    (x,) = limits(out, "policy/p/egress/0")
    assert x.approximation is Approximation.WIDENED
    assert "10.0.0.5" in x.detail
    assert not limits(out, "policy/p/ingress/0")  # selects no network


def test_non_endpoint_workload_becomes_network_set_and_is_reported() -> None:
    r = repo(
        tier("t", 1),
        workload("vm-1", "192.0.2.7", kind=WorkloadKind.VM, app="db"),
        pod("web", "198.18.0.1", app="web"),
        policy("p", "t", egress=[rule("allow", 'app == "db"')]),
    )
    out = render(r)
    gns = find(out, "GlobalNetworkSet", "septum-wl-vm-1")
    assert gns["spec"]["nets"] == ["192.0.2.7/32"]
    assert gns["metadata"]["labels"]["app"] == "db"
    (x,) = limits(out, "workload/vm-1")
    assert x.approximation is Approximation.WIDENED
    assert not limits(out, "workload/web")


# ------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize(("default", "action"), [("deny", "Deny"), ("allow", "Allow")])
def test_repository_default_is_a_last_tier_for_every_workload(default: str, action: str) -> None:
    out = render(repo(repo_settings(default)))
    final = find(out, "GlobalNetworkPolicy", "septum-default.repository-default")
    assert final["spec"]["selector"] == "has(septum.io/kind)"
    assert final["spec"]["types"] == ["Ingress", "Egress"]
    assert stripped(final["spec"]["ingress"]) == [{"action": action}]
    assert stripped(final["spec"]["egress"]) == [{"action": action}]
    assert out.exact


def test_failsafe_is_a_first_tier_of_allows_then_pass() -> None:
    r = repo(
        tier("t", 1),
        repo_settings(
            failsafe=[
                failsafe("ingress", "tcp/22", cidrs=["198.18.255.0/24"]),
                failsafe(None, "udp/53"),
            ]
        ),
    )
    out = render(r)
    tiers = [m for m in out.manifests if m["kind"] == "Tier"]
    assert tiers[0]["metadata"]["name"] == "septum-failsafe"
    assert tiers[0]["spec"]["order"] < tiers[1]["spec"]["order"]
    p = find(out, "GlobalNetworkPolicy", "septum-failsafe.failsafe")
    assert stripped(p["spec"]["ingress"]) == [
        {
            "action": "Allow",
            "protocol": "TCP",
            "source": {"nets": ["198.18.255.0/24"]},
            "destination": {"ports": [22]},
        },
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
        {"action": "Pass"},
    ]
    assert stripped(p["spec"]["egress"]) == [
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
        {"action": "Pass"},
    ]
    assert out.exact
    hosts = render(r, endpoint_kinds=frozenset({POD, WorkloadKind.HOST}))
    assert [x.approximation for x in limits(hosts, "settings/failsafe")] == [Approximation.WIDENED]


# ------------------------------------------------------------------------------ limitations


def test_modes_idle_visibility_test_are_left_out_of_policy_selectors() -> None:
    r = repo(
        tier("t", 1),
        pod("a", "198.18.0.1", Mode.IDLE),
        pod("b", "198.18.0.2", Mode.VISIBILITY),
        pod("c", "198.18.0.3", Mode.TEST),
        pod("d", "198.18.0.4", Mode.SELECTIVE),
        pod("e", "198.18.0.5"),
        policy("p", "t", ingress=[rule("deny", "has(x)")]),
    )
    out = render(r)
    scope = 'has(septum.io/kind) && septum.io/name not in {"a", "b", "c"}'
    assert find(out, "GlobalNetworkPolicy", "t.p")["spec"]["selector"] == scope
    final = find(out, "GlobalNetworkPolicy", "septum-default.repository-default")
    assert final["spec"]["selector"] == scope
    assert not limits(out, "workload/a")  # idle: not evaluated, exactly like no policy
    assert [x.approximation for x in limits(out, "workload/b")] == [Approximation.DROPPED]
    assert [x.approximation for x in limits(out, "workload/c")] == [Approximation.DROPPED]
    assert [x.approximation for x in limits(out, "workload/d")] == [Approximation.NARROWED]
    assert not limits(out, "workload/e")


def test_without_implicit_labels_modes_cannot_be_excluded() -> None:
    r = repo(tier("t", 1), pod("a", "198.18.0.1", Mode.IDLE))
    out = render(r, implicit_labels_on_endpoints=False)
    final = find(out, "GlobalNetworkPolicy", "septum-default.repository-default")
    assert final["spec"]["selector"] == "all()"
    assert [x.approximation for x in limits(out, "workload/a")] == [Approximation.NARROWED]
    assert [x.approximation for x in limits(out, "settings")] == [Approximation.NARROWED]


def test_without_implicit_labels_namespace_is_translated_kind_and_name_reported() -> None:
    r = repo(
        tier("t", 1),
        policy(
            "p",
            "t",
            applies_to='septum.io/namespace == "shop"',
            ingress=[rule("allow", 'septum.io/kind == "vm"')],
        ),
    )
    out = render(r, implicit_labels_on_endpoints=False)
    p = find(out, "GlobalNetworkPolicy", "t.p")
    assert p["spec"]["selector"] == 'projectcalico.org/namespace == "shop"'
    assert p["spec"]["ingress"][0]["source"]["selector"] == 'septum.io/kind == "vm"'
    assert not limits(out, "policy/p")
    assert [x.approximation for x in limits(out, "policy/p/ingress/0")] == [Approximation.WIDENED]
    assert find(render(r), "GlobalNetworkPolicy", "t.p")["spec"]["selector"] == (
        'septum.io/namespace == "shop" && has(septum.io/kind)'
    )


def test_user_peers_are_rendered_as_current_session_addresses_and_reported() -> None:
    r = repo(
        tier("t", 1),
        user("alice", "198.18.9.1", "2001:db8::9", role="admin"),
        user("bob", ("198.18.9.2", T0 + timedelta(hours=1), None), role="admin"),
        policy("p", "t", ingress=[rule("allow", users('role == "admin"'), ports=["tcp/22"])]),
    )
    out = render(r)
    got = stripped(calico_rules(find(out, "GlobalNetworkPolicy", "t.p"), "ingress"))
    assert [g["source"] for g in got] == [
        {"nets": ["198.18.9.1/32"]},
        {"nets": ["2001:db8::9/128"]},
    ]
    (x,) = limits(out, "policy/p/ingress/0")
    assert x.approximation is Approximation.WIDENED


def test_expired_rules_are_left_out_and_expiring_rules_reported() -> None:
    r = repo(
        tier("t", 1),
        policy(
            "p",
            "t",
            ingress=[
                rule("allow", ports=["tcp/1"], expires=T0 - timedelta(days=1)),
                rule("allow", ports=["tcp/2"], expires=T0 + timedelta(days=1)),
                rule("deny", ports=["tcp/3"], expires=T0 + timedelta(days=1)),
            ],
        ),
    )
    out = render(r)
    got = calico_rules(find(out, "GlobalNetworkPolicy", "t.p"), "ingress")
    assert [g["metadata"]["annotations"][SOURCE_ANNOTATION] for g in got] == [
        "policy/p/ingress/1",
        "policy/p/ingress/2",
    ]
    assert [x.approximation for x in limits(out, "policy/p/ingress/0")] == [Approximation.REWRITTEN]
    assert [x.approximation for x in limits(out, "policy/p/ingress/1")] == [Approximation.WIDENED]
    assert [x.approximation for x in limits(out, "policy/p/ingress/2")] == [Approximation.NARROWED]


def test_cidr_peers_with_cidr_matches_workloads_off_are_reported() -> None:
    p = policy("p", "t", ingress=[rule("allow", cidr("198.18.0.0/15"))])
    exact = render(repo(tier("t", 1), p))
    assert exact.exact
    off = render(repo(tier("t", 1), p, repo_settings(cidr_matches_workloads=False)))
    assert [x.approximation for x in limits(off, "policy/p/ingress/0")] == [Approximation.WIDENED]


def test_unwritable_value_drops_the_policy_or_peer_with_a_limitation() -> None:
    both = 'app == "x\\"y\'z"'  # the value x"y'z holds both quote characters
    r = repo(
        tier("t", 1),
        policy("a", "t", applies_to=both, ingress=[rule("allow")]),
        policy("b", "t", ingress=[rule("allow", both), rule("deny")]),
    )
    out = render(r)
    assert not [m for m in out.manifests if m["metadata"]["name"] == "t.a"]
    assert [x.approximation for x in limits(out, "policy/a")] == [Approximation.DROPPED]
    b = find(out, "GlobalNetworkPolicy", "t.b")
    assert stripped(b["spec"]["ingress"]) == [{"action": "Deny"}]
    assert {x.approximation for x in limits(out, "policy/b/ingress/0")} == {
        Approximation.DROPPED,
        Approximation.REWRITTEN,
    }


# ------------------------------------------------------------------------------ selectors


def test_quoting_follows_calico_rules() -> None:
    assert calico_quote("a b") == '"a b"'
    assert calico_quote('a"b') == "'a\"b'"
    assert calico_quote("a'b\"c") is None
    # Calico strings have no escapes: a backslash is written as itself.
    sel = Compare("k", Op.EQ, ("a\\b",))
    assert calico_selector(sel).text == 'k == "a\\b"'


def test_every_operator_is_spelled_as_calico_spells_it() -> None:
    text = (
        'a == "1" && b != "2" && c in {"3", "4"} && d not in {"5"} && has(e) && !has(f) '
        '&& g starts with "h" && i ends with "j" && k contains "l" && (m == "n" || all())'
    )
    got = calico_selector(parse_selector(text)).text
    assert got is not None
    for piece in (
        'a == "1"',
        'b != "2"',
        'c in {"3", "4"}',
        'd not in {"5"}',
        "has(e)",
        "!has(f)",
        'g starts with "h"',
        'i ends with "j"',
        'k contains "l"',
    ):
        assert piece in got
    assert calico_selector(parse_selector('!(a == "1" && b == "2")')).text == (
        '!(a == "1" && b == "2")'
    )
    assert calico_selector(parse_selector("k in {}")).text == "k in {}"


_KEYS = ("app", "env", "a.b/c-d", NAMESPACE_LABEL)
_VALUES = st.text(alphabet="ab \"'x.", max_size=3).filter(lambda v: not ('"' in v and "'" in v))


def _exprs() -> st.SearchStrategy[Expr]:
    key = st.sampled_from(_KEYS)
    leaves: st.SearchStrategy[Expr] = st.one_of(
        st.just(All()),
        st.builds(Has, key),
        st.builds(
            lambda k, op, v: Compare(k, op, (v,)),
            key,
            st.sampled_from((Op.EQ, Op.NE, Op.STARTS_WITH, Op.ENDS_WITH, Op.CONTAINS)),
            _VALUES,
        ),
        st.builds(
            lambda k, op, vs: Compare(k, op, tuple(sorted(set(vs)))),
            key,
            st.sampled_from((Op.IN, Op.NOT_IN)),
            st.lists(_VALUES, max_size=3),
        ),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(Not, inner),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        ),
        max_leaves=6,
    )


_LABELS = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_exprs(), st.lists(_LABELS, min_size=1, max_size=8), st.booleans())
def test_selector_translation_round_trips_through_septum_parser(
    expr: Expr, label_maps: list[dict[str, str]], implicit: bool
) -> None:
    source = parse_selector(expr.text())  # Septum's own text (with its escapes)
    out = calico_selector(source, implicit_labels_on_endpoints=implicit)
    assert out.text is not None
    assert "\\" not in out.text  # Calico has no escapes
    back = parse_selector(out.text)
    for labels in label_maps:
        seen = dict(labels)
        if not implicit and NAMESPACE_LABEL in seen:  # endpoints carry Calico's key instead
            seen[CALICO_NAMESPACE_LABEL] = seen.pop(NAMESPACE_LABEL)
        assert back.matches(seen) == source.matches(labels), (source.text, out.text, labels)


# ------------------------------------------------------------------------------ properties


def _rule_sources(r: Repository) -> Iterator[tuple[str, str]]:
    for p in r.policies:
        for d in Direction:
            for x in p.rules(d) or ():
                yield f"policy/{p.name}", f"policy/{p.name}/{d.value}/{x.index}"


@settings(max_examples=150, deadline=None)
@given(repositories(), st.sampled_from([(3, 30), (3, 29), (3, 28)]), st.booleans())
def test_every_repository_renders_valid_manifests_and_every_rule_is_accounted_for(
    r: Repository, version: tuple[int, int], implicit: bool
) -> None:
    out = render_calico(
        r, T0, CalicoRenderSettings(calico_version=version, implicit_labels_on_endpoints=implicit)
    )
    assert validate_manifests(out.manifests) == []
    rendered = set(annotated_sources(out))
    reported = {x.source for x in out.limitations}
    for policy_source, rule_source in _rule_sources(r):
        assert rule_source in rendered or {rule_source, policy_source} & reported, rule_source
    names = [(m["kind"], m["metadata"]["name"]) for m in out.manifests]
    assert len(names) == len(set(names))


@settings(max_examples=50, deadline=None)
@given(repositories())
def test_rendering_is_deterministic_and_independent_of_input_order(r: Repository) -> None:
    first = render_calico(r, T0)
    assert render_calico(r, T0) == first
    shuffled = Repository(
        workloads=tuple(reversed(r.workloads)),
        networks=tuple(reversed(r.networks)),
        segments=r.segments,
        tiers=tuple(reversed(r.tiers)),
        policies=tuple(reversed(r.policies)),
        users=r.users,
        settings=r.settings,
    )
    assert render_calico(shuffled, T0).manifests == first.manifests
