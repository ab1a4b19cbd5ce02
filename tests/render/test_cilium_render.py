"""Septum → Cilium: clusterwide policies, CIDR groups, deny narrowing, audit mode."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.model.resources import Mode
from septum.render.cilium import CiliumRenderSettings, render_cilium
from septum.render.manifests import Approximation, Rendering
from septum.render.validate import validate_manifests
from septum.testing.builders import (
    T0,
    net,
    network,
    policy,
    repo,
    rule,
    tier,
    workload,
)
from septum.testing.builders import settings as repo_settings
from septum.testing.strategies import repositories


def _named(r: Rendering) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in r.manifests}


def _limits(r: Rendering) -> set[tuple[str, str, Approximation]]:
    return {(x.source, x.what, x.approximation) for x in r.limitations}


def test_allows_cidr_groups_and_default_selection() -> None:
    r = repo(
        tier("apps", 20),
        workload("web", "198.18.0.1", app="web", namespace="shop"),
        workload("db", "198.18.0.2", app="db", namespace="shop"),
        network("internet", "0.0.0.0/0", excepts=["10.0.0.0/8"]),
        policy(
            "web",
            "apps",
            applies_to='app == "web" && septum.io/namespace == "shop"',
            egress=[
                rule("allow", 'app == "db"', ports=["tcp/5432-5433"]),
                rule("allow", net("internet"), ports=["tcp/443"]),
            ],
        ),
    )
    out = render_cilium(r, T0)
    m = _named(out)
    assert out.manifests[0]["kind"] == "CiliumCIDRGroup"
    assert m["septum-net-internet"]["spec"]["externalCIDRs"][:2] == ["0.0.0.0/5", "8.0.0.0/7"]
    assert m["septum-apps-web"]["specs"] == [
        {
            "endpointSelector": {
                "matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}
            },
            "egress": [
                {
                    "toEndpoints": [{"matchLabels": {"app": "db"}}],
                    "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP", "endPort": 5433}]}],
                }
            ],
        },
        {
            "endpointSelector": {
                "matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}
            },
            "egress": [
                {
                    "toCIDRSet": [{"cidrGroupRef": "septum-net-internet"}],
                    "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
                }
            ],
        },
    ]
    assert m["septum-default-select"]["specs"] == [
        {"endpointSelector": {}, "ingress": [{}], "egress": [{}]}
    ]
    assert out.exact
    assert validate_manifests(out.manifests) == []


def test_deny_shadowed_by_an_earlier_allow_is_narrowed() -> None:
    r = repo(
        tier("security", 10, "pass"),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("first", "security", order=1, ingress=[rule("allow", 'app == "b"')]),
        policy("then", "security", order=2, ingress=[rule("deny", "has(app)")]),
    )
    out = render_cilium(r, T0)
    deny = _named(out)["septum-security-then"]["specs"]
    assert deny == [
        {
            "endpointSelector": {},
            "ingressDeny": [
                {
                    "fromEndpoints": [
                        {
                            "matchExpressions": [
                                {"key": "app", "operator": "Exists"},
                                {"key": "app", "operator": "NotIn", "values": ["b"]},
                            ]
                        }
                    ]
                }
            ],
        }
    ]
    assert (
        "policy/then/ingress/0",
        "deny narrowed by earlier allow rules",
        Approximation.REWRITTEN,
    ) in _limits(out)
    assert validate_manifests(out.manifests) == []


def test_deny_fully_shadowed_is_left_out_and_partial_overlap_reported() -> None:
    r = repo(
        tier("security", 10, "pass"),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("first", "security", order=1, applies_to='app == "a"', ingress=[rule("allow")]),
        policy("all-deny", "security", order=2, applies_to='app == "a"', ingress=[rule("deny")]),
        policy("some", "security", order=3, ingress=[rule("deny", 'app == "b"')]),
    )
    out = render_cilium(r, T0)
    names = _named(out)
    assert "septum-security-all-deny" not in names
    assert (
        "policy/all-deny/ingress/0",
        "deny shadowed by policy/first/ingress/0",
        Approximation.REWRITTEN,
    ) in _limits(out)
    assert (
        "policy/some/ingress/0",
        "deny overlaps the earlier policy/first/ingress/0",
        Approximation.NARROWED,
    ) in _limits(out)


def test_deny_default_tier_closes_later_allows_and_default_allow() -> None:
    r = repo(
        tier("first", 10),
        tier("second", 20, "pass"),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("pa", "first", applies_to='app == "a"', ingress=[rule("allow", 'app == "b"')]),
        policy("pb", "second", ingress=[rule("allow", 'app == "a"')]),
        repo_settings("allow"),
    )
    out = render_cilium(r, T0)
    names = _named(out)
    assert names["septum-second-pb"]["specs"][0]["endpointSelector"] == {
        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]
    }
    allow_all = names["septum-default-allow"]["specs"]
    assert allow_all[0] == {
        "endpointSelector": {
            "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]
        },
        "ingress": [{"fromEntities": ["all"]}],
    }
    assert allow_all[1] == {"endpointSelector": {}, "egress": [{"toEntities": ["all"]}]}
    assert validate_manifests(out.manifests) == []


def test_test_mode_everywhere_enables_audit_mode() -> None:
    r = repo(
        tier("apps", 10),
        workload("a", "198.18.0.1", app="a", mode=Mode.TEST),
        workload("b", "198.18.0.2", app="b", mode=Mode.IDLE),
        policy("p", "apps", ingress=[rule("allow", 'app == "b"')]),
    )
    out = render_cilium(r, T0)
    assert out.manifests[0] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cilium-config", "namespace": "kube-system"},
        "data": {"policy-audit-mode": "true"},
    }
    select = _named(out)["septum-default-select"]["specs"][0]["endpointSelector"]
    assert select == {
        "matchExpressions": [{"key": "septum.io/name", "operator": "NotIn", "values": ["b"]}]
    }
    assert (
        "settings",
        "test/visibility modes rendered as Cilium policy audit mode",
        Approximation.REWRITTEN,
    ) in _limits(out)
    mixed = render_cilium(
        repo(*r.workloads, workload("c", "198.18.0.3"), *r.tiers, *r.policies), T0
    )
    assert all(m["kind"] != "ConfigMap" for m in mixed.manifests)
    assert (
        "workload/a",
        "mode test: would-be denies are not reported",
        Approximation.REWRITTEN,
    ) in _limits(mixed)
    off = render_cilium(r, T0, CiliumRenderSettings(audit_mode=False))
    assert all(m["kind"] != "ConfigMap" for m in off.manifests)
    assert validate_manifests(out.manifests) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories(), st.booleans())
def test_every_random_repository_renders_valid_deterministic_manifests(r: Any, audit: bool) -> None:
    options = CiliumRenderSettings(audit_mode=audit)
    out = render_cilium(r, T0, options)
    assert out == render_cilium(r, T0, options)
    assert validate_manifests(out.manifests) == []
