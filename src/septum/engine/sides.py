"""Side decomposition: the effective verdict of every (source class, target class, port) from
per-side decisions, shared by invariants (:mod:`septum.engine.assertions`) and connectivity
analysis (:mod:`septum.engine.connectivity`).

Under ``semantics.md`` the effective verdict of s → t is DENY iff the egress side at s or the
ingress side at t gives a deny enforced under its mode. A side depends only on its own *plan*
(the enforced policies applying to it for the direction, and its mode), on the remote's
*view* (which atoms its live rules and the failsafe read — selectors, CIDRs, networks — the
remote's signature holds, and its kind), and on the port::

    local classes ─► groups g (plan, mode) ─► atoms read ─► one bit each
    remote classes ─► signature ─► bit mask ─► view of g = mask & g.mask
    allowed(g, view) = port set with no enforced deny (one Evaluator side decision per port
                       interval of g, lazily, cached)

So the work depends on the number of groups and views, never on pairs of addresses. Port
sets are interned (:class:`PortSets`) so that intersections are cached by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network

from septum.engine.attribution import EndpointKind
from septum.engine.classes import (
    EndpointClass,
    PortInterval,
    peer_atom,
    port_intervals,
    protocols_for_version,
)
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.model.resources import (
    Action,
    Direction,
    FailsafeEntry,
    IPAddress,
    Mode,
    Policy,
    PolicyMode,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    ServicePort,
    TierDefault,
    Workload,
)
from septum.model.selector import Selector

__all__ = [
    "EMPTY",
    "PROTOCOLS",
    "PROTOCOL_INDEX",
    "PortSet",
    "PortSets",
    "SideGroup",
    "Sides",
    "first_missing",
    "intersect",
    "port_set",
    "super_classes",
]


# A set of (protocol, port) as sorted, merged, disjoint (protocol index, first, last) triples.
PortSet = tuple[tuple[int, int, int], ...]
PROTOCOLS: tuple[Protocol, ...] = tuple(Protocol)
PROTOCOL_INDEX = {p: i for i, p in enumerate(PROTOCOLS)}
EMPTY: PortSet = ()


def port_set(pieces: Iterable[PortInterval]) -> PortSet:
    """The union of ``pieces``, normalized (sorted, adjacent intervals merged)."""
    out: list[tuple[int, int, int]] = []
    for pr, a, b in sorted((PROTOCOL_INDEX[p.protocol], p.first, p.last) for p in pieces):
        if out and out[-1][0] == pr and out[-1][2] + 1 >= a:
            out[-1] = (pr, out[-1][1], max(out[-1][2], b))
        else:
            out.append((pr, a, b))
    return tuple(out)


def intersect(x: PortSet, y: PortSet) -> PortSet:
    """Intersection of two normalized port sets, normalized. O(|x| + |y|)."""
    out: list[tuple[int, int, int]] = []
    i = j = 0
    while i < len(x) and j < len(y):
        (p, a, b), (q, c, d) = x[i], y[j]
        if p == q:
            lo, hi = max(a, c), min(b, d)
            if lo <= hi:
                out.append((p, lo, hi))
            if b < d:
                i += 1
            else:
                j += 1
        elif p < q:
            i += 1
        else:
            j += 1
    return tuple(out)


def first_missing(universe: PortSet, subset: PortSet) -> tuple[Protocol, int] | None:
    """The first (protocol, port) of ``universe`` not in ``subset`` (a normalized subset of
    it), or None when they are equal."""
    for pr, a, b in universe:
        cur = a
        for q, c, d in subset:
            if q != pr or d < cur:
                continue
            if c > cur or cur > b:
                break
            cur = d + 1
        if cur <= b:
            return PROTOCOLS[pr], cur
    return None


class PortSets:
    """Interns port sets (equal sets, one id) and caches their intersections."""

    __slots__ = ("_ids", "_meets", "sets")

    def __init__(self) -> None:
        self.sets: list[PortSet] = []
        self._ids: dict[PortSet, int] = {}
        self._meets: dict[tuple[int, int], int] = {}
        self.intern(EMPTY)  # id 0

    def intern(self, ports: PortSet) -> int:
        found = self._ids.get(ports)
        if found is None:
            found = self._ids[ports] = len(self.sets)
            self.sets.append(ports)
        return found

    def meet(self, a: int, b: int) -> int:
        if a == b:
            return a
        key = (a, b) if a < b else (b, a)
        found = self._meets.get(key)
        if found is None:
            found = self._meets[key] = self.intern(intersect(self.sets[a], self.sets[b]))
        return found


# What a side's rules can read of the remote: a selector, a CIDR or a network's name.
Atom = Selector | IPv4Network | IPv6Network | str


@dataclass(slots=True)
class SideGroup:
    """Local classes (one IP version) with one side plan: the same enforced policies applying
    for the direction, and one mode; or (``workload`` None) classes whose side is not
    evaluated (networks, idle workloads). ``atoms`` are what the group's live enforced rules
    and the failsafe read of the remote; ``mask`` their bits (plus the kind bit; 0 when not
    evaluated). ``view_ids`` numbers the views met (by mask), ``view_reps`` their first
    remote super-class;
    ``allowed`` caches, per view, the id of the port set without an enforced deny."""

    version: int
    workload: Workload | None
    address: IPAddress
    atoms: frozenset[Atom]
    ports: tuple[PortInterval, ...]
    mask: int = 0
    view_ids: dict[int, int] = field(default_factory=dict)  # view mask -> view id
    view_reps: list[int] = field(default_factory=list)  # view id -> first super with it
    allowed: dict[int, int] = field(default_factory=dict)
    names: frozenset[str] | None = None  # the enforced policies applying (None: no side)
    program: _SideProgram | None = None


class Sides:
    """One direction's side decisions over classes (egress: locals are the source classes,
    remotes the target *super-classes*; ingress: the mirror image).

    Locals are grouped by their side plan (which enforced policies apply for the direction,
    and the mode). Every atom some group reads gets a bit, so a remote's signature becomes an
    integer mask and its *view* for a group is ``mask & group.mask`` (one AND, no selector
    matching). The side is evaluated by the Evaluator once per (group, view, port interval)
    on representative endpoints, lazily, and cached. Cost: O(locals · policies) to group,
    O(remote classes · atoms of their signature) for the masks, then per group used
    O(remotes) integer operations and one side evaluation per (view, port interval)."""

    def __init__(
        self,
        direction: Direction,
        repo: Repository,
        workloads: Mapping[str, Workload],
        local: Sequence[EndpointClass],
        remote: Sequence[EndpointClass],
        restrict: Sequence[ServicePort],
        at: datetime,
        ev: Evaluator,
        port_sets: PortSets,
        *,
        fast: bool = True,
    ) -> None:
        self.direction = direction
        # fast: decide a (group, view) cell by port-set algebra over the group's compiled
        # plan (_SideProgram); otherwise by one Evaluator side decision per port interval
        # (the reference, kept for the tests that check the two agree).
        self.fast = fast
        self.at = at
        self.ev = ev
        self.port_sets = port_sets
        self.evaluations = 0  # side evaluations given to the evaluator
        self.cells = 0  # (group, view) cells decided
        self._universe: dict[int, int] = {}
        self._restrict = restrict
        self._workloads = workloads
        policies = tuple(
            p
            for p in repo.policies
            if p.rules(direction) is not None and p.mode is not PolicyMode.STAGED
        )
        failsafe = tuple(
            e for e in repo.settings.failsafe if e.direction is None or e.direction is direction
        )
        # The policies applying to a class follow from which appliesTo selectors its
        # signature holds: one C-level set intersection per class (stored hashes).
        applies = frozenset(p.applies_to for p in policies)
        # appliesTo selector -> names of the policies it is the appliesTo of, and name ->
        # policy: a group's policies in O(its selectors), not O(policies), per group
        by_applies: dict[Selector, list[str]] = {}
        for p in policies:
            by_applies.setdefault(p.applies_to, []).append(p.name)
        self._by_name = {p.name: p for p in policies}
        keys: dict[tuple[int, frozenset[Selector] | None, Mode | None], int] = {}
        self.groups: list[SideGroup] = []
        self.group_of: list[int] = []
        for c in local:
            sig = c.signature
            chosen: frozenset[Selector] | None = None
            if sig.kind is EndpointKind.WORKLOAD and sig.managed:
                chosen = sig.selectors & applies
            key = (sig.version, chosen, sig.mode if chosen is not None else None)
            g = keys.get(key)
            if g is None:
                g = keys[key] = len(self.groups)
                names = (
                    None
                    if chosen is None
                    else frozenset(n for sel in chosen for n in by_applies[sel])
                )
                self.groups.append(self._group(c, names, policies, failsafe))
            self.group_of.append(g)
        self._repo = repo
        self._policies = policies
        self._failsafe = failsafe
        # bit 0: the remote is a network address (not a workload); then one bit per atom
        bits: dict[Atom, int] = {}
        self._bits = bits
        for group in self.groups:
            if group.workload is None:
                continue
            mask = 1
            for atom in group.atoms:
                bit = bits.get(atom)
                if bit is None:
                    bit = bits[atom] = 1 << (len(bits) + 1)
                mask |= bit
            group.mask = mask
        self.remote_mask: list[int] = []
        for c in remote:
            sig = c.signature
            mask = 0 if sig.kind is EndpointKind.WORKLOAD else 1
            for atoms in (sig.selectors, sig.cidrs, sig.networks):
                for atom in atoms:
                    bit = bits.get(atom)
                    if bit is not None:
                        mask |= bit
            self.remote_mask.append(mask)
        # set by use_remotes: remote super-classes (indices into ``remote``), their versions
        # and masks, and the opposite side's group of each
        self.remote: Sequence[EndpointClass] = remote
        self.supers: list[list[int]] = []
        self._super_version: list[int] = []
        self._super_mask: list[int] = []
        self._super_group: list[int] = []
        self._by_view_then_group: dict[int, dict[int, dict[int, list[int]]]] = {}

    def _group(
        self,
        c: EndpointClass,
        names: frozenset[str] | None,
        policies: tuple[Policy, ...],
        failsafe: tuple[FailsafeEntry, ...],
    ) -> SideGroup:
        version = c.version
        address = c.representative.address
        if names is None:
            return SideGroup(version, None, address, frozenset(), ())
        atoms: set[Atom] = set()
        services: set[ServicePort] = set()
        for name in names:
            p = self._by_name[name]
            for r in p.rules(self.direction) or ():
                if not r.alive_at(self.at):
                    continue
                services.update(r.services)
                atoms.update(a for peer in r.peers if (a := peer_atom(peer)) is not None)
        for entry in failsafe:
            atoms.update(entry.cidrs)
            services.update(entry.services)
        ports = port_intervals(services, self._restrict, protocols_for_version(version))
        return SideGroup(
            version, self._workloads[c.representative.name], address, frozenset(atoms), ports,
            names=names,
        )

    def _compile(self, group: SideGroup) -> _SideProgram:
        """The group's plan as bit masks: per tier (ascending order, then name) the live
        rules of the enforced policies applying to it, in evaluation order, each with the
        bits of its peers and of its services over the group's port intervals."""
        assert group.workload is not None
        assert group.names is not None
        direction = self.direction
        ports = group.ports

        def service_bits(services: Sequence[ServicePort]) -> int:
            if not services:
                return (1 << len(ports)) - 1
            out = 0
            for i, p in enumerate(ports):
                if any(sp.matches(p.protocol, p.first) for sp in services):
                    out |= 1 << i
            return out

        by_tier: dict[str, list[Policy]] = {}
        for name in group.names:
            p = self._by_name[name]
            by_tier.setdefault(p.tier, []).append(p)
        tiers: list[_TierProgram] = []
        for tier in sorted(self._repo.tiers, key=lambda t: (t.order, t.name)):
            policies = sorted(by_tier.get(tier.name, ()), key=lambda p: (p.order, p.name))
            if not policies:
                continue
            rules: list[_RuleProgram] = []
            for p in policies:
                for r in p.rules(direction) or ():
                    if not r.alive_at(self.at) or r.action is Action.LOG:
                        continue
                    rules.append(self._rule_program(r, service_bits(r.services)))
            tiers.append(_TierProgram(tier.default_action is TierDefault.PASS, tuple(rules)))
        failsafe = tuple(
            (
                -1 if not e.cidrs else sum(self._bits.get(c, 0) for c in e.cidrs),
                service_bits(e.services),
            )
            for e in self._failsafe
        )
        return _SideProgram(
            (1 << len(ports)) - 1,
            failsafe,
            tuple(tiers),
            self._repo.settings.default_action is RepositoryDefault.ALLOW,
            group.workload.mode,
        )

    def _rule_program(self, r: Rule, services: int) -> _RuleProgram:
        if not r.peers:
            return _RuleProgram(r.action, True, 0, 0, services)
        any_remote = False
        bits = 0
        cidr_bits = 0
        for peer in r.peers:
            atom = peer_atom(peer)
            if atom is None:
                continue  # users: never a workload or network address
            if isinstance(atom, Selector):
                if atom.is_all:
                    any_remote = True
                bits |= self._bits.get(atom, 0)
            elif isinstance(atom, str):
                bits |= self._bits.get(atom, 0)
            else:
                cidr_bits |= self._bits.get(atom, 0)
        cidrs_match_workloads = self._repo.settings.cidr_matches_workloads
        return _RuleProgram(r.action, any_remote, bits, cidr_bits, services,
                            cidrs_match_workloads)

    def use_remotes(self, supers: list[list[int]], other: Sides) -> None:
        """Work on remote super-classes ``supers`` (remote classes with one IP version, one
        mask and one group in ``other``, the opposite side, whose locals are our remotes)."""
        self.supers = supers
        self._super_version = [self.remote[m[0]].version for m in supers]
        self._super_mask = [self.remote_mask[m[0]] for m in supers]
        self._super_group = [other.group_of[m[0]] for m in supers]

    def universe(self, version: int) -> int:
        """The id of the set of every (protocol, port) the invariant quantifies over."""
        found = self._universe.get(version)
        if found is None:
            ports = port_intervals((), self._restrict, protocols_for_version(version))
            found = self._universe[version] = self.port_sets.intern(port_set(ports))
        return found

    def _view_id(self, group: SideGroup, k: int) -> int:
        """The view id of remote super-class ``k`` for ``group`` (-1: another IP version),
        numbered in order of first appearance. O(1): one AND and one dict lookup, so no
        table of size supers is kept per group (that would be quadratic in memory)."""
        if self._super_version[k] != group.version:
            return -1
        view = self._super_mask[k] & group.mask
        found = group.view_ids.get(view)
        if found is None:
            found = group.view_ids[view] = len(group.view_reps)
            group.view_reps.append(k)
        return found

    def view(self, g: int, k: int) -> int:
        """The view id of remote super-class ``k`` for group ``g`` (-1: another IP version)."""
        return self._view_id(self.groups[g], k)

    def remote_masks_of_supers(self) -> list[int]:
        """Per remote super-class, its mask (what every group's view is cut from)."""
        return self._super_mask

    def allowed_for(self, g: int, k: int) -> int:
        """``allowed(g, view of k)``, or the empty set's id for another IP version."""
        v = self._view_id(self.groups[g], k)
        return 0 if v < 0 else self.allowed(g, v)

    def allowed(self, g: int, v: int) -> int:
        """The id of the port set on which group ``g``'s side gives no enforced deny to
        remotes with view ``v``: one side evaluation per port interval, on first use."""
        group = self.groups[g]
        found = group.allowed.get(v)
        if found is not None:
            return found
        reps = group.view_reps
        self.cells += 1
        workload = group.workload
        if workload is None:  # no side: nothing is denied here
            found = self.universe(group.version)
        elif self.fast:
            program = group.program
            if program is None:
                program = group.program = self._compile(group)
            view = self._super_mask[reps[v]] & group.mask
            bits = program.allowed(view)
            self.evaluations += 1
            found = self.port_sets.intern(
                port_set(p for i, p in enumerate(group.ports) if bits >> i & 1)
            )
        else:
            remote_address = self.remote[self.supers[reps[v]][0]].representative.address
            endpoint = self.ev.attributor.attribute(remote_address, self.at)
            egress = self.direction is Direction.EGRESS
            pieces: list[PortInterval] = []
            for p in group.ports:
                flow = Flow(
                    group.address if egress else remote_address,
                    remote_address if egress else group.address,
                    p.protocol,
                    p.representative,
                    self.at,
                )
                # the side decision of explain itself (memoized there), without a pair
                decision, _ = self.ev._side(workload, self.direction, endpoint, flow)
                self.evaluations += 1
                if not (decision.verdict is Verdict.DENY and decision.enforced):
                    pieces.append(p)
            found = self.port_sets.intern(port_set(pieces))
        group.allowed[v] = found
        return found

    def by_view_then_group(self, g: int, *, keep: bool = True
                           ) -> dict[int, dict[int, list[int]]]:
        """For group ``g``: its views -> the opposite side's groups -> remote super-classes.
        O(supers); kept for later calls unless ``keep`` is False (a caller visiting each
        group once should not hold a table of size supers per group)."""
        found = self._by_view_then_group.get(g)
        if found is None:
            found = {}
            group = self.groups[g]
            for k in range(len(self.supers)):
                v = self._view_id(group, k)
                if v >= 0:
                    found.setdefault(v, {}).setdefault(self._super_group[k], []).append(k)
            if keep:
                self._by_view_then_group[g] = found
        return found


