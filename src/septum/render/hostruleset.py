"""Lowering stage 3: resolved policy → host ruleset of one enforcer (pure data).

A :class:`HostRuleset` is what one host's nftables table ``inet septum`` must contain: static
chains whose rules reference dynamic named sets and verdict maps. Address churn (a workload
gets or loses an address, a label change moves a workload in or out of a peer selector)
changes set and map *elements* only; :func:`diff_rulesets` turns two rulesets into element
deltas and says whether the static part changed too.

Chain layout (one base chain per hook, Calico/knftables style)::

    input / output / forward  (filter hook, priority filter)
      ct state established,related accept · ct state invalid drop · loopback accept
      goto egress_dispatch
    egress_dispatch                       side 1: the source, if it is a local workload
      failsafe (egress) → goto ingress_dispatch
      ip saddr vmap @egress_v4 · ip6 saddr vmap @egress_v6   → goto w_<workload>_eg
      goto ingress_dispatch
    ingress_dispatch                      side 2: the destination, if it is a local workload
      failsafe (ingress) → accept
      ip daddr vmap @ingress_v4 · ip6 daddr vmap @ingress_v6 → goto w_<workload>_in
      accept
    w_<workload>_<in|eg>                  one per local workload (mode ≠ idle) and direction
      jump t_<tier>_<hash>_<in|eg> …      the tiers that apply, in order
      repository default
    t_<tier>_<hash>_<in|eg>               one per (tier, applicable policies, mode class):
      the rules of the applicable policies in order; tier default deny at the end

Both sides are evaluated in every hook, so containers behind the host (forward), the host
itself (input/output) and container↔host traffic are all covered. An egress *allow* cannot
be ``accept`` (that would end the base chain before the destination's ingress is evaluated),
so on egress "allow" is ``goto ingress_dispatch``; on ingress it is ``accept``.

Verdicts: allow → accept (egress: goto ingress_dispatch); deny → counter, nflog, drop; pass →
``return`` (back to the workload chain, which jumps to the next tier); log → nflog and
continue. Modes: ``enforced`` drops every deny; ``selective`` drops explicit deny rules and
logs-and-accepts default denies (tier and repository); ``test`` and ``visibility`` log every
would-be deny (nflog group ``would_deny_group``) and accept; ``idle`` workloads get no chain
and no dispatch entry. Staged policies are not rendered (never enforced; reported by explain).

Peers: a selector (or segment) peer becomes the named set of its selected workloads'
addresses, plus — when it selects networks — a rule that matches the networks' ranges only
outside the ``attributed_vN`` set (every workload and user-session address), which is exactly
the attribution order of ``semantics.md``. ``users:`` peers become the set of the selected
users' session addresses; ``network:`` peers the network's ranges outside ``attributed_vN``;
``cidr:`` peers an anonymous set (outside ``workloads_vN`` when
``cidrMatchesWorkloads: false``). Approximations (see also ``render/nft.py``):

- addresses and validity are those at the resolve time; a validity boundary needs a new
  resolve (which yields element deltas only);
- a rule with several peer/service alternatives becomes several nft rules; for a ``log`` rule
  a packet matching two alternatives is logged twice;
- loopback traffic is accepted without evaluation, including traffic between two distinct
  workloads of one host over ``lo`` (a workload talking to itself is never evaluated anyway).

Determinism: chains, sets and elements are sorted; generated names are a readable prefix plus
a short hash of their defining text (selector canonical text, tier chain key).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network

from septum.engine.resolve import (
    AddressSet,
    LocalWorkload,
    ResolvedPolicy,
    ResolvedPolicyRules,
    TierApplication,
)
from septum.model.resources import (
    ALL_PORTS,
    Action,
    Direction,
    FailsafeEntry,
    IPNetwork,
    Mode,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    RepositoryDefault,
    Rule,
    ServicePort,
    TierDefault,
)

__all__ = [
    "AddrField",
    "AddrMatch",
    "Chain",
    "CtStateMatch",
    "Dispatch",
    "Element",
    "ElementDelta",
    "Family",
    "Hook",
    "HostRuleset",
    "IfaceMatch",
    "LogStatement",
    "MapElement",
    "Match",
    "NamedSet",
    "NeighborDiscoveryMatch",
    "NftRule",
    "NftSettings",
    "PortMatch",
    "ProtoMatch",
    "Provenance",
    "RuleCache",
    "RulesetDelta",
    "SetType",
    "Verdict",
    "VerdictMap",
    "WorkloadChains",
    "apply_delta",
    "attributed_set_name",
    "build_fail_closed_ruleset",
    "build_host_ruleset",
    "build_workload_chains",
    "compose_deltas",
    "diff_rulesets",
    "dispatch_map_name",
    "element_sort_key",
    "selector_set_name",
    "workload_chain_name",
    "workloads_set_name",
]

# ------------------------------------------------------------------------------- data


class Family(enum.Enum):
    IP = "ip"
    IP6 = "ip6"


class AddrField(enum.Enum):
    SADDR = "saddr"
    DADDR = "daddr"


class SetType(enum.Enum):
    IPV4 = "ipv4_addr"
    IPV6 = "ipv6_addr"


class Hook(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    FORWARD = "forward"


class Verdict(enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"
    JUMP = "jump"
    GOTO = "goto"
    CONTINUE = "continue"  # no verdict: the next rule runs


@dataclass(frozen=True, slots=True)
class AddrMatch:
    """``ip saddr @set`` / ``ip6 daddr != @set`` / ``ip saddr { ranges }``."""

    family: Family
    field: AddrField
    set_name: str | None = None
    ranges: tuple[IPNetwork, ...] = ()
    negate: bool = False


@dataclass(frozen=True, slots=True)
class PortMatch:
    """Protocol and destination port: ``meta l4proto . th dport { tcp . 443, ... }``."""

    entries: tuple[tuple[Protocol, PortRange], ...]


@dataclass(frozen=True, slots=True)
class ProtoMatch:
    """Protocol only (every port, or a protocol without ports): ``meta l4proto { ... }``."""

    protocols: tuple[Protocol, ...]


@dataclass(frozen=True, slots=True)
class CtStateMatch:
    states: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IfaceMatch:
    field: str  # "iif" | "oif"
    name: str


@dataclass(frozen=True, slots=True)
class NeighborDiscoveryMatch:
    """IPv6 neighbour and router discovery (ICMPv6 types 133-137) with hop limit 255, i.e.
    from the link itself. It is link plumbing, not a flow between workloads: without it, a
    host could not resolve its neighbours' addresses (solicitations leave from, and adverts
    answer to, the workloads' own global addresses, so dispatch would deny them)."""


