"""Schema validation of rendered manifests: does the API server accept what a renderer wrote?

::

    manifest ─┬─ CRD kind (ANP, Calico, Cilium) ─ jsonschema + render/schemas/*.json ─┐
              ├─ built-in Kubernetes kind ─────── kubernetes-validate (strict) ───────┼─► violations
              └─ anything else ────────────────── "no schema for ..." ────────────────┘

``validate_manifests(rendering.manifests) == []`` is what a renderer test asserts. Nothing
passes unchecked: a manifest of an unknown apiVersion/kind is a violation, never a silent
pass. Each :class:`SchemaViolation` names the manifest (kind, name), the field
(``spec.ingress[0].from[1].namespaces``; ``""`` for the manifest itself) and what is wrong.

Built-in kinds (Namespace, Pod, Service, Deployment, networking.k8s.io NetworkPolicy, ...) are
checked by the ``kubernetes-validate`` package against its bundled *strict* schemas (unknown
fields rejected) for Kubernetes :data:`KUBERNETES_VERSION`. It works offline: the schemas ship
inside the wheel and it resolves ``$ref`` through a local registry only (checked in a network
namespace without network). It reports the first error of a manifest only, and re-reads its
schema files on each call (about 20 ms a manifest). Septum adds one check it lacks:
``metadata.name`` is required.

CRD kinds are checked with ``jsonschema`` (Draft 2020-12) against the schemas in
``septum/render/schemas/``, one file per kind, ``<kind>.<group>.<version>.json``, loaded lazily
from package data on first use and cached; all errors are reported. They were written by hand
from the projects' published CRDs (their ``openAPIV3Schema``), tightened where the CRD leaves
a check to CEL rules or to the controller: unknown fields are rejected
(``additionalProperties: false``; the CRDs are structural, so the API server prunes or, with
``kubectl --validate=strict``, rejects them), ``metadata`` allows only ObjectMeta fields and
requires a DNS-subdomain ``name``, CIDRs are checked by the custom formats ``cidr`` and
``ip-or-cidr``. Where each comes from, to update them:

- ``policy.networking.k8s.io/v1alpha1`` AdminNetworkPolicy, BaselineAdminNetworkPolicy:
  kubernetes-sigs/network-policy-api, ``config/crd/standard/policy.networking.k8s.io_{admin,
  baselineadmin}networkpolicies.yaml``, bundle-version v0.1.7 (ANP at commit 0638d394d89d,
  BANP's name rule at 00b70b7dbbdf), plus the experimental channel's ``namedPort`` and egress
  peer ``nodes`` (``config/crd/experimental/``). Enforced: priority 0..1000, at most 100
  rules per direction and 100 peers/ports per rule, rule ``name`` at most 100 characters,
  exactly one field per subject/peer/port, ports 1..65535, protocol TCP/UDP/SCTP, networks
  1..25 CIDRs (egress only), BANP actions Allow/Deny and (CEL) BANP named ``default``. Not
  enforced: portRange start < end.
- ``projectcalico.org/v3`` Tier, GlobalNetworkPolicy, NetworkPolicy, StagedGlobalNetworkPolicy,
  StagedNetworkPolicy, StagedKubernetesNetworkPolicy, GlobalNetworkSet, NetworkSet:
  projectcalico/calico, ``api/config/crd/projectcalico.org_<plural>.yaml`` (the v3 CRDs;
  commits 01326dcce2c2 for (staged) global policies, 0336f06dc11b for network policies with
  its maxItems/maxLength limits, 04d69c3371ea tiers, 21e678a6fee0 staged Kubernetes policies,
  0ed43653fc21 / 090b5fad6bd5 network sets). Enforced besides the CRD's types and enums: the
  CEL rules (tier default actions, ICMP needs protocol ICMP/ICMPv6, HTTP only on Allow,
  preDNAT/doNotTrack/applyOnForward), and from Calico's validator: ports need protocol
  TCP/UDP/SCTP/UDPLite, ports are 0..65535, ``"first:last"`` or a port name, protocol names.
  Not enforced: selector syntax.
- ``cilium.io/v2`` CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and ``cilium.io/v2alpha1``
  (and ``v2``) CiliumCIDRGroup: cilium/cilium, ``pkg/k8s/apis/cilium.io/client/crds/v2/
  ciliumnetworkpolicies.yaml`` (commit 02904c9bb255, controller-gen v0.19; the clusterwide CRD
  is generated from the same Go types) and ``v2alpha1/ciliumcidrgroups.yaml`` (commit
  169602439fe9). Enforced: spec or specs; a rule has exactly one of
  endpointSelector/nodeSelector (nodeSelector only in the clusterwide kind) and at least one of
  ingress/ingressDeny/egress/egressDeny; entities enum; port is a *string* (number or name);
  endPort 0..65535; protocol TCP/UDP/SCTP/VRRP/IGMP/ANY; deny rules take no L7; CIDR rules
  have exactly one of cidr/cidrGroupRef/cidrGroupSelector; fromRequires/toRequires empty
  (deprecated). L7 rules, listeners and TLS contexts are accepted without checking their
  insides.

Pure: reads only this package's (and kubernetes-validate's) read-only package data.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema
import kubernetes_validate
from jsonschema.exceptions import ValidationError

__all__ = [
    "CORE_KINDS",
    "CRD_KINDS",
    "KUBERNETES_VERSION",
    "SUPPORTED_KINDS",
    "SchemaViolation",
    "validate_manifest",
    "validate_manifests",
]

#: The Kubernetes version whose built-in schemas core kinds are checked against (the newest
#: that the pinned kubernetes-validate ships).
KUBERNETES_VERSION: Final = "1.37"

#: (apiVersion, kind) of the CRD kinds checked against septum/render/schemas/.
CRD_KINDS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy"),
        ("projectcalico.org/v3", "Tier"),
        ("projectcalico.org/v3", "GlobalNetworkPolicy"),
        ("projectcalico.org/v3", "NetworkPolicy"),
        ("projectcalico.org/v3", "StagedGlobalNetworkPolicy"),
        ("projectcalico.org/v3", "StagedNetworkPolicy"),
        ("projectcalico.org/v3", "StagedKubernetesNetworkPolicy"),
        ("projectcalico.org/v3", "GlobalNetworkSet"),
        ("projectcalico.org/v3", "NetworkSet"),
        ("cilium.io/v2", "CiliumNetworkPolicy"),
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
        ("cilium.io/v2alpha1", "CiliumCIDRGroup"),
        ("cilium.io/v2", "CiliumCIDRGroup"),
    }
)

#: (apiVersion, kind) of the built-in kinds Septum renders, checked by kubernetes-validate.
#: Any other built-in kind it knows is checked too; these are the ones tested.
CORE_KINDS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("v1", "Namespace"),
        ("v1", "Pod"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "DaemonSet"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    }
)

#: Every (apiVersion, kind) that validate_manifest is guaranteed to have a schema for.
SUPPORTED_KINDS: Final[frozenset[tuple[str, str]]] = CRD_KINDS | CORE_KINDS

#: API groups served by CRDs: their kinds never fall through to the built-in schemas.
_CRD_GROUPS: Final = frozenset(api_version.rpartition("/")[0] for api_version, _ in CRD_KINDS)
_MAX_MESSAGE: Final = 300


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """One way a manifest breaks its resource's schema.

    ``path`` names the field in the manifest, e.g. ``spec.ingress[0].from[1].namespaces``
    (``""``: the manifest itself); for a missing or unexpected field it is the object that
    should (not) hold it, and ``message`` names the field."""

    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.path or '<manifest>'}: {self.message}"


def validate_manifests(manifests: Iterable[Mapping[str, Any]]) -> list[SchemaViolation]:
    """Violations of all manifests, in manifest order (``[]``: all valid)."""
    return [v for manifest in manifests for v in validate_manifest(manifest)]


def validate_manifest(manifest: Mapping[str, Any]) -> list[SchemaViolation]:
    """Violations of one manifest against its resource's published schema (``[]``: valid).

    Cost: a CRD kind's schema is loaded once per process; a built-in kind costs about 20 ms
    (kubernetes-validate re-reads its schemas on each call)."""
    kind, name = _identity(manifest)
    api_version = manifest.get("apiVersion")
    if not isinstance(api_version, str) or not api_version or not kind:
        return [
            SchemaViolation(kind or "?", name, "", "apiVersion and kind must be non-empty strings")
        ]
    if (api_version, kind) in CRD_KINDS:
        errors: Iterable[ValidationError] = _crd_validator(api_version, kind).iter_errors(manifest)
    elif api_version.rpartition("/")[0] in _CRD_GROUPS:
        return [_no_schema(api_version, kind, name)]
    else:
        try:
            kubernetes_validate.validate(dict(manifest), KUBERNETES_VERSION, strict=True)
            errors = []
        except kubernetes_validate.SchemaNotFoundError:
            return [_no_schema(api_version, kind, name)]
        except kubernetes_validate.ValidationError as error:
            errors = [error]
        if not isinstance(manifest.get("metadata"), Mapping) or "name" not in manifest["metadata"]:
            errors = [*errors, _missing_name(manifest)]
    violations = {_violation(kind, name, error) for error in errors}
    return sorted(violations, key=lambda v: (v.path, v.message))


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str]:
    kind = manifest.get("kind")
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return (kind if isinstance(kind, str) else "", name if isinstance(name, str) else "?")


def _no_schema(api_version: str, kind: str, name: str) -> SchemaViolation:
    return SchemaViolation(
        kind, name, "", f"no schema for apiVersion {api_version!r} kind {kind!r}"
    )


def _missing_name(manifest: Mapping[str, Any]) -> ValidationError:
    metadata = manifest.get("metadata")
    if isinstance(metadata, Mapping):
        return ValidationError("'name' is a required property", path=["metadata"])
    return ValidationError("'metadata' is a required property", path=[])


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    group, _, version = api_version.rpartition("/")
    text = (
        resources.files("septum.render.schemas")
        .joinpath(f"{kind.lower()}.{group}.{version}.json")
        .read_text(encoding="utf-8")
    )
    return jsonschema.Draft202012Validator(json.loads(text), format_checker=_FORMATS)


_FORMATS: Final = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("cidr", raises=ValueError)
def _is_cidr(value: object) -> bool:
    """An IPv4 or IPv6 prefix "address/length" (host bits may be set, as Go's ParseCIDR allows)."""
    if not isinstance(value, str):
        return True
    _, slash, length = value.partition("/")
    if not slash or not length.isdigit():
        return False
    ipaddress.ip_network(value, strict=False)
    return True


@_FORMATS.checks("ip-or-cidr", raises=ValueError)
def _is_ip_or_cidr(value: object) -> bool:
    """An address or a prefix (Calico nets)."""
    if not isinstance(value, str) or "/" in value:
        return _is_cidr(value)
    ipaddress.ip_address(value)
    return True


def _violation(kind: str, name: str, error: ValidationError) -> SchemaViolation:
    error = _deepest(error)
    return SchemaViolation(kind, name, _path(error.absolute_path), _message(error))


def _deepest(error: ValidationError) -> ValidationError:
    """For an anyOf/oneOf over one object, the error of the branch that went furthest."""
    if error.validator in ("anyOf", "oneOf") and error.context and not _alternatives(error):
        deeper = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        if deeper and len({_path(e.absolute_path) for e in deeper}) == 1:
            return _deepest(max(deeper, key=lambda e: len(e.absolute_path)))
    return error


def _alternatives(error: ValidationError) -> list[str] | None:
    """The field names of an anyOf/oneOf whose branches each only require one field."""
    branches = error.validator_value
    if not isinstance(branches, list) or not all(
        isinstance(b, dict)
        and set(b) <= {"required", "properties"}
        and len(b.get("required", [])) == 1
        for b in branches
    ):
        return None
    return [b["required"][0] for b in branches]


def _message(error: ValidationError) -> str:
    if error.validator in ("anyOf", "oneOf"):
        fields = _alternatives(error)
        if fields is not None:
            quantity = "exactly one" if error.validator == "oneOf" else "at least one"
            return f"needs {quantity} of {', '.join(fields)}"
        if error.context:
            return _clip("; ".join(sorted({e.message for e in error.context})))
    if error.validator in ("not", "minProperties", "maxProperties", "anyOf", "oneOf"):
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        if isinstance(description, str):
            return description
    if error.validator == "required" and "then" in error.relative_schema_path:
        why = error.schema.get("description") if isinstance(error.schema, dict) else None
        if isinstance(why, str):
            return f"{error.message} ({why})"
    return _clip(_without_instance(error))


def _without_instance(error: ValidationError) -> str:
    """The message, with a long array/object it starts with shortened to its size."""
    instance = error.instance
    if isinstance(instance, list | dict):
        text = repr(instance)
        if len(text) > 40 and error.message.startswith(text):
            size = f"array of {len(instance)} items" if isinstance(instance, list) else "object"
            return size + error.message[len(text) :]
    return error.message


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _path(parts: Iterable[object]) -> str:
    return "".join(_step(part) for part in parts).lstrip(".")


def _step(part: object) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"
