"""Schema validation of rendered manifests (septum.render.validate): for each kind a realistic
valid manifest passes, and broken ones fail at the right field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import pytest

from septum.render.validate import (
    CORE_KINDS,
    CRD_KINDS,
    SUPPORTED_KINDS,
    SchemaViolation,
    validate_manifest,
    validate_manifests,
)

Manifest = dict[str, Any]
SCHEMAS = resources.files("septum.render.schemas")
SCHEMA_FILES = sorted(e.name for e in SCHEMAS.iterdir() if e.name.endswith(".json"))
SEL_WEB = {"matchLabels": {"app": "web"}}
SEL_PROD = {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}

# ------------------------------------------------------------------ valid manifests, per kind
VALID: dict[tuple[str, str], Manifest] = {
    ("v1", "Namespace"): {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "prod", "labels": {"septum.io/segment": "prod"}},
    },
    ("v1", "Pod"): {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "prod"},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"name": "http", "containerPort": 80}],
                }
            ]
        },
    },
    ("v1", "Service"): {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    },
    ("v1", "ServiceAccount"): {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "web", "namespace": "prod"},
    },
    ("v1", "ConfigMap"): {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "prod"},
        "data": {"k": "v"},
    },
    ("apps/v1", "Deployment"): {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {
            "replicas": 2,
            "selector": SEL_WEB,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    },
    ("apps/v1", "DaemonSet"): {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "septum"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": "agent", "image": "septum:0.1"}],
                },
            },
        },
    },
    ("networking.k8s.io/v1", "NetworkPolicy"): {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-ingress", "namespace": "prod"},
        "spec": {
            "podSelector": SEL_WEB,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": SEL_PROD, "podSelector": {}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}],
                }
            ],
            "egress": [
                {
                    "to": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["db"]}
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": "dns"}],
                }
            ],
        },
    },
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"): {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {
            "name": "septum-tier-platform",
            "labels": {"app.kubernetes.io/managed-by": "septum"},
        },
        "spec": {
            "priority": 10,
            "subject": {"pods": {"namespaceSelector": SEL_PROD, "podSelector": SEL_WEB}},
            "ingress": [
                {
                    "name": "allow-frontend",
                    "action": "Allow",
                    "from": [
                        {"namespaces": SEL_PROD},
                        {
                            "pods": {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app": "lb"}},
                            }
                        },
                    ],
                    "ports": [
                        {"portNumber": {"protocol": "TCP", "port": 443}},
                        {"portRange": {"protocol": "UDP", "start": 5000, "end": 5100}},
                        {"namedPort": "http"},
                    ],
                },
                {"action": "Pass", "from": [{"namespaces": {}}]},
            ],
            "egress": [
                {
                    "name": "deny-metadata",
                    "action": "Deny",
                    "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}],
                },
                {
                    "action": "Allow",
                    "to": [
                        {
                            "nodes": {
                                "matchExpressions": [
                                    {
                                        "key": "node-role.kubernetes.io/control-plane",
                                        "operator": "Exists",
                                    }
                                ]
                            }
                        }
                    ],
                },
            ],
        },
    },
    ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy"): {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "subject": {"namespaces": {}},
            "ingress": [{"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [
                {
                    "action": "Allow",
                    "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                    "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}],
                }
            ],
        },
    },
    ("projectcalico.org/v3", "Tier"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Tier",
        "metadata": {"name": "platform"},
        "spec": {"order": 100, "defaultAction": "Pass"},
    },
    ("projectcalico.org/v3", "GlobalNetworkPolicy"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "platform.allow-dns"},
        "spec": {
            "tier": "platform",
            "order": 10.5,
            "selector": "all()",
            "namespaceSelector": "has(projectcalico.org/name)",
            "types": ["Ingress", "Egress"],
            "ingress": [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {
                        "selector": "app == 'lb'",
                        "namespaceSelector": "global()",
                        "nets": ["10.0.0.0/8"],
                        "notNets": ["10.1.0.0/16"],
                    },
                    "destination": {"ports": [80, "8000:8080", "http"], "notPorts": [8081]},
                },
                {"action": "Log"},
            ],
            "egress": [
                {
                    "action": "Allow",
                    "protocol": "UDP",
                    "destination": {"selector": "k8s-app == 'kube-dns'", "ports": [53]},
                },
                {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                {"action": "Deny", "destination": {"nets": ["169.254.169.254"]}},
                {"action": "Pass"},
            ],
        },
    },
    ("projectcalico.org/v3", "NetworkPolicy"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {
            "tier": "default",
            "order": 100,
            "selector": "app == 'web'",
            "serviceAccountSelector": "role == 'frontend'",
            "types": ["Ingress"],
            "ingress": [
                {
                    "action": "Allow",
                    "protocol": 6,
                    "source": {"serviceAccounts": {"names": ["lb"]}},
                    "destination": {"ports": [443]},
                },
                {"action": "Allow", "source": {"services": {"name": "api", "namespace": "prod"}}},
                {"action": "Allow", "http": {"methods": ["GET"], "paths": [{"prefix": "/api"}]}},
                {"action": "Deny"},
            ],
        },
    },
    ("projectcalico.org/v3", "StagedGlobalNetworkPolicy"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "StagedGlobalNetworkPolicy",
        "metadata": {"name": "platform.preview"},
        "spec": {
            "stagedAction": "Set",
            "tier": "platform",
            "order": 1,
            "selector": "all()",
            "types": ["Egress"],
            "egress": [{"action": "Deny", "destination": {"nets": ["0.0.0.0/0"]}}],
        },
    },
    ("projectcalico.org/v3", "StagedNetworkPolicy"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "StagedNetworkPolicy",
        "metadata": {"name": "preview", "namespace": "prod"},
        "spec": {
            "stagedAction": "Learn",
            "selector": "app == 'web'",
            "types": ["Ingress"],
            "ingress": [{"action": "Allow", "protocol": "SCTP", "destination": {"ports": [9000]}}],
        },
    },
    ("projectcalico.org/v3", "StagedKubernetesNetworkPolicy"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "StagedKubernetesNetworkPolicy",
        "metadata": {"name": "preview", "namespace": "prod"},
        "spec": {
            "stagedAction": "Set",
            "podSelector": SEL_WEB,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"namespaceSelector": SEL_PROD}],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }
            ],
        },
    },
    ("projectcalico.org/v3", "GlobalNetworkSet"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkSet",
        "metadata": {"name": "corp", "labels": {"septum.io/network": "corp"}},
        "spec": {"nets": ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]},
    },
    ("projectcalico.org/v3", "NetworkSet"): {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkSet",
        "metadata": {"name": "partners", "namespace": "prod", "labels": {"role": "partner"}},
        "spec": {"nets": ["203.0.113.0/24"]},
    },
    ("cilium.io/v2", "CiliumNetworkPolicy"): {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {
            "description": "rendered by septum",
            "endpointSelector": SEL_WEB,
            "enableDefaultDeny": {"ingress": True, "egress": False},
            "ingress": [
                {
                    "fromEndpoints": [
                        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "prod", "app": "lb"}}
                    ],
                    "toPorts": [
                        {
                            "ports": [
                                {"port": "443", "protocol": "TCP"},
                                {"port": "8000", "endPort": 8080, "protocol": "TCP"},
                                {"port": "http"},
                            ]
                        }
                    ],
                },
                {
                    "fromCIDRSet": [
                        {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]},
                        {"cidrGroupRef": "corp"},
                    ]
                },
                {"fromEntities": ["host", "remote-node"]},
                {
                    "icmps": [
                        {
                            "fields": [
                                {"type": 8, "family": "IPv4"},
                                {"type": "EchoRequest", "family": "IPv6"},
                            ]
                        }
                    ]
                },
            ],
            "ingressDeny": [
                {"fromCIDR": ["192.0.2.0/24"], "toPorts": [{"ports": [{"port": "22"}]}]}
            ],
            "egress": [
                {"toEntities": ["kube-apiserver"]},
                {
                    "toCIDR": ["2001:db8::/32"],
                    "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}],
                },
            ],
            "egressDeny": [
                {
                    "toEndpoints": [
                        {
                            "matchExpressions": [
                                {"key": "app", "operator": "NotIn", "values": ["db"]}
                            ]
                        }
                    ]
                }
            ],
        },
    },
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"): {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "septum-hosts"},
        "specs": [
            {
                "nodeSelector": {"matchLabels": {"septum.io/enforced": "true"}},
                "ingress": [{"fromEntities": ["cluster"]}],
            },
            {
                "endpointSelector": {},
                "egressDeny": [{"toCIDRSet": [{"cidr": "169.254.169.254/32"}]}],
            },
        ],
    },
    ("cilium.io/v2alpha1", "CiliumCIDRGroup"): {
        "apiVersion": "cilium.io/v2alpha1",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "corp", "labels": {"septum.io/network": "corp"}},
        "spec": {"externalCIDRs": ["192.0.2.0/24", "2001:db8::/32"]},
    },
    ("cilium.io/v2", "CiliumCIDRGroup"): {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "corp"},
        "spec": {"externalCIDRs": []},
    },
}


def _key(key: tuple[str, str]) -> str:
    return f"{key[1]}@{key[0]}"


@pytest.mark.parametrize("key", sorted(VALID), ids=_key)
def test_valid_manifest_passes(key: tuple[str, str]) -> None:
    assert validate_manifest(VALID[key]) == []


def test_every_supported_kind_has_a_valid_example() -> None:
    assert set(VALID) == set(SUPPORTED_KINDS)


# ------------------------------------------------------------------ invalid manifests
Edit = Callable[[Manifest], None]


def _set(path: str, value: Any) -> Edit:
    """An edit that sets the field at a dotted path ("spec.ingress.0.action")."""

    def edit(m: Manifest) -> None:
        *parents, last = path.split(".")
        node: Any = m
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _delete(path: str) -> Edit:
    def edit(m: Manifest) -> None:
        *parents, last = path.split(".")
        node: Any = m
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return edit


ANP = ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy")
BANP = ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy")
K8S_NP = ("networking.k8s.io/v1", "NetworkPolicy")
TIER = ("projectcalico.org/v3", "Tier")
GNP = ("projectcalico.org/v3", "GlobalNetworkPolicy")
CNP_CALICO = ("projectcalico.org/v3", "NetworkPolicy")
SGNP = ("projectcalico.org/v3", "StagedGlobalNetworkPolicy")
SKNP = ("projectcalico.org/v3", "StagedKubernetesNetworkPolicy")
GNS = ("projectcalico.org/v3", "GlobalNetworkSet")
NS = ("projectcalico.org/v3", "NetworkSet")
CNP = ("cilium.io/v2", "CiliumNetworkPolicy")
CCNP = ("cilium.io/v2", "CiliumClusterwideNetworkPolicy")
CCG = ("cilium.io/v2alpha1", "CiliumCIDRGroup")

#: (kind, edit, expected path, substring of the message)
INVALID: list[tuple[str, tuple[str, str], Edit, str, str]] = [
    # AdminNetworkPolicy
    (
        "anp-action",
        ANP,
        _set("spec.ingress.0.action", "Reject"),
        "spec.ingress[0].action",
        "'Reject' is not one of",
    ),
    ("anp-priority-high", ANP, _set("spec.priority", 1001), "spec.priority", "maximum of 1000"),
    ("anp-priority-negative", ANP, _set("spec.priority", -1), "spec.priority", "minimum of 0"),
    (
        "anp-priority-missing",
        ANP,
        _delete("spec.priority"),
        "spec",
        "'priority' is a required property",
    ),
    (
        "anp-subject-missing",
        ANP,
        _delete("spec.subject"),
        "spec",
        "'subject' is a required property",
    ),
    (
        "anp-from-missing",
        ANP,
        _delete("spec.ingress.0.from"),
        "spec.ingress[0]",
        "'from' is a required",
    ),
    (
        "anp-from-empty",
        ANP,
        _set("spec.ingress.0.from", []),
        "spec.ingress[0].from",
        "should be non-empty",
    ),
    (
        "anp-unknown-field",
        ANP,
        _set("spec.ingress.0.from.0.namespaces.bogus", {}),
        "spec.ingress[0].from[0].namespaces",
        "'bogus' was unexpected",
    ),
    ("anp-unknown-spec-field", ANP, _set("spec.tier", "x"), "spec", "'tier' was unexpected"),
    (
        "anp-port-type",
        ANP,
        _set("spec.ingress.0.ports.0.portNumber.port", "443"),
        "spec.ingress[0].ports[0].portNumber.port",
        "is not of type 'integer'",
    ),
    (
        "anp-port-range",
        ANP,
        _set("spec.ingress.0.ports.0.portNumber.port", 70000),
        "spec.ingress[0].ports[0].portNumber.port",
        "maximum of 65535",
    ),
    (
        "anp-port-protocol",
        ANP,
        _set("spec.ingress.0.ports.0.portNumber.protocol", "ICMP"),
        "spec.ingress[0].ports[0].portNumber.protocol",
        "'ICMP' is not one of",
    ),
    (
        "anp-port-two-fields",
        ANP,
        _set(
            "spec.ingress.0.ports.2",
            {"namedPort": "a", "portNumber": {"protocol": "TCP", "port": 1}},
        ),
        "spec.ingress[0].ports[2]",
        "Exactly one of",
    ),
    (
        "anp-peer-two-fields",
        ANP,
        _set("spec.ingress.0.from.0.pods", {"namespaceSelector": {}, "podSelector": {}}),
        "spec.ingress[0].from[0]",
        "Exactly one of",
    ),
    (
        "anp-peer-empty",
        ANP,
        _set("spec.ingress.0.from.0", {}),
        "spec.ingress[0].from[0]",
        "Exactly one of",
    ),
    (
        "anp-ingress-networks",
        ANP,
        _set("spec.ingress.0.from.0", {"networks": ["10.0.0.0/8"]}),
        "spec.ingress[0].from[0]",
        "'networks' was unexpected",
    ),
    (
        "anp-bad-cidr",
        ANP,
        _set("spec.egress.0.to.0.networks.0", "10.0.0.0/33"),
        "spec.egress[0].to[0].networks[0]",
        "is not a 'cidr'",
    ),
    (
        "anp-cidr-without-prefix",
        ANP,
        _set("spec.egress.0.to.0.networks.0", "10.0.0.1"),
        "spec.egress[0].to[0].networks[0]",
        "is not a 'cidr'",
    ),
    (
        "anp-too-many-networks",
        ANP,
        _set("spec.egress.0.to.0.networks", [f"10.0.{i}.0/24" for i in range(26)]),
        "spec.egress[0].to[0].networks",
        "is too long",
    ),
    (
        "anp-pods-selector-missing",
        ANP,
        _delete("spec.subject.pods.podSelector"),
        "spec.subject.pods",
        "'podSelector' is a required property",
    ),
    (
        "anp-rule-name-long",
        ANP,
        _set("spec.ingress.0.name", "x" * 101),
        "spec.ingress[0].name",
        "is too long",
    ),
    (
        "anp-too-many-rules",
        ANP,
        _set("spec.ingress", [{"action": "Deny", "from": [{"namespaces": {}}]}] * 101),
        "spec.ingress",
        "array of 101 items is too long",
    ),
    (
        "anp-selector-operator",
        ANP,
        _set("spec.egress.1.to.0.nodes.matchExpressions.0.operator", "Has"),
        "spec.egress[1].to[0].nodes.matchExpressions[0].operator",
        "'Has' is not one of",
    ),
    (
        "anp-label-value",
        ANP,
        _set("spec.subject.pods.podSelector.matchLabels.app", "no spaces"),
        "spec.subject.pods.podSelector.matchLabels.app",
        "does not match",
    ),
    (
        "anp-name-missing",
        ANP,
        _delete("metadata.name"),
        "metadata",
        "'name' is a required property",
    ),
    (
        "anp-name-invalid",
        ANP,
        _set("metadata.name", "Not_A_Name"),
        "metadata.name",
        "does not match",
    ),
    (
        "anp-wrong-api-version",
        ANP,
        _set("apiVersion", "policy.networking.k8s.io/v1alpha2"),
        "",
        "no schema for",
    ),
    # BaselineAdminNetworkPolicy
    (
        "banp-not-default",
        BANP,
        _set("metadata.name", "baseline"),
        "metadata.name",
        "'default' was expected",
    ),
    (
        "banp-pass",
        BANP,
        _set("spec.ingress.0.action", "Pass"),
        "spec.ingress[0].action",
        "'Pass' is not one of",
    ),
    ("banp-priority", BANP, _set("spec.priority", 5), "spec", "'priority' was unexpected"),
    ("banp-spec-missing", BANP, _delete("spec"), "", "'spec' is a required property"),
    # Kubernetes NetworkPolicy (kubernetes-validate)
    ("k8s-np-unknown-field", K8S_NP, _set("spec.bogus", 1), "spec", "'bogus' was unexpected"),
    (
        "k8s-np-port-type",
        K8S_NP,
        _set("spec.ingress.0.ports.0.port", [80]),
        "spec.ingress[0].ports[0].port",
        "is not of type 'integer'",
    ),
    (
        "k8s-np-name-missing",
        K8S_NP,
        _delete("metadata.name"),
        "metadata",
        "'name' is a required property",
    ),
    (
        "k8s-np-wrong-group",
        K8S_NP,
        _set("apiVersion", "networking.example.com/v1"),
        "apiVersion",
        "is not one of",
    ),
    # Calico
    (
        "tier-default-action",
        TIER,
        _set("spec.defaultAction", "Allow"),
        "spec.defaultAction",
        "'Allow' is not one of",
    ),
    ("tier-order-type", TIER, _set("spec.order", "100"), "spec.order", "is not of type 'number'"),
    (
        "tier-kube-admin-deny",
        TIER,
        lambda m: m.update(metadata={"name": "kube-admin"}, spec={"order": 1}),
        "spec",
        "needs defaultAction Pass",
    ),
    (
        "tier-default-pass",
        TIER,
        _set("metadata.name", "default"),
        "spec.defaultAction",
        "'Deny' was expected",
    ),
    (
        "gnp-action",
        GNP,
        _set("spec.ingress.0.action", "Reject"),
        "spec.ingress[0].action",
        "'Reject' is not one of",
    ),
    (
        "gnp-action-missing",
        GNP,
        _delete("spec.ingress.1.action"),
        "spec.ingress[1]",
        "'action' is a required",
    ),
    ("gnp-types", GNP, _set("spec.types", ["Forward"]), "spec.types[0]", "'Forward' is not one of"),
    ("gnp-order-type", GNP, _set("spec.order", "10"), "spec.order", "is not of type 'number'"),
    (
        "gnp-port-out-of-range",
        GNP,
        _set("spec.ingress.0.destination.ports.0", 65536),
        "spec.ingress[0].destination.ports[0]",
        "maximum of 65535",
    ),
    (
        "gnp-port-bad-string",
        GNP,
        _set("spec.ingress.0.destination.ports.1", "80-90"),
        "spec.ingress[0].destination.ports[1]",
        "does not match",
    ),
    (
        "gnp-ports-without-protocol",
        GNP,
        _delete("spec.ingress.0.protocol"),
        "spec.ingress[0]",
        "ports need protocol",
    ),
    (
        "gnp-ports-with-icmp",
        GNP,
        _set("spec.ingress.0.protocol", "ICMP"),
        "spec.ingress[0].protocol",
        "'ICMP' is not one of",
    ),
    (
        "gnp-protocol",
        GNP,
        _set("spec.ingress.0.protocol", "tcpish"),
        "spec.ingress[0].protocol",
        "is not one of",
    ),
    (
        "gnp-icmp-type",
        GNP,
        _set("spec.egress.1.icmp.type", 255),
        "spec.egress[1].icmp.type",
        "maximum of 254",
    ),
    (
        "gnp-icmp-code-only",
        GNP,
        _set("spec.egress.1.icmp", {"code": 0}),
        "spec.egress[1].icmp",
        "'type' is a dependency",
    ),
    (
        "gnp-bad-net",
        GNP,
        _set("spec.ingress.0.source.nets.0", "10.0.0.0/40"),
        "spec.ingress[0].source.nets[0]",
        "is not a 'ip-or-cidr'",
    ),
    (
        "gnp-unknown-entity-field",
        GNP,
        _set("spec.ingress.0.source.namespace", "prod"),
        "spec.ingress[0].source",
        "'namespace' was unexpected",
    ),
    (
        "gnp-predNAT-egress",
        GNP,
        lambda m: m["spec"].update(preDNAT=True, applyOnForward=True),
        "spec.egress",
        "array of 4 items is expected to be empty",
    ),
    (
        "gnp-predNAT-egress-type",
        GNP,
        lambda m: m["spec"].update(preDNAT=True, applyOnForward=True),
        "spec.types",
        "a preDNAT policy has no Egress type",
    ),
    (
        "gnp-port-name-long",
        GNP,
        _set("spec.ingress.0.destination.ports.2", "a-very-long-port-name"),
        "spec.ingress[0].destination.ports[2]",
        "does not match",
    ),
    ("gnp-donottrack-forward", GNP, _set("spec.doNotTrack", True), "spec", "need applyOnForward"),
    (
        "calico-np-no-global-fields",
        CNP_CALICO,
        _set("spec.preDNAT", True),
        "spec",
        "'preDNAT' was unexpected",
    ),
    (
        "calico-np-http-deny",
        CNP_CALICO,
        _set("spec.ingress.2.action", "Deny"),
        "spec.ingress[2].action",
        "'Allow' was expected",
    ),
    (
        "calico-np-service-name",
        CNP_CALICO,
        _delete("spec.ingress.1.source.services.name"),
        "spec.ingress[1].source.services",
        "'name' is a required property",
    ),
    (
        "sgnp-staged-action",
        SGNP,
        _set("spec.stagedAction", "Apply"),
        "spec.stagedAction",
        "'Apply' is not one of",
    ),
    (
        "sknp-port",
        SKNP,
        _set("spec.ingress.0.ports.0.port", 0),
        "spec.ingress[0].ports[0].port",
        "minimum of 1",
    ),
    (
        "sknp-unknown-field",
        SKNP,
        _set("spec.selector", "all()"),
        "spec",
        "'selector' was unexpected",
    ),
    (
        "gns-bad-net",
        GNS,
        _set("spec.nets.1", "2001:db8::/129"),
        "spec.nets[1]",
        "is not a 'ip-or-cidr'",
    ),
    (
        "ns-nets-type",
        NS,
        _set("spec.nets", "203.0.113.0/24"),
        "spec.nets",
        "is not of type 'array'",
    ),
    # Cilium
    (
        "cnp-port-int",
        CNP,
        _set("spec.ingress.0.toPorts.0.ports.0.port", 443),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "is not of type 'string'",
    ),
    (
        "cnp-port-range-string",
        CNP,
        _set("spec.ingress.0.toPorts.0.ports.0.port", "80-90"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "does not match",
    ),
    (
        "cnp-port-too-big",
        CNP,
        _set("spec.ingress.0.toPorts.0.ports.0.port", "65536"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "does not match",
    ),
    (
        "cnp-protocol",
        CNP,
        _set("spec.ingress.0.toPorts.0.ports.0.protocol", "ICMP"),
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "'ICMP' is not one of",
    ),
    (
        "cnp-end-port",
        CNP,
        _set("spec.ingress.0.toPorts.0.ports.1.endPort", 65536),
        "spec.ingress[0].toPorts[0].ports[1].endPort",
        "maximum of 65535",
    ),
    (
        "cnp-entity",
        CNP,
        _set("spec.ingress.2.fromEntities.0", "internet"),
        "spec.ingress[2].fromEntities[0]",
        "'internet' is not one of",
    ),
    (
        "cnp-cidr-set-two",
        CNP,
        _set("spec.ingress.1.fromCIDRSet.1.cidr", "10.0.0.0/8"),
        "spec.ingress[1].fromCIDRSet[1]",
        "exactly one of cidr, cidrGroupRef, cidrGroupSelector",
    ),
    (
        "cnp-cidr",
        CNP,
        _set("spec.egress.1.toCIDR.0", "2001:db8::"),
        "spec.egress[1].toCIDR[0]",
        "is not a 'cidr'",
    ),
    (
        "cnp-deny-l7",
        CNP,
        _set("spec.ingressDeny.0.toPorts.0.rules", {"http": [{}]}),
        "spec.ingressDeny[0].toPorts[0]",
        "'rules' was unexpected",
    ),
    (
        "cnp-from-in-egress",
        CNP,
        _set("spec.egress.0.fromEntities", ["world"]),
        "spec.egress[0]",
        "'fromEntities' was unexpected",
    ),
    (
        "cnp-node-selector",
        CNP,
        _set("spec.nodeSelector", {}),
        "spec",
        "'nodeSelector' was unexpected",
    ),
    (
        "cnp-no-subject",
        CNP,
        _delete("spec.endpointSelector"),
        "spec",
        "'endpointSelector' is a required",
    ),
    (
        "cnp-no-rules",
        CNP,
        lambda m: m.update(spec={"endpointSelector": {}}),
        "spec",
        "needs at least one of ingress, ingressDeny, egress, egressDeny",
    ),
    ("cnp-no-spec", CNP, _delete("spec"), "", "needs at least one of spec, specs"),
    (
        "cnp-default-deny-type",
        CNP,
        _set("spec.enableDefaultDeny.ingress", "yes"),
        "spec.enableDefaultDeny.ingress",
        "is not of type 'boolean'",
    ),
    (
        "cnp-icmp-type",
        CNP,
        _set("spec.ingress.3.icmps.0.fields.0.type", "Ping"),
        "spec.ingress[3].icmps[0].fields[0].type",
        "is not one of",
    ),
    (
        "cnp-requires",
        CNP,
        _set("spec.ingress.0.fromRequires", [{"matchLabels": {"a": "b"}}]),
        "spec.ingress[0].fromRequires",
        "is expected to be empty",
    ),
    (
        "ccnp-both-selectors",
        CCNP,
        _set("specs.0.endpointSelector", {}),
        "specs[0]",
        "exactly one of endpointSelector, nodeSelector",
    ),
    ("ccnp-specs-empty", CCNP, _set("specs", []), "specs", "should be non-empty"),
    (
        "ccg-cidrs-missing",
        CCG,
        _delete("spec.externalCIDRs"),
        "spec",
        "'externalCIDRs' is a required",
    ),
    (
        "ccg-cidr",
        CCG,
        _set("spec.externalCIDRs.0", "192.0.2.0"),
        "spec.externalCIDRs[0]",
        "is not a 'cidr'",
    ),
]


@pytest.mark.parametrize(
    ("key", "edit", "path", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_manifest_fails_at_the_field(
    key: tuple[str, str], edit: Edit, path: str, message: str
) -> None:
    manifest = copy.deepcopy(VALID[key])
    edit(manifest)
    violations = validate_manifest(manifest)
    assert any(v.path == path and message in v.message for v in violations), violations
    assert all(v.kind == key[1] for v in violations)


# ------------------------------------------------------------------ the API


def test_violation_names_the_manifest_and_the_field() -> None:
    manifest = copy.deepcopy(VALID[ANP])
    manifest["spec"]["ingress"][0]["from"][0]["namespaces"] = []
    [violation] = validate_manifest(manifest)
    assert violation == SchemaViolation(
        "AdminNetworkPolicy",
        "septum-tier-platform",
        "spec.ingress[0].from[0].namespaces",
        "[] is not of type 'object'",
    )
    assert str(violation).startswith("AdminNetworkPolicy/septum-tier-platform: spec.ingress[0]")


def test_all_errors_of_a_crd_manifest_are_reported_in_path_order() -> None:
    manifest = copy.deepcopy(VALID[ANP])
    manifest["spec"]["priority"] = 5000
    manifest["spec"]["egress"][0]["action"] = "Drop"
    paths = [v.path for v in validate_manifest(manifest)]
    assert paths == ["spec.egress[0].action", "spec.priority"]


@pytest.mark.parametrize(
    "manifest",
    [
        {"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint", "metadata": {"name": "h"}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicyX", "metadata": {"name": "x"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        {"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}},
    ],
    ids=lambda m: f"{m['kind']}@{m['apiVersion']}",
)
def test_unknown_kind_is_a_violation_not_a_pass(manifest: Manifest) -> None:
    [violation] = validate_manifest(manifest)
    assert violation.message.startswith("no schema for")


@pytest.mark.parametrize("manifest", [{}, {"kind": "Namespace"}, {"apiVersion": "v1", "kind": 3}])
def test_manifest_without_api_version_or_kind_is_a_violation(manifest: Manifest) -> None:
    [violation] = validate_manifest(manifest)
    assert "apiVersion and kind" in violation.message


def test_validate_manifests_concatenates_in_order() -> None:
    bad_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad_Name", "bogus": 1}}
    bad_tier = copy.deepcopy(VALID[TIER])
    bad_tier["spec"]["defaultAction"] = "Log"
    violations = validate_manifests([VALID[ANP], bad_tier, bad_ns])
    assert [v.kind for v in violations] == ["Tier", "Namespace"]
    assert validate_manifests(VALID.values()) == []


# ------------------------------------------------------------------ the schema files


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_file_is_a_valid_json_schema(name: str) -> None:
    schema = json.loads(SCHEMAS.joinpath(name).read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    api_version, kind = (
        schema["properties"]["apiVersion"]["const"],
        schema["properties"]["kind"]["const"],
    )
    group, _, version = api_version.rpartition("/")
    assert name == f"{kind.lower()}.{group}.{version}.json"


def test_every_crd_kind_has_a_schema_file_and_every_file_a_kind() -> None:
    expected = {
        f"{k.lower()}.{a.rpartition('/')[0]}.{a.rpartition('/')[2]}.json" for a, k in CRD_KINDS
    }
    assert expected == set(SCHEMA_FILES)


@pytest.mark.parametrize("key", sorted(SUPPORTED_KINDS), ids=_key)
def test_every_supported_kind_has_a_schema(key: tuple[str, str]) -> None:
    api_version, kind = key
    violations = validate_manifest(
        {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    )
    assert not any(v.message.startswith("no schema") for v in violations)


def test_core_and_crd_kinds_do_not_overlap() -> None:
    assert not CORE_KINDS & CRD_KINDS
