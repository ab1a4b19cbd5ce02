"""Lowering stage 2: model → resolved policy (``architecture.md``).

``resolve_policy(repo, at)`` computes, once for the whole repository and shared by every
enforcer:

- every interned selector used by the policy (``appliesTo``, ``selector:`` and ``segment:``
  peers) with their members, computed by set algebra in one
  :class:`~septum.engine.label_index.LabelIndex` per kind (workloads, networks, users; a
  ``users:`` selector is evaluated over users only, since it matches users only);
- the address sets of those selectors at time ``at``;
- tiers sorted by (order, name), their policies by (order, name), staged policies kept but
  flagged, rules that expired at ``at`` dropped;
- per enforcer, the workloads it installs rules for (not idle or visibility) and, per
  workload and direction, the tiers and policies that apply, in evaluation order.

Attribution (``semantics.md``): an address is a workload's, else a user session's, else every
containing network's. A selector therefore matches a network range only where the address is
not held by a workload or a user session. The resolved policy keeps the two parts apart
(:class:`SelectorAddresses`) together with the exclusion sets (``attributed_addresses``,
``workload_addresses``), so that the renderer can make it exact.

Cost: O(workloads + networks + users + policies·rules) plus the label index's set algebra,
plus O(Σ|members|) to build address sets and per-workload policy lists. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from types import MappingProxyType

from septum.engine.label_index import LabelIndex
from septum.model.resources import (
    Direction,
    IPAddress,
    IPNetwork,
    Mode,
    PeerKind,
    Policy,
    PolicyMode,
    Repository,
    RepositoryDefault,
    Rule,
    Settings,
    Tier,
    Workload,
)
from septum.model.selector import Selector

__all__ = [
    "AddressSet",
    "AppliedRule",
    "EnforcerView",
    "LocalWorkload",
    "ResolvedPolicy",
    "ResolvedPolicyRules",
    "ResolvedSelector",
    "ResolvedTier",
    "ResolvedUsersSelector",
    "SelectorAddresses",
    "TierApplication",
    "minimal_ranges",
    "resolve_policy",
]


# ------------------------------------------------------------------------------- addresses


def _net_key(n: IPNetwork) -> tuple[int, int]:
    """The natural order of networks of one IP version, as a key (far cheaper to sort by
    than ``IPv4Network.__lt__``)."""
    return (int(n.network_address), n.prefixlen)


@dataclass(frozen=True, slots=True)
class AddressSet:
    """Addresses split by IP version, each tuple sorted and free of duplicates.

    Built either from single addresses (:meth:`of_addresses`: host prefixes, never merged, so
    that each element is one holder's address) or from ranges (:meth:`of_ranges`: a minimal
    list of non-overlapping CIDRs).
    """

    v4: tuple[IPv4Network, ...] = ()
    v6: tuple[IPv6Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    @classmethod
    def of_addresses(cls, addresses: Iterable[IPAddress]) -> AddressSet:
        v4: set[IPv4Network] = set()
        v6: set[IPv6Network] = set()
        for a in addresses:
            # the (int, prefixlen) form is several times faster than parsing an address
            if isinstance(a, IPv4Address):
                v4.add(IPv4Network((int(a), 32)))
            else:
                v6.add(IPv6Network((int(a), 128)))
        return cls(tuple(sorted(v4, key=_net_key)), tuple(sorted(v6, key=_net_key)))

    @classmethod
    def of_ranges(cls, ranges: Iterable[IPNetwork]) -> AddressSet:
        ranges = list(ranges)  # may be a generator: it is walked twice
        v4 = [r for r in ranges if isinstance(r, IPv4Network)]
        v6 = [r for r in ranges if isinstance(r, IPv6Network)]
        return cls(
            tuple(ipaddress.collapse_addresses(v4)) if v4 else (),
            tuple(ipaddress.collapse_addresses(v6)) if v6 else (),
        )

    @classmethod
    def union(cls, sets: Iterable[AddressSet], *, ranges: bool) -> AddressSet:
        """Union of several sets; ``ranges`` True collapses to a minimal CIDR list."""
        items = list(sets)
        if len(items) == 1:
            return items[0]
        if ranges:
            nets: list[IPNetwork] = []
            for s in items:
                nets.extend(s.v4)
                nets.extend(s.v6)
            return cls.of_ranges(nets)
        v4 = {n for s in items for n in s.v4}
        v6 = {n for s in items for n in s.v6}
        return cls(tuple(sorted(v4, key=_net_key)), tuple(sorted(v6, key=_net_key)))


class _AddressUnion:
    """Unions of workloads' address sets, by sorting integer positions instead of networks.

    Every workload address has a position in the sorted list of all workload addresses, so
    the sorted union of some workloads' addresses is the sorted union of their positions:
    an integer sort in C instead of hashing and ordering ``IPv4Network`` objects in Python
    (the dominant cost of resolve at 10k workloads and 1k selectors). Positions are sets
    per workload, so an address two workloads hold at different times still appears once.
    """

    def __init__(self, per_workload: Mapping[str, AddressSet], everything: AddressSet) -> None:
        self._v4 = everything.v4
        self._v6 = everything.v6
        where4 = {n: i for i, n in enumerate(everything.v4)}
        where6 = {n: i for i, n in enumerate(everything.v6)}
        self._pos: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
            name: (tuple(where4[n] for n in a.v4), tuple(where6[n] for n in a.v6))
            for name, a in per_workload.items()
        }

    def __call__(self, names: Iterable[str]) -> AddressSet:
        p4: set[int] = set()
        p6: set[int] = set()
        for name in names:
            four, six = self._pos[name]
            p4.update(four)
            p6.update(six)
        v4, v6 = self._v4, self._v6
        return AddressSet(tuple(v4[i] for i in sorted(p4)), tuple(v6[i] for i in sorted(p6)))


def minimal_ranges(cidrs: Iterable[IPNetwork], excepts: Iterable[IPNetwork] = ()) -> AddressSet:
    """``cidrs`` minus ``excepts`` as a minimal list of non-overlapping CIDRs per version."""
    pieces: list[IPNetwork] = list(cidrs)
    for hole in excepts:
        kept: list[IPNetwork] = []
        for piece in pieces:
            if piece.version != hole.version or not piece.overlaps(hole):
                kept.append(piece)
            elif piece.prefixlen < hole.prefixlen:  # piece strictly contains the hole
                kept.extend(piece.address_exclude(hole))  # type: ignore[arg-type]
            # else: the hole covers the piece entirely: drop it
        pieces = kept
    return AddressSet.of_ranges(pieces)


@dataclass(frozen=True, slots=True)
class SelectorAddresses:
    """Where a selector peer matches, at the resolve time.

    ``workloads``: the addresses of selected workloads (host prefixes). ``networks``: the
    ranges of selected networks (minimal CIDRs); these match only addresses that are not
    attributed to a workload or a user session (see ``ResolvedPolicy.attributed_addresses``).
    """

    workloads: AddressSet
    networks: AddressSet


# ------------------------------------------------------------------------------- selectors


@dataclass(frozen=True, slots=True)
class ResolvedSelector:
    """An interned endpoint selector with its members (workload and network names)."""

    selector: Selector
    workloads: frozenset[str]
    networks: frozenset[str]
    addresses: SelectorAddresses


@dataclass(frozen=True, slots=True)
class ResolvedUsersSelector:
    """A ``users:`` selector with the users it selects and their session addresses."""

    selector: Selector
    users: frozenset[str]
    addresses: AddressSet


# ------------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class ResolvedPolicyRules:
    """A policy with its live rules (rules expired at the resolve time are dropped).

    ``ingress``/``egress`` None: the policy does not apply to that direction; an empty tuple
    (declared, or every rule expired): it applies and matches nothing.
    """

    policy: Policy
    ingress: tuple[Rule, ...] | None
    egress: tuple[Rule, ...] | None
    staged: bool = False  # the policy's mode is staged: left out of the enforced evaluation

    @property
    def name(self) -> str:
        return self.policy.name

    def rules(self, direction: Direction) -> tuple[Rule, ...] | None:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class ResolvedTier:
    tier: Tier
    policies: tuple[ResolvedPolicyRules, ...]  # sorted by (order, name)


@dataclass(frozen=True, slots=True)
class TierApplication:
    """The policies of one tier that apply to one workload in one direction, in order.

    Staged policies are included (flagged by ``ResolvedPolicyRules.staged``); use
    :meth:`enforced` for the enforced evaluation.
    """

    tier: Tier
    policies: tuple[ResolvedPolicyRules, ...]
    enforced_policies: tuple[ResolvedPolicyRules, ...] = ()  # set by ``of``

    @classmethod
    def of(cls, tier: Tier, policies: tuple[ResolvedPolicyRules, ...]) -> TierApplication:
        return cls(tier, policies, tuple(p for p in policies if not p.staged))

    def enforced(self) -> tuple[ResolvedPolicyRules, ...]:
        """The applicable policies without the staged ones. Cost: O(1)."""
        return self.enforced_policies


@dataclass(frozen=True, slots=True)
class AppliedRule:
    """One rule in a workload's evaluation order, with its provenance."""

    tier: Tier
    policy: ResolvedPolicyRules
    rule: Rule