Match = AddrMatch | PortMatch | ProtoMatch | CtStateMatch | IfaceMatch | NeighborDiscoveryMatch


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A verdict-map lookup ending the rule: ``ip saddr vmap @egress_v4``."""

    family: Family
    field: AddrField
    map_name: str


@dataclass(frozen=True, slots=True)
class LogStatement:
    group: int  # nflog group
    prefix: str


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a rule comes from: ``tier/policy/direction/index`` (or ``default``/``jump``);
    system rules are ``septum/<note>``."""

    tier: str | None = None
    policy: str | None = None
    direction: Direction | None = None
    index: int | None = None
    note: str | None = None

    def __str__(self) -> str:
        if self.tier is None and self.policy is None and self.direction is None:
            return (
                f"septum/{self.note}" if self.index is None else f"septum/{self.note}/{self.index}"
            )
        last = str(self.index) if self.index is not None else (self.note or "*")
        direction = self.direction.value if self.direction is not None else "*"
        return f"{self.tier or '*'}/{self.policy or '*'}/{direction}/{last}"


@dataclass(frozen=True, slots=True)
class NftRule:
    matches: tuple[Match, ...]
    verdict: Verdict
    provenance: Provenance
    target: str | None = None  # chain of JUMP/GOTO
    log: LogStatement | None = None
    dispatch: Dispatch | None = None  # replaces the verdict
    counter: bool = True


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[NftRule, ...]
    hook: Hook | None = None  # base chains only
    priority: int = 0  # offset from the filter priority
    comment: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class MapElement:
    """``address : goto chain`` in a dispatch verdict map."""

    key: IPv4Network | IPv6Network  # a host prefix
    chain: str


Element = IPv4Network | IPv6Network | MapElement


@dataclass(frozen=True, slots=True)
class NamedSet:
    name: str
    type: SetType
    interval: bool
    elements: tuple[IPNetwork, ...] = ()  # sorted; host prefixes unless ``interval``
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class VerdictMap:
    name: str
    type: SetType
    elements: tuple[MapElement, ...] = ()  # sorted
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class HostRuleset:
    """Everything the table ``<family> <table>`` of one enforcer holds. Pure data, sorted."""

    enforcer: str
    at: datetime
    chains: tuple[Chain, ...]
    sets: tuple[NamedSet, ...]
    maps: tuple[VerdictMap, ...]
    table: str = "septum"
    family: str = "inet"

    def structure(self) -> HostRuleset:
        """The static part: the same ruleset with every set and map emptied."""
        return replace(
            self,
            at=datetime.min,
            sets=tuple(replace(s, elements=()) for s in self.sets),
            maps=tuple(replace(m, elements=()) for m in self.maps),
        )

    def elements(self) -> dict[str, frozenset[Element]]:
        """The dynamic part: every set's and map's elements, by name."""
        out: dict[str, frozenset[Element]] = {s.name: frozenset(s.elements) for s in self.sets}
        out.update({m.name: frozenset(m.elements) for m in self.maps})
        return out

    def chain(self, name: str) -> Chain:
        for c in self.chains:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class NftSettings:
    """How rulesets are rendered (passed in by the caller, never read from a global).

    nflog groups: ``deny_group`` for enforced denies, ``would_deny_group`` for denies that are
    reported but not enforced (test, visibility, selective defaults), ``log_group`` for
    ``log`` rules. ``priority`` is the offset of the base chains from ``filter``.
    """

    table: str = "septum"
    deny_group: int = 1
    would_deny_group: int = 2
    log_group: int = 3
    priority: int = 0


# ------------------------------------------------------------------------------- deltas


@dataclass(frozen=True, slots=True)
class ElementDelta:
    """Disjoint element changes of one named set or verdict map (sorted)."""

    name: str
    added: tuple[Element, ...] = ()
    removed: tuple[Element, ...] = ()


@dataclass(frozen=True, slots=True)
class RulesetDelta:
    """From one ruleset to another: element deltas, and whether the static part (chains,
    rules, set declarations) changed too, in which case the deltas are not enough and the
    whole table must be replaced."""

    elements: tuple[ElementDelta, ...]
    structure_changed: bool

    def __bool__(self) -> bool:
        return self.structure_changed or bool(self.elements)


def _sort_key(e: Element) -> tuple[int, int, int, str]:
    if isinstance(e, MapElement):
        return (e.key.version, int(e.key.network_address), e.key.prefixlen, e.chain)
    return (e.version, int(e.network_address), e.prefixlen, "")


def diff_rulesets(old: HostRuleset, new: HostRuleset) -> RulesetDelta:
    """Element deltas turning ``old``'s sets and maps into ``new``'s. Cost: O(elements)."""
    structure_changed = old.structure() != new.structure()
    # Elements are kept sorted, so equal tuples mean equal sets: the tuple comparison (in C,
    # and by identity where resolve shared the address objects) skips unchanged sets without
    # hashing their elements, which dominates the cost for large tables.
    before_t = {s.name: s.elements for s in old.sets} | {m.name: m.elements for m in old.maps}
    after_t = {s.name: s.elements for s in new.sets} | {m.name: m.elements for m in new.maps}
    deltas: list[ElementDelta] = []
    for name in sorted(before_t.keys() | after_t.keys()):
        bt, at = before_t.get(name, ()), after_t.get(name, ())
        if bt == at:
            continue
        b, a = frozenset[Element](bt), frozenset[Element](at)
        if a == b:
            continue
        deltas.append(
            ElementDelta(
                name,
                tuple(sorted(a - b, key=_sort_key)),
                tuple(sorted(b - a, key=_sort_key)),
            )
        )
    return RulesetDelta(tuple(deltas), structure_changed)


