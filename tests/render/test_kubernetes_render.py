"""Septum → Kubernetes (ANP, NetworkPolicy, BANP, inventory): manifests and limitations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.model.resources import Mode, PolicyMode
from septum.render.kubernetes import KubernetesRenderSettings, render_kubernetes
from septum.render.manifests import Approximation, Rendering
from septum.render.validate import validate_manifests
from septum.testing.builders import (
    T0,
    cidr,
    net,
    network,
    policy,
    repo,
    rule,
    tier,
    user,
    users,
    workload,
)
from septum.testing.builders import (
    settings as repo_settings,
)
from septum.testing.strategies import repositories

SHOP = {"namespace.septum.io/team": "shop"}


def _by(r: Rendering, kind: str) -> dict[str, dict[str, Any]]:
    return {
        (m["metadata"].get("namespace", "") + "/" if "namespace" in m["metadata"] else "")
        + m["metadata"]["name"]: m
        for m in r.manifests
        if m["kind"] == kind
    }


def _limits(r: Rendering) -> set[tuple[str, str, Approximation]]:
    return {(x.source, x.what, x.approximation) for x in r.limitations}


def _shop() -> Any:
    return repo(
        tier("security", 10, "pass"),
        tier("apps", 20),
        workload("web-1", "198.18.0.1", app="web", namespace="shop", labels=SHOP),
        workload("db-1", "198.18.0.2", app="db", namespace="shop", labels=SHOP),
        network("internet", "0.0.0.0/0", excepts=["198.18.0.0/15"]),
        policy(
            "quarantine",
            "security",
            applies_to="has(quarantine)",
            ingress=[rule("deny")],
            egress=[rule("deny")],
        ),
        policy(
            "db",
            "apps",
            applies_to='app == "db"',
            ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])],
        ),
        policy(
            "web",
            "apps",
            applies_to='app == "web"',
            egress=[
                rule("allow", 'app == "db"', ports=["tcp/5432"]),
                rule("allow", net("internet"), ports=["tcp/443", "icmp"]),
            ],
        ),
    )


def test_security_tier_to_anp_app_tier_to_network_policy_default_to_banp() -> None:
    r = render_kubernetes(_shop(), T0, KubernetesRenderSettings(include_inventory=True))
    assert [m["kind"] for m in r.manifests] == [
        "Namespace",
        "Pod",
        "Pod",
        "BaselineAdminNetworkPolicy",
        "AdminNetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
    ]
    ns = _by(r, "Namespace")["shop"]
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "shop", "team": "shop"}
    pod = _by(r, "Pod")["shop/web-1"]
    assert pod["metadata"]["labels"] == {
        "app": "web",
        "septum.io/kind": "host",
        "septum.io/name": "web-1",
        "septum.io/namespace": "shop",
    }
    assert pod["metadata"]["annotations"] == {"septum.io/workload": "web-1"}
    assert pod["status"] == {"podIP": "198.18.0.1", "podIPs": [{"ip": "198.18.0.1"}]}

    anp = _by(r, "AdminNetworkPolicy")["septum-security-quarantine"]
    assert anp["spec"] == {
        "priority": 0,
        "subject": {
            "pods": {
                "namespaceSelector": {},
                "podSelector": {"matchExpressions": [{"key": "quarantine", "operator": "Exists"}]},
            }
        },
        "ingress": [
            {"name": "quarantine/ingress/0", "action": "Deny", "from": [{"namespaces": {}}]}
        ],
        "egress": [
            {
                "name": "quarantine/egress/0",
                "action": "Deny",
                "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}],
            }
        ],
    }
    nps = _by(r, "NetworkPolicy")
    assert nps["shop/septum-db"]["spec"] == {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"protocol": "TCP", "port": 5432}],
            }
        ],
    }
    assert nps["shop/septum-web"]["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.18.0.0/15"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert nps["shop/septum-default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    banp = _by(r, "BaselineAdminNetworkPolicy")["default"]
    assert banp["spec"]["egress"][0]["to"][1] == {"networks": ["0.0.0.0/0", "::/0"]}
    # quarantine's deny of sources outside the cluster is exact: nothing allows them (the
    # default-deny-ingress NetworkPolicies deny them), as in Septum.
    assert _limits(r) == {
        (
            "policy/web/egress/1",
            "services ['icmp'] have no Kubernetes port form",
            Approximation.NARROWED,
        ),
    }
    assert validate_manifests(r.manifests) == []


def test_rendering_is_deterministic_and_ignores_input_order() -> None:
    a = render_kubernetes(_shop(), T0, KubernetesRenderSettings(include_inventory=True))
    b = render_kubernetes(_shop(), T0, KubernetesRenderSettings(include_inventory=True))
    assert a == b


def test_deny_default_tier_gets_trailing_deny_anps_in_order() -> None:
    r = repo(
        tier("platform", 5),
        tier("security", 10, "pass"),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy(
            "p2", "platform", order=2, applies_to='app == "a"', egress=[rule("allow", 'app == "b"')]
        ),
        policy(
            "p1", "platform", order=1, applies_to='app == "a"', ingress=[rule("pass", 'app == "b"')]
        ),
        policy("s", "security", egress=[rule("deny", cidr("198.51.100.0/24"))]),
        repo_settings("allow"),
    )
    out = render_kubernetes(r, T0)
    anps = [(m["metadata"]["name"], m["spec"]["priority"]) for m in out.manifests]
    # p1 has only a pass: nothing of it is rendered but the hole it cuts in the tier's
    # default deny (a Kubernetes Pass would skip the security tier's ANPs too).
    assert anps == [
        ("septum-platform-p2", 0),
        ("septum-platform-p1-default", 1),
        ("septum-platform-p2-default", 2),
        ("septum-security-s", 3),
    ]
    default = out.manifests[1]["spec"]
    assert default["ingress"] == [
        {
            "name": "platform/default-deny",
            "action": "Deny",
            "from": [
                {
                    "pods": {
                        "namespaceSelector": {},
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "app", "operator": "NotIn", "values": ["b"]}
                            ]
                        },
                    }
                }
            ],
        }
    ]
    assert "egress" not in default  # p1 has no egress rules: it applies to ingress only
    assert not any(
        r["action"] == "Pass"
        for m in out.manifests
        for d in ("ingress", "egress")
        for r in m["spec"].get(d, [])
    )
    assert out.manifests[3]["spec"]["egress"][0]["to"] == [{"networks": ["198.51.100.0/24"]}]
    assert (
        "tier/platform",
        "tier default deny does not cover ingress from outside the cluster",
        Approximation.WIDENED,
    ) in _limits(out)
    assert not any(m["kind"] == "BaselineAdminNetworkPolicy" for m in out.manifests)
    assert validate_manifests(out.manifests) == []


def test_modes_shape_the_subjects() -> None:
    r = repo(
        tier("security", 10),
        workload("on", "198.18.0.1", app="a"),
        workload("idle", "198.18.0.2", app="a", mode=Mode.IDLE),
        workload("trial", "198.18.0.3", app="a", mode=Mode.TEST),
        workload("sel", "198.18.0.4", app="a", mode=Mode.SELECTIVE),
        policy(
            "p",
            "security",
            applies_to='app == "a"',
            ingress=[rule("deny", cidr("198.51.100.0/24"))],
        ),
    )
    out = render_kubernetes(r, T0)
    names = {m["metadata"]["name"]: m for m in out.manifests}
    rules_subject = names["septum-security-p-default"]["spec"]["subject"]["pods"]["podSelector"]
    assert rules_subject == {
        "matchLabels": {"app": "a"},
        "matchExpressions": [
            {"key": "septum.io/name", "operator": "NotIn", "values": ["idle", "sel", "trial"]}
        ],
    }
    selective = names["septum-security-p-default-selective"]["spec"]
    assert selective["subject"]["pods"]["podSelector"]["matchExpressions"] == [
        {"key": "septum.io/name", "operator": "In", "values": ["sel"]}
    ]
    assert selective["ingress"][0]["action"] == "Allow"
    banp = names["default"]["spec"]["subject"]
    assert banp["pods"]["podSelector"]["matchExpressions"][0]["values"] == ["idle", "sel", "trial"]
    assert (
        "workload/trial",
        "mode test: would-be denies are not reported",
        Approximation.REWRITTEN,
    ) in _limits(out)
    # the deny rule from a CIDR cannot be said in ANP ingress
    assert ("policy/p/ingress/0", Approximation.WIDENED) in {
        (x.source, x.approximation) for x in out.limitations
    }
    assert validate_manifests(out.manifests) == []


def test_cidr_peers_matching_workloads_become_pod_peers() -> None:
    r = repo(
        tier("apps", 10),
        workload("web", "198.18.0.1", app="web", namespace="shop"),
        workload("db", "198.18.0.2", app="db", namespace="data"),
        policy(
            "db", "apps", applies_to='app == "db"', ingress=[rule("allow", cidr("198.18.0.0/31"))]
        ),
    )
    out = render_kubernetes(r, T0)
    np = _by(out, "NetworkPolicy")["data/septum-db"]
    assert np["spec"]["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "septum.io/name", "operator": "In", "values": ["web"]}
                        ]
                    },
                },
                {"ipBlock": {"cidr": "198.18.0.0/31"}},
            ]
        }
    ]
    assert (
        "policy/db/ingress/0",
        "cidr 198.18.0.0/31 also matches managed workloads",
        Approximation.REWRITTEN,
    ) in _limits(out)
    assert out.exact
    off = render_kubernetes(repo(*_objects(r), repo_settings(cidr_matches_workloads=False)), T0)
    assert _by(off, "NetworkPolicy")["data/septum-db"]["spec"]["ingress"] == [
        {"from": [{"ipBlock": {"cidr": "198.18.0.0/31"}}]}
    ]


def _objects(r: Any) -> list[Any]:
    return [*r.workloads, *r.networks, *r.tiers, *r.policies, *r.users]


def test_staged_log_expiry_users_are_reported() -> None:
    r = repo(
        tier("apps", 10),
        workload("web", "198.18.0.1", app="web"),
        user("alice", "198.18.9.9", role="dev"),
        policy(
            "web",
            "apps",
            applies_to='app == "web"',
            ingress=[
                rule("log"),
                rule(
                    "allow",
                    users('role == "dev"'),
                    ports=["tcp/22"],
                    expires=T0 + timedelta(days=1),
                ),
                rule("allow", ports=["tcp/80", "tcp/8000-8099"], expires=T0 - timedelta(days=1)),
            ],
        ),
        policy("later", "apps", applies_to='app == "web"', ingress=[], mode=PolicyMode.STAGED),
    )
    out = render_kubernetes(r, T0)
    np = _by(out, "NetworkPolicy")["default/septum-web"]
    assert np["spec"]["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "198.18.9.9/32"}}],
            "ports": [{"protocol": "TCP", "port": 22}],
        }
    ]
    whats = {(x.source, x.what) for x in out.limitations}
    assert ("policy/web/ingress/0", "log rule") in whats
    assert ("policy/later", "staged policy") in whats
    assert ("policy/web/ingress/1", "rule expires at 2026-11-02T12:00:00+00:00") in whats
    assert ("policy/web/ingress/1", 'users peer users:role == "dev"') in whats
    assert out.exact  # everything here is rewritten with the same meaning at T0


def test_port_ranges_in_both_forms() -> None:
    r = repo(
        tier("security", 10, "pass"),
        tier("apps", 20),
        workload("web", "198.18.0.1", app="web"),
        policy("s", "security", egress=[rule("deny", ports=["tcp/8000-8099", "udp/53", "sctp"])]),
        policy("a", "apps", egress=[rule("allow", ports=["tcp/8000-8099", "udp/53", "sctp"])]),
    )
    out = render_kubernetes(r, T0)
    anp = _by(out, "AdminNetworkPolicy")["septum-security-s"]
    assert anp["spec"]["egress"][0]["ports"] == [
        {"portRange": {"protocol": "SCTP", "start": 1, "end": 65535}},
        {"portRange": {"protocol": "TCP", "start": 8000, "end": 8099}},
        {"portNumber": {"protocol": "UDP", "port": 53}},
    ]
    np = _by(out, "NetworkPolicy")["default/septum-a"]
    assert np["spec"]["egress"][0]["ports"] == [
        {"protocol": "SCTP"},
        {"protocol": "TCP", "port": 8000, "endPort": 8099},
        {"protocol": "UDP", "port": 53},
    ]
    assert validate_manifests(out.manifests) == []


def test_namespaced_applies_to_selects_namespaces_of_network_policies() -> None:
    r = repo(
        tier("apps", 10),
        workload(
            "a", "198.18.0.1", app="x", namespace="one", labels={"namespace.septum.io/env": "prod"}
        ),
        workload(
            "b", "198.18.0.2", app="x", namespace="two", labels={"namespace.septum.io/env": "dev"}
        ),
        policy(
            "p",
            "apps",
            applies_to='app == "x" && namespace.septum.io/env == "prod"',
            ingress=[rule("allow", 'septum.io/namespace == "two"')],
        ),
        repo_settings("allow"),
    )
    out = render_kubernetes(r, T0)
    nps = _by(out, "NetworkPolicy")
    assert list(nps) == ["one/septum-p"]
    assert nps["one/septum-p"]["spec"]["ingress"][0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "two"}},
            "podSelector": {},
        }
    ]


def test_unsupported_selector_is_reported_against_the_rule() -> None:
    r = repo(
        tier("apps", 10),
        workload("a", "198.18.0.1", app="web-1"),
        policy("p", "apps", ingress=[rule("allow", 'app starts with "web"')]),
    )
    closed = render_kubernetes(r, T0)
    rule_from = _by(closed, "NetworkPolicy")["default/septum-p"]["spec"]["ingress"][0]["from"]
    assert rule_from[0]["podSelector"] == {"matchLabels": {"app": "web-1"}}
    open_world = render_kubernetes(r, T0, KubernetesRenderSettings(closed_world_patterns=False))
    assert ("policy/p/ingress/0", Approximation.NARROWED) in {
        (x.source, x.approximation) for x in open_world.limitations
    }
    assert "ingress" not in _by(open_world, "NetworkPolicy")["default/septum-p"]["spec"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories(), st.booleans())
def test_every_random_repository_renders_valid_deterministic_manifests(
    r: Any, inventory: bool
) -> None:
    options = KubernetesRenderSettings(include_inventory=inventory)
    out = render_kubernetes(r, T0, options)
    assert out == render_kubernetes(r, T0, options)
    order = [
        "Namespace",
        "Pod",
        "BaselineAdminNetworkPolicy",
        "AdminNetworkPolicy",
        "NetworkPolicy",
    ]
    kinds = [order.index(m["kind"]) for m in out.manifests]
    assert kinds == sorted(kinds)
    priorities = [m["spec"]["priority"] for m in out.manifests if m["kind"] == "AdminNetworkPolicy"]
    assert priorities == sorted(set(priorities))
    assert validate_manifests(out.manifests) == []


def test_external_allow_in_an_anp_tier_is_rendered_exactly_as_network_policy() -> None:
    from septum.render.platforms import verify_rendering

    r = repo(
        tier("edge", 10),
        tier("apps", 20),
        workload("web-1", "198.18.0.1", app="web", namespace="shop", labels=SHOP),
        workload("web-2", "198.18.0.3", app="web", quarantine="yes", namespace="shop", labels=SHOP),
        workload("db-1", "198.18.0.2", app="db", namespace="shop", labels=SHOP),
        network("internet", "0.0.0.0/0", excepts=["198.18.0.0/15"]),
        policy(
            "quarantine-self", "edge", order=1, applies_to="has(quarantine)", ingress=[rule("deny")]
        ),
        policy(
            "web",
            "edge",
            order=2,
            applies_to='app == "web"',
            ingress=[
                rule("deny", cidr("203.0.113.0/24")),
                rule("allow", net("internet"), ports=["tcp/443"]),
            ],
        ),
        policy(
            "db",
            "apps",
            applies_to='app == "db"',
            ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])],
        ),
    )
    out = render_kubernetes(r, T0, KubernetesRenderSettings(include_inventory=True))
    nps = _by(out, "NetworkPolicy")
    external = [m for k, m in nps.items() if k.startswith("shop/septum-external-ingress")]
    assert [m["spec"] for m in external] == [
        {
            "podSelector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "quarantine", "operator": "DoesNotExist"}],
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": "0.0.0.0/0",
                                "except": ["198.18.0.0/15", "203.0.113.0/24"],
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 443}],
                }
            ],
        }
    ]
    assert not any(x.external for x in out.limitations)
    check = verify_rendering(r, out, T0)
    assert check.diff.empty, check.diff.lines()
    assert validate_manifests(out.manifests) == []
