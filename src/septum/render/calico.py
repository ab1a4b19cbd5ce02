"""Render a repository as Calico (``projectcalico.org/v3``) manifests: a pure function.

::

    Repository ──resolve_policy(at)──► ResolvedPolicy ──render_calico──► Rendering
                                                          │  GlobalNetworkSets (networks,
                                                          │    non-endpoint workloads)
                                                          │  Tiers (failsafe, Septum's, final)
                                                          │  (Staged)GlobalNetworkPolicies
                                                          └► Limitations

Targets Calico Open Source ≥ 3.30 by default (``CalicoRenderSettings.calico_version``).
Tiers and ``Tier.spec.defaultAction`` (Deny/Pass) came to Calico Open Source in v3.29.0
(projectcalico/calico#9085, #9245); staged policies (``StagedGlobalNetworkPolicy``) in v3.30.0
(#9746). For an older target a Pass tier ends with a catch-all ``Pass`` policy instead of a
``defaultAction``, and staged policies are left out (reported).

Mapping (``semantics.md`` → Calico):

- **Tiers.** One Calico Tier per Septum tier. Calico orders tiers by ``order`` then name, as
  Septum does, but Septum's orders are *renumbered* (``tier_order_base + i·tier_order_step``
  in Septum's (order, name) sequence; the original is kept in the ``septum.io/order``
  annotation): names may have to be sanitised (which could change a tie-break) and the
  renumbered tiers stay clear of Calico's own tiers (``kube-admin`` 1,000, ``default``
  1,000,000, ``kube-baseline`` 10,000,000). Septum never renders into Calico's ``default``
  tier: its tiers, a leading ``septum-failsafe`` tier and a trailing ``septum-default`` tier all
  come before it, and because the trailing tier decides every flow of every Septum workload,
  nothing in ``default`` (where Calico puts Kubernetes NetworkPolicies) or after it is ever
  reached for them: Septum's repository is the whole policy (import Kubernetes policies into
  it, ``semantics.md`` "Kubernetes meaning"). A Septum tier named like a Calico reserved tier
  is renamed (reported).
- **Policies.** A Septum policy becomes a ``GlobalNetworkPolicy`` (``StagedGlobalNetworkPolicy``
  when staged) named ``<tier>.<policy>``, with Septum's ``order`` (the tie-break by name is the
  same, as every name in a tier shares the prefix; if sanitising names changed a tie-break the
  policies of that tier are renumbered), ``types`` from the declared directions (a declared
  empty list still applies and matches nothing, as in Calico) and the rules in written order.
  Calico has all four actions: allow → Allow, deny → Deny, pass → Pass, log → Log. Every
  Calico rule carries its provenance in ``metadata.annotations["septum.io/source"]``
  (``policy/<name>/<direction>/<index>``).
- **Peers.** Several peers of a rule, and several protocols of its services, are a union: they
  become consecutive Calico rules with the same action, which keeps first-match order (a
  ``log`` rule matching two alternatives logs twice). A selector or segment peer becomes
  ``selector`` (``all()``: no selector at all, since Septum's ``all()`` also matches unknown
  addresses while a Calico selector only matches endpoints and network sets); a ``network:``
  peer selects that network's ``GlobalNetworkSet`` by its ``septum.io/network`` label; a CIDR
  becomes ``nets``; a ``users:`` peer becomes the ``nets`` of the sessions' addresses *at*
  ``at`` (reported: sessions change). Services become ``protocol`` plus ``destination.ports``
  (ranges ``"first:last"``); ``any`` sets no protocol; icmp → ``ICMP``, icmpv6 → ``ICMPv6``
  (with an address of the other IP version such a pair matches nothing and is left out).
- **Networks.** One ``GlobalNetworkSet`` per Septum Network, labelled with the network's labels
  plus ``septum.io/network: <name>``; Calico network sets have no ``except``, so ``nets`` are
  the cidrs minus the excepts as a minimal list of CIDRs (exact). Workloads whose kind is not a
  Calico endpoint (``endpoint_kinds``, pods by default: VMs, hosts, cloud instances) become
  network sets too, with their labels and their addresses at ``at``, so selector peers still
  match them; policies applying to them are not enforced by Calico (reported).
- **Scope.** Calico selectors see every endpoint; Septum's see its workloads. With the implicit
  labels present on endpoints (``implicit_labels_on_endpoints``, the default, as Septum's
  inventory rendering puts them on pods) every policy selector and every peer selector is
  restricted to ``has(septum.io/kind)``, and workloads in modes idle, visibility and test are
  excluded from policy selectors by ``septum.io/name`` (Calico then allows their traffic,
  which is the effective verdict of those modes).
- **Repository default.** A Calico workload endpoint that no policy selects is allowed, one
  that some policy selects is denied at the end of the tiers. Septum denies by default for
  every workload, so the last tier ``septum-default`` holds one policy selecting every Septum
  workload in both directions with a single Deny rule (Allow when the repository's
  ``defaultAction`` is allow).
- **Failsafe.** Calico's own failsafe ports (FelixConfiguration ``failsafeInbound/OutboundHost
  Ports``) protect host endpoints only. Septum's failsafe entries become the first tier
  ``septum-failsafe``: Allow rules for every Septum workload, then an explicit Pass.

Calico's selector grammar is Septum's (``==``, ``!=``, ``in``, ``not in``, ``has()``,
``all()``, ``starts with``, ``ends with``, ``contains``, ``!``, ``&&``, ``||``, parentheses,
with the same meaning for an absent label: ``!=`` and ``not in`` match it, the string tests do
not), but Calico strings have *no escapes*: a value is written in double quotes, in single
quotes when it contains a double quote, and a value holding both cannot be written (reported).
Selectors are translated from the AST, never copied as text.

Limitations (never silent): expired rules (left out), expiring rules (render again at
expiry), ``users:`` peers, selected network ranges holding workload or session addresses
(Calico matches them as the network too), ``cidrMatchesWorkloads: false``, workload modes
(selective; any non-enforced mode without implicit labels), selectors over implicit labels
that endpoints lack, non-endpoint workloads under policy, Calico's host failsafe ports,
renamed objects, selectors longer than Calico's 1,024 characters.

Cost: one ``resolve_policy`` plus O(rules · peers · protocols) and O(Σ attributed addresses ·
network ranges) for the attribution checks. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network

from septum.engine.resolve import AddressSet, ResolvedPolicy, minimal_ranges, resolve_policy
from septum.model.resources import (
    ALL_PORTS,
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    Direction,
    IPNetwork,
    Mode,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    ServicePort,
    Tier,
    TierDefault,
    WorkloadKind,
)
from septum.model.selector import All, And, Compare, Expr, Has, Not, Op, Or, Selector
from septum.render.manifests import Approximation, Limitation, Manifest, Rendering

__all__ = [
    "API_VERSION",
    "CALICO_NAMESPACE_LABEL",
    "NETWORK_LABEL",
    "SOURCE_ANNOTATION",
    "CalicoRenderSettings",
    "CalicoSelector",
    "calico_quote",
    "calico_selector",
    "render_calico",
]

API_VERSION = "projectcalico.org/v3"
#: The label Calico puts on workload endpoints with their namespace's name.
CALICO_NAMESPACE_LABEL = "projectcalico.org/namespace"
#: The identifying label of a Septum Network's GlobalNetworkSet.
NETWORK_LABEL = "septum.io/network"
#: Provenance annotation on every object and every Calico rule.
SOURCE_ANNOTATION = "septum.io/source"
_MANAGED_BY = ("app.kubernetes.io/managed-by", "septum")
#: Calico's limit on a selector's length (CRD maxLength).
SELECTOR_MAX_LENGTH = 1024
_MAX_PORTS = 50  # per rule (CRD maxItems)
_MAX_NETS = 256  # per rule (CRD maxItems)
#: Tier names Calico creates or reserves itself (3.29: adminnetworkpolicy, 3.30+: kube-*).
RESERVED_TIERS = frozenset(
    {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy", "kube-admin", "kube-baseline"}
)
FAILSAFE_TIER = "septum-failsafe"
FINAL_TIER = "septum-default"

_ACTIONS = {Action.ALLOW: "Allow", Action.DENY: "Deny", Action.PASS: "Pass", Action.LOG: "Log"}
_PROTOCOLS = {
    Protocol.TCP: "TCP",
    Protocol.UDP: "UDP",
    Protocol.SCTP: "SCTP",
    Protocol.ICMP: "ICMP",
    Protocol.ICMPV6: "ICMPv6",
}
_PROTOCOL_VERSION = {Protocol.ICMP: 4, Protocol.ICMPV6: 6}
_DIRECTION_TYPE = {Direction.INGRESS: "Ingress", Direction.EGRESS: "Egress"}
#: Modes whose workloads Calico must leave alone (no policy selects them): Calico then allows
#: their traffic, which is what these modes' effective verdicts are.
_UNENFORCED_MODES = (Mode.IDLE, Mode.VISIBILITY, Mode.TEST)


@dataclass(frozen=True, slots=True)
class CalicoRenderSettings:
    """How the target cluster looks.

    ``calico_version``: the oldest Calico release the manifests must work on (major, minor).
    ``implicit_labels_on_endpoints``: whether Calico endpoints carry Septum's implicit labels
    (``septum.io/kind``, ``septum.io/name``, ``septum.io/namespace``) as real labels; when
    False, ``septum.io/namespace`` is translated to Calico's ``projectcalico.org/namespace``
    and the other two cannot be expressed. ``endpoint_kinds``: workload kinds that are Calico
    endpoints (the rest become network sets). Tier orders: ``tier_order_base`` for the first
    Septum tier, then ``tier_order_step`` apart (failsafe one step before, final one after).
    """

    calico_version: tuple[int, int] = (3, 30)
    implicit_labels_on_endpoints: bool = True
    endpoint_kinds: frozenset[WorkloadKind] = frozenset({WorkloadKind.POD})
    tier_order_base: float = 100.0
    tier_order_step: float = 10.0

    @property
    def tier_default_action(self) -> bool:
        """Whether ``Tier.spec.defaultAction`` exists (Calico ≥ 3.29)."""
        return self.calico_version >= (3, 29)

    @property
    def staged_policies(self) -> bool:
        """Whether Calico Open Source has staged policies (≥ 3.30)."""
        return self.calico_version >= (3, 30)


# ------------------------------------------------------------------------------ selectors


def calico_quote(value: str) -> str | None:
    """A Calico string literal for ``value``: double quotes, or single quotes when the value
    holds a double quote; None when it holds both (Calico strings have no escapes)."""
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return None


@dataclass(frozen=True, slots=True)
class CalicoSelector:
    """A Septum selector in Calico syntax.

    ``text`` None: not expressible (some value holds both quote characters). ``missing_keys``:
    implicit label keys the selector uses that Calico endpoints do not carry (only when the
    implicit labels are not on endpoints)."""

    text: str | None
    missing_keys: frozenset[str] = frozenset()


class _Unquotable(Exception):
    pass


def calico_selector(
    selector: Selector | Expr, *, implicit_labels_on_endpoints: bool = True
) -> CalicoSelector:
    """Translate a selector to Calico's syntax, node by node.

    Every operator has the same spelling and meaning in Calico; what changes is quoting (no
    escapes in Calico) and, without implicit labels on endpoints, the namespace key.
    Cost: O(size of the selector)."""
    expr = selector.expr if isinstance(selector, Selector) else selector
    missing: set[str] = set()

    def key(k: str) -> str:
        if implicit_labels_on_endpoints:
            return k
        if k == NAMESPACE_LABEL:
            return CALICO_NAMESPACE_LABEL
        if k in (KIND_LABEL, NAME_LABEL):
            missing.add(k)
        return k

    def lit(v: str) -> str:
        q = calico_quote(v)
        if q is None:
            raise _Unquotable(v)
        return q

    def emit(e: Expr) -> str:
        match e:
            case All():
                return "all()"
            case Has(k):
                return f"has({key(k)})"
            case Compare(k, op, values) if op in (Op.IN, Op.NOT_IN):
                return f"{key(k)} {op} {{{', '.join(lit(v) for v in values)}}}"
            case Compare(k, op, (value,)):
                return f"{key(k)} {op} {lit(value)}"
            case Not(operand):
                inner = emit(operand)
                return f"!({inner})" if isinstance(operand, And | Or | Compare) else f"!{inner}"
            case And(operands):
                return " && ".join(
                    f"({emit(o)})" if isinstance(o, Or) else emit(o) for o in operands
                )
            case Or(operands):
                return " || ".join(emit(o) for o in operands)
        raise AssertionError(f"unknown selector node {e!r}")  # pragma: no cover

    try:
        text: str | None = emit(expr)
    except _Unquotable:
        text = None
    return CalicoSelector(text, frozenset(missing))


# ------------------------------------------------------------------------------ helpers


class _Match(enum.Enum):
    """How a rendered match differs from the source's: it matches more, fewer, or a set that
    may differ both ways."""

    MORE = "more"
    FEWER = "fewer"
    DIFFERENT = "different"


def _approximation(action: Action, how: _Match) -> Approximation:
    """What a rule that matches more/fewer/different traffic does to the verdicts."""
    if action is Action.LOG:
        return Approximation.REWRITTEN  # verdicts unchanged, only log records differ
    if how is _Match.MORE:
        return Approximation.NARROWED if action is Action.DENY else Approximation.WIDENED
    if how is _Match.FEWER:
        return Approximation.NARROWED if action is Action.ALLOW else Approximation.WIDENED
    return Approximation.WIDENED  # the worst case for security


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _dns_label(name: str) -> str:
    """A name usable as a Calico tier name (no dots, no underscores)."""
    return name.replace(".", "-").replace("_", "-")


def _dns_subdomain(name: str) -> str:
    return name.replace("_", "-")


def _suffix(name: str) -> str:
    return f"{zlib.crc32(name.encode()):08x}"


def _nets(ranges: AddressSet) -> list[str]:
    return [str(n) for n in ranges.v4] + [str(n) for n in ranges.v6]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _port(r: PortRange) -> int | str:
    return r.first if r.first == r.last else f"{r.first}:{r.last}"


@dataclass(frozen=True, slots=True)
class _ServiceMatch:
    """One Calico protocol match: protocol name (None: any), ports (None: every port) and the
    IP version the protocol implies (None: both)."""

    protocol: str | None
    ports: tuple[int | str, ...] | None
    version: int | None


def _service_matches(services: tuple[ServicePort, ...]) -> list[_ServiceMatch]:
    """A rule's services as Calico protocol matches: one per protocol, ports merged."""
    if not services or any(s.protocol is None for s in services):
        return [_ServiceMatch(None, None, None)]
    by_protocol: dict[Protocol, list[PortRange] | None] = {}
    for s in services:
        assert s.protocol is not None
        if not s.protocol.has_ports or s.ports == ALL_PORTS:
            by_protocol[s.protocol] = None
        elif s.protocol not in by_protocol:
            by_protocol[s.protocol] = [s.ports]
        elif (known := by_protocol[s.protocol]) is not None and s.ports not in known:
            known.append(s.ports)
    out: list[_ServiceMatch] = []
    for protocol in Protocol:  # enum order: deterministic
        if protocol not in by_protocol:
            continue
        ranges = by_protocol[protocol]
        version = _PROTOCOL_VERSION.get(protocol)
        if ranges is None:
            out.append(_ServiceMatch(_PROTOCOLS[protocol], None, version))
            continue
        ports = [_port(r) for r in sorted(ranges)]
        for i in range(0, len(ports), _MAX_PORTS):
            out.append(
                _ServiceMatch(_PROTOCOLS[protocol], tuple(ports[i : i + _MAX_PORTS]), version)
            )
    return out