def apply_delta(ruleset: HostRuleset, delta: RulesetDelta | Iterable[ElementDelta]) -> HostRuleset:
    """``ruleset`` with element deltas applied (removals first, as the rendered delta does).

    A map element is removed by key, so a changed target is a removal plus an addition.
    """
    deltas = delta.elements if isinstance(delta, RulesetDelta) else tuple(delta)
    by_name = {d.name: d for d in deltas}

    def patch_set(s: NamedSet) -> NamedSet:
        d = by_name.get(s.name)
        if d is None:
            return s
        els = set(s.elements) - set(d.removed)
        els |= {e for e in d.added if not isinstance(e, MapElement)}
        return replace(s, elements=tuple(sorted(els, key=_sort_key)))

    def patch_map(m: VerdictMap) -> VerdictMap:
        d = by_name.get(m.name)
        if d is None:
            return m
        removed_keys = {e.key for e in d.removed if isinstance(e, MapElement)}
        els = {e for e in m.elements if e.key not in removed_keys}
        els |= {e for e in d.added if isinstance(e, MapElement)}
        return replace(m, elements=tuple(sorted(els, key=_sort_key)))

    return replace(
        ruleset,
        sets=tuple(patch_set(s) for s in ruleset.sets),
        maps=tuple(patch_map(m) for m in ruleset.maps),
    )


def compose_deltas(steps: Iterable[Iterable[ElementDelta]]) -> tuple[ElementDelta, ...]:
    """One list of element deltas with the effect of ``steps`` applied one after the other.

    For an agent several revisions behind: the control plane keeps each revision's deltas
    and sends their composition, which the agent applies as one transaction. Each step must
    be a proper delta of the state it applies to (what ``diff_rulesets`` gives: additions
    absent from it, removals present in it), so that the composition only ever deletes
    elements the base state holds (nft refuses to delete a missing element). Per name, with
    steps (a1, r1) then (a2, r2): removed = r1 ∪ (r2 − a1), added = (a1 − r2) ∪ a2, and what
    is in both (removed, then re-added as it was) is dropped from both. Sorted as
    ``diff_rulesets`` sorts. Cost: O(elements of the steps).
    """
    added: dict[str, set[Element]] = {}
    removed: dict[str, set[Element]] = {}
    order: list[str] = []
    for step in steps:
        for d in step:
            if d.name not in added:
                added[d.name], removed[d.name] = set(), set()
                order.append(d.name)
            a1, r1 = added[d.name], removed[d.name]
            a2, r2 = set(d.added), set(d.removed)
            r1 |= r2 - a1
            a1 -= r2
            a1 |= a2
            both = a1 & r1
            a1 -= both
            r1 -= both
    out: list[ElementDelta] = []
    for name in sorted(order):
        a, r = added[name], removed[name]
        if a or r:
            out.append(
                ElementDelta(name, tuple(sorted(a, key=_sort_key)), tuple(sorted(r, key=_sort_key)))
            )
    return tuple(out)


# ------------------------------------------------------------------------------- naming


_NOT_IDENT = re.compile(r"[^a-z0-9]+")


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _readable(text: str, maxlen: int) -> str:
    ident = _NOT_IDENT.sub("_", text.lower()).strip("_")[:maxlen].strip("_")
    return ident or "x"


def _vsuffix(family: Family) -> str:
    return "4" if family is Family.IP else "6"


def _stype(family: Family) -> SetType:
    return SetType.IPV4 if family is Family.IP else SetType.IPV6


FAMILIES = (Family.IP, Family.IP6)
INGRESS_DISPATCH = "ingress_dispatch"
EGRESS_DISPATCH = "egress_dispatch"
_DIR_SUFFIX = {Direction.INGRESS: "in", Direction.EGRESS: "eg"}
_REMOTE = {Direction.INGRESS: AddrField.SADDR, Direction.EGRESS: AddrField.DADDR}


def workload_chain_name(workload: str, direction: Direction) -> str:
    """The chain of one local workload and direction."""
    return f"{_workload_chain_base(workload)}_{_DIR_SUFFIX[direction]}"


@functools.lru_cache(maxsize=1 << 16)
def _workload_chain_base(workload: str) -> str:
    # memoized by name only (a hash and a regex), shared by both directions
    return f"w_{_readable(workload, 24)}_{_short_hash('w:' + workload, 6)}"


def selector_set_name(text: str, family: Family) -> str:
    """The set of the addresses of the workloads a selector (canonical ``text``) selects.

    Shared by name by every enforcer whose rules use the selector."""
    return f"s_{_readable(text, 20)}_{_short_hash('sel:' + text)}_v{_vsuffix(family)}"


def attributed_set_name(family: Family) -> str:
    """The set of every address held by a workload or a user session."""
    return f"attributed_v{_vsuffix(family)}"


def workloads_set_name(family: Family) -> str:
    """The set of every workload address (``cidrMatchesWorkloads: false``)."""
    return f"workloads_v{_vsuffix(family)}"


def dispatch_map_name(direction: Direction, family: Family) -> str:
    """The verdict map from a local workload's address to its chain for ``direction``."""
    return f"{direction.value}_v{_vsuffix(family)}"


def element_sort_key(e: Element) -> tuple[int, int, int, str]:
    """The order of elements in sets, maps and deltas."""
    return _sort_key(e)


def _family_ranges(a: AddressSet, family: Family) -> tuple[IPNetwork, ...]:
    return a.v4 if family is Family.IP else a.v6


