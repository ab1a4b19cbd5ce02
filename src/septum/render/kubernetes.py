"""Septum → Kubernetes: AdminNetworkPolicy, NetworkPolicy, BaselineAdminNetworkPolicy.

``render_kubernetes(repo, at)`` is ``semantics.md`` "Kubernetes meaning" in reverse::

    Repository ──resolve_policy(at)──► tiers in order (staged policies, expired rules out)
      failsafe ─────────────────────────► ANP priority base (Allow); its ingress from
                                            outside the cluster: default-deny NetworkPolicies
      every tier but the last app tier ─► per policy, ANPs holding its allow/deny rules with
                                          the tier's earlier passes carved out (one group per
                                          subject cell), then per policy a trailing Deny-all
                                          ANP (also carved) for a tier whose default is deny
      last tier, allow-only, deny default ► NetworkPolicies per namespace (union of allows,
                                            deny once selected)
      repository default deny ──────────► BANP "default" (deny all) + per-namespace
                                            default-deny-ingress NetworkPolicy
      sources outside the cluster ──────► per cell of pods, NetworkPolicies "external-ingress"
        that the ANP tiers allow at ingress      (ipBlocks with excepts; see below)
    then the inventory (Namespaces, Pods) when asked.

Why every tier but the last may be an ANP: ANPs are first-match across priorities with
Allow/Deny, which is exactly Septum's walk through tiers when each tier's default deny is
a trailing Deny-all ANP for the subjects of that tier's policies. NetworkPolicy can only be
the last layer before the repository default, so only the last tier goes there, and only when
it is allow-only with a deny default (an allow-only tier with a pass default is the same when
the repository default is deny).

**Pass is compiled away, never rendered as Pass.** Septum's pass skips the rest of *its
tier*; a Kubernetes Pass skips *every remaining ANP* and goes to NetworkPolicy. So a pass rule
P emits nothing itself: every later allow/deny rule R of the same tier (and the tier's default
deny) is cut to R minus P = (R's peers minus P's peers, R's ports) ∪ (R's peers, R's ports
minus P's ports), computed exactly on label selectors (``labelselector.subtract_terms``),
address intervals and port intervals. A flow P matches then matches no later ANP rule of that
tier and reaches the next tier's ANPs, as in Septum. When P's policy applies to only some of
R's policy's subjects, R's policy is rendered per subject cell (inside P's subjects: cut;
outside: whole), the cells being disjoint so first-match order holds in each. Past the term
caps the cut is given up and reported (DROPPED) against the pass rule.

**Sources outside the cluster at ingress.** ANP (and BANP) ingress peers are pods only
(v1alpha1), so such sources never match an ANP and are decided by NetworkPolicies alone. With
the repository default deny (default-deny-ingress NetworkPolicies select every enforced pod),
the ANP tiers' decision on them is worked out by the same cutting over the ordered tiers
(``external_decisions``): in each tier the first rule with an address peer (cidr, network,
users, ``all()``, no peers) decides, pass goes on, then the tier default when a policy of the
tier applies; pod peers never match such sources, so only the policies with address peers
(and, for a deny default, whether any policy applies) split the pods into cells. What a cell
is allowed becomes an "external-ingress" NetworkPolicy (ipBlocks, ports); everything else stays
denied by the default-deny-ingress ones. That is exact, and the ANP-ingress limitations are not
reported, except for the denies when a selective workload (in no NetworkPolicy) or the
NetworkPolicy tier's own ipBlocks could allow what an ANP tier denies; past the caps, with
inexact subjects or with some portless protocols only, nothing is emitted and they stay.

What Kubernetes cannot say is reported as a :class:`~septum.render.manifests.Limitation`
(never dropped in silence): ANP ingress has no CIDR peers (v1alpha1), so sources outside the
cluster can only be allowed or denied by NetworkPolicy (above); ipBlocks never select pods,
so a CIDR peer that also matches managed workloads (``cidrMatchesWorkloads``) is rendered with
pod peers for the workloads holding addresses in it at ``at``; icmp has no port form; log
rules, staged policies and rule expiry have no Kubernetes form; modes other than enforced are
rendered by keeping the workloads out of the subjects that would enforce a deny.

Pure: no I/O. Cost: O(resolve) + O(policies · rules · peers · DNF terms + namespaces).
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, summarize_address_range
from typing import Any

from septum.engine.resolve import ResolvedPolicyRules, ResolvedTier, minimal_ranges, resolve_policy
from septum.model.resources import (
    ALL_PORTS,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    Direction,
    IPAddress,
    IPNetwork,
    Mode,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    ServicePort,
    TierDefault,
    Workload,
)
from septum.model.selector import Selector
from septum.render.enforced import enforced_tiers, mode_exclusions
from septum.render.labelselector import (
    DEFAULT_MAX_TERMS,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_NAME_LABEL,
    Bias,
    LabelSelector,
    Operator,
    Requirement,
    ScopedSelector,
    SelectorTranslation,
    Translations,
    intersect_terms,
    label_key_problem,
    label_value_problem,
    subtract_terms,
)
from septum.render.manifests import Approximation, Limitation, Manifest, Rendering

__all__ = [
    "ANP_API_VERSION",
    "ANP_MAX_PRIORITY",
    "KubernetesRenderSettings",
    "render_kubernetes",
]

ANP_API_VERSION = "policy.networking.k8s.io/v1alpha1"
NP_API_VERSION = "networking.k8s.io/v1"
ANP_MAX_PRIORITY = 1000
ANP_MAX_RULES = 100  # per direction
ANP_MAX_PEERS = 100  # per rule
ANP_MAX_NETWORKS = 25  # per networks peer
WORKLOAD_ANNOTATION = "septum.io/workload"
EVERY_V4 = IPv4Network("0.0.0.0/0")
EVERY_V6 = IPv6Network("::/0")


@dataclass(frozen=True, slots=True)
class KubernetesRenderSettings:
    """Options of :func:`render_kubernetes` (all have the documented defaults).

    ``include_inventory``: also render a Namespace per namespace and a Pod per workload.
    ``default_namespace``: where a workload without namespace lives.
    ``anp_priority_base``: the first ANP priority used (ANP priorities are 0..1000).
    ``use_network_policies``: render the last allow-only tier as NetworkPolicies (else ANPs).
    ``default_deny_external_ingress``: with the repository default deny, also emit a
    default-deny-ingress NetworkPolicy per namespace (BANP cannot deny sources outside the
    cluster). ``closed_world_patterns``: rewrite ``starts with``/``ends with``/``contains``
    over the label values of the inventory (exact for that inventory).
    """

    include_inventory: bool = False
    default_namespace: str = "default"
    name_prefix: str = "septum"
    anp_priority_base: int = 0
    use_network_policies: bool = True
    default_deny_external_ingress: bool = True
    closed_world_patterns: bool = True
    max_selector_terms: int = DEFAULT_MAX_TERMS
    pod_image: str = "registry.k8s.io/pause:3.9"


# ---------------------------------------------------------------------------- small helpers

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str, max_len: int = 63) -> str:
    """``text`` as a DNS-1123 label: lowercase, ``[a-z0-9-]``, alphanumeric at both ends,
    at most ``max_len`` characters (a short hash keeps long or rewritten names unique)."""
    lowered = _NOT_DNS.sub("-", text.lower().replace(".", "-").replace("_", "-")).strip("-")
    if lowered == text and len(text) <= max_len:
        return text
    digest = f"{_crc(text):08x}"
    head = lowered[: max_len - len(digest) - 1].strip("-")
    return f"{head}-{digest}" if head else f"x-{digest}"


def _crc(text: str) -> int:
    value = 0
    for ch in text.encode():  # FNV-1a, 32 bits: stable across runs (hash() is salted)
        value = ((value ^ ch) * 16777619) & 0xFFFFFFFF
    return value


def rule_source(policy: str, direction: Direction, rule: Rule) -> str:
    return f"policy/{policy}/{direction.value}/{rule.index}"


def loss(action: Action, fewer_matches: bool) -> Approximation:
    """How the traffic changes when a rule of ``action`` matches fewer (or more) flows than
    written: fewer allows narrow, fewer denies widen. A pass moves flows to later tiers,
    whose outcome may go either way: it is reported as widened."""
    if action is Action.ALLOW:
        return Approximation.NARROWED if fewer_matches else Approximation.WIDENED
    if action is Action.DENY:
        return Approximation.WIDENED if fewer_matches else Approximation.NARROWED
    return Approximation.WIDENED


def split_ports(
    services: Sequence[ServicePort],
) -> tuple[tuple[ServicePort, ...] | None, tuple[ServicePort, ...]]:
    """(ports to render, or None for "every protocol and port"; ports without a Kubernetes
    form: icmp/icmpv6, and a range of port 0 only)."""
    if not services or any(s.protocol is None for s in services):
        return None, ()
    kept: list[ServicePort] = []
    lost: list[ServicePort] = []
    for s in sorted(set(services), key=_port_order):
        if s.protocol is not None and s.protocol.has_ports and s.ports.last >= 1:
            kept.append(s)
        else:
            lost.append(s)
    return tuple(kept), tuple(lost)


def _port_order(s: ServicePort) -> tuple[str, int, int]:
    return (s.protocol.value if s.protocol else "", s.ports.first, s.ports.last)


def port_bounds(s: ServicePort) -> tuple[int, int]:
    """A port range without port 0 (no real destination port; Kubernetes starts at 1)."""
    return max(1, s.ports.first), s.ports.last


#: An address range with holes: ``(cidr, excepts)``, every except inside the cidr (ipBlock).
Block = tuple[IPNetwork, tuple[IPNetwork, ...]]


def blocks(cidrs: Iterable[IPNetwork], holes: Iterable[IPNetwork] = ()) -> list[Block]:
    """``cidrs`` minus ``holes`` as ipBlock-like (cidr, excepts) pairs: a cidr inside a hole
    disappears; holes inside a cidr become its excepts. O(cidrs · holes)."""
    hs = list(holes)
    out: list[Block] = []
    for c in cidrs:
        if any(c.version == h.version and c.subnet_of(h) for h in hs):  # type: ignore[arg-type]
            continue
        inside = sorted(
            {h for h in hs if h.version == c.version and h.subnet_of(c)},  # type: ignore[arg-type]
            key=_net_order,
        )
        out.append((c, tuple(inside)))
    return out


def expand(found: Iterable[Block]) -> list[IPNetwork]:
    """Blocks as plain CIDRs (for targets without excepts): a minimal covering list."""
    nets: list[IPNetwork] = []
    for cidr, holes in found:
        r = minimal_ranges((cidr,), holes)
        nets.extend((*r.v4, *r.v6))
    return sorted(set(nets), key=_net_order)


@dataclass(frozen=True, slots=True)
class AddressPeers:
    """What a rule's peers mean once translated: a union of pods and address ranges.

    ``everything``: some peer matches every address (``all()``, or no peers at all).
    ``pods``: (namespace, pod) selectors. ``ranges``: address ranges (never select pods).
    ``notes``: (what, fewer matches?, detail, workloads concerned) for the caller to report
    against the rule (fewer matches None: same meaning, rewritten).
    """

    everything: bool = False
    pods: tuple[ScopedSelector, ...] = ()
    ranges: tuple[Block, ...] = ()
    notes: tuple[tuple[str, bool | None, str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.everything and not self.pods and not self.ranges


# ---------------------------------------------------------------------------- matches

#: Address intervals ``(version, first, last)``, sorted, disjoint and not adjacent.
Nets = tuple[tuple[int, int, int], ...]
#: Port intervals ``(protocol, first, last)`` over tcp/udp/sctp ports 1..65535, normalized.
Ports = tuple[tuple[Protocol, int, int], ...]

_PORTED = (Protocol.SCTP, Protocol.TCP, Protocol.UDP)
_EVERY_NET: Nets = ((4, 0, 2**32 - 1), (6, 0, 2**128 - 1))
_EVERY_PORT: Ports = tuple((p, 1, 65535) for p in _PORTED)
#: Cap on the pieces one rule is cut into when passes are compiled away.
MAX_PIECES = 64


def _normal_intervals(items: Iterable[tuple[Any, int, int]]) -> list[tuple[Any, int, int]]:
    out: list[tuple[Any, int, int]] = []
    for k, a, b in sorted(items, key=lambda x: (str(x[0]), x[1], x[2])):
        if out and out[-1][0] == k and a <= out[-1][2] + 1:
            if b > out[-1][2]:
                out[-1] = (k, out[-1][1], b)
        else:
            out.append((k, a, b))
    return out


def _minus_intervals(
    xs: Sequence[tuple[Any, int, int]], ys: Sequence[tuple[Any, int, int]]
) -> list[tuple[Any, int, int]]:
    out: list[tuple[Any, int, int]] = []
    for k, a, b in xs:
        pieces = [(a, b)]
        for yk, ya, yb in ys:
            if yk != k:
                continue
            nxt: list[tuple[int, int]] = []
            for pa, pb in pieces:
                if yb < pa or ya > pb:
                    nxt.append((pa, pb))
                    continue
                if pa < ya:
                    nxt.append((pa, ya - 1))
                if yb < pb:
                    nxt.append((yb + 1, pb))
            pieces = nxt
        out.extend((k, pa, pb) for pa, pb in pieces)
    return _normal_intervals(out)


def _overlap(xs: Sequence[tuple[Any, int, int]], ys: Sequence[tuple[Any, int, int]]) -> bool:
    return any(k == yk and a <= yb and ya <= b for k, a, b in xs for yk, ya, yb in ys)


def nets_of(found: AddressPeers) -> Nets:
    """The address ranges of translated peers as intervals (``everything``: every address)."""
    if found.everything:
        return _EVERY_NET
    items: list[tuple[int, int, int]] = []
    for cidr, holes in found.ranges:
        items.extend(
            _minus_intervals(
                [(cidr.version, int(cidr.network_address), int(cidr.broadcast_address))],
                [(h.version, int(h.network_address), int(h.broadcast_address)) for h in holes],
            )
        )
    return tuple(_normal_intervals(items))


def cidrs_of(nets: Nets) -> list[IPNetwork]:
    """Intervals as a minimal list of CIDRs, sorted."""
    out: list[IPNetwork] = []
    for v, a, b in nets:
        first: IPAddress = IPv4Address(a) if v == 4 else IPv6Address(a)
        last: IPAddress = IPv4Address(b) if v == 4 else IPv6Address(b)
        out.extend(summarize_address_range(first, last))
    return out


def ports_of_services(services: tuple[ServicePort, ...] | None) -> Ports | None:
    if services is None:
        return None
    return tuple(
        _normal_intervals(
            (s.protocol, *port_bounds(s)) for s in services if s.protocol is not None
        )
    )


@dataclass(frozen=True, slots=True)
class Match:
    """What one rule matches, in Kubernetes terms: pods (a union of terms) and address
    ranges (which never select pods), on ``ports`` (None: every protocol and port)."""

    pods: tuple[ScopedSelector, ...]
    nets: Nets
    ports: Ports | None

    @property
    def empty(self) -> bool:
        return (not self.pods and not self.nets) or self.ports == ()

    def services(self) -> tuple[ServicePort, ...] | None:
        if self.ports is None:
            return None
        return tuple(ServicePort(p, PortRange(a, b)) for p, a, b in self.ports)

    def without(self, other: Match, cap: int) -> list[Match] | None:
        """``self`` minus ``other`` as a union of matches (None past ``cap`` terms):
        (peers outside other's, same ports) ∪ (same peers, ports outside other's)."""
        if self.ports is not None and other.ports is not None and not _overlap(
            self.ports, other.ports
        ):
            return [self]
        common = intersect_terms(self.pods, other.pods, cap)
        if common is None:
            return None
        if not common and not _overlap(self.nets, other.nets):
            return [self]
        pods = subtract_terms(self.pods, other.pods, cap)
        if pods is None:
            return None
        out = [Match(pods, tuple(_minus_intervals(self.nets, other.nets)), self.ports)]
        if other.ports is not None:
            mine = self.ports if self.ports is not None else _EVERY_PORT
            out.append(
                Match(self.pods, self.nets, tuple(_minus_intervals(mine, other.ports)))
            )
        return [m for m in out if not m.empty]


# ---------------------------------------------------------------------------- external boxes

#: Every protocol without ports (icmp, ...), as one pseudo port interval of a :data:`Box`.
_PORTLESS = (Protocol.ICMP, 0, 0)
_EVERY_SERVICE: Ports = tuple(_normal_intervals((*_EVERY_PORT, _PORTLESS)))
#: Sources outside the cluster on some services: (address intervals, port intervals where
#: ``_PORTLESS`` stands for every protocol without ports). Never empty in a box list.
Box = tuple[Nets, Ports]
#: Cap on the boxes one subject cell's external sources are described with.
MAX_BOXES = 256


def box_of(m: Match) -> Box:
    """The sources outside the cluster a match matches (its address ranges, its ports)."""
    return m.nets, (_EVERY_SERVICE if m.ports is None else m.ports)


def _meet(xs: Sequence[tuple[Any, int, int]], ys: Sequence[tuple[Any, int, int]]) -> Any:
    return tuple(_minus_intervals(xs, _minus_intervals(xs, ys)))


def box_and(a: Box, b: Box) -> Box | None:
    nets, ports = _meet(a[0], b[0]), _meet(a[1], b[1])
    return (nets, ports) if nets and ports else None


def box_minus(a: Box, b: Box) -> list[Box]:
    """``a`` minus ``b`` as disjoint boxes: (addresses outside b's, a's ports) ∪ (addresses
    inside b's, a's ports outside b's)."""
    if box_and(a, b) is None:
        return [a]
    out: list[Box] = []
    outside = tuple(_minus_intervals(a[0], b[0]))
    if outside:
        out.append((outside, a[1]))
    ports = tuple(_minus_intervals(a[1], b[1]))
    if ports:
        out.append((_meet(a[0], b[0]), ports))
    return out


def boxes_minus(xs: Sequence[Box], b: Box) -> list[Box]:
    return [piece for x in xs for piece in box_minus(x, b)]


def boxes_and(xs: Sequence[Box], b: Box) -> list[Box]:
    return [m for x in xs if (m := box_and(x, b)) is not None]


def _box_key(xs: Iterable[Box]) -> tuple[Box, ...]:
    return tuple(sorted(set(xs), key=str))


def ip_blocks(nets: Nets) -> list[Block]:
    """Address intervals as few ipBlocks: per IP family, the CIDRs covering them, or their
    smallest common supernet with the gaps as excepts when that is shorter."""
    out: list[Block] = []
    for version in (4, 6):
        mine = tuple(n for n in nets if n[0] == version)
        if not mine:
            continue
        plain = cidrs_of(mine)
        bits = 32 if version == 4 else 128
        first, last = mine[0][1], mine[-1][2]
        prefix = bits - (first ^ last).bit_length()
        start = first >> (bits - prefix) << (bits - prefix) if prefix else 0
        end = start + (1 << (bits - prefix)) - 1
        span: IPNetwork = (
            IPv4Network((start, prefix)) if version == 4 else IPv6Network((start, prefix))
        )
        holes = cidrs_of(tuple(_minus_intervals([(version, start, end)], mine)))
        if holes and 1 + len(holes) < len(plain):
            out.append((span, tuple(holes)))
        else:
            out.extend((c, ()) for c in plain)
    return out


# ---------------------------------------------------------------------------- inventory facts


@dataclass(slots=True)
class Inventory:
    """Facts about the repository's workloads that every Kubernetes-like target needs: their
    namespaces, namespace labels, modes, addresses at ``at`` and known label values."""

    repo: Repository
    at: datetime
    default_namespace: str
    namespace_of: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    label_values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    limitations: list[Limitation] = field(default_factory=list)

    @classmethod
    def of(cls, repo: Repository, at: datetime, default_namespace: str) -> Inventory:
        inv = cls(repo, at, default_namespace)
        used_keys = {k for s in _all_selectors(repo) for k in s.keys}
        namespaced_selectors = any(
            k == NAMESPACE_LABEL or k.startswith(NAMESPACE_LABEL_PREFIX) for k in used_keys
        )
        for w in repo.workloads:
            ns = w.namespace or w.labels.get(NAMESPACE_LABEL) or default_namespace
            inv.namespace_of[w.name] = ns
            if not (w.namespace or w.labels.get(NAMESPACE_LABEL)) and namespaced_selectors:
                inv.limitations.append(
                    Limitation(
                        f"workload/{w.name}",
                        "workload without namespace placed in a namespace",
                        Approximation.WIDENED,
                        f"rendered in namespace {ns!r}: selectors on namespace labels see it "
                        "there, while Septum sees no namespace",
                    )
                )
            for k, v in w.labels.items():
                inv.label_values[k].add(v)
        for ns in sorted(set(inv.namespace_of.values())):
            inv.namespace_labels[ns] = {NAMESPACE_NAME_LABEL: ns}
        for w in repo.workloads:  # namespace labels from the workloads' namespace.septum.io/*
            ns = inv.namespace_of[w.name]
            labels = inv.namespace_labels[ns]
            for k, v in sorted(w.labels.items()):
                if k.startswith(NAMESPACE_LABEL_PREFIX):
                    key = k[len(NAMESPACE_LABEL_PREFIX) :]
                    if key == NAMESPACE_NAME_LABEL and v != ns:
                        inv._inconsistent(w, f"{k}={v!r} but the namespace is {ns!r}")
                    elif key not in labels:
                        labels[key] = v
                    elif labels[key] != v:
                        inv._inconsistent(w, f"{k}={v!r}, another workload says {labels[key]!r}")
        for w in repo.workloads:  # every workload must see exactly its namespace's labels
            ns = inv.namespace_of[w.name]
            own = {
                k[len(NAMESPACE_LABEL_PREFIX) :]: v
                for k, v in w.labels.items()
                if k.startswith(NAMESPACE_LABEL_PREFIX)
            }
            missing = sorted(
                k
                for k in inv.namespace_labels[ns]
                if k not in own and NAMESPACE_LABEL_PREFIX + k in used_keys
            )
            if missing:
                inv._inconsistent(
                    w, f"lacks namespace labels {missing} that other workloads of {ns!r} carry"
                )
            for key, value in inv.namespace_labels[ns].items():
                problem = label_key_problem(key) or label_value_problem(value)
                if problem is not None:
                    inv.limitations.append(
                        Limitation(
                            f"workload/{w.name}",
                            f"namespace label {key}={value!r} is not a valid Kubernetes label",
                            Approximation.DROPPED,
                            problem,
                        )
                    )
        return inv

    def _inconsistent(self, w: Workload, detail: str) -> None:
        self.limitations.append(
            Limitation(
                f"workload/{w.name}",
                "namespace labels differ from its namespace's",
                Approximation.WIDENED,
                detail + ": selectors on namespace.septum.io/* match its namespace's labels",
            )
        )

    def known_values(self, key: str) -> Iterable[str]:
        return self.label_values.get(key, ())

    def addresses(self, w: Workload) -> list[IPAddress]:
        """The workload's addresses valid at ``at``, in written order."""
        return [b.address for b in w.addresses if b.valid_at(self.at)]

    def holders(self, cidrs: Iterable[IPNetwork]) -> list[str]:
        """Names of the workloads holding an address in one of ``cidrs`` at ``at``."""
        nets = tuple(cidrs)
        return sorted(
            w.name
            for w in self.repo.workloads
            if any(a in c for a in self.addresses(w) for c in nets)
        )

    def labels_of(self, name: str) -> Mapping[str, str]:
        w = self.repo.workload(name)
        return w.labels if w is not None else {}

    def covered(self, name: str, cidrs: Iterable[IPNetwork]) -> bool:
        """Whether every address the workload holds at ``at`` lies in one of ``cidrs``."""
        nets = tuple(cidrs)
        w = self.repo.workload(name)
        return w is not None and all(any(a in c for c in nets) for a in self.addresses(w))

    def selected_by(self, terms: Iterable[ScopedSelector]) -> list[str]:
        """Names of the workloads a union of (namespace, pod) terms selects, as rendered."""
        found = tuple(terms)
        out: list[str] = []
        for w in self.repo.workloads:
            pod = {k: v for k, v in w.labels.items() if not k.startswith(NAMESPACE_LABEL_PREFIX)}
            ns_labels = self.namespace_labels[self.namespace_of[w.name]]
            if any(t.matches(pod, ns_labels) for t in found):
                out.append(w.name)
        return out

    def user_addresses(self) -> list[IPNetwork]:
        return [
            IPv4Network(b.address) if isinstance(b.address, IPv4Address) else IPv6Network(b.address)
            for u in self.repo.users
            for b in u.sessions
            if b.valid_at(self.at)
        ]

    def network_ranges(self, name: str) -> list[Block]:
        """A network's addresses that can be attributed to it: its ranges minus excepts minus
        user sessions at ``at`` (workload addresses are pods, which ranges never select)."""
        net = next((n for n in self.repo.networks if n.name == name), None)
        if net is None:
            return []
        return blocks(net.cidrs, [*net.excepts, *self.user_addresses()])

    def pods_by_name(self, names: Iterable[str]) -> tuple[ScopedSelector, ...]:
        """Pod peers selecting exactly the named workloads (by ``septum.io/name``)."""
        per_ns: dict[str, list[str]] = defaultdict(list)
        for name in names:
            per_ns[self.namespace_of[name]].append(name)
        return tuple(
            ScopedSelector(
                LabelSelector(((NAMESPACE_NAME_LABEL, ns),)),
                LabelSelector(
                    (),
                    (Requirement(NAME_LABEL, Operator.IN, tuple(sorted(per_ns[ns]))),),
                ),
            )
            for ns in sorted(per_ns)
        )


def _net_order(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def _all_selectors(repo: Repository) -> Iterable[Selector]:
    for p in repo.policies:
        yield p.applies_to
        for rules in (p.ingress, p.egress):
            for r in rules or ():
                for peer in r.peers:
                    if peer.selector is not None and peer.kind is not PeerKind.USERS:
                        yield peer.selector


def translate_peers(
    inv: Inventory,
    peers: Sequence[Peer],
    translate: Callable[[Selector, Bias], SelectorTranslation],
    bias: Bias,
    *,
    cidr_matches_workloads: bool,
) -> AddressPeers:
    """Translate a rule's peers (a union) for Kubernetes-like targets. O(peers · workloads).

    CIDR peers that hold managed workloads' addresses (``cidr_matches_workloads``) become pod
    peers for those workloads, taken together over the rule's CIDRs: a pod peer matches every
    address of the pod, so a workload only some of whose addresses are in them is named only
    with ``Bias.SUPERSET`` (and reported either way)."""
    if not peers:
        return AddressPeers(everything=True)
    everything = False
    pods: list[ScopedSelector] = []
    ranges: list[Block] = []
    notes: list[tuple[str, bool | None, str, tuple[str, ...]]] = []
    cidrs: list[IPNetwork] = []
    for peer in peers:
        if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT):
            assert peer.selector is not None
            if peer.selector.is_all:
                everything = True
                continue
            t = translate(peer.selector, bias)
            pods.extend(t.terms)
            if not t.exact:
                notes.append(
                    (
                        f"selector {peer} not exactly expressible",
                        bias is Bias.SUBSET,
                        "; ".join(t.problems),
                        (),
                    )
                )
            if t.closed_world:
                notes.append(
                    (
                        f"selector {peer} rewritten over the inventory's label values",
                        None,
                        "exact for the current inventory; re-render when labels change",
                        (),
                    )
                )
            for n in inv.repo.networks:
                if peer.selector.matches(n.labels):
                    ranges.extend(inv.network_ranges(n.name))
        elif peer.kind is PeerKind.NETWORK:
            assert peer.ref is not None
            ranges.extend(inv.network_ranges(peer.ref))
        elif peer.kind is PeerKind.CIDR:
            assert peer.cidr is not None
            ranges.append((peer.cidr, ()))
            cidrs.append(peer.cidr)
        else:  # USERS
            assert peer.selector is not None
            held = [
                IPv4Network(b.address)
                if isinstance(b.address, IPv4Address)
                else IPv6Network(b.address)
                for u in inv.repo.users
                if peer.selector.matches(u.labels)
                for b in u.sessions
                if b.valid_at(inv.at)
            ]
            ranges.extend((h, ()) for h in held)
            notes.append(
                (
                    f"users peer {peer}",
                    None,
                    "rendered as the addresses its users' sessions hold at the render time; "
                    "re-render when sessions change",
                    (),
                )
            )
    holders = inv.holders(cidrs) if cidrs and cidr_matches_workloads and not everything else []
    if holders:
        text = ", ".join(str(c) for c in cidrs)
        bad = [n for n in holders if label_value_problem(n)]
        partial = [n for n in holders if n not in bad and not inv.covered(n, cidrs)]
        named = [
            n for n in holders if n not in bad and (bias is Bias.SUPERSET or n not in partial)
        ]
        if named:
            pods.extend(inv.pods_by_name(named))
            notes.append(
                (
                    f"cidr {text} also matches managed workloads",
                    None,
                    f"ipBlocks never select pods: rendered as pod peers for {named} "
                    "(their addresses at the render time)",
                    (),
                )
            )
        if partial:
            notes.append(
                (
                    f"cidr {text} holds only some addresses of workloads {partial}",
                    bias is Bias.SUBSET,
                    "a pod peer matches every address of the pod: "
                    + ("named anyway" if bias is Bias.SUPERSET else "left out"),
                    tuple(partial),
                )
            )
        if bad:
            notes.append(
                (
                    f"cidr {text}: workloads {bad} cannot be named",
                    True,
                    "their names are not valid label values",
                    tuple(bad),
                )
            )
    return AddressPeers(
        everything,
        tuple(dict.fromkeys(pods)),
        tuple(sorted(set(ranges), key=lambda b: (_net_order(b[0]), b[1]))),
        tuple(notes),
    )


# ---------------------------------------------------------------------------- the renderer


@dataclass(frozen=True, slots=True)
class _Pass:
    """A pass rule of the tier being rendered: its policy, subjects and match."""

    policy: str
    source: str
    subject: tuple[ScopedSelector, ...]
    match: Match


@dataclass(frozen=True, slots=True)
class _Item:
    """An allow/deny rule (or a tier default) to render, with the passes before it."""

    name: str
    source: str
    action: Action
    match: Match
    passes: tuple[_Pass, ...]


@dataclass(frozen=True, slots=True)
class _ExternalPolicy:
    """An ANP-tier policy with ingress rules: its rendered ingress matches, in order (log
    rules and rules with nothing left to render are not there)."""

    rp: ResolvedPolicyRules
    rules: list[tuple[Action, Match]]


class _KubernetesRenderer:
    """One rendering: collects manifests and limitations. Not reused across calls."""

    def __init__(self, repo: Repository, at: datetime, settings: KubernetesRenderSettings) -> None:
        self.repo = repo
        self.at = at
        self.s = settings
        self.inv = Inventory.of(repo, at, settings.default_namespace)
        self.limits: list[Limitation] = list(self.inv.limitations)
        self.anps: list[Manifest] = []
        self.nps: list[Manifest] = []
        self.banp: list[Manifest] = []
        self.priority = settings.anp_priority_base
        self.external_ingress_in_network_policy = (
            repo.settings.default_action is RepositoryDefault.DENY
            and settings.default_deny_external_ingress
        )
        self.failsafe_ingress: list[tuple[Nets, tuple[ServicePort, ...] | None]] = []
        # Ingress from outside the cluster, decided by the ANP tiers (see external_ingress):
        # per ANP tier, its default and its ingress policies (subject, (action, match)...).
        self.external_tiers: list[tuple[ResolvedTier, list[_ExternalPolicy]]] = []
        self.external_limits: list[Limitation] = []  # said only while not rendered exactly
        self.np_tier_external = False  # the NetworkPolicy tier allows some external source
        self.names: set[str] = set()
        self._translations = Translations(
            self.inv.known_values if self.s.closed_world_patterns else None,
            self.s.max_selector_terms,
        )
        # Not subject to any rule: idle (unmanaged), visibility and test (never enforced).
        modes = mode_exclusions(
            repo,
            (Mode.IDLE, Mode.VISIBILITY, Mode.TEST),
            "left out of every policy subject, so nothing is enforced for it "
            "(Kubernetes has no audit mode)",
        )
        self.unenforced, self.selective = modes.unenforced, modes.selective
        self.limits.extend(modes.limitations)

    # -------------------------------------------------------------- selectors and peers

    def translate(self, selector: Selector, bias: Bias) -> SelectorTranslation:
        return self._translations(selector, bias)

    def subjects(self, source: str, selector: Selector) -> tuple[ScopedSelector, ...]:
        t = self.translate(selector, Bias.SUPERSET)
        if not t.exact:
            extra = [
                n
                for n in self.inv.selected_by(t.terms)
                if not selector.matches(self.inv.labels_of(n))
            ]
            self.limits.append(
                Limitation(
                    source,
                    f"appliesTo {selector.text!r} not exactly expressible",
                    Approximation.DROPPED,
                    "rendered for a superset of its workloads, which get its allows, denies "
                    "and tier default either way: " + "; ".join(t.problems),
                    workloads=tuple(extra),
                )
            )
        if t.closed_world:
            self.limits.append(
                Limitation(
                    source,
                    f"appliesTo {selector.text!r} rewritten over the inventory's label values",
                    Approximation.REWRITTEN,
                    "exact for the current inventory; re-render when labels change",
                )
            )
        return t.terms

    @staticmethod
    def excluding(term: ScopedSelector, names: Sequence[str]) -> ScopedSelector:
        if not names:
            return term
        return ScopedSelector(
            term.namespaces,
            term.pods.with_requirements(
                (Requirement(NAME_LABEL, Operator.NOT_IN, tuple(sorted(names))),)
            ),
        )

    @staticmethod
    def only(term: ScopedSelector, names: Sequence[str]) -> ScopedSelector:
        return ScopedSelector(
            term.namespaces,
            term.pods.with_requirements(
                (Requirement(NAME_LABEL, Operator.IN, tuple(sorted(names))),)
            ),
        )

    def peers(self, source: str, rule: Rule, bias: Bias) -> AddressPeers:
        found = translate_peers(
            self.inv,
            rule.peers,
            self.translate,
            bias,
            cidr_matches_workloads=self.repo.settings.cidr_matches_workloads,
        )
        for what, fewer, detail, workloads in found.notes:
            approx = Approximation.REWRITTEN if fewer is None else self.loss(rule.action, fewer)
            self.limits.append(Limitation(source, what, approx, detail, workloads=workloads))
        return found

    @staticmethod
    def loss(action: Action, fewer_matches: bool) -> Approximation:
        """:func:`loss`, but for a pass: its flows are carved out of the later rules of its
        tier, so a pass matching more or fewer flows may change the outcome either way."""
        if action is Action.PASS:
            return Approximation.DROPPED
        return loss(action, fewer_matches)

    def ports_of(self, source: str, rule: Rule) -> tuple[ServicePort, ...] | bool | None:
        """Rendered ports; None = every port; False = nothing left (skip the rule)."""
        kept, lost = split_ports(rule.services)
        if lost:
            self.limits.append(
                Limitation(
                    source,
                    f"services {[str(s) for s in lost]} have no Kubernetes port form",
                    self.loss(rule.action, True),
                    "left out of the rule (Kubernetes policies match TCP, UDP and SCTP ports)",
                )
            )
        if kept is not None and not kept:
            return False
        return kept

    def note_rule(self, source: str, rule: Rule) -> None:
        if rule.expires is not None:
            self.limits.append(
                Limitation(
                    source,
                    f"rule expires at {rule.expires.isoformat()}",
                    Approximation.REWRITTEN,
                    "Kubernetes has no expiry: exact until then; re-render after it",
                )
            )

    # -------------------------------------------------------------- ANP

    def anp_ports(self, ports: tuple[ServicePort, ...]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for s in ports:
            assert s.protocol is not None
            proto = s.protocol.value.upper()
            first, last = port_bounds(s)
            if first == last:
                out.append({"portNumber": {"protocol": proto, "port": first}})
            else:
                out.append({"portRange": {"protocol": proto, "start": first, "end": last}})
        return out

    def rule_match(
        self, policy: str, direction: Direction, rule: Rule, bias: Bias
    ) -> Match | None:
        """What ``rule`` matches in Kubernetes terms, with its limitations reported; None
        when nothing is left to render (log rules, ports without a Kubernetes form)."""
        source = rule_source(policy, direction, rule)
        self.note_rule(source, rule)
        if rule.action is Action.LOG:
            self.limits.append(
                Limitation(
                    source,
                    "log rule",
                    Approximation.REWRITTEN,
                    "Kubernetes policies cannot log; the rule never decides, so it is left out",
                )
            )
            return None
        ports = self.ports_of(source, rule)
        if ports is False:
            return None
        found = self.peers(source, rule, bias)
        nets = nets_of(found)
        pods = (ScopedSelector(),) if found.everything else found.pods
        services = ports if isinstance(ports, tuple) else None
        if direction is Direction.INGRESS and nets and rule.action is not Action.PASS:
            # (an ingress pass of external sources needs nothing: ANP ingress rules never
            # match them, so they always go on to the NetworkPolicy layer)
            what = (
                "sources outside the cluster"
                if found.everything
                else f"address ranges {[str(r) for r in cidrs_of(nets)][:8]}"
            )
            limit = Limitation(
                source,
                f"{what} cannot be matched by an AdminNetworkPolicy ingress rule",
                loss(rule.action, True),
                "ANP v1alpha1 ingress peers are namespaces and pods only",
                external=True,
            )
            self.limits.append(limit)
            self.external_limits.append(limit)
        m = Match(pods, nets, ports_of_services(services))
        return None if m.empty else m

    def anp_entries(
        self, name: str, action: Action, direction: Direction, m: Match
    ) -> list[dict[str, Any]]:
        """ANP rules for one match (address ranges only on egress: ANP ingress peers are
        pods); split when it has more than ANP_MAX_PEERS peers (a union: same meaning)."""
        peers: list[dict[str, Any]] = [_pods_or_namespaces(t) for t in m.pods]
        if direction is Direction.EGRESS and m.nets:
            texts = [str(c) for c in cidrs_of(m.nets)]
            for i in range(0, len(texts), ANP_MAX_NETWORKS):
                peers.append({"networks": texts[i : i + ANP_MAX_NETWORKS]})
        out: list[dict[str, Any]] = []
        services = m.services()
        for i in range(0, len(peers), ANP_MAX_PEERS):
            entry: dict[str, Any] = {
                "name": name[:100],
                "action": action.value.capitalize(),
                "from" if direction is Direction.INGRESS else "to": peers[i : i + ANP_MAX_PEERS],
            }
            if services is not None:
                entry["ports"] = self.anp_ports(services)
            out.append(entry)
        return out

    def unique_name(self, base: str) -> str:
        name = dns_label(base, 253)
        candidate, n = name, 1
        while candidate in self.names:
            n += 1
            candidate = dns_label(f"{base}-{n}", 253)
        self.names.add(candidate)
        return candidate

    def emit_anp(
        self,
        base: str,
        subject: ScopedSelector,
        ingress: list[dict[str, Any]],
        egress: list[dict[str, Any]],
        source: str,
    ) -> None:
        spec: dict[str, Any] = {"priority": self.priority, "subject": _pods_or_namespaces(subject)}
        if ingress:
            spec["ingress"] = ingress
        if egress:
            spec["egress"] = egress
        if self.priority > ANP_MAX_PRIORITY:
            self.limits.append(
                Limitation(
                    source,
                    f"ANP priority {self.priority} is above {ANP_MAX_PRIORITY}",
                    Approximation.DROPPED,
                    "too many ANPs for the priority range; the API server rejects this one",
                )
            )
        self.anps.append(
            {
                "apiVersion": ANP_API_VERSION,
                "kind": "AdminNetworkPolicy",
                "metadata": {
                    "name": self.unique_name(base),
                    "annotations": {"septum.io/source": source},
                },
                "spec": spec,
            }
        )
        self.priority += 1

    def anp_tier(self, rt: ResolvedTier, policies: Sequence[ResolvedPolicyRules]) -> None:
        """A tier as ANPs: per policy (in order) its allow and deny rules with every earlier
        pass of the tier carved out of them, then the tier's default deny likewise carved.

        Septum's pass skips the rest of its tier; Kubernetes' Pass would skip every later
        ANP. So no Pass is emitted: a flow that a pass matches simply matches no later ANP
        rule of its tier (they are cut to exclude it) and goes on to the next tier's ANPs,
        exactly as in Septum. Where the pass's policy applies to only some of a later
        policy's subjects, that policy is rendered per subject cell (inside / outside)."""
        passes: dict[Direction, list[_Pass]] = {d: [] for d in Direction}
        plans: list[tuple[ResolvedPolicyRules, dict[Direction, list[_Item]]]] = []
        external: list[_ExternalPolicy] = []
        for rp in policies:
            items: dict[Direction, list[_Item]] = {d: [] for d in Direction}
            seen: list[tuple[Action, Match]] = []
            if rp.rules(Direction.INGRESS) is not None:
                external.append(_ExternalPolicy(rp, seen))
            for d in Direction:
                for rule in rp.rules(d) or ():
                    if rule.action is Action.PASS:
                        m = self.rule_match(rp.name, d, rule, Bias.SUBSET)
                        if m is not None and d is Direction.INGRESS:
                            seen.append((rule.action, m))
                        if m is not None:
                            subject = self.subjects(f"policy/{rp.name}", rp.policy.applies_to)
                            passes[d].append(
                                _Pass(rp.name, rule_source(rp.name, d, rule), subject, m)
                            )
                        continue
                    bias = Bias.SUPERSET if rule.action is Action.DENY else Bias.SUBSET
                    m = self.rule_match(rp.name, d, rule, bias)
                    if m is not None and d is Direction.INGRESS:
                        seen.append((rule.action, m))
                    if m is not None:
                        name = f"{rp.name}/{d.value}/{rule.index}"
                        source = rule_source(rp.name, d, rule)
                        items[d].append(_Item(name, source, rule.action, m, tuple(passes[d])))
            plans.append((rp, items))
        self.external_tiers.append((rt, external))
        unenforced = list(self.unenforced)
        for rp, items in plans:
            self.emit_carved(
                f"{self.s.name_prefix}-{rp.policy.tier}-{rp.name}",
                f"policy/{rp.name}",
                rp,
                items,
                partial(self.excluding, names=unenforced),
            )
        if rt.tier.default_action is TierDefault.DENY:
            self.anp_tier_default(rt, policies, passes)

    def cells(
        self, subject: tuple[ScopedSelector, ...], others: dict[str, tuple[ScopedSelector, ...]]
    ) -> list[tuple[tuple[ScopedSelector, ...], frozenset[str]]] | None:
        """``subject`` split into disjoint cells by which of the ``others`` (pass policies'
        subjects) apply there: (terms, names of the policies that apply). None past the cap."""
        cap = self.s.max_selector_terms
        out: list[tuple[tuple[ScopedSelector, ...], frozenset[str]]] = [(subject, frozenset())]
        for name, terms in others.items():
            nxt: list[tuple[tuple[ScopedSelector, ...], frozenset[str]]] = []
            for cell, inside in out:
                within = intersect_terms(cell, terms, cap)
                outside = subtract_terms(cell, terms, cap)
                if within is None or outside is None:
                    return None
                if within:
                    nxt.append((within, inside | {name}))
                if outside:
                    nxt.append((outside, inside))
            out = nxt
            if len(out) > MAX_PIECES:
                return None
        return out

    def carve(self, item: _Item, passes: Sequence[_Pass]) -> list[Match]:
        """``item``'s match minus the matches of ``passes`` (a union of pieces)."""
        pieces = [item.match]
        for p in passes:
            nxt: list[Match] = []
            for piece in pieces:
                found = piece.without(p.match, self.s.max_selector_terms)
                if found is None:
                    nxt = []
                    break
                if piece.ports is None and any(f.ports is not None for f in found):
                    self.limits.append(
                        Limitation(
                            item.source,
                            f"protocols without ports (icmp) not carved by {p.source}",
                            loss(item.action, True),
                            "the pass hands on some ports only; what this rule keeps of "
                            "those peers is written with ports, which leaves icmp out",
                        )
                    )
                nxt.extend(found)
            else:
                pieces = list(dict.fromkeys(nxt))
                if len(pieces) <= MAX_PIECES:
                    continue
            self.limits.append(
                Limitation(
                    p.source,
                    f"pass not carved out of rule {item.name}",
                    Approximation.DROPPED,
                    "too many label selectors: flows this pass hands on are decided by that "
                    "later rule of the same tier instead",
                )
            )
            return [item.match]
        return pieces

    def emit_carved(
        self,
        base: str,
        source: str,
        rp: ResolvedPolicyRules,
        items: dict[Direction, list[_Item]],
        shape: Callable[[ScopedSelector], ScopedSelector],
    ) -> None:
        """ANPs for one policy's rules (``items``) over its subjects, cut by the earlier
        passes of its tier: one group of consecutive ANPs per subject cell."""
        subject = self.subjects(f"policy/{rp.name}", rp.policy.applies_to)
        others: dict[str, tuple[ScopedSelector, ...]] = {}
        for d in Direction:
            for it in items[d]:
                for p in it.passes:
                    if p.policy != rp.name:
                        others.setdefault(p.policy, p.subject)
        found = self.cells(subject, others)
        if found is None:
            for d in Direction:
                for it in items[d]:
                    for p in it.passes:
                        if p.policy != rp.name:
                            self.limits.append(
                                Limitation(
                                    p.source,
                                    f"pass not carved out of policy {rp.name}",
                                    Approximation.DROPPED,
                                    "its subjects need too many label selectors: flows this "
                                    f"pass hands on are decided by {rp.name} instead",
                                )
                            )
            found = [(subject, frozenset())]
        groups: list[tuple[tuple[ScopedSelector, ...], dict[Direction, list[dict[str, Any]]]]] = []
        for terms, inside in found:
            rendered: dict[Direction, list[dict[str, Any]]] = {d: [] for d in Direction}
            for d in Direction:
                for it in items[d]:
                    applicable = [
                        p for p in it.passes if p.policy == rp.name or p.policy in inside
                    ]
                    for piece in self.carve(it, applicable):
                        rendered[d].extend(self.anp_entries(it.name, it.action, d, piece))
            if rendered[Direction.INGRESS] or rendered[Direction.EGRESS]:
                groups.append((terms, rendered))
        total = sum(len(terms) for terms, _ in groups)
        k = 0
        for terms, rendered in groups:
            chunks = max(
                (len(rendered[d]) + ANP_MAX_RULES - 1) // ANP_MAX_RULES for d in Direction
            )
            for term in terms:
                for c in range(chunks):
                    suffix = (f"-{k}" if total > 1 else "") + (f"-part{c}" if chunks > 1 else "")
                    self.emit_anp(
                        base + suffix,
                        shape(term),
                        rendered[Direction.INGRESS][c * ANP_MAX_RULES : (c + 1) * ANP_MAX_RULES],
                        rendered[Direction.EGRESS][c * ANP_MAX_RULES : (c + 1) * ANP_MAX_RULES],
                        source,
                    )
                k += 1
            if chunks > 1:
                self.limits.append(
                    Limitation(
                        source,
                        f"more than {ANP_MAX_RULES} rules in a direction",
                        Approximation.REWRITTEN,
                        f"split over {chunks} ANPs of consecutive priorities (same first match)",
                    )
                )

    def deny_all(self, d: Direction, action: str, name: str) -> dict[str, Any]:
        if d is Direction.INGRESS:
            return {"name": name, "action": action, "from": [{"namespaces": {}}]}
        return {
            "name": name,
            "action": action,
            "to": [{"namespaces": {}}, {"networks": [str(EVERY_V4), str(EVERY_V6)]}],
        }

    def anp_tier_default(
        self,
        rt: ResolvedTier,
        policies: Sequence[ResolvedPolicyRules],
        passes: dict[Direction, list[_Pass]],
    ) -> None:
        """A deny-default tier: per policy, Deny everything for its subjects in the directions
        it has rules for, minus what the tier's passes hand on; selective workloads get Allow
        instead (a default deny is not enforced on them, and it ends the evaluation)."""
        t = rt.tier
        ingress_covered = False
        everything = Match((ScopedSelector(),), _EVERY_NET, None)
        excluded = [*self.unenforced, *self.selective]
        for rp in policies:
            dirs = [d for d in Direction if rp.rules(d) is not None]
            if not dirs:
                continue
            ingress_covered = ingress_covered or Direction.INGRESS in dirs
            for action, suffix, rule_name in (
                (Action.DENY, "default", f"{t.name}/default-deny"),
                (Action.ALLOW, "default-selective", f"{t.name}/default-deny-not-enforced"),
            ):
                shape: Callable[[ScopedSelector], ScopedSelector]
                if action is Action.ALLOW:
                    selective = [
                        w.name
                        for w in self.repo.workloads
                        if w.name in self.selective and rp.policy.applies_to.matches(w.labels)
                    ]
                    if not selective:
                        continue
                    shape = partial(self.only, names=selective)
                else:
                    shape = partial(self.excluding, names=excluded)
                items = {
                    d: [_Item(rule_name, f"tier/{t.name}", action, everything, tuple(passes[d]))]
                    if d in dirs
                    else []
                    for d in Direction
                }
                self.emit_carved(
                    f"{self.s.name_prefix}-{t.name}-{rp.name}-{suffix}",
                    f"tier/{t.name}",
                    rp,
                    items,
                    shape,
                )
        if ingress_covered:
            limit = Limitation(
                f"tier/{t.name}",
                "tier default deny does not cover ingress from outside the cluster",
                Approximation.WIDENED,
                "ANP ingress rules match pods only; such flows go on to NetworkPolicies",
                external=True,
            )
            self.limits.append(limit)
            self.external_limits.append(limit)

    def failsafe(self) -> None:
        entries = self.repo.settings.failsafe
        if not entries:
            return
        rendered: dict[Direction, list[dict[str, Any]]] = {d: [] for d in Direction}
        for i, e in enumerate(entries):
            source = f"settings/failsafe/{i}"
            kept, lost = split_ports(e.services)
            if lost:
                self.limits.append(
                    Limitation(
                        source,
                        f"failsafe services {[str(s) for s in lost]} have no Kubernetes form",
                        Approximation.NARROWED,
                        "left out",
                    )
                )
            if kept is not None and not kept:
                continue
            pods: tuple[ScopedSelector, ...] = (ScopedSelector(),)
            nets = _EVERY_NET
            if e.cidrs:
                # A failsafe matches addresses: a workload holding one is rendered as a pod
                # (every address of the pod), so a holder with addresses outside it gets more.
                holders = self.inv.holders(e.cidrs)
                bad = [n for n in holders if label_value_problem(n)]
                partial = [n for n in holders if n not in bad and not self.inv.covered(n, e.cidrs)]
                if bad:
                    self.limits.append(
                        Limitation(
                            source,
                            f"workloads {bad} cannot be named",
                            Approximation.NARROWED,
                            "their names are not valid label values",
                            workloads=tuple(bad),
                        )
                    )
                if partial:
                    self.limits.append(
                        Limitation(
                            source,
                            f"cidrs hold only some addresses of workloads {partial}",
                            Approximation.WIDENED,
                            "rendered as pod peers, which match every address of the pod",
                            workloads=tuple(partial),
                        )
                    )
                pods = self.inv.pods_by_name(n for n in holders if n not in bad)
                nets = nets_of(AddressPeers(ranges=tuple((c, ()) for c in e.cidrs)))
            m = Match(pods, nets, ports_of_services(kept))
            for d in Direction:
                if e.direction is not None and e.direction is not d:
                    continue
                if d is Direction.INGRESS and self.external_ingress_in_network_policy:
                    # External sources are decided by the default-deny-ingress
                    # NetworkPolicies alone (ANP ingress never matches them): allow it there.
                    self.failsafe_ingress.append((m.nets, m.services()))
                elif d is Direction.INGRESS and e.cidrs:
                    self.limits.append(
                        Limitation(
                            source,
                            f"address ranges {[str(c) for c in e.cidrs][:8]} cannot be matched "
                            "by an AdminNetworkPolicy ingress rule",
                            Approximation.NARROWED,
                            "ANP v1alpha1 ingress peers are namespaces and pods only",
                            external=True,
                        )
                    )
                elif d is Direction.INGRESS:
                    self.limits.append(
                        Limitation(
                            source,
                            "sources outside the cluster cannot be matched by an "
                            "AdminNetworkPolicy ingress rule",
                            Approximation.NARROWED,
                            "ANP v1alpha1 ingress peers are namespaces and pods only",
                            external=True,
                        )
                    )
                rendered[d].extend(self.anp_entries(f"failsafe/{i}", Action.ALLOW, d, m))
        if rendered[Direction.INGRESS] or rendered[Direction.EGRESS]:
            self.emit_anp(
                f"{self.s.name_prefix}-failsafe",
                ScopedSelector(),
                rendered[Direction.INGRESS],
                rendered[Direction.EGRESS],
                "settings",
            )

    # -------------------------------------------------------------- NetworkPolicy

    def np_ports(self, ports: tuple[ServicePort, ...]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for s in ports:
            assert s.protocol is not None
            entry: dict[str, Any] = {"protocol": s.protocol.value.upper()}
            if s.ports != ALL_PORTS:
                first, last = port_bounds(s)
                entry["port"] = first
                if last > first:
                    entry["endPort"] = last
            out.append(entry)
        return out

    def np_rule(self, policy: str, direction: Direction, rule: Rule) -> dict[str, Any] | None:
        source = rule_source(policy, direction, rule)
        self.note_rule(source, rule)
        if rule.action is Action.LOG:
            self.limits.append(
                Limitation(source, "log rule", Approximation.REWRITTEN, "left out (no logging)")
            )
            return None
        ports = self.ports_of(source, rule)
        if ports is False:
            return None
        found = self.peers(source, rule, Bias.SUBSET)
        if direction is Direction.INGRESS and (found.everything or found.ranges):
            self.np_tier_external = True
        entry: dict[str, Any] = {}
        if not found.everything:
            if found.empty:
                return None
            peers: list[dict[str, Any]] = [
                {
                    "namespaceSelector": t.namespaces.to_manifest(),
                    "podSelector": t.pods.to_manifest(),
                }
                for t in found.pods
            ]
            peers.extend(_ip_block(c, holes) for c, holes in found.ranges)
            entry["from" if direction is Direction.INGRESS else "to"] = peers
        if ports:
            assert isinstance(ports, tuple)
            entry["ports"] = self.np_ports(ports)
        return entry

    def np_tier(self, rt: ResolvedTier, policies: Sequence[ResolvedPolicyRules]) -> None:
        for rp in policies:
            p = rp.policy
            source = f"policy/{p.name}"
            types = [d for d in Direction if rp.rules(d) is not None]
            if not types:
                continue
            rules: dict[Direction, list[dict[str, Any]]] = {}
            for d in types:
                rendered = (self.np_rule(p.name, d, rule) for rule in rp.rules(d) or ())
                rules[d] = [r for r in rendered if r is not None]
            terms = self.subjects(source, p.applies_to)
            for ti, term in enumerate(terms):
                for ns, ns_labels in sorted(self.inv.namespace_labels.items()):
                    if not term.namespaces.matches(ns_labels):
                        continue
                    pod_selector = term.pods.with_requirements(
                        _not_in(NAME_LABEL, [*self.unenforced, *self.selective])
                    )
                    spec: dict[str, Any] = {
                        "podSelector": pod_selector.to_manifest(),
                        "policyTypes": [d.value.capitalize() for d in types],
                    }
                    for d in types:
                        if rules[d]:
                            spec[d.value] = rules[d]
                    suffix = f"-{ti}" if len(terms) > 1 else ""
                    self.nps.append(
                        {
                            "apiVersion": NP_API_VERSION,
                            "kind": "NetworkPolicy",
                            "metadata": {
                                "name": dns_label(f"{self.s.name_prefix}-{p.name}{suffix}", 253),
                                "namespace": ns,
                                "annotations": {"septum.io/source": source},
                            },
                            "spec": spec,
                        }
                    )

    # -------------------------------------------------------------- external ingress

    def external_decisions(
        self,
    ) -> list[tuple[tuple[ScopedSelector, ...], list[Box]]] | None:
        """Per disjoint cell of pods, the sources outside the cluster (and services) that
        the ANP tiers allow at ingress, by Septum's walk: in each tier, the first rule with
        an address peer (``all()``, no peers, cidr, network, users) that matches decides;
        allow and deny are final, pass goes on to the next tier; none: the tier default when
        one of its policies applies, else the next tier. Pod peers never match such sources,
        so only the policies with address peers (and, for a deny default, whether any
        policy applies) split the cells. None past the caps or with inexact subjects."""
        cap = self.s.max_selector_terms
        every: Box = (_EVERY_NET, _EVERY_SERVICE)
        # (cell, still undecided, allowed)
        cells: list[tuple[tuple[ScopedSelector, ...], list[Box], list[Box]]] = [
            ((ScopedSelector(),), [every], [])
        ]
        for rt, policies in self.external_tiers:
            for ep in policies:
                if not self.translate(ep.rp.policy.applies_to, Bias.SUPERSET).exact:
                    return None
            subject = {
                ep.rp.name: self.translate(ep.rp.policy.applies_to, Bias.SUPERSET).terms
                for ep in policies
            }
            deciding = [ep for ep in policies if any(m.nets for _, m in ep.rules)]
            splits = {ep.rp.name: subject[ep.rp.name] for ep in deciding}
            default_deny = rt.tier.default_action is TierDefault.DENY and bool(policies)
            if default_deny:
                splits["\0any"] = tuple(t for ep in policies for t in subject[ep.rp.name])
            nxt: list[tuple[tuple[ScopedSelector, ...], list[Box], list[Box]]] = []
            for terms, undecided, allowed in cells:
                if not undecided:
                    nxt.append((terms, undecided, allowed))
                    continue
                found = self.cells(terms, splits)
                if found is None:
                    return None
                for found_cell, inside in found:
                    cell = _pruned(found_cell)
                    left, mine, passed = list(undecided), list(allowed), []
                    for ep in deciding:
                        if ep.rp.name not in inside:
                            continue
                        for action, m in ep.rules:
                            box = box_of(m)
                            hit = boxes_and(left, box)
                            if action is Action.ALLOW:
                                mine.extend(hit)
                            elif action is Action.PASS:
                                passed.extend(hit)
                            left = boxes_minus(left, box)
                            if len(left) + len(mine) + len(passed) > MAX_BOXES:
                                return None
                    if not (default_deny and "\0any" in inside):
                        passed.extend(left)  # tier default pass, or no policy applies
                    nxt.append((cell, passed, mine))
            # Cells that end the same way are one cell; cells with nothing allowed and nothing
            # left to decide need no NetworkPolicy (the default-deny-ingress ones deny).
            merged: dict[tuple[tuple[Box, ...], tuple[Box, ...]], list[ScopedSelector]] = {}
            for terms, undecided, allowed in nxt:
                if undecided or allowed:
                    key = (_box_key(undecided), _box_key(allowed))
                    merged.setdefault(key, []).extend(terms)
            cells = [(_pruned(terms), list(u), list(a)) for (u, a), terms in merged.items()]
            if len(cells) > MAX_PIECES or any(len(t) > cap for t, _, _ in cells):
                return None
        return [(terms, allowed) for terms, _, allowed in cells if allowed]

    def external_ingress(self) -> None:
        """NetworkPolicies allowing, per cell of pods, the sources outside the cluster that
        the ANP tiers allow (ANP ingress cannot match them; see external_decisions). They
        are selected by the default-deny-ingress NetworkPolicies, so what the ANP tiers deny
        or pass on stays denied unless the NetworkPolicy tier or the failsafe allows it."""
        if not self.external_ingress_in_network_policy or not self.external_tiers:
            return
        decided = self.external_decisions()
        if decided is None:
            return
        excluded = _not_in(NAME_LABEL, [*self.unenforced, *self.selective])
        rendered: list[tuple[tuple[ScopedSelector, ...], list[dict[str, Any]]]] = []
        for terms, allowed in decided:
            by_ports: dict[Ports, list[tuple[int, int, int]]] = defaultdict(list)
            for nets, ports in allowed:
                by_ports[ports].extend(nets)
            entries: list[dict[str, Any]] = []
            for ports, found in sorted(by_ports.items(), key=lambda x: str(x[0])):
                entry: dict[str, Any] = {
                    "from": [
                        _ip_block(c, holes)
                        for c, holes in ip_blocks(tuple(_normal_intervals(found)))
                    ]
                }
                if ports != _EVERY_SERVICE:
                    if _PORTLESS in ports:
                        return  # some protocols without ports only: no NetworkPolicy form
                    entry["ports"] = self.np_ports(
                        tuple(ServicePort(p, PortRange(a, b)) for p, a, b in ports)
                    )
                entries.append(entry)
            rendered.append((terms, entries))
        for k, (terms, entries) in enumerate(rendered):
            for ti, term in enumerate(terms):
                for ns, ns_labels in sorted(self.inv.namespace_labels.items()):
                    if not term.namespaces.matches(ns_labels):
                        continue
                    suffix = f"-{k}" + (f"-{ti}" if len(terms) > 1 else "")
                    self.nps.append(
                        {
                            "apiVersion": NP_API_VERSION,
                            "kind": "NetworkPolicy",
                            "metadata": {
                                "name": dns_label(
                                    f"{self.s.name_prefix}-external-ingress{suffix}", 253
                                ),
                                "namespace": ns,
                                "annotations": {"septum.io/source": "tiers"},
                            },
                            "spec": {
                                "podSelector": term.pods.with_requirements(
                                    excluded
                                ).to_manifest(),
                                "policyTypes": ["Ingress"],
                                "ingress": copy.deepcopy(entries),
                            },
                        }
                    )
        # Exact now: the allows the ANP tiers give such sources are rendered. What they deny
        # is denied by the default-deny-ingress NetworkPolicies, unless a selective workload
        # (in no NetworkPolicy) or the NetworkPolicy tier allows it.
        exact_denies = not self.selective and not self.np_tier_external
        dropped = {
            x
            for x in self.external_limits
            if x.approximation is Approximation.NARROWED or exact_denies
        }
        self.limits = [x for x in self.limits if x not in dropped]

    # -------------------------------------------------------------- repository default

    def repository_default(self) -> None:
        if self.repo.settings.default_action is RepositoryDefault.ALLOW:
            return
        exclude = [*self.unenforced, *self.selective]
        subject = ScopedSelector(
            LabelSelector(), LabelSelector().with_requirements(_not_in(NAME_LABEL, exclude))
        )
        self.banp.append(
            {
                "apiVersion": ANP_API_VERSION,
                "kind": "BaselineAdminNetworkPolicy",
                "metadata": {"name": "default", "annotations": {"septum.io/source": "settings"}},
                "spec": {
                    "subject": _pods_or_namespaces(subject),
                    "ingress": [self.deny_all(Direction.INGRESS, "Deny", "default-deny")],
                    "egress": [self.deny_all(Direction.EGRESS, "Deny", "default-deny")],
                },
            }
        )
        if not self.s.default_deny_external_ingress:
            self.limits.append(
                Limitation(
                    "settings",
                    "repository default deny does not cover ingress from outside the cluster",
                    Approximation.WIDENED,
                    "BaselineAdminNetworkPolicy ingress peers are pods only",
                    external=True,
                )
            )
            return
        spec: dict[str, Any] = {
            "podSelector": subject.pods.to_manifest(),
            "policyTypes": ["Ingress"],
        }
        failsafe: list[dict[str, Any]] = []
        for nets, services in self.failsafe_ingress:
            entry: dict[str, Any] = {"from": [_ip_block(c, ()) for c in cidrs_of(nets)]}
            if services is not None:
                entry["ports"] = self.np_ports(services)
            failsafe.append(entry)
        if failsafe:
            spec["ingress"] = failsafe
        for ns in sorted(self.inv.namespace_labels):
            self.nps.append(
                {
                    "apiVersion": NP_API_VERSION,
                    "kind": "NetworkPolicy",
                    "metadata": {
                        "name": f"{self.s.name_prefix}-default-deny-ingress",
                        "namespace": ns,
                        "annotations": {"septum.io/source": "settings"},
                    },
                    "spec": copy.deepcopy(spec),
                }
            )

    # -------------------------------------------------------------- inventory

    def inventory(self) -> list[Manifest]:
        out: list[Manifest] = []
        for ns, ns_labels in sorted(self.inv.namespace_labels.items()):
            valid = {
                k: v
                for k, v in sorted(ns_labels.items())
                if not (label_key_problem(k) or label_value_problem(v))
            }
            out.append(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": valid}}
            )
        pods: list[Manifest] = []
        used: set[tuple[str, str]] = set()
        for w in self.repo.workloads:
            ns = self.inv.namespace_of[w.name]
            name = dns_label(w.name, 253)
            while (ns, name) in used:
                name = dns_label(f"{name}-x", 253)
            used.add((ns, name))
            labels: dict[str, str] = {}
            for k, v in sorted(w.labels.items()):
                if k.startswith(NAMESPACE_LABEL_PREFIX):
                    continue  # the namespace's labels (see Inventory.of)
                problem = label_key_problem(k) or label_value_problem(v)
                if problem is not None:
                    self.limits.append(
                        Limitation(
                            f"workload/{w.name}",
                            f"label {k}={v!r} cannot be a Kubernetes label",
                            Approximation.DROPPED,
                            problem,
                        )
                    )
                    continue
                labels[k] = v
            addresses = self.inv.addresses(w)
            v4 = [a for a in addresses if a.version == 4]
            v6 = [a for a in addresses if a.version == 6]
            if len(v4) > 1 or len(v6) > 1:
                self.limits.append(
                    Limitation(
                        f"workload/{w.name}",
                        "more than one address per IP family",
                        Approximation.DROPPED,
                        "a Pod has at most one IPv4 and one IPv6 address; the first are kept",
                    )
                )
            ips = [str(a) for a in (*v4[:1], *v6[:1])]
            if any(b.valid_from or b.valid_until for b in w.addresses):
                self.limits.append(
                    Limitation(
                        f"workload/{w.name}",
                        "addresses with validity times",
                        Approximation.REWRITTEN,
                        "the Pod holds the addresses valid at the render time",
                    )
                )
            pod: Manifest = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {WORKLOAD_ANNOTATION: w.name},
                },
                "spec": {"containers": [{"name": "workload", "image": self.s.pod_image}]},
            }
            if ips:
                pod["status"] = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
            pods.append(pod)
        pods.sort(key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
        return out + pods

    # -------------------------------------------------------------- driver

    def render(self) -> Rendering:
        tiers, staged = enforced_tiers(resolve_policy(self.repo, self.at))
        self.limits.extend(staged)
        live = [
            (rt, kept)
            for rt, kept in tiers
            if any(rp.ingress is not None or rp.egress is not None for rp in kept)
        ]
        np_tier = self.network_policy_tier(live)
        self.failsafe()
        for rt, policies in live:
            if rt is np_tier:
                continue
            self.anp_tier(rt, policies)
        if np_tier is not None:
            self.np_tier(np_tier, next(ps for rt, ps in live if rt is np_tier))
        self.external_ingress()
        self.repository_default()
        manifests: list[Manifest] = []
        if self.s.include_inventory:
            manifests.extend(self.inventory())
        manifests.extend(self.banp)
        manifests.extend(sorted(self.anps, key=lambda m: int(m["spec"]["priority"])))
        manifests.extend(
            sorted(self.nps, key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
        )
        limits = sorted(dict.fromkeys(self.limits), key=lambda x: (x.source, x.what, x.detail))
        return Rendering("kubernetes", tuple(manifests), tuple(limits))

    def network_policy_tier(
        self, live: Sequence[tuple[ResolvedTier, Sequence[ResolvedPolicyRules]]]
    ) -> ResolvedTier | None:
        """The last tier, when it can be the NetworkPolicy layer: only allow (and log) rules,
        and a deny default (or pass, when the repository default is deny)."""
        if not live or not self.s.use_network_policies:
            return None
        rt, policies = live[-1]
        allow_only = all(
            r.action in (Action.ALLOW, Action.LOG)
            for rp in policies
            for d in Direction
            for r in rp.rules(d) or ()
        )
        denies = rt.tier.default_action is TierDefault.DENY or (
            self.repo.settings.default_action is RepositoryDefault.DENY
        )
        return rt if allow_only and denies else None


def _ip_block(cidr: IPNetwork, holes: tuple[IPNetwork, ...]) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": str(cidr)}
    if holes:
        block["except"] = [str(h) for h in holes]
    return {"ipBlock": block}


def _pruned(terms: Iterable[ScopedSelector]) -> tuple[ScopedSelector, ...]:
    """A union of terms without the terms another one already selects (one term's
    requirements include the other's: fewer requirements select more). O(terms²)."""

    def parts(t: ScopedSelector) -> tuple[frozenset[Any], frozenset[Any]]:
        return (
            frozenset((*t.namespaces.match_labels, *t.namespaces.match_expressions)),
            frozenset((*t.pods.match_labels, *t.pods.match_expressions)),
        )

    found = list(dict.fromkeys(terms))
    sets = [parts(t) for t in found]
    return tuple(
        t
        for i, t in enumerate(found)
        if not any(
            j != i
            and sets[j][0] <= sets[i][0]
            and sets[j][1] <= sets[i][1]
            and (sets[j] != sets[i] or j < i)
            for j in range(len(found))
        )
    )


def _not_in(key: str, names: Sequence[str]) -> tuple[Requirement, ...]:
    return (Requirement(key, Operator.NOT_IN, tuple(sorted(names))),) if names else ()


def _pods_or_namespaces(term: ScopedSelector) -> dict[str, Any]:
    """An ANP subject or peer: ``namespaces`` when the term selects whole namespaces, else
    ``pods`` (the two have the same shape in AdminNetworkPolicy)."""
    if term.pods.empty:
        return {"namespaces": term.namespaces.to_manifest()}
    return {
        "pods": {
            "namespaceSelector": term.namespaces.to_manifest(),
            "podSelector": term.pods.to_manifest(),
        }
    }


def render_kubernetes(
    repo: Repository, at: datetime, settings: KubernetesRenderSettings | None = None
) -> Rendering:
    """Render ``repo`` at time ``at`` as Kubernetes manifests, in apply order (Namespaces,
    Pods, BaselineAdminNetworkPolicy, AdminNetworkPolicies by priority, NetworkPolicies by
    namespace and name), with every limitation met. Pure and deterministic; see the module
    docstring for the mapping and its cost."""
    return _KubernetesRenderer(repo, at, settings or KubernetesRenderSettings()).render()