@dataclass(frozen=True, slots=True)
class LocalWorkload:
    """A workload its enforcer installs rules for (not idle or visibility), with what
    applies to it."""

    workload: Workload
    addresses: AddressSet  # addresses valid at the resolve time
    ingress: tuple[TierApplication, ...]
    egress: tuple[TierApplication, ...]

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def mode(self) -> Mode:
        return self.workload.mode

    def tiers(self, direction: Direction) -> tuple[TierApplication, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def rules(self, direction: Direction, *, staged: bool = False) -> tuple[AppliedRule, ...]:
        """The ordered (tier, policy, rule) list for ``direction``; staged policies only when
        ``staged`` is True."""
        return tuple(
            AppliedRule(app.tier, p, r)
            for app in self.tiers(direction)
            for p in (app.policies if staged else app.enforced())
            for r in p.rules(direction) or ()
        )


@dataclass(frozen=True, slots=True)
class EnforcerView:
    name: str
    workloads: tuple[LocalWorkload, ...]  # sorted by name


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """The repository resolved at one time; shared by every enforcer's ruleset.

    Selectors are keyed by canonical text. ``attributed_addresses`` holds every address held
    by a workload or a user session at ``at`` (a network range matches only outside it);
    ``workload_addresses`` every workload address (for ``cidrMatchesWorkloads: false``).
    """

    at: datetime
    settings: Settings
    tiers: tuple[ResolvedTier, ...]
    selectors: Mapping[str, ResolvedSelector]
    user_selectors: Mapping[str, ResolvedUsersSelector]
    networks: Mapping[str, AddressSet]  # named network → its ranges minus excepts
    workload_addresses: AddressSet
    attributed_addresses: AddressSet
    enforcers: Mapping[str, EnforcerView]
    #: Enforcers with workloads in ``visibility`` mode: observed (their flows recorded and
    #: evaluated by the agent), though no rules are installed for those workloads.
    observed: frozenset[str] = frozenset()

    @property
    def default_action(self) -> RepositoryDefault:
        return self.settings.default_action

    def enforcer(self, name: str) -> EnforcerView:
        """The view of one enforcer (empty when no workload of it installs rules)."""
        return self.enforcers.get(name) or EnforcerView(name, ())


# ------------------------------------------------------------------------------- resolve


def _peer_selectors(policies: Iterable[Policy]) -> tuple[set[Selector], set[Selector]]:
    endpoint: set[Selector] = set()
    users: set[Selector] = set()
    for p in policies:
        endpoint.add(p.applies_to)
        for rules in (p.ingress, p.egress):
            for r in rules or ():
                for peer in r.peers:
                    if peer.selector is None:
                        continue
                    if peer.kind is PeerKind.USERS:
                        users.add(peer.selector)
                    else:
                        endpoint.add(peer.selector)
    return endpoint, users


def _live(rules: tuple[Rule, ...] | None, at: datetime) -> tuple[Rule, ...] | None:
    if rules is None:
        return None
    return tuple(r for r in rules if r.alive_at(at))


def resolve_policy(repo: Repository, at: datetime) -> ResolvedPolicy:
    """Resolve ``repo`` at time ``at`` (see the module docstring for what and what it costs)."""
    # Addresses valid at `at`.
    wl_addrs: dict[str, AddressSet] = {
        w.name: AddressSet.of_addresses(b.address for b in w.addresses if b.valid_at(at))
        for w in repo.workloads
    }
    user_addrs: dict[str, AddressSet] = {
        u.name: AddressSet.of_addresses(b.address for b in u.sessions if b.valid_at(at))
        for u in repo.users
    }
    net_ranges: dict[str, AddressSet] = {
        n.name: minimal_ranges(n.cidrs, n.excepts) for n in repo.networks
    }
    all_workload_addresses = AddressSet.union(wl_addrs.values(), ranges=False)
    attributed = AddressSet.union([all_workload_addresses, *user_addrs.values()], ranges=False)

    # Selector membership through the label indexes.
    endpoint_selectors, users_selectors = _peer_selectors(repo.policies)
    # One index per kind, keyed by plain names: members need no prefix filtering.
    windex, nindex, uindex = LabelIndex(), LabelIndex(), LabelIndex()
    for w in repo.workloads:
        windex.upsert_endpoint(w.name, w.labels)
    for n in repo.networks:
        nindex.upsert_endpoint(n.name, n.labels)
    for u in repo.users:
        uindex.upsert_endpoint(u.name, u.labels)

    selectors: dict[str, ResolvedSelector] = {}
    union_of = _AddressUnion(wl_addrs, all_workload_addresses)
    for sel in sorted(endpoint_selectors, key=lambda s: s.text):
        wnames = windex.evaluate(sel)  # one-shot: nothing to track incrementally
        nnames = nindex.evaluate(sel)
        addresses = SelectorAddresses(
            workloads=union_of(wnames) if wnames else AddressSet(),
            networks=AddressSet.union([net_ranges[n] for n in nnames], ranges=True)
            if nnames
            else AddressSet(),
        )
        selectors[sel.text] = ResolvedSelector(sel, wnames, nnames, addresses)
    user_selectors: dict[str, ResolvedUsersSelector] = {}
    for sel in sorted(users_selectors, key=lambda s: s.text):
        unames = uindex.evaluate(sel)
        uaddr = (
            AddressSet.union([user_addrs[n] for n in unames], ranges=False)
            if unames
            else AddressSet()
        )
        user_selectors[sel.text] = ResolvedUsersSelector(sel, unames, uaddr)

    # Tiers and policies in evaluation order.
    by_tier: dict[str, list[Policy]] = defaultdict(list)
    for p in repo.policies:
        by_tier[p.tier].append(p)
    tiers: list[ResolvedTier] = []
    for t in sorted(repo.tiers, key=lambda t: (t.order, t.name)):
        ps = sorted(by_tier.get(t.name, ()), key=lambda p: (p.order, p.name))
        tiers.append(
            ResolvedTier(
                t,
                tuple(
                    ResolvedPolicyRules(
                        p,
                        _live(p.ingress, at),
                        _live(p.egress, at),
                        p.mode is PolicyMode.STAGED,
                    )
                    for p in ps
                ),
            )
        )

    # Per enforcer: the workloads it enforces and what applies to each.
    local: dict[str, Workload] = {
        w.name: w for w in repo.workloads if w.enforcer is not None and w.mode.installs_rules
    }
    # One dict per direction, keyed by workload name: keys with Enum members would hash
    # through Python code a quarter of a million times at 10k workloads.
    applied: dict[Direction, dict[str, list[TierApplication]]] = {
        d: defaultdict(list) for d in Direction
    }
    for rt in tiers:
        for d in Direction:
            per: dict[str, list[ResolvedPolicyRules]] = defaultdict(list)
            for rp in rt.policies:
                if rp.rules(d) is None:
                    continue
                for name in selectors[rp.policy.applies_to.text].workloads & local.keys():
                    per[name].append(rp)
            # Workloads with the same policies share one TierApplication (memo by identity).
            interned: dict[tuple[int, ...], TierApplication] = {}
            into = applied[d]
            for name, rps in per.items():
                ident = tuple(map(id, rps))
                app = interned.get(ident)
                if app is None:
                    app = interned[ident] = TierApplication.of(rt.tier, tuple(rps))
                into[name].append(app)

    views: dict[str, list[LocalWorkload]] = defaultdict(list)
    for name in sorted(local):
        w = local[name]
        assert w.enforcer is not None
        views[w.enforcer].append(
            LocalWorkload(
                w,
                wl_addrs[name],
                tuple(applied[Direction.INGRESS].get(name, ())),
                tuple(applied[Direction.EGRESS].get(name, ())),
            )
        )

    return ResolvedPolicy(
        at=at,
        settings=repo.settings,
        tiers=tuple(tiers),
        selectors=MappingProxyType(selectors),
        user_selectors=MappingProxyType(user_selectors),
        networks=MappingProxyType(net_ranges),
        workload_addresses=all_workload_addresses,
        attributed_addresses=attributed,
        enforcers=MappingProxyType(
            {e: EnforcerView(e, tuple(ws)) for e, ws in sorted(views.items())}
        ),
        observed=frozenset(
            w.enforcer
            for w in repo.workloads
            if w.enforcer is not None and w.mode is Mode.VISIBILITY
        ),
    )