# ------------------------------------------------------------------------------- building


class _DenyStyle(enum.Enum):
    DROP = "drop"
    LOG_ACCEPT = "log-accept"


#: mode → (style of explicit deny rules, style of default denies), for the modes that install
#: rules (``Mode.installs_rules``: idle and visibility get no chains)
_MODE_STYLES: Mapping[Mode, tuple[_DenyStyle, _DenyStyle]] = {
    Mode.ENFORCED: (_DenyStyle.DROP, _DenyStyle.DROP),
    Mode.SELECTIVE: (_DenyStyle.DROP, _DenyStyle.LOG_ACCEPT),
    Mode.TEST: (_DenyStyle.LOG_ACCEPT, _DenyStyle.LOG_ACCEPT),
}


@dataclass(frozen=True, slots=True)
class _SetDecl:
    """A named set a rule references, with its elements."""

    name: str
    family: Family
    interval: bool
    elements: tuple[IPNetwork, ...]
    comment: str


@dataclass(frozen=True, slots=True)
class _Expanded:
    """One model rule as nft match alternatives, with the named sets they reference."""

    alternatives: tuple[tuple[Match, ...], ...]
    sets: tuple[_SetDecl, ...]


@dataclass(slots=True)
class RuleCache:
    """Per-resolved-policy memo of expanded rules, shared by the rulesets of all enforcers
    (``compile_all``). Not thread-safe."""

    resolved: ResolvedPolicy
    settings: NftSettings
    _rules: dict[tuple[str, Direction, int], _Expanded] = field(default_factory=dict)
    _failsafe: dict[tuple[Direction, int], _Expanded] = field(default_factory=dict)
    _tier_chains: dict[tuple[object, ...], tuple[Chain, tuple[_SetDecl, ...]]] = field(
        default_factory=dict
    )
    _has_deny: dict[tuple[str, Direction], bool] = field(default_factory=dict)
    _by_app: dict[
        tuple[int, int, int],
        tuple[TierApplication, tuple[Chain, tuple[_SetDecl, ...]] | None],
    ] = field(default_factory=dict)
    _named: dict[str, NamedSet] = field(default_factory=dict)
    # (ids of a workload's TierApplications, direction, mode) -> (the applications, which
    # keep the ids valid; the rules of its workload chain). Workloads with the same
    # applicable policies and mode have identical chains but for the name.
    _workload_rules: dict[
        tuple[tuple[int, ...], int, int],
        tuple[
            tuple[TierApplication, ...],
            tuple[NftRule, ...],
            tuple[tuple[Chain, tuple[_SetDecl, ...]], ...],
        ],
    ] = field(default_factory=dict)
    # tier chain name -> the jump rule to it (one object, so renders are shared too)
    _jumps: dict[str, NftRule] = field(default_factory=dict)
    _defaults: dict[tuple[Direction, _DenyStyle | None], tuple[NftRule, ...]] = field(
        default_factory=dict
    )

    def tier_chain_sets(self) -> dict[str, tuple[str, ...]]:
        """The sets each tier chain built so far declares, by chain name. A tier chain
        declares the sets of its rules' peers (a superset of those its rules reference)."""
        return {c.name: tuple(s.name for s in sets) for c, sets in self._tier_chains.values()}


def _comment_text(text: str) -> str:
    return text.replace('"', "'")[:120]


