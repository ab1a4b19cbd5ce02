"""Seeded, realistic Kubernetes clusters for ``bench/k8s.py``, written as YAML manifests.

    python bench/k8s_cluster.py OUT_DIR [--pods 1000] [--seed 1] [--np-only]

A cluster is teams' applications spread over namespaces (``<team>-<env>-<k>``, labelled
``kubernetes.io/metadata.name``, ``team``, ``env`` and, for some, ``compliance: pci``), each
application a few Deployments (tiers web, api, worker, db, cache; ``replicas`` >= 1, pods
labelled app/tier/env/team/version, containers with named ports ``http``, ``metrics`` and
``db``), plus ``kube-system`` (kube-dns) and ``monitoring`` (prometheus). The pod count is
the sum of replicas, the platform's pods included; the workload count (Deployments) is
printed beside it.

Policies grow with the cluster: per application, NetworkPolicies for its web, api and data
tiers and (for about half) its egress (none at all for one app in ten, a legacy app), with
pod and namespace selectors, matchExpressions (In/NotIn/Exists/DoesNotExist), numeric and
named ports, port ranges (``endPort``), SCTP/UDP, and ipBlocks with ``except``; per
namespace, most get a default-deny (some for egress too, with DNS
allowed). AdminNetworkPolicies: a cluster-wide set (dev-to-prod deny, monitoring allow, DNS
allow, egress guard on networks with Deny/Pass/Allow and a port range), one per team (Pass
within the team, Deny from other teams' dev/staging) and one per PCI namespace (Pass inside
it, Allow the team on a port range, Deny the rest); every priority distinct. One
BaselineAdminNetworkPolicy (``default``) isolates prod namespaces and denies an egress
network. ``np_only`` leaves out the AdminNetworkPolicies and the baseline (for a peer that
does not read them); everything else is the same file for file.

No ipBlock overlaps an address the cluster uses (pods have none here), so an ipBlock
selects external addresses only, as in the conformance cases' convention.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C emitter is several times faster at 10k pods
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]

TEAMS = (
    "payments",
    "checkout",
    "search",
    "identity",
    "catalog",
    "media",
    "ads",
    "data",
    "growth",
    "risk",
    "support",
    "logistics",
)
ENVS = (("prod", 0.5), ("staging", 0.3), ("dev", 0.2))
WORDS = (
    "cart",
    "ledger",
    "profile",
    "orders",
    "billing",
    "index",
    "feed",
    "auth",
    "invoice",
    "stock",
    "quote",
    "render",
    "upload",
    "notify",
    "report",
    "review",
    "price",
    "geo",
    "ship",
    "track",
)
TIERS = ("web", "api", "worker", "db", "cache")
#: (probability that an app has the tier, replica choices)
TIER_SHAPE: dict[str, tuple[float, tuple[int, ...]]] = {
    "web": (0.7, (1, 2, 2, 3, 4)),
    "api": (1.0, (1, 2, 2, 3, 5)),
    "worker": (0.5, (1, 1, 2, 3)),
    "db": (0.6, (1, 1, 3)),
    "cache": (0.4, (1, 1, 2)),
}
HTTP_PORTS = (8080, 8000, 80, 3000, 9000)
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
PLATFORM_PODS = 3  # kube-dns (2) and prometheus (1)
SELECTOR_KEYS = ("app", "tier", "k8s-app")
LEGACY_SHARE = 0.1  # apps with no NetworkPolicy of their own


@dataclass(frozen=True, slots=True)
class ClusterStats:
    pods: int
    workloads: int
    namespaces: int
    network_policies: int
    admin_network_policies: int
    baseline_admin_network_policies: int
    files: int

    @property
    def policies(self) -> int:
        return (
            self.network_policies
            + self.admin_network_policies
            + self.baseline_admin_network_policies
        )


@dataclass(slots=True)
class _App:
    name: str
    team: str
    env: str
    namespace: str
    http_port: int
    tiers: dict[str, int] = field(default_factory=dict)  # tier -> replicas


@dataclass(slots=True)
class Cluster:
    namespaces: list[dict[str, Any]]
    workloads: dict[str, list[dict[str, Any]]]  # namespace -> Deployments
    network_policies: dict[str, list[dict[str, Any]]]  # namespace -> NetworkPolicies
    admin_network_policies: list[dict[str, Any]]
    baseline: dict[str, Any]
    pods: int

    def stats(self, np_only: bool = False) -> ClusterStats:
        files = len(self.namespaces) + sum(1 for v in self.network_policies.values() if v)
        return ClusterStats(
            pods=self.pods,
            workloads=sum(len(v) for v in self.workloads.values()),
            namespaces=len(self.namespaces),
            network_policies=sum(len(v) for v in self.network_policies.values()),
            admin_network_policies=0 if np_only else len(self.admin_network_policies),
            baseline_admin_network_policies=0 if np_only else 1,
            files=files if np_only else files + 2,
        )


# --------------------------------------------------------------------------- helpers


def _labels(**kv: str) -> dict[str, str]:
    return dict(kv)


def _ns_sel(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def _port(protocol: str, port: int | str, end: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol, "port": port}
    if end is not None:
        out["endPort"] = end
    return out


def _deployment(
    name: str, namespace: str, replicas: int, labels: dict[str, str], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": labels.get("app", name)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {k: labels[k] for k in SELECTOR_KEYS if k in labels}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name.rsplit("-", 1)[-1] or "main",
                            "image": f"registry.example/{name}:1.0",
                            "ports": ports,
                        }
                    ]
                },
            },
        },
    }


def _np(
    name: str,
    namespace: str,
    pod_selector: dict[str, Any],
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    types: tuple[str, ...] = ("Ingress",),
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": pod_selector, "policyTypes": list(types)}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _anp(
    name: str,
    priority: int,
    subject: dict[str, Any],
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    kind: str = "AdminNetworkPolicy",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"subject": subject}
    if kind == "AdminNetworkPolicy":
        spec = {"priority": priority, **spec}
    if ingress:
        spec["ingress"] = ingress
    if egress:
        spec["egress"] = egress
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def _anp_port(protocol: str, port: int, end: int | None = None) -> dict[str, Any]:
    if end is None:
        return {"portNumber": {"protocol": protocol, "port": port}}
    return {"portRange": {"protocol": protocol, "start": port, "end": end}}


def _rule(
    action: str, name: str, key: str, peers: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {"name": name, "action": action, key: peers, **extra}


# --------------------------------------------------------------------------- generation


def _replicas_plan(rng: random.Random, pods: int) -> list[_App]:
    """Apps with tiers and replicas whose replicas add up to ``pods`` (less the platform)."""
    budget = max(1, pods - PLATFORM_PODS)
    apps: list[_App] = []
    i = 0
    while budget > 0:
        team = rng.choice(TEAMS)
        env = rng.choices([e for e, _ in ENVS], [w for _, w in ENVS])[0]
        app = _App(
            name=f"{rng.choice(WORDS)}-{i}",
            team=team,
            env=env,
            namespace="",
            http_port=rng.choice(HTTP_PORTS),
        )
        for tier in TIERS:
            p, choices = TIER_SHAPE[tier]
            if rng.random() < p and budget > 0:
                r = min(budget, rng.choice(choices))
                app.tiers[tier] = r
                budget -= r
        if not app.tiers:  # unlucky draw: an api alone
            app.tiers["api"] = 1
            budget -= 1
        apps.append(app)
        i += 1
    return apps


def _place(rng: random.Random, apps: list[_App]) -> dict[str, dict[str, str]]:
    """Namespaces (about 15 workloads each) for the apps; returns namespace -> labels."""
    workloads = sum(len(a.tiers) for a in apps)
    per_team_env = max(1, round(workloads / 15 / (len(TEAMS) * len(ENVS)) + 0.5))
    namespaces: dict[str, dict[str, str]] = {}
    for app in apps:
        k = rng.randrange(per_team_env)
        ns = f"{app.team}-{app.env}-{k}"
        app.namespace = ns
        if ns not in namespaces:
            labels = {"kubernetes.io/metadata.name": ns, "team": app.team, "env": app.env}
            if app.team in ("payments", "checkout", "risk") and app.env == "prod":
                labels["compliance"] = "pci"
            namespaces[ns] = labels
    return namespaces


def _app_workloads(app: _App, version: str) -> list[dict[str, Any]]:
    out = []
    for tier, replicas in app.tiers.items():
        labels = _labels(app=app.name, tier=tier, env=app.env, team=app.team, version=version)
        if tier == "web":
            labels["exposure"] = "public"
        ports: list[dict[str, Any]] = [
            {"name": "http", "containerPort": app.http_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ]
        if tier in ("db", "cache"):
            db_port = 5432 if tier == "db" else 6379
            ports.append({"name": "db", "containerPort": db_port, "protocol": "TCP"})
        out.append(_deployment(f"{app.name}-{tier}", app.namespace, replicas, labels, ports))
    return out


def _app_policies(rng: random.Random, app: _App, others: list[_App]) -> list[dict[str, Any]]:
    """NetworkPolicies of one app (in its namespace); none for a legacy app (one in ten),
    which its namespace's default-deny (if any), the admin policies and the baseline
    govern alone."""
    ns, name = app.namespace, app.name
    pols: list[dict[str, Any]] = []
    if rng.random() < LEGACY_SHARE:
        return pols
    monitoring = {
        "namespaceSelector": _ns_sel("monitoring"),
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }
    if "web" in app.tiers:
        ingress: list[dict[str, Any]] = [
            {
                "from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE[:2])}}],
                "ports": [_port("TCP", 443), _port("TCP", "http")],
            },
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "env", "operator": "In", "values": [app.env]},
                                {"key": "team", "operator": "In", "values": [app.team]},
                                {"key": "compliance", "operator": "DoesNotExist"},
                            ]
                        },
                        "podSelector": {"matchLabels": {"tier": "web"}},
                    }
                ],
                "ports": [_port("TCP", "http")],
            },
        ]
        if rng.random() < 0.3:  # a partner network on a port range
            ingress.append(
                {
                    "from": [{"ipBlock": {"cidr": f"198.51.{rng.randrange(100, 116)}.0/24"}}],
                    "ports": [_port("TCP", 8443, 8453)],
                }
            )
        pols.append(_np(f"{name}-web", ns, {"matchLabels": {"app": name, "tier": "web"}}, ingress))
    if "api" in app.tiers or "worker" in app.tiers:
        peers: list[dict[str, Any]] = [
            {
                "podSelector": {
                    "matchLabels": {"app": name},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["web", "worker", "api"]}
                    ],
                }
            }
        ]
        if others and rng.random() < 0.6:  # a consumer app of the same team
            peers.append(
                {
                    "namespaceSelector": {"matchLabels": {"team": app.team}},
                    "podSelector": {"matchLabels": {"app": rng.choice(others).name}},
                }
            )
        ingress = [
            {"from": peers, "ports": [_port("TCP", "http"), _port("TCP", app.http_port)]},
            {"from": [monitoring], "ports": [_port("TCP", "metrics")]},
        ]
        if rng.random() < 0.15:
            ingress.append({"from": peers[:1], "ports": [_port("UDP", 5353), _port("SCTP", 9003)]})
        pols.append(
            _np(
                f"{name}-api",
                ns,
                {
                    "matchLabels": {"app": name},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["api", "worker"]}
                    ],
                },
                ingress,
            )
        )
    if "db" in app.tiers or "cache" in app.tiers:
        ingress = [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchLabels": {"app": name},
                            "matchExpressions": [
                                {"key": "tier", "operator": "NotIn", "values": ["web"]}
                            ],
                        }
                    }
                ],
                "ports": [_port("TCP", 5432), _port("TCP", 6379)],
            },
            {
                "from": [
                    {
                        "podSelector": {
                            "matchLabels": {"app": name},
                            "matchExpressions": [
                                {"key": "tier", "operator": "In", "values": ["db", "cache"]}
                            ],
                        }
                    }
                ],
                "ports": [_port("TCP", 7000, 7010)],
            },
            {"from": [monitoring], "ports": [_port("TCP", 9090)]},
        ]
        pols.append(
            _np(
                f"{name}-data",
                ns,
                {
                    "matchLabels": {"app": name},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["db", "cache"]}
                    ],
                },
                ingress,
            )
        )
    if rng.random() < 0.5:
        egress: list[dict[str, Any]] = [
            {"to": [{"podSelector": {"matchLabels": {"app": name}}}]},
            {
                "to": [
                    {
                        "namespaceSelector": _ns_sel("kube-system"),
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [_port("UDP", 53), _port("TCP", 53)],
            },
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE)}}],
                "ports": [_port("TCP", 443)],
            },
        ]
        if others:
            dep = rng.choice(others)
            egress.append(
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": app.team}},
                            "podSelector": {"matchLabels": {"app": dep.name, "tier": "api"}},
                        }
                    ],
                    "ports": [_port("TCP", dep.http_port)],
                }
            )
        if rng.random() < 0.4:
            egress.append(
                {
                    "to": [{"ipBlock": {"cidr": f"203.0.113.{rng.randrange(0, 8) * 32}/27"}}],
                    "ports": [_port("TCP", 5000, 5100), _port("UDP", 514)],
                }
            )
        pols.append(
            _np(f"{name}-egress", ns, {"matchLabels": {"app": name}}, None, egress, ("Egress",))
        )
    return pols


def _admin_policies(
    rng: random.Random, namespaces: dict[str, dict[str, str]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    all_ns: dict[str, Any] = {"namespaces": {}}
    anps = [
        _anp(
            "deny-dev-to-prod",
            5,
            {"namespaces": {"matchLabels": {"env": "prod"}}},
            ingress=[
                _rule("Deny", "no-dev", "from", [{"namespaces": {"matchLabels": {"env": "dev"}}}])
            ],
        ),
        _anp(
            "allow-monitoring",
            10,
            all_ns,
            ingress=[
                _rule(
                    "Allow",
                    "prometheus-scrapes",
                    "from",
                    [
                        {
                            "pods": {
                                "namespaceSelector": _ns_sel("monitoring"),
                                "podSelector": {"matchLabels": {"app": "prometheus"}},
                            }
                        }
                    ],
                    ports=[_anp_port("TCP", 9090)],
                )
            ],
        ),
        _anp(
            "allow-dns",
            11,
            {"pods": {"namespaceSelector": {}, "podSelector": {}}},
            egress=[
                _rule(
                    "Allow",
                    "kube-dns",
                    "to",
                    [
                        {
                            "pods": {
                                "namespaceSelector": _ns_sel("kube-system"),
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        }
                    ],
                    ports=[_anp_port("UDP", 53), _anp_port("TCP", 53)],
                )
            ],
        ),
        _anp(
            "egress-guard",
            20,
            {"namespaces": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}},
            egress=[
                _rule("Deny", "no-metadata", "to", [{"networks": ["169.254.169.254/32"]}]),
                _rule("Pass", "private-to-netpol", "to", [{"networks": list(PRIVATE)}]),
                _rule(
                    "Allow",
                    "partner-api",
                    "to",
                    [{"networks": ["198.51.100.0/24", "198.51.101.0/25"]}],
                    ports=[_anp_port("TCP", 8000, 8100)],
                ),
            ],
        ),
    ]
    teams = sorted({labels["team"] for labels in namespaces.values() if "team" in labels})
    for i, team in enumerate(teams):
        anps.append(
            _anp(
                f"team-{team}",
                30 + i,
                {"namespaces": {"matchLabels": {"team": team}}},
                ingress=[
                    _rule(
                        "Pass",
                        "same-team",
                        "from",
                        [{"namespaces": {"matchLabels": {"team": team}}}],
                    ),
                    _rule(
                        "Deny",
                        "other-teams-non-prod",
                        "from",
                        [
                            {
                                "namespaces": {
                                    "matchExpressions": [
                                        {
                                            "key": "env",
                                            "operator": "In",
                                            "values": ["dev", "staging"],
                                        },
                                        {"key": "team", "operator": "NotIn", "values": [team]},
                                    ]
                                }
                            }
                        ],
                    ),
                ],
                egress=[
                    _rule(
                        "Pass", "same-team", "to", [{"namespaces": {"matchLabels": {"team": team}}}]
                    )
                ],
            )
        )
    pci = sorted(ns for ns, labels in namespaces.items() if labels.get("compliance") == "pci")
    for i, ns in enumerate(pci):
        team = namespaces[ns]["team"]
        lo = 8000 + 100 * rng.randrange(0, 5)
        anps.append(
            _anp(
                f"pci-{ns}",
                100 + i,
                {"namespaces": _ns_sel(ns)},
                ingress=[
                    _rule("Pass", "inside", "from", [{"namespaces": _ns_sel(ns)}]),
                    _rule(
                        "Allow",
                        "team-range",
                        "from",
                        [{"namespaces": {"matchLabels": {"team": team}}}],
                        ports=[_anp_port("TCP", lo, lo + 99), _anp_port("TCP", 8080)],
                    ),
                    _rule("Deny", "rest", "from", [{"namespaces": {}}]),
                ],
            )
        )
    baseline = _anp(
        "default",
        0,
        {"namespaces": {"matchLabels": {"env": "prod"}}},
        ingress=[
            _rule("Allow", "prod", "from", [{"namespaces": {"matchLabels": {"env": "prod"}}}]),
            _rule("Deny", "rest", "from", [{"namespaces": {}}]),
        ],
        egress=[_rule("Deny", "test-net", "to", [{"networks": ["192.0.2.0/24"]}])],
        kind="BaselineAdminNetworkPolicy",
    )
    return anps, baseline


def generate_cluster(seed: int, pods: int) -> Cluster:
    """A cluster of ``pods`` pods (sum of replicas, platform included), deterministic in
    ``seed``."""
    rng = random.Random(seed * 1_000_003 + pods)
    apps = _replicas_plan(rng, pods)
    ns_labels = _place(rng, apps)
    ns_labels["kube-system"] = {"kubernetes.io/metadata.name": "kube-system"}
    ns_labels["monitoring"] = {"kubernetes.io/metadata.name": "monitoring", "team": "platform"}
    workloads: dict[str, list[dict[str, Any]]] = {ns: [] for ns in sorted(ns_labels)}
    workloads["kube-system"].append(
        _deployment(
            "kube-dns",
            "kube-system",
            2,
            {"k8s-app": "kube-dns"},
            [
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            ],
        )
    )
    workloads["monitoring"].append(
        _deployment(
            "prometheus",
            "monitoring",
            1,
            {"app": "prometheus", "tier": "monitoring"},
            [{"name": "web", "containerPort": 9090, "protocol": "TCP"}],
        )
    )
    by_team: dict[str, list[_App]] = {}
    for app in apps:
        by_team.setdefault(app.team, []).append(app)
    policies: dict[str, list[dict[str, Any]]] = {ns: [] for ns in workloads}
    for app in apps:
        workloads[app.namespace].extend(_app_workloads(app, rng.choice(("v1", "v1", "v2"))))
        others = [a for a in by_team[app.team] if a is not app and "api" in a.tiers]
        policies[app.namespace].extend(_app_policies(rng, app, others))
    for ns in sorted(ns_labels):
        if ns in ("kube-system", "monitoring"):
            continue
        roll = rng.random()
        if roll < 0.7:
            policies[ns].insert(0, _np("default-deny-ingress", ns, {}))
        if roll < 0.2:
            policies[ns].insert(
                1,
                _np(
                    "default-deny-egress-but-dns",
                    ns,
                    {},
                    None,
                    [{"ports": [_port("UDP", 53), _port("TCP", 53)]}],
                    ("Egress",),
                ),
            )
    policies["monitoring"].append(
        _np(
            "prometheus",
            "monitoring",
            {"matchLabels": {"app": "prometheus"}},
            [{"from": [{"namespaceSelector": {"matchLabels": {"team": "platform"}}}]}],
        )
    )
    anps, baseline = _admin_policies(rng, ns_labels)
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
        for ns, labels in sorted(ns_labels.items())
    ]
    total = sum(d["spec"]["replicas"] for ws in workloads.values() for d in ws)
    return Cluster(namespaces, workloads, policies, anps, baseline, total)


class _NoAliases(_Dumper):  # type: ignore[misc, valid-type]
    """Shared rule objects are written out in full, not as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(path: Path, docs: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        yaml.dump_all(docs, f, Dumper=_NoAliases, sort_keys=False, default_flow_style=False)


def write_cluster(cluster: Cluster, out: Path, np_only: bool = False) -> ClusterStats:
    """Write the cluster's manifests under ``out`` (created): one file per namespace with the
    Namespace and its workloads, one per namespace for its NetworkPolicies, and (unless
    ``np_only``) one for the AdminNetworkPolicies and one for the baseline.

    Each Namespace comes first in the file of its own workloads: network-config-analyzer
    2.1.0 gives the pods that it reads before their Namespace object a namespace without
    labels (so namespaceSelectors miss them), and the order in which it reads a
    directory's files is the file system's."""
    out.mkdir(parents=True, exist_ok=True)
    for ns_doc in cluster.namespaces:
        ns = ns_doc["metadata"]["name"]
        _dump(out / f"namespace-{ns}.yaml", [ns_doc, *cluster.workloads.get(ns, [])])
    for ns, docs in cluster.network_policies.items():
        if docs:
            _dump(out / f"netpol-{ns}.yaml", docs)
    if not np_only:
        _dump(out / "admin-network-policies.yaml", cluster.admin_network_policies)
        _dump(out / "baseline-admin-network-policy.yaml", [cluster.baseline])
    return cluster.stats(np_only)


def iter_documents(cluster: Cluster, np_only: bool = False) -> Iterator[dict[str, Any]]:
    yield from cluster.namespaces
    for docs in cluster.workloads.values():
        yield from docs
    for docs in cluster.network_policies.values():
        yield from docs
    if not np_only:
        yield from cluster.admin_network_policies
        yield cluster.baseline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--np-only", action="store_true", help="no AdminNetworkPolicy, no baseline")
    args = p.parse_args(argv)
    stats = write_cluster(generate_cluster(args.seed, args.pods), args.out, args.np_only)
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