@dataclass(frozen=True, slots=True)
class _PeerMatch:
    """One Calico entity match for a peer: ``selector`` and/or ``nets`` (empty: any address)
    and the IP version of its nets (None: no nets or any)."""

    selector: str | None = None
    nets: tuple[str, ...] = ()
    version: int | None = None

    def entity(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.selector is not None:
            out["selector"] = self.selector
        if self.nets:
            out["nets"] = list(self.nets)
        return out


def _by_version(ranges: Iterable[IPNetwork]) -> list[_PeerMatch]:
    """Nets split by IP version and chunked to Calico's per-rule limit."""
    v4 = [str(n) for n in ranges if isinstance(n, IPv4Network)]
    v6 = [str(n) for n in ranges if isinstance(n, IPv6Network)]
    out: list[_PeerMatch] = []
    for version, nets in ((4, v4), (6, v6)):
        out.extend(_PeerMatch(nets=tuple(c), version=version) for c in _chunks(nets, _MAX_NETS))
    return out


def _meta(name: str, source: str, labels: Mapping[str, str] | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    all_labels = dict(sorted((labels or {}).items()))
    all_labels[_MANAGED_BY[0]] = _MANAGED_BY[1]
    meta["labels"] = all_labels
    meta["annotations"] = {SOURCE_ANNOTATION: source}
    return meta


# ------------------------------------------------------------------------------ renderer


@dataclass
class _Renderer:
    """Builds one rendering; holds the limitations met on the way (private, single use)."""

    repo: Repository
    at: datetime
    settings: CalicoRenderSettings
    resolved: ResolvedPolicy
    limitations: list[Limitation] = field(default_factory=list)
    excluded_names: tuple[str, ...] = ()

    def limit(self, source: str, what: str, how: Approximation, detail: str = "") -> None:
        self.limitations.append(Limitation(source, what, how, detail))

    # -- scope ---------------------------------------------------------------------------

    def scope_terms(self) -> list[str]:
        """Calico terms restricting a policy selector to the workloads Septum evaluates."""
        if not self.settings.implicit_labels_on_endpoints:
            return []
        terms = [f"has({KIND_LABEL})"]
        quoted = [q for n in self.excluded_names if (q := calico_quote(n)) is not None]
        if quoted:
            terms.append(f"{NAME_LABEL} not in {{{', '.join(quoted)}}}")
        return terms

    def translate(self, selector: Selector, source: str, where: str) -> CalicoSelector:
        result = calico_selector(
            selector, implicit_labels_on_endpoints=self.settings.implicit_labels_on_endpoints
        )
        if result.text is None:
            self.limit(
                source,
                f"{where} selector {selector.text!r} has a value with both quote characters",
                Approximation.DROPPED,
                "Calico strings have no escapes, so such a value cannot be written",
            )
        return result

    def applies_selector(self, selector: Selector, source: str) -> str | None:
        """A policy's Calico selector: appliesTo restricted to the evaluated workloads."""
        parts: list[str] = []
        if not selector.is_all:
            result = self.translate(selector, source, "appliesTo")
            if result.text is None:
                return None
            if result.missing_keys:
                self.limit(
                    source,
                    f"appliesTo uses {', '.join(sorted(result.missing_keys))}, "
                    "which Calico endpoints do not carry",
                    Approximation.WIDENED,
                    "the implicit labels are not on endpoints (implicit_labels_on_endpoints); "
                    "the policy may apply to other endpoints than in Septum",
                )
            parts.append(f"({result.text})" if isinstance(selector.expr, Or) else result.text)
        parts.extend(self.scope_terms())
        text = " && ".join(parts) or "all()"
        self.check_length(text, source, "appliesTo")
        return text

    def check_length(self, text: str, source: str, where: str) -> None:
        if len(text) > SELECTOR_MAX_LENGTH:
            self.limit(
                source,
                f"{where} selector is {len(text)} characters long",
                Approximation.DROPPED,
                f"Calico rejects selectors longer than {SELECTOR_MAX_LENGTH} characters",
            )

    # -- peers ---------------------------------------------------------------------------

    def held_inside(self, ranges: AddressSet) -> list[str]:
        """Workload and session addresses (at ``at``) inside ``ranges``."""
        held = self.resolved.attributed_addresses
        inside = [a for a in held.v4 if any(a.subnet_of(r) for r in ranges.v4)]
        inside6 = [a for a in held.v6 if any(a.subnet_of(r) for r in ranges.v6)]
        return [str(a.network_address) for a in inside] + [str(a.network_address) for a in inside6]

    def attribution(self, ranges: AddressSet, rule: Rule, source: str, what: str) -> None:
        held = self.held_inside(ranges)
        if held:
            self.limit(
                source,
                f"{what} covers addresses held by workloads or user sessions",
                _approximation(rule.action, _Match.MORE),
                "Septum attributes "
                + ", ".join(held[:5])
                + (" ..." if len(held) > 5 else "")
                + " to their holders, not to the network; Calico matches them as the network",
            )

    def peer(self, peer: Peer, rule: Rule, source: str) -> list[_PeerMatch]:
        """The Calico matches of one peer ([]: matches nothing here)."""
        if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT):
            assert peer.selector is not None
            if peer.selector.is_all:
                return [_PeerMatch()]  # any address, known or not
            result = self.translate(peer.selector, source, "peer")
            if result.text is None:
                return []
            if result.missing_keys:
                self.limit(
                    source,
                    f"peer uses {', '.join(sorted(result.missing_keys))}, "
                    "which Calico endpoints do not carry",
                    _approximation(rule.action, _Match.DIFFERENT),
                    "the implicit labels are not on endpoints (implicit_labels_on_endpoints)",
                )
            text = result.text
            if self.settings.implicit_labels_on_endpoints:
                inner = f"({text})" if isinstance(peer.selector.expr, Or) else text
                text = f"{inner} && has({KIND_LABEL})"
            self.check_length(text, source, "peer")
            resolved = self.resolved.selectors.get(peer.selector.text)
            if resolved is not None and resolved.networks:
                self.attribution(
                    resolved.addresses.networks, rule, source, f"peer {peer} selects networks that"
                )
            return [_PeerMatch(selector=text)]
        if peer.kind is PeerKind.NETWORK:
            assert peer.ref is not None
            ranges = self.resolved.networks.get(peer.ref)
            quoted = calico_quote(peer.ref)
            if ranges is None or quoted is None:
                self.limit(
                    source,
                    f"peer network:{peer.ref} names no network",
                    Approximation.REWRITTEN,
                    "it matches nothing; left out",
                )
                return []
            self.attribution(ranges, rule, source, f"peer network:{peer.ref}")
            return [_PeerMatch(selector=f"{NETWORK_LABEL} == {quoted}")]
        if peer.kind is PeerKind.CIDR:
            assert peer.cidr is not None
            if not self.repo.settings.cidr_matches_workloads:
                self.limit(
                    source,
                    f"peer {peer} with cidrMatchesWorkloads: false",
                    _approximation(rule.action, _Match.MORE),
                    "Calico nets also match workload addresses in the range",
                )
            return _by_version([peer.cidr])
        # USERS
        assert peer.selector is not None
        users = self.resolved.user_selectors.get(peer.selector.text)
        addresses = users.addresses if users is not None else AddressSet()
        self.limit(
            source,
            f"peer {peer} (user sessions) rendered as the sessions' addresses at "
            f"{self.at.isoformat()}",
            _approximation(rule.action, _Match.DIFFERENT),
            "Calico has no users or sessions; render again whenever sessions change"
            + ("" if addresses else " (no session holds an address now: left out)"),
        )
        return _by_version([*addresses.v4, *addresses.v6])

    # -- rules ---------------------------------------------------------------------------

    def rules(self, policy: Policy, direction: Direction, rules: tuple[Rule, ...]) -> list[object]:
        out: list[object] = []
        for rule in rules:
            source = f"policy/{policy.name}/{direction.value}/{rule.index}"
            if rule.expires is not None:
                self.limit(
                    source,
                    f"rule expires at {rule.expires.isoformat()}",
                    _approximation(rule.action, _Match.MORE),
                    "Calico rules do not expire: render again at that time",
                )
            peers: list[_PeerMatch] = (
                [m for p in rule.peers for m in self.peer(p, rule, source)]
                if rule.peers
                else [_PeerMatch()]
            )
            rendered = 0
            for pm in peers:
                for sm in _service_matches(rule.services):
                    if (
                        pm.version is not None
                        and sm.version is not None
                        and pm.version != sm.version
                    ):
                        continue  # icmp with an IPv6 range (or icmpv6 with IPv4): never matches
                    out.append(self.calico_rule(rule, direction, pm, sm, source))
                    rendered += 1
            if not rendered:
                self.limit(
                    source,
                    "rule renders to no Calico rule",
                    Approximation.REWRITTEN,
                    "no peer/service alternative can match at this time; left out",
                )
        return out

    @staticmethod
    def calico_rule(
        rule: Rule, direction: Direction, pm: _PeerMatch, sm: _ServiceMatch, source: str
    ) -> dict[str, object]:
        out: dict[str, object] = {"action": _ACTIONS[rule.action]}
        if sm.protocol is not None:
            out["protocol"] = sm.protocol
        entity = pm.entity()
        ports: dict[str, object] = {"ports": list(sm.ports)} if sm.ports is not None else {}
        if direction is Direction.INGRESS:
            if entity:
                out["source"] = entity
            if ports:
                out["destination"] = ports
        elif entity or ports:
            out["destination"] = {**entity, **ports}
        annotations = {SOURCE_ANNOTATION: source}
        if rule.description:
            annotations["septum.io/description"] = rule.description
        out["metadata"] = {"annotations": annotations}
        return out

    # -- objects -------------------------------------------------------------------------

    def network_sets(self) -> list[Manifest]:
        used: set[str] = set()
        out: list[Manifest] = []
        for n in sorted(self.repo.networks, key=lambda n: n.name):
            name = self.unique(f"septum-net-{_dns_subdomain(n.name)}", used)
            ranges = minimal_ranges(n.cidrs, n.excepts)
            if n.excepts:
                self.limit(
                    f"network/{n.name}",
                    "network excepts",
                    Approximation.REWRITTEN,
                    "Calico network sets have no except: nets are the cidrs minus the excepts",
                )
            out.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": "GlobalNetworkSet",
                    "metadata": _meta(
                        name, f"network/{n.name}", {**n.labels, NETWORK_LABEL: n.name}
                    ),
                    "spec": {"nets": _nets(ranges)},
                }
            )
        for w in sorted(self.repo.workloads, key=lambda w: w.name):
            if w.kind in self.settings.endpoint_kinds:
                continue
            name = self.unique(f"septum-wl-{_dns_subdomain(w.name)}", used)
            addresses = AddressSet.of_addresses(
                b.address for b in w.addresses if b.valid_at(self.at)
            )
            if any(b.valid_from is not None or b.valid_until is not None for b in w.addresses):
                self.limit(
                    f"workload/{w.name}",
                    "addresses valid for a time only",
                    Approximation.WIDENED,
                    f"its network set holds the addresses valid at {self.at.isoformat()}: "
                    "render again when they change",
                )
            out.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": "GlobalNetworkSet",
                    "metadata": _meta(name, f"workload/{w.name}", w.labels),
                    "spec": {"nets": _nets(addresses)},
                }
            )
        return out

    @staticmethod
    def unique(name: str, used: set[str]) -> str:
        if name in used:
            name = f"{name}-{_suffix(name)}"
        used.add(name)
        return name

    def workload_limitations(self) -> None:
        implicit = self.settings.implicit_labels_on_endpoints
        enforced = [p for p in self.repo.policies if p.mode is PolicyMode.ENFORCE]
        for w in sorted(self.repo.workloads, key=lambda w: w.name):
            source = f"workload/{w.name}"
            if w.kind not in self.settings.endpoint_kinds:
                governed = self.repo.settings.default_action is RepositoryDefault.DENY or any(
                    p.applies_to.matches(w.labels) for p in enforced
                )
                if w.mode is not Mode.IDLE and governed:
                    self.limit(
                        source,
                        f"kind {w.kind.value} is not a Calico endpoint",
                        Approximation.WIDENED,
                        "rendered as a network set (matched as a peer); policies that apply to "
                        "it are not enforced by Calico",
                    )
                continue
            if w.mode is Mode.ENFORCED:
                continue
            if w.mode is Mode.SELECTIVE:
                self.limit(
                    source,
                    "mode selective",
                    Approximation.NARROWED,
                    "Calico has no per-workload audit mode: default denies are enforced too",
                )
            elif not implicit:
                self.limit(
                    source,
                    f"mode {w.mode.value}",
                    Approximation.NARROWED,
                    "without implicit labels on endpoints the workload cannot be left out of "
                    "policy selectors: it is enforced",
                )
            elif w.mode is not Mode.IDLE:
                self.limit(
                    source,
                    f"mode {w.mode.value}: would-be denies are not reported",
                    Approximation.DROPPED,
                    "no policy selects it, so Calico allows its traffic (the effective verdict); "
                    "Calico has no per-workload audit mode to report would-be denies",
                )

    def excluded(self) -> tuple[str, ...]:
        if not self.settings.implicit_labels_on_endpoints:
            return ()
        return tuple(
            sorted(
                w.labels.get(NAME_LABEL, w.name)
                for w in self.repo.workloads
                if w.kind in self.settings.endpoint_kinds and w.mode in _UNENFORCED_MODES
            )
        )

    def tier_names(self, tiers: list[Tier]) -> dict[str, str]:
        used = set(RESERVED_TIERS) | {FAILSAFE_TIER, FINAL_TIER}
        names: dict[str, str] = {}
        for t in tiers:
            name = _dns_label(t.name)
            if name in used:
                name = f"{name}-{_suffix(t.name)}"
            if name != t.name:
                self.limit(
                    f"tier/{t.name}",
                    f"tier renamed to {name}",
                    Approximation.REWRITTEN,
                    "reserved or not a valid Calico tier name",
                )
            used.add(name)
            names[t.name] = name
        return names

    @staticmethod
    def tier_manifest(
        name: str, order: float, default: TierDefault | None, source: str, extra: Mapping[str, str]
    ) -> Manifest:
        spec: dict[str, object] = {"order": _number(order)}
        if default is not None:
            spec["defaultAction"] = "Deny" if default is TierDefault.DENY else "Pass"
        meta = _meta(name, source)
        annotations = meta["annotations"]
        assert isinstance(annotations, dict)
        annotations.update(extra)
        return {"apiVersion": API_VERSION, "kind": "Tier", "metadata": meta, "spec": spec}

    @staticmethod
    def policy_manifest(
        kind: str,
        name: str,
        tier: str,
        order: float,
        selector: str,
        ingress: list[object] | None,
        egress: list[object] | None,
        source: str,
        description: str | None = None,
    ) -> Manifest:
        spec: dict[str, object] = {"tier": tier, "order": _number(order), "selector": selector}
        types = [t for t, r in (("Ingress", ingress), ("Egress", egress)) if r is not None]
        spec["types"] = types
        if ingress:
            spec["ingress"] = ingress
        if egress:
            spec["egress"] = egress
        meta = _meta(name, source)
        if description:
            annotations = meta["annotations"]
            assert isinstance(annotations, dict)
            annotations["septum.io/description"] = description
        return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}

    def failsafe(self, order: float) -> list[Manifest]:
        entries = self.repo.settings.failsafe
        if not entries:
            return []
        selector = " && ".join(self.scope_terms()) or "all()"
        rules: dict[Direction, list[object]] = {d: [] for d in Direction}
        for i, entry in enumerate(entries):
            source = f"settings/failsafe/{i}"
            nets = _by_version(entry.cidrs) if entry.cidrs else [_PeerMatch()]
            for d in Direction:
                if entry.direction not in (None, d):
                    continue
                for pm in nets:
                    for sm in _service_matches(entry.services):
                        if pm.version is not None and sm.version not in (None, pm.version):
                            continue
                        probe = Rule(Action.ALLOW, i, description=entry.description)
                        rules[d].append(self.calico_rule(probe, d, pm, sm, source))
        for d in Direction:
            rules[d].append(
                {
                    "action": "Pass",
                    "metadata": {"annotations": {SOURCE_ANNOTATION: "settings/failsafe"}},
                }
            )
        return [
            self.tier_manifest(
                FAILSAFE_TIER,
                order,
                TierDefault.PASS if self.settings.tier_default_action else None,
                "settings/failsafe",
                {},
            ),
            self.policy_manifest(
                "GlobalNetworkPolicy",
                f"{FAILSAFE_TIER}.failsafe",
                FAILSAFE_TIER,
                0,
                selector,
                rules[Direction.INGRESS],
                rules[Direction.EGRESS],
                "settings/failsafe",
            ),
        ]

    def final(self, order: float) -> list[Manifest]:
        allow = self.repo.settings.default_action is RepositoryDefault.ALLOW
        action = "Allow" if allow else "Deny"

        def rule() -> list[object]:
            return [
                {"action": action, "metadata": {"annotations": {SOURCE_ANNOTATION: "settings"}}}
            ]

        return [
            self.tier_manifest(
                FINAL_TIER,
                order,
                TierDefault.DENY if self.settings.tier_default_action else None,
                "settings",
                {},
            ),
            self.policy_manifest(
                "GlobalNetworkPolicy",
                f"{FINAL_TIER}.repository-default",
                FINAL_TIER,
                0,
                " && ".join(self.scope_terms()) or "all()",
                rule(),
                rule(),
                "settings",
                f"repository defaultAction: {self.repo.settings.default_action.value}",
            ),
        ]

    def settings_limitations(self) -> None:
        if not self.settings.implicit_labels_on_endpoints:
            self.limit(
                "settings",
                "Calico endpoints do not carry Septum's implicit labels",
                Approximation.NARROWED,
                "policies and the repository default apply to every Calico endpoint and peer "
                "selectors match every endpoint, not only the repository's workloads",
            )
        if WorkloadKind.HOST in self.settings.endpoint_kinds:
            self.limit(
                "settings/failsafe",
                "Calico's own failsafe ports",
                Approximation.WIDENED,
                "Calico always accepts its failsafe ports (FelixConfiguration "
                "failsafeInboundHostPorts/failsafeOutboundHostPorts) on host endpoints",
            )

    # -- all -----------------------------------------------------------------------------

    def render(self) -> Rendering:
        self.excluded_names = self.excluded()
        self.settings_limitations()
        self.workload_limitations()
        network_sets = self.network_sets()

        resolved_tiers = list(self.resolved.tiers)
        tiers = [rt.tier for rt in resolved_tiers]
        names = self.tier_names(tiers)
        step, base = self.settings.tier_order_step, self.settings.tier_order_base

        tier_objects: list[Manifest] = []
        policies: list[Manifest] = []
        staged: list[Manifest] = []

        failsafe = self.failsafe(base - step)
        if failsafe:
            tier_objects.append(failsafe[0])
            policies.extend(failsafe[1:])

        known = {t.name for t in tiers}
        for p in self.repo.policies:
            if p.tier not in known:
                self.limit(
                    f"policy/{p.name}", f"tier {p.tier!r} does not exist", Approximation.DROPPED
                )

        for i, rt in enumerate(resolved_tiers):
            t = rt.tier
            calico_tier = names[t.name]
            native_default = self.settings.tier_default_action
            tier_objects.append(
                self.tier_manifest(
                    calico_tier,
                    base + i * step,
                    t.default_action if native_default else None,
                    f"tier/{t.name}",
                    {"septum.io/order": str(_number(t.order))}
                    | ({"septum.io/owners": ",".join(t.owners)} if t.owners else {}),
                )
            )
            pnames = {rp.name: f"{calico_tier}.{_dns_subdomain(rp.name)}" for rp in rt.policies}
            septum_seq = [rp.name for rp in rt.policies]
            orders = {rp.name: rp.policy.order for rp in rt.policies}
            calico_seq = sorted(septum_seq, key=lambda n: (orders[n], pnames[n]))
            renumber = calico_seq != septum_seq
            if renumber:
                self.limit(
                    f"tier/{t.name}",
                    "policy orders renumbered",
                    Approximation.REWRITTEN,
                    "sanitised policy names would break order ties differently",
                )
            for j, rp in enumerate(rt.policies):
                p = rp.policy
                source = f"policy/{p.name}"
                self.expired(p)
                if rp.ingress is None and rp.egress is None:
                    self.limit(
                        source,
                        "policy declares no direction",
                        Approximation.REWRITTEN,
                        "it applies to nothing; not rendered",
                    )
                    continue
                if rp.staged and not self.settings.staged_policies:
                    self.limit(
                        source,
                        "staged policy",
                        Approximation.DROPPED,
                        "staged policies need Calico ≥ 3.30; never enforced anyway",
                    )
                    continue
                selector = self.applies_selector(p.applies_to, source)
                if selector is None:
                    continue
                ingress = (
                    None if rp.ingress is None else self.rules(p, Direction.INGRESS, rp.ingress)
                )
                egress = None if rp.egress is None else self.rules(p, Direction.EGRESS, rp.egress)
                manifest = self.policy_manifest(
                    "StagedGlobalNetworkPolicy" if rp.staged else "GlobalNetworkPolicy",
                    pnames[p.name],
                    calico_tier,
                    float(j + 1) if renumber else p.order,
                    selector,
                    ingress,
                    egress,
                    source,
                    p.description,
                )
                if p.name != _dns_subdomain(p.name):
                    self.limit(
                        source, f"policy renamed to {pnames[p.name]}", Approximation.REWRITTEN
                    )
                (staged if rp.staged else policies).append(manifest)
            if t.default_action is TierDefault.PASS and not native_default:
                self.limit(
                    f"tier/{t.name}",
                    "tier defaultAction pass",
                    Approximation.REWRITTEN,
                    "Tier.spec.defaultAction needs Calico ≥ 3.29: a last policy passes instead",
                )
                last = max((rp.policy.order for rp in rt.policies), default=0.0)

                def pass_rule(tier: str = t.name) -> list[object]:
                    return [
                        {"action": "Pass", "metadata": {"annotations": {SOURCE_ANNOTATION: tier}}}
                    ]

                policies.append(
                    self.policy_manifest(
                        "GlobalNetworkPolicy",
                        f"{calico_tier}.septum-tier-default",
                        calico_tier,
                        (len(rt.policies) + 1) if renumber else last + 1,
                        " && ".join(self.scope_terms()) or "all()",
                        pass_rule(f"tier/{t.name}"),
                        pass_rule(f"tier/{t.name}"),
                        f"tier/{t.name}",
                    )
                )

        final = self.final(base + len(resolved_tiers) * step)
        tier_objects.append(final[0])
        policies.extend(final[1:])
        return Rendering(
            target="calico",
            manifests=(*network_sets, *tier_objects, *policies, *staged),
            limitations=tuple(self.limitations),
        )

    def expired(self, policy: Policy) -> None:
        for direction in Direction:
            for rule in policy.rules(direction) or ():
                if not rule.alive_at(self.at):
                    assert rule.expires is not None
                    self.limit(
                        f"policy/{policy.name}/{direction.value}/{rule.index}",
                        f"rule expired at {rule.expires.isoformat()}",
                        Approximation.REWRITTEN,
                        "no longer part of the policy: not rendered",
                    )


def render_calico(
    repo: Repository, at: datetime, settings: CalicoRenderSettings | None = None
) -> Rendering:
    """Calico manifests for ``repo`` as it stands at ``at``, in apply order (network sets,
    tiers, policies, staged policies), with every difference from Septum's meaning reported.

    Deterministic: the same repository, time and settings give the same manifests. Cost: see
    the module docstring."""
    renderer = _Renderer(repo, at, settings or CalicoRenderSettings(), resolve_policy(repo, at))
    return renderer.render()