class _Builder:
    def __init__(self, cache: RuleCache, settings: NftSettings) -> None:
        self.cache = cache
        self.resolved = cache.resolved
        self.settings = settings
        self.sets: dict[str, _SetDecl] = {}
        self.tier_chains: dict[str, Chain] = {}  # by name
        self.tier_chain_sets: dict[str, tuple[str, ...]] = {}  # chain name → sets it declares
        self._pending: list[_SetDecl] = []
        self._chain_sets: dict[str, _SetDecl] = {}
        # workload-chain keys whose tier chains this builder has registered already
        self._registered: set[tuple[tuple[int, ...], int, int]] = set()

    # ------------------------------------------------------------ peers and services

    def _selector_sets(self, text: str, family: Family) -> list[tuple[Match, ...]]:
        rs = self.resolved.selectors[text]
        base = f"s_{_readable(text, 20)}_{_short_hash('sel:' + text)}"
        v = _vsuffix(family)
        wl = _SetDecl(
            selector_set_name(text, family),
            family,
            False,
            _family_ranges(rs.addresses.workloads, family),
            f"workloads of {text}",
        )
        out: list[tuple[Match, ...]] = []
        sets = [wl]
        out.append((AddrMatch(family, AddrField.SADDR, wl.name),))
        nets = _family_ranges(rs.addresses.networks, family)
        if nets:
            nd = _SetDecl(f"{base}_n{v}", family, True, nets, f"networks of {text}")
            sets.append(nd)
            out.append(self._outside_attributed(family, nd, sets))
        self._pending.extend(sets)
        return out

    def _attributed(self, family: Family) -> _SetDecl:
        return _SetDecl(
            attributed_set_name(family),
            family,
            False,
            _family_ranges(self.resolved.attributed_addresses, family),
            "addresses held by workloads and user sessions",
        )

    def _outside_attributed(
        self, family: Family, ranges: _SetDecl, sets: list[_SetDecl]
    ) -> tuple[Match, ...]:
        excl = self._attributed(family)
        sets.append(excl)
        return (
            AddrMatch(family, AddrField.SADDR, excl.name, negate=True),
            AddrMatch(family, AddrField.SADDR, ranges.name),
        )

    def _peer_alternatives(self, peers: tuple[Peer, ...]) -> list[tuple[Match, ...]]:
        """Alternatives matching the remote address in field SADDR (fixed up per direction)."""
        if not peers:
            return [()]
        out: list[tuple[Match, ...]] = []
        cidrs: list[IPNetwork] = []
        for peer in peers:
            if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT):
                assert peer.selector is not None
                if peer.selector.is_all:
                    return [()]
                for fam in FAMILIES:
                    out.extend(self._selector_sets(peer.selector.text, fam))
            elif peer.kind is PeerKind.CIDR:
                assert peer.cidr is not None
                cidrs.append(peer.cidr)
            elif peer.kind is PeerKind.NETWORK:
                assert peer.ref is not None
                ranges = self.resolved.networks.get(peer.ref, AddressSet())
                for fam in FAMILIES:
                    r = _family_ranges(ranges, fam)
                    if r:
                        v = _vsuffix(fam)
                        nd = _SetDecl(
                            f"n_{_readable(peer.ref, 20)}_{_short_hash('net:' + peer.ref)}_v{v}",
                            fam,
                            True,
                            r,
                            f"network {peer.ref}",
                        )
                        sets = [nd]
                        out.append(self._outside_attributed(fam, nd, sets))
                        self._pending.extend(sets)
            else:  # USERS
                assert peer.selector is not None
                text = peer.selector.text
                us = self.resolved.user_selectors[text]
                for fam in FAMILIES:
                    ud = _SetDecl(
                        f"u_{_readable(text, 20)}_{_short_hash('users:' + text)}_v{_vsuffix(fam)}",
                        fam,
                        False,
                        _family_ranges(us.addresses, fam),
                        f"sessions of users {text}",
                    )
                    self._pending.append(ud)
                    out.append((AddrMatch(fam, AddrField.SADDR, ud.name),))
        if cidrs:
            ranges = AddressSet.of_ranges(cidrs)
            for fam in FAMILIES:
                r = _family_ranges(ranges, fam)
                if not r:
                    continue
                alt: tuple[Match, ...] = (AddrMatch(fam, AddrField.SADDR, ranges=r),)
                if not self.resolved.settings.cidr_matches_workloads:
                    excl = _SetDecl(
                        workloads_set_name(fam),
                        fam,
                        False,
                        _family_ranges(self.resolved.workload_addresses, fam),
                        "addresses held by workloads",
                    )
                    self._pending.append(excl)
                    alt = (AddrMatch(fam, AddrField.SADDR, excl.name, negate=True), *alt)
                out.append(alt)
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------ rules

    def _expand(
        self, peers: tuple[Peer, ...], services: tuple[ServicePort, ...], direction: Direction
    ) -> _Expanded:
        self._pending = []
        peer_alts = self._peer_alternatives(peers)
        remote = _REMOTE[direction]
        if remote is not AddrField.SADDR:
            peer_alts = [
                tuple(replace(m, field=remote) if isinstance(m, AddrMatch) else m for m in alt)
                for alt in peer_alts
            ]
        svc_alts = _service_alternatives(services)
        alts = tuple(p + s for p in peer_alts for s in svc_alts)
        sets = tuple(dict((s.name, s) for s in self._pending).values())
        return _Expanded(alts, sets)

    def expand_rule(
        self, policy: ResolvedPolicyRules, direction: Direction, rule: Rule
    ) -> _Expanded:
        key = (policy.name, direction, rule.index)
        hit = self.cache._rules.get(key)
        if hit is None:
            hit = self._expand(rule.peers, rule.services, direction)
            self.cache._rules[key] = hit
        return hit

    def _use(self, expanded: _Expanded) -> None:
        for s in expanded.sets:
            self._chain_sets.setdefault(s.name, s)

    def _allow(self, direction: Direction) -> tuple[Verdict, str | None]:
        if direction is Direction.EGRESS:
            return Verdict.GOTO, INGRESS_DISPATCH
        return Verdict.ACCEPT, None

    def _deny_rules(
        self,
        matches: Iterable[tuple[Match, ...]],
        style: _DenyStyle,
        direction: Direction,
        prov: Provenance,
    ) -> list[NftRule]:
        s = self.settings
        if style is _DenyStyle.DROP:
            log = LogStatement(s.deny_group, f"septum deny {prov} ")
            return [NftRule(m, Verdict.DROP, prov, log=log) for m in matches]
        verdict, target = self._allow(direction)
        log = LogStatement(s.would_deny_group, f"septum would-deny {prov} ")
        return [NftRule(m, verdict, prov, target=target, log=log) for m in matches]

    def _rule_rules(
        self,
        tier: str,
        policy: ResolvedPolicyRules,
        direction: Direction,
        rule: Rule,
        explicit: _DenyStyle,
    ) -> list[NftRule]:
        expanded = self.expand_rule(policy, direction, rule)
        self._use(expanded)
        prov = Provenance(tier, policy.name, direction, rule.index)
        alts = expanded.alternatives
        if rule.action is Action.ALLOW:
            verdict, target = self._allow(direction)
            return [NftRule(m, verdict, prov, target=target) for m in alts]
        if rule.action is Action.DENY:
            return self._deny_rules(alts, explicit, direction, prov)
        if rule.action is Action.PASS:
            return [NftRule(m, Verdict.RETURN, prov) for m in alts]
        log = LogStatement(self.settings.log_group, f"septum log {prov} ")
        return [NftRule(m, Verdict.CONTINUE, prov, log=log) for m in alts]

    def _policy_has_deny(self, p: ResolvedPolicyRules, direction: Direction) -> bool:
        key = (p.name, direction)
        hit = self.cache._has_deny.get(key)
        if hit is None:
            hit = any(r.action is Action.DENY for r in p.rules(direction) or ())
            self.cache._has_deny[key] = hit
        return hit

    def tier_chain(self, app: TierApplication, direction: Direction, mode: Mode) -> Chain | None:
        """The (shared) chain of one tier for the given applicable policies and mode class,
        registered with this enforcer's ruleset."""
        shared = self._tier_shared(app, direction, mode)
        return None if shared is None else self._register(*shared)

    def _tier_shared(
        self, app: TierApplication, direction: Direction, mode: Mode
    ) -> tuple[Chain, tuple[_SetDecl, ...]] | None:
        # Resolve interns TierApplications, so most calls are one memo hit by identity (the
        # memo holds the application, so its id cannot be reused while it is there).
        # ids of the enum singletons: hashing an Enum member runs Python code, an int does not
        ident = (id(app), id(direction), id(mode))
        memo = self.cache._by_app.get(ident)
        if memo is not None and memo[0] is app:
            return memo[1]
        shared = self._shared_tier_chain(app, direction, mode)
        self.cache._by_app[ident] = (app, shared)
        return shared

    def _register(self, chain: Chain, sets: tuple[_SetDecl, ...]) -> Chain:
        """Add a tier chain and the sets it references to this enforcer's ruleset (once)."""
        if chain.name not in self.tier_chains:
            for s in sets:
                self.sets.setdefault(s.name, s)
            self.tier_chains[chain.name] = chain
            self.tier_chain_sets[chain.name] = tuple(s.name for s in sets)
        return chain

    def _shared_tier_chain(
        self, app: TierApplication, direction: Direction, mode: Mode
    ) -> tuple[Chain, tuple[_SetDecl, ...]] | None:
        policies = app.enforced()
        if not policies:
            return None
        explicit, default = _MODE_STYLES[mode]
        # A style only matters when something can deny: keep the key (and sharing) minimal.
        default_key = default if app.tier.default_action is TierDefault.DENY else None
        has_deny = any(self._policy_has_deny(p, direction) for p in policies)
        explicit_key = explicit if has_deny else None
        key = (direction, app.tier.name, tuple(p.name for p in policies), explicit_key, default_key)
        shared = self.cache._tier_chains.get(key)
        if shared is None:
            self._chain_sets = {}
            rules: list[NftRule] = []
            for p in policies:
                for r in p.rules(direction) or ():
                    rules.extend(self._rule_rules(app.tier.name, p, direction, r, explicit))
            if app.tier.default_action is TierDefault.DENY:
                prov = Provenance(app.tier.name, None, direction, note="default")
                rules.extend(self._deny_rules([()], default, direction, prov))
            digest = _short_hash(repr([k.value if isinstance(k, enum.Enum) else k for k in key]))
            name = f"t_{_readable(app.tier.name, 16)}_{digest}_{_DIR_SUFFIX[direction]}"
            names = ", ".join(p.name for p in policies)
            chain = Chain(
                name,
                tuple(rules),
                comment=_comment_text(f"tier {app.tier.name} {direction.value}: {names}"),
            )
            shared = (chain, tuple(self._chain_sets.values()))
            self.cache._tier_chains[key] = shared
        return shared

    def _default_rules(self, direction: Direction, mode: Mode) -> tuple[NftRule, ...]:
        """The repository default at the end of every workload chain (shared)."""
        allow = self.resolved.default_action is RepositoryDefault.ALLOW
        style = None if allow else _MODE_STYLES[mode][1]
        key = (direction, style)
        hit = self.cache._defaults.get(key)
        if hit is None:
            prov = Provenance("*", None, direction, note="default")
            if style is None:
                verdict, target = self._allow(direction)
                hit = (NftRule((), verdict, prov, target=target),)
            else:
                hit = tuple(self._deny_rules([()], style, direction, prov))
            self.cache._defaults[key] = hit
        return hit

    def workload_chain(self, lw: LocalWorkload, direction: Direction) -> Chain:
        apps = lw.tiers(direction)
        key = (tuple(map(id, apps)), id(direction), id(lw.mode))
        hit = self.cache._workload_rules.get(key)  # holds `apps`, so the ids stay theirs
        if hit is None:
            rules, tiers = self._workload_rules(lw, direction)
            self.cache._workload_rules[key] = (apps, rules, tiers)
            self._registered.add(key)
        else:
            rules, tiers = hit[1], hit[2]
            if key not in self._registered:  # built for another enforcer: register its tiers
                for chain, sets in tiers:
                    self._register(chain, sets)
                self._registered.add(key)
        return self._named_chain(lw, direction, rules)

    @staticmethod
    def _named_chain(lw: LocalWorkload, direction: Direction, rules: tuple[NftRule, ...]) -> Chain:
        return Chain(
            workload_chain_name(lw.name, direction),
            rules,
            comment=_comment_text(f"workload {lw.name} {direction.value} ({lw.mode.value})"),
        )

    def _workload_rules(
        self, lw: LocalWorkload, direction: Direction
    ) -> tuple[tuple[NftRule, ...], tuple[tuple[Chain, tuple[_SetDecl, ...]], ...]]:
        """Jumps to the tier chains that apply, then the repository default; registers those
        tier chains and their sets with this enforcer's ruleset and returns them too."""
        rules: list[NftRule] = []
        tiers: list[tuple[Chain, tuple[_SetDecl, ...]]] = []
        for app in lw.tiers(direction):
            shared = self._tier_shared(app, direction, lw.mode)
            if shared is not None:
                tc = self._register(*shared)
                tiers.append(shared)
                jump = self.cache._jumps.get(tc.name)
                if jump is None:
                    prov = Provenance(app.tier.name, None, direction, note="jump")
                    jump = NftRule((), Verdict.JUMP, prov, target=tc.name, counter=False)
                    self.cache._jumps[tc.name] = jump
                rules.append(jump)
        rules.extend(self._default_rules(direction, lw.mode))
        return tuple(rules), tuple(tiers)

    # ------------------------------------------------------------ failsafe and base chains

    def failsafe_rules(self, direction: Direction) -> list[NftRule]:
        verdict, target = self._allow(direction)
        entries: tuple[FailsafeEntry, ...] = self.resolved.settings.failsafe
        return _failsafe_rules(entries, direction, verdict, target, self.cache._failsafe)