def super_classes(
    classes: Sequence[EndpointClass], mask: Sequence[int], group_of: Sequence[int]
) -> list[list[int]]:
    """Classes grouped by (IP version, mask seen by the opposite side, own group): members of
    one super-class get equal verdicts against everything (distinct endpoints assumed)."""
    found: dict[tuple[int, int, int], list[int]] = {}
    for i, c in enumerate(classes):
        found.setdefault((c.version, mask[i], group_of[i]), []).append(i)
    return list(found.values())




@dataclass(frozen=True, slots=True)
class _RuleProgram:
    """One live rule: its action, what of the remote's view it matches (``any_remote``, or
    some bit of ``bits`` — selectors and networks — or, when the remote is not a workload or
    CIDRs match workloads, some bit of ``cidr_bits``) and its services as port-interval
    bits of the group."""

    action: Action
    any_remote: bool
    bits: int
    cidr_bits: int
    services: int
    cidrs_match_workloads: bool = True

    def matches(self, view: int) -> bool:
        if self.any_remote or view & self.bits:
            return True
        # bit 0 of a view: the remote is not a workload
        return bool(view & self.cidr_bits) and (self.cidrs_match_workloads or bool(view & 1))


@dataclass(frozen=True, slots=True)
class _TierProgram:
    default_pass: bool
    rules: tuple[_RuleProgram, ...]