def _failsafe_rules(
    entries: tuple[FailsafeEntry, ...],
    direction: Direction,
    verdict: Verdict,
    target: str | None,
    memo: dict[tuple[Direction, int], _Expanded] | None = None,
) -> list[NftRule]:
    """The rules of the failsafe entries that apply to ``direction``, each ending in
    ``verdict`` (and ``target``); expansions are memoized in ``memo`` when given."""
    out: list[NftRule] = []
    for i, entry in enumerate(entries):
        if entry.direction is not None and entry.direction is not direction:
            continue
        hit = memo.get((direction, i)) if memo is not None else None
        if hit is None:
            peers = tuple(Peer(PeerKind.CIDR, cidr=c) for c in entry.cidrs)
            # failsafe cidrs match any address, workloads' included
            hit = _failsafe_expand(peers, entry.services, direction)
            if memo is not None:
                memo[(direction, i)] = hit
        prov = Provenance(None, None, None, i, note=f"failsafe/{direction.value}")
        out.extend(NftRule(m, verdict, prov, target=target) for m in hit.alternatives)
    return out


def _failsafe_expand(
    peers: tuple[Peer, ...], services: tuple[ServicePort, ...], direction: Direction
) -> _Expanded:
    remote = _REMOTE[direction]
    peer_alts: list[tuple[Match, ...]] = [()]
    if peers:
        ranges = AddressSet.of_ranges(p.cidr for p in peers if p.cidr is not None)
        peer_alts = [
            (AddrMatch(fam, remote, ranges=_family_ranges(ranges, fam)),)
            for fam in FAMILIES
            if _family_ranges(ranges, fam)
        ]
    svc = _service_alternatives(services)
    return _Expanded(tuple(p + s for p in peer_alts for s in svc), ())


def _merge_ranges(ranges: list[PortRange]) -> list[PortRange]:
    out: list[PortRange] = []
    for r in sorted(ranges):
        if out and r.first <= out[-1].last + 1:
            out[-1] = PortRange(out[-1].first, max(out[-1].last, r.last))
        else:
            out.append(r)
    return out


def _service_alternatives(services: tuple[ServicePort, ...]) -> list[tuple[Match, ...]]:
    if not services or any(s.protocol is None for s in services):
        return [()]
    whole: set[Protocol] = set()
    ported: dict[Protocol, list[PortRange]] = {}
    for s in services:
        assert s.protocol is not None
        if not s.protocol.has_ports or s.ports == ALL_PORTS:
            whole.add(s.protocol)
        else:
            ported.setdefault(s.protocol, []).append(s.ports)
    entries = tuple(
        (proto, r)
        for proto in sorted(ported, key=lambda p: p.value)
        if proto not in whole
        for r in _merge_ranges(ported[proto])
    )
    out: list[tuple[Match, ...]] = []
    if entries:
        out.append((PortMatch(entries),))
    if whole:
        out.append((ProtoMatch(tuple(sorted(whole, key=lambda p: p.value))),))
    return out


def _base_chain(hook: Hook, priority: int) -> Chain:
    rules = [
        NftRule(
            (CtStateMatch(("established", "related")),),
            Verdict.ACCEPT,
            Provenance(note="established"),
        ),
        NftRule((NeighborDiscoveryMatch(),), Verdict.ACCEPT, Provenance(note="neighbor-discovery")),
        NftRule((CtStateMatch(("invalid",)),), Verdict.DROP, Provenance(note="invalid")),
    ]
    if hook is Hook.INPUT:
        rules.append(
            NftRule((IfaceMatch("iif", "lo"),), Verdict.ACCEPT, Provenance(note="loopback"))
        )
    elif hook is Hook.OUTPUT:
        rules.append(
            NftRule((IfaceMatch("oif", "lo"),), Verdict.ACCEPT, Provenance(note="loopback"))
        )
    rules.append(
        NftRule(
            (), Verdict.GOTO, Provenance(note="dispatch"), target=EGRESS_DISPATCH, counter=False
        )
    )
    return Chain(hook.value, tuple(rules), hook=hook, priority=priority)