@dataclass(frozen=True, slots=True)
class _SideProgram:
    """A group's side as port-set algebra (``semantics.md``, "Evaluating one flow"): the
    failsafe first, then per tier first match per port (allow/deny decide, pass skips to the
    next tier), the tier default where no rule decided, the repository default last; denies
    count only where the mode enforces them. Equal to the Evaluator's side decision per port
    interval (checked by tests), at the cost of O(rules) integer operations per view."""

    universe: int
    failsafe: tuple[tuple[int, int], ...]  # (cidr bits, -1: any remote; service bits)
    tiers: tuple[_TierProgram, ...]
    default_allow: bool
    mode: Mode

    def allowed(self, view: int) -> int:
        undecided = self.universe
        for cidr_bits, services in self.failsafe:
            if cidr_bits == -1 or view & cidr_bits:
                undecided &= ~services
        rule_deny = default_deny = 0
        for tier in self.tiers:
            pending = undecided
            passed = 0
            for rule in tier.rules:
                hit = pending & rule.services
                if not hit or not rule.matches(view):
                    continue
                pending &= ~hit
                if rule.action is Action.DENY:
                    rule_deny |= hit
                elif rule.action is Action.PASS:
                    passed |= hit
                if not pending:
                    break
            if tier.default_pass:
                undecided = pending | passed
            else:
                default_deny |= pending
                undecided = passed
        if not self.default_allow:
            default_deny |= undecided
        if self.mode is Mode.ENFORCED:
            denied = rule_deny | default_deny
        elif self.mode is Mode.SELECTIVE:
            denied = rule_deny
        else:
            denied = 0
        return self.universe & ~denied