def build_host_ruleset(
    resolved: ResolvedPolicy,
    enforcer: str,
    settings: NftSettings | None = None,
    *,
    cache: RuleCache | None = None,
) -> HostRuleset:
    """The ruleset of ``enforcer``: only what its local workloads need.

    Cost: O(Σ over its local workloads of applicable rules) with tier chains shared between
    workloads with the same applicable policies and mode class; expanded rules are memoized in
    ``cache`` (pass one ``RuleCache`` to share the work between enforcers).
    """
    settings = settings or NftSettings()
    if cache is None or cache.resolved is not resolved or cache.settings != settings:
        cache = RuleCache(resolved, settings)
    b = _Builder(cache, settings)
    view = resolved.enforcer(enforcer)
    if not view.workloads:
        # Every local workload is idle or in visibility (or none names this enforcer): no
        # verdict is installed, so the host behaves exactly as if unmanaged. With visibility
        # workloads, base chains that only count new connections keep conntrack tracking in
        # this network namespace, which the agent's flow records need.
        observing: tuple[Chain, ...] = ()
        if enforcer in resolved.observed:
            observe = NftRule(
                (CtStateMatch(("new",)),), Verdict.CONTINUE, Provenance(note="observe")
            )
            observing = tuple(
                Chain(
                    h.value,
                    (observe,),
                    hook=h,
                    priority=settings.priority,
                    comment="visibility: observe only, nothing dropped",
                )
                for h in (Hook.INPUT, Hook.OUTPUT, Hook.FORWARD)
            )
        return HostRuleset(enforcer, resolved.at, observing, (), (), table=settings.table)

    workload_chains: list[Chain] = []
    # Plain local lists in the per-workload loop: (Direction, Family) keys would hash Enum
    # members through Python code four times per workload.
    in4: list[MapElement] = []
    in6: list[MapElement] = []
    eg4: list[MapElement] = []
    eg6: list[MapElement] = []
    for lw in view.workloads:
        ingress = b.workload_chain(lw, Direction.INGRESS)
        egress = b.workload_chain(lw, Direction.EGRESS)
        workload_chains.append(ingress)
        workload_chains.append(egress)
        v4, v6 = lw.addresses.v4, lw.addresses.v6
        if v4:
            in4.extend(MapElement(a, ingress.name) for a in v4)
            eg4.extend(MapElement(a, egress.name) for a in v4)
        if v6:
            in6.extend(MapElement(a, ingress.name) for a in v6)
            eg6.extend(MapElement(a, egress.name) for a in v6)
    dispatch: dict[tuple[Direction, Family], list[MapElement]] = {
        (Direction.INGRESS, Family.IP): in4,
        (Direction.INGRESS, Family.IP6): in6,
        (Direction.EGRESS, Family.IP): eg4,
        (Direction.EGRESS, Family.IP6): eg6,
    }

    eg_rules = b.failsafe_rules(Direction.EGRESS)
    in_rules = b.failsafe_rules(Direction.INGRESS)
    maps: list[VerdictMap] = []
    for d, rules, fld in (
        (Direction.EGRESS, eg_rules, AddrField.SADDR),
        (Direction.INGRESS, in_rules, AddrField.DADDR),
    ):
        for fam in FAMILIES:
            name = dispatch_map_name(d, fam)
            maps.append(
                VerdictMap(
                    name,
                    _stype(fam),
                    tuple(sorted(dispatch[(d, fam)], key=_sort_key)),
                    comment=f"local workload address to its {d.value} chain",
                )
            )
            rules.append(
                NftRule(
                    (),
                    Verdict.CONTINUE,
                    Provenance(note="dispatch"),
                    dispatch=Dispatch(fam, fld, name),
                )
            )
    eg_rules.append(
        NftRule(
            (), Verdict.GOTO, Provenance(note="dispatch"), target=INGRESS_DISPATCH, counter=False
        )
    )
    in_rules.append(NftRule((), Verdict.ACCEPT, Provenance(note="not-local")))

    chains = [
        _base_chain(Hook.INPUT, settings.priority),
        _base_chain(Hook.OUTPUT, settings.priority),
        _base_chain(Hook.FORWARD, settings.priority),
        Chain(EGRESS_DISPATCH, tuple(eg_rules), comment="side 1: local sources (egress)"),
        Chain(INGRESS_DISPATCH, tuple(in_rules), comment="side 2: local destinations (ingress)"),
        *sorted(workload_chains, key=lambda c: c.name),
        *sorted(b.tier_chains.values(), key=lambda c: c.name),
    ]
    sets = tuple(_named_set(cache, s) for s in sorted(b.sets.values(), key=lambda s: s.name))
    return HostRuleset(
        enforcer=enforcer,
        at=resolved.at,
        chains=tuple(chains),
        sets=sets,
        maps=tuple(sorted(maps, key=lambda m: m.name)),
        table=settings.table,
    )


def build_fail_closed_ruleset(
    enforcer: str,
    failsafe: tuple[FailsafeEntry, ...],
    at: datetime,
    settings: NftSettings | None = None,
) -> HostRuleset:
    """The table an agent installs when it has no policy to apply (first start with the
    source unreachable, or a corrupt state file): established connections, loopback and the
    failsafe allow-list pass; everything else is logged as denied and dropped.

    Local addresses are unknown here, so an egress failsafe entry is matched on output and
    forward, an ingress entry on input and forward.
    """
    settings = settings or NftSettings()
    prov_drop = Provenance(note="fail-closed")
    drop = NftRule(
        (),
        Verdict.DROP,
        prov_drop,
        log=LogStatement(settings.deny_group, "septum deny septum/fail-closed "),
    )

    chains: list[Chain] = []
    for hook, directions in (
        (Hook.INPUT, (Direction.INGRESS,)),
        (Hook.OUTPUT, (Direction.EGRESS,)),
        (Hook.FORWARD, (Direction.EGRESS, Direction.INGRESS)),
    ):
        base = _base_chain(hook, settings.priority)
        rules = [r for r in base.rules if r.verdict is not Verdict.GOTO]
        for d in directions:
            rules.extend(_failsafe_rules(failsafe, d, Verdict.ACCEPT, None))
        rules.append(drop)
        chains.append(replace(base, rules=tuple(rules), comment="fail-closed: no policy yet"))
    return HostRuleset(
        enforcer=enforcer, at=at, chains=tuple(chains), sets=(), maps=(), table=settings.table
    )


def _named_set(cache: RuleCache, s: _SetDecl) -> NamedSet:
    """One NamedSet object per set name and resolved policy, shared by every enforcer."""
    hit = cache._named.get(s.name)
    if hit is not None:
        return hit
    hit = cache._named[s.name] = NamedSet(
        s.name, _stype(s.family), s.interval, s.elements, comment=_comment_text(s.comment)
    )
    return hit


@dataclass(frozen=True, slots=True)
class WorkloadChains:
    """The chains of one local workload, as :func:`build_host_ruleset` builds them, with the
    tier chains they jump to and the sets those reference (elements as of the resolve)."""

    chains: Mapping[Direction, Chain]
    tier_chains: Mapping[str, Chain]  # by name
    tier_chain_sets: Mapping[str, tuple[str, ...]]  # tier chain name → the sets it declares
    sets: Mapping[str, NamedSet]  # by name


def build_workload_chains(
    cache: RuleCache, workload: LocalWorkload, settings: NftSettings | None = None
) -> WorkloadChains:
    """Only ``workload``'s chains (for incremental updates). Cost: O(its applicable rules),
    mostly memo hits in ``cache``."""
    b = _Builder(cache, settings or cache.settings)
    chains = {d: b.workload_chain(workload, d) for d in Direction}
    return WorkloadChains(
        chains,
        {c.name: c for c in b.tier_chains.values()},
        dict(b.tier_chain_sets),
        {name: _named_set(cache, s) for name, s in b.sets.items()},
    )


def is_host_prefix(n: IPNetwork) -> bool:
    return n.prefixlen == n.max_prefixlen
