"""Equivalence classes of endpoints, external addresses and ports: the partition machinery.

Questions over *every* pair of endpoints (``never``/``always`` invariants, connectivity
analysis) are decided over classes instead of address pairs. Under ``semantics.md`` the
verdict of a flow depends on its endpoints only through

* the selectors that select them (``appliesTo`` of the policies that apply to a workload,
  selector and ``segment:`` peers), their mode, and whether they are workloads at all,
* the CIDR peers and failsafe cidrs whose ranges contain their address,
* for external addresses, the networks (``network:`` peers) containing them,

and on its port only through the service boundaries written in the repository. So two
addresses with equal :class:`Signature` get the same verdict against any third party (as long
as neither flow is a workload talking to itself), and two ports in one :class:`PortInterval`
get the same verdict for any pair of endpoints. Evaluating one representative flow per
(source class, target class, port interval) therefore decides the question for all of them.

::

    Repository ─┬─► Atoms (selectors, cidrs, network refs)          what can tell endpoints apart
                ├─► RangeIndex per IP version (sweep over cidr,     elementary address intervals
                │   network and except boundaries)
                ├─► workload addresses valid at `at` ──► Signature ─┐
                ├─► free intervals of selected networks ► Signature ─┼─► Partition ─► select /
                │                                                    │   project (coarsen)
                └─► service boundaries ─► PortInterval per protocol

Design goals: cost depends on the number of *distinct* things (selectors per label key set,
range boundaries, classes), never on pairs of addresses. The core is pure: ``at`` comes in.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from itertools import pairwise
from typing import Generic, TypeVar

from septum.engine.attribution import EndpointKind
from septum.engine.label_index import LabelIndex
from septum.model.resources import (
    Direction,
    FailsafeEntry,
    IPAddress,
    IPNetwork,
    Mode,
    Peer,
    PeerKind,
    Policy,
    Protocol,
    Repository,
    ServicePort,
    Workload,
)
from septum.model.selector import Selector

__all__ = [
    "PORTED_PROTOCOLS",
    "AddressInterval",
    "Atoms",
    "EndpointClass",
    "Member",
    "PairBlock",
    "Partition",
    "PortInterval",
    "RangeIndex",
    "Role",
    "Signature",
    "Witness",
    "address_ranges",
    "build_partition",
    "pair_blocks",
    "peer_atom",
    "port_intervals",
    "protocols_for_version",
    "repository_services",
    "split_ranges",
]

_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
PORT_MAX = 65535

#: Protocols with ports, split into intervals; the others (icmp, icmpv6) are single points.
PORTED_PROTOCOLS: tuple[Protocol, ...] = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)


# ------------------------------------------------------------------------------------ ports


@dataclass(frozen=True, slots=True, order=True)
class PortInterval:
    """An elementary interval ``first..last`` of destination ports of one protocol.

    For protocols without ports (icmp, icmpv6) it is the single point ``0..0``. Every port of
    the interval is matched by exactly the same services of the repository."""

    protocol: Protocol
    first: int
    last: int

    @property
    def representative(self) -> int:
        """The port a representative flow uses: the first of the interval (0 for icmp)."""
        return self.first

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        if not self.protocol.has_ports:
            return self.protocol.value
        if self.first == self.last:
            return f"{self.protocol.value}/{self.first}"
        return f"{self.protocol.value}/{self.first}-{self.last}"


def protocols_for_version(version: int) -> tuple[Protocol, ...]:
    """The protocols a flow between addresses of this IP version can carry: tcp, udp, sctp and
    icmp (IPv4) or icmpv6 (IPv6)."""
    return (*PORTED_PROTOCOLS, Protocol.ICMP if version == 4 else Protocol.ICMPV6)


def port_intervals(
    services: Iterable[ServicePort],
    restrict: Sequence[ServicePort] = (),
    protocols: Iterable[Protocol] = tuple(Protocol),
) -> tuple[PortInterval, ...]:
    """Split each protocol's ports 0..65535 at every boundary of ``services`` (and of
    ``restrict``) into elementary intervals; keep only those covered by ``restrict`` when it is
    not empty. icmp and icmpv6 are single points (port 0). Sorted by (protocol order, first).

    Cost: O(S log S) for S services, plus O(intervals · |restrict|).
    """
    wanted = tuple(protocols)
    cuts: dict[Protocol, set[int]] = {p: {0, PORT_MAX + 1} for p in wanted if p.has_ports}
    for s in (*services, *restrict):
        if s.protocol is not None and s.protocol in cuts:
            cuts[s.protocol].add(s.ports.first)
            cuts[s.protocol].add(s.ports.last + 1)
    out: list[PortInterval] = []
    order = {p: i for i, p in enumerate(Protocol)}
    for protocol in sorted(set(wanted), key=order.__getitem__):
        if protocol.has_ports:
            points = sorted(cuts[protocol])
            pieces = [PortInterval(protocol, a, b - 1) for a, b in pairwise(points)]
        else:
            pieces = [PortInterval(protocol, 0, 0)]
        for piece in pieces:
            if not restrict or any(r.matches(protocol, piece.first) for r in restrict):
                out.append(piece)
    return tuple(out)


def repository_services(repo: Repository) -> tuple[ServicePort, ...]:
    """Every service port that can tell two ports apart: those of every rule (both directions,
    staged or not, expired or not) and of every failsafe entry. Deduplicated, sorted."""
    found: set[ServicePort] = set()
    for p in repo.policies:
        for rules in (p.ingress, p.egress):
            for r in rules or ():
                found.update(r.services)
    for entry in repo.settings.failsafe:
        found.update(entry.services)
    return tuple(sorted(found, key=lambda s: (s.protocol is not None, str(s))))


# -------------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True, order=True)
class AddressInterval:
    """An inclusive interval of addresses of one IP version, as integers."""

    version: int
    first: int
    last: int

    @classmethod
    def of(cls, network: IPNetwork) -> AddressInterval:
        return cls(network.version, int(network.network_address), int(network.broadcast_address))

    @classmethod
    def single(cls, address: IPAddress) -> AddressInterval:
        return cls(address.version, int(address), int(address))

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def address(self, value: int) -> IPAddress:
        """The address with integer value ``value`` (in this interval's IP version)."""
        return IPv4Address(value) if self.version == 4 else IPv6Address(value)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, IPv4Address | IPv6Address):
            return False
        return address.version == self.version and self.first <= int(address) <= self.last

    def __str__(self) -> str:
        if self.first == self.last:
            return str(self.address(self.first))
        return f"{self.address(self.first)}-{self.address(self.last)}"


def address_ranges(
    cidrs: Iterable[IPNetwork], excepts: Iterable[IPNetwork] = ()
) -> tuple[AddressInterval, ...]:
    """``cidrs`` minus ``excepts`` as disjoint, sorted, maximal intervals (v4 before v6).

    Cost: O((C + E) log (C + E)).
    """
    out: list[AddressInterval] = []
    minus = sorted(AddressInterval.of(e) for e in excepts)
    for merged in _merge(AddressInterval.of(c) for c in cidrs):
        start = merged.first
        for e in minus:
            if e.version != merged.version or e.last < start or e.first > merged.last:
                continue
            if e.first > start:
                out.append(AddressInterval(merged.version, start, e.first - 1))
            start = max(start, e.last + 1)
        if start <= merged.last:
            out.append(AddressInterval(merged.version, start, merged.last))
    return tuple(out)


def _merge(intervals: Iterable[AddressInterval]) -> list[AddressInterval]:
    out: list[AddressInterval] = []
    for iv in sorted(intervals):
        last = out[-1] if out else None
        if last is not None and last.version == iv.version and iv.first <= last.last + 1:
            out[-1] = AddressInterval(iv.version, last.first, max(last.last, iv.last))
        else:
            out.append(iv)
    return out


def split_ranges(
    ranges: Iterable[AddressInterval], cuts: Iterable[AddressInterval]
) -> tuple[AddressInterval, ...]:
    """Split ``ranges`` at every boundary (first, last + 1) of every interval in ``cuts`` (and
    of ``ranges`` themselves): the elementary intervals, sorted. Overlapping ranges are merged
    first. Cost: O((R + C) log (R + C))."""
    points: dict[int, set[int]] = defaultdict(set)
    for c in cuts:
        points[c.version].update((c.first, c.last + 1))
    sorted_points = {v: sorted(p) for v, p in points.items()}
    out: list[AddressInterval] = []
    for r in _merge(ranges):
        pts = sorted_points.get(r.version, [])
        start = r.first
        i = bisect_right(pts, start)
        while i < len(pts) and pts[i] <= r.last:
            out.append(AddressInterval(r.version, start, pts[i] - 1))
            start = pts[i]
            i += 1
        out.append(AddressInterval(r.version, start, r.last))
    return tuple(out)


K = TypeVar("K")


class RangeIndex(Generic[K]):
    """The address space of one IP version cut at every boundary of a set of keyed ranges.

    Each elementary segment carries the frozenset of keys whose ranges cover it (equal sets
    are one object). Built by one sweep over the boundaries: O(R log R + S · A) for R ranges,
    S ≤ 2R + 1 segments and A keys active per segment (small: nesting depth). ``lookup`` is a
    bisection, O(log S).
    """

    __slots__ = ("_keys", "_starts", "version")

    def __init__(self, version: int, ranges: Iterable[tuple[K, int, int]]) -> None:
        self.version = version
        events: dict[int, list[tuple[K, int]]] = defaultdict(list)
        events[0] = []
        for key, first, last in ranges:
            events[first].append((key, 1))
            if last < _MAX[version]:
                events[last + 1].append((key, -1))
        counts: dict[K, int] = {}
        interned: dict[frozenset[K], frozenset[K]] = {}
        starts: list[int] = []
        keys: list[frozenset[K]] = []
        for point in sorted(events):
            for key, delta in events[point]:
                n = counts.get(key, 0) + delta
                if n:
                    counts[key] = n
                else:
                    counts.pop(key, None)
            active = frozenset(counts)
            starts.append(point)
            keys.append(interned.setdefault(active, active))
        self._starts = starts
        self._keys = keys

    def lookup(self, value: int) -> frozenset[K]:
        """The keys whose ranges contain the address with integer value ``value``."""
        return self._keys[bisect_right(self._starts, value) - 1]

    def segments(self) -> Iterator[tuple[AddressInterval, frozenset[K]]]:
        """Every elementary segment, ascending, with its keys (the whole space is covered)."""
        ends = [*self._starts[1:], _MAX[self.version] + 1]
        for start, end, keys in zip(self._starts, ends, self._keys, strict=True):
            yield AddressInterval(self.version, start, end - 1), keys


# ------------------------------------------------------------------------------------- atoms


class Role(enum.Enum):
    """The side an endpoint plays in a flow; it decides which atoms can matter for it."""

    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True, slots=True)
class Atoms:
    """The things that can tell endpoints apart: selectors, CIDR ranges (CIDR peers and
    failsafe cidrs) and names of networks referenced by ``network:`` peers."""

    selectors: frozenset[Selector]
    cidrs: frozenset[IPNetwork]
    networks: frozenset[str]

    @classmethod
    def of_repository(cls, repo: Repository, extra: Iterable[Selector] = ()) -> Atoms:
        """Every atom of the repository (both roles) plus ``extra`` selectors. O(rules)."""
        src = cls.for_role(repo, Role.SOURCE)
        tgt = cls.for_role(repo, Role.TARGET)
        return cls(
            src.selectors | tgt.selectors | frozenset(extra),
            src.cidrs | tgt.cidrs,
            src.networks | tgt.networks,
        )

    @classmethod
    def for_role(cls, repo: Repository, role: Role) -> Atoms:
        """The atoms that can change the verdict of a flow through the endpoint playing
        ``role``: as a source, the ``appliesTo`` of policies with egress rules (its own egress
        evaluation) and the peers of ingress rules and ingress failsafe cidrs (the target's
        evaluation of it); as a target, the mirror image. O(rules)."""
        own = Direction.EGRESS if role is Role.SOURCE else Direction.INGRESS
        remote = Direction.INGRESS if role is Role.SOURCE else Direction.EGRESS
        read = _remote_atoms(repo.policies, remote, repo.settings.failsafe)
        applies = frozenset(p.applies_to for p in repo.policies if p.rules(own) is not None)
        return cls(read.selectors | applies, read.cidrs, read.networks)


# ---------------------------------------------------------------------------------- classes


@dataclass(frozen=True, slots=True)
class Signature:
    """What an endpoint looks like to the policy. Equal signatures, equal verdicts.

    ``kind`` is WORKLOAD or NETWORK (a free address of a network); ``mode`` is None for
    networks; ``managed`` says whether the endpoint is evaluated (a workload not idle);
    ``cidrs`` are the atom ranges containing the address; ``networks`` the referenced networks
    containing it (always empty for workloads: their addresses are attributed to them)."""

    kind: EndpointKind
    version: int
    selectors: frozenset[Selector]
    mode: Mode | None
    managed: bool
    cidrs: frozenset[IPNetwork]
    networks: frozenset[str]

    def project(self, atoms: Atoms) -> Signature:
        """The signature seen through ``atoms`` only (used to coarsen a partition)."""
        return Signature(
            self.kind,
            self.version,
            self.selectors & atoms.selectors,
            self.mode,
            self.managed,
            self.cidrs & atoms.cidrs,
            self.networks & atoms.networks,
        )


@dataclass(frozen=True, slots=True, order=True)
class Witness:
    """One concrete endpoint of a class: an address, who it is (``identity``: two witnesses
    with the same identity cannot form a flow that counts) and a display name. ``rank`` (the
    sort key of the member it comes from) makes the choice of witnesses deterministic."""

    rank: tuple[int, int, str, int]
    address: IPAddress
    identity: str
    name: str


@dataclass(frozen=True, slots=True)
class Member:
    """One piece of a class: one address of a workload, or an elementary interval of free
    external addresses (``free``: its lowest one or two addresses held by nobody at ``at``)."""

    kind: EndpointKind
    interval: AddressInterval
    name: str  # the workload's name, or the names of the networks containing the interval
    free: tuple[IPAddress, ...]

    @property
    def sort_key(self) -> tuple[int, int, str, int]:
        return (
            self.interval.version,
            0 if self.kind is EndpointKind.WORKLOAD else 1,
            self.name,
            self.interval.first,
        )

    def witnesses(self) -> Iterator[Witness]:
        rank = self.sort_key
        for a in self.free:
            if self.kind is EndpointKind.WORKLOAD:
                yield Witness(rank, a, f"workload:{self.name}", self.name)
            else:
                yield Witness(rank, a, f"address:{a}", self.name)


def _pick_witnesses(candidates: Iterable[Witness]) -> tuple[Witness, ...]:
    """The first witness and the first one after it with another identity (if any)."""
    chosen: list[Witness] = []
    for w in sorted(candidates):
        if not chosen:
            chosen.append(w)
        elif w.identity != chosen[0].identity:
            chosen.append(w)
            break
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class EndpointClass:
    """Endpoints with one signature. ``members`` are sorted; ``witnesses`` are the first one or
    two members' addresses with distinct identities (enough to find a pair of distinct
    endpoints between any two classes, see :meth:`pair_with`)."""

    signature: Signature
    members: tuple[Member, ...]
    witnesses: tuple[Witness, ...]

    @classmethod
    def of(cls, signature: Signature, members: Iterable[Member]) -> EndpointClass:
        ordered = tuple(sorted(members, key=lambda m: m.sort_key))
        candidates: list[Witness] = []
        for m in ordered:
            candidates.extend(m.witnesses())
            if len({w.identity for w in candidates}) >= 2:
                break
        return cls(signature, ordered, _pick_witnesses(candidates))

    @property
    def representative(self) -> Witness:
        return self.witnesses[0]

    @property
    def version(self) -> int:
        return self.signature.version

    @property
    def sort_key(self) -> tuple[int, int, str, int]:
        return self.witnesses[0].rank

    @property
    def address_count(self) -> int:
        """Addresses in the class (0 when the class was coarsened without its members)."""
        return sum(m.interval.size for m in self.members)

    def pair_with(self, other: EndpointClass) -> tuple[Witness, Witness] | None:
        """A (source in self, target in other) pair of distinct endpoints (different
        workloads, or different addresses), or None when there is none: both classes are the
        same single endpoint. O(1): at most four witness pairs are tried."""
        for s in self.witnesses:
            for t in other.witnesses:
                if s.identity != t.identity:
                    return s, t
        return None


@dataclass(frozen=True, slots=True)
class Partition:
    """Endpoint classes (workload addresses and free network addresses) at one time, sorted
    deterministically by their first member."""

    classes: tuple[EndpointClass, ...]

    def select(self, selector: Selector) -> Partition:
        """The classes whose endpoints ``selector`` selects. Precondition: ``selector`` was one
        of the partition's selectors (else nothing is selected). O(classes)."""
        return Partition(tuple(c for c in self.classes if selector in c.signature.selectors))

    def project(self, atoms: Atoms, *, keep_members: bool = True) -> Partition:
        """Coarsen: merge classes whose signatures agree on ``atoms``. O(members), or
        O(classes) with ``keep_members`` False (the merged classes then carry only their
        witnesses, which is all a representative flow needs)."""
        groups: dict[Signature, list[EndpointClass]] = defaultdict(list)
        for c in self.classes:
            groups[c.signature.project(atoms)].append(c)
        merged: list[EndpointClass] = []
        for sig, parts in groups.items():
            if len(parts) == 1 and parts[0].signature == sig:
                merged.append(parts[0])
            elif keep_members:
                merged.append(EndpointClass.of(sig, (m for c in parts for m in c.members)))
            else:
                witnesses = _pick_witnesses(w for c in parts for w in c.witnesses)
                merged.append(EndpointClass(sig, (), witnesses))
        return _sorted_partition(merged)

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[EndpointClass]:
        return iter(self.classes)


@dataclass(frozen=True, slots=True)
class PairBlock:
    """Source classes × target classes × port intervals (one IP version) such that every flow
    from a source of one class to a target of another class on a port of one interval has the
    verdict of any other such flow (distinct endpoints assumed): in a block, all sources have
    the same egress policies and all targets the same ingress policies, and the classes and
    ports are split only by what those policies (and the failsafe entries) read."""

    version: int
    sources: Partition
    targets: Partition
    ports: tuple[PortInterval, ...]


def pair_blocks(
    repo: Repository,
    sources: Partition,
    targets: Partition,
    restrict: Sequence[ServicePort] = (),
) -> Iterator[PairBlock]:
    """Group ``sources`` by the egress policies that apply to them and ``targets`` by the
    ingress policies, then for each pair of groups coarsen the sources by the atoms the
    targets' ingress rules read, the targets by the atoms the sources' egress rules read, and
    split ports only at those rules' (and the failsafe's) service boundaries, restricted to
    ``restrict`` when given.

    Precondition: both partitions come from :func:`build_partition` on ``repo`` (their
    signatures hold every ``appliesTo`` selector), possibly narrowed by ``select``.

    Cost: O(classes · policies) to find the plans; then per pair of groups, O(rules of the two
    plans) plus O(classes of the two groups) to coarsen. The blocks hold far fewer classes and
    port intervals than the global partition when policies are specific.
    """
    failsafe = repo.settings.failsafe
    failsafe_services = tuple(sp for e in failsafe for sp in e.services)
    by_direction = {
        d: tuple(p for p in repo.policies if p.rules(d) is not None) for d in Direction
    }
    by_name = {p.name: p for p in repo.policies}

    def plan(c: EndpointClass, d: Direction) -> frozenset[str] | None:
        sig = c.signature
        if sig.kind is not EndpointKind.WORKLOAD or not sig.managed:
            return None  # not evaluated
        return frozenset(p.name for p in by_direction[d] if p.applies_to in sig.selectors)

    def group(part: Partition, d: Direction) -> dict[tuple[int, frozenset[str] | None],
                                                      list[EndpointClass]]:
        out: dict[tuple[int, frozenset[str] | None], list[EndpointClass]] = defaultdict(list)
        for c in part:
            out[(c.version, plan(c, d))].append(c)
        return out

    atoms_cache: dict[tuple[frozenset[str] | None, Direction], Atoms] = {}

    def atoms(names: frozenset[str] | None, d: Direction) -> Atoms:
        """What rules of direction ``d`` of the policies ``names`` read of the remote end."""
        found = atoms_cache.get((names, d))
        if found is None:
            if names is None:
                found = Atoms(frozenset(), frozenset(), frozenset())
            else:
                found = _remote_atoms([by_name[n] for n in sorted(names)], d, failsafe)
            atoms_cache[(names, d)] = found
        return found

    ports_cache: dict[frozenset[ServicePort], tuple[PortInterval, ...]] = {}
    source_groups = group(sources, Direction.EGRESS)
    target_groups = group(targets, Direction.INGRESS)
    for (version, s_plan), s_classes in source_groups.items():
        for (t_version, t_plan), t_classes in target_groups.items():
            if version != t_version:
                continue
            services: set[ServicePort] = set(failsafe_services)
            for names, d in ((s_plan, Direction.EGRESS), (t_plan, Direction.INGRESS)):
                for n in names or ():
                    for r in by_name[n].rules(d) or ():
                        services.update(r.services)
            key = frozenset(services)
            ports = ports_cache.get(key)
            if ports is None:
                ports = ports_cache[key] = port_intervals(key, restrict)
            yield PairBlock(
                version,
                Partition(tuple(s_classes)).project(atoms(t_plan, Direction.INGRESS),
                                                    keep_members=False),
                Partition(tuple(t_classes)).project(atoms(s_plan, Direction.EGRESS),
                                                    keep_members=False),
                tuple(p for p in ports if p.protocol in protocols_for_version(version)),
            )


def peer_atom(peer: Peer) -> Selector | IPNetwork | str | None:
    """What a rule's peer reads of the remote endpoint: the selector (of a selector or
    segment peer), the CIDR, or the network name; None for a users peer, which matches only
    user sessions, never workloads or networks."""
    if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT):
        return peer.selector
    if peer.kind is PeerKind.CIDR:
        return peer.cidr
    if peer.kind is PeerKind.NETWORK:
        return peer.ref
    return None


def _remote_atoms(policies: Iterable[Policy], direction: Direction,
                  failsafe: Iterable[FailsafeEntry]) -> Atoms:
    """The atoms the ``direction`` rules of ``policies`` and the failsafe entries of that
    direction read of the remote endpoint."""
    selectors: set[Selector] = set()
    cidrs: set[IPNetwork] = set()
    networks: set[str] = set()
    for p in policies:
        for r in p.rules(direction) or ():
            for peer in r.peers:
                atom = peer_atom(peer)
                if isinstance(atom, Selector):
                    selectors.add(atom)
                elif isinstance(atom, str):
                    networks.add(atom)
                elif atom is not None:
                    cidrs.add(atom)
    for entry in failsafe:
        if entry.direction is None or entry.direction is direction:
            cidrs.update(entry.cidrs)
    return Atoms(frozenset(selectors), frozenset(cidrs), frozenset(networks))


def _sorted_partition(classes: Iterable[EndpointClass]) -> Partition:
    return Partition(tuple(sorted((c for c in classes if c.witnesses), key=lambda c: c.sort_key)))


# ----------------------------------------------------------------------- building a partition


@dataclass(frozen=True, slots=True)
class _NetworkPart:
    """A range key of a network: one of its cidrs (``excluded`` False) or excepts (True)."""

    name: str
    excluded: bool


@dataclass(frozen=True, slots=True)
class _Held:
    """A range key marking an address held by a workload or user session, so that external
    intervals are cut around it (connectivity analysis only)."""


_HELD = _Held()
_RangeKey = IPNetwork | _NetworkPart | _Held
_Projection = tuple[str | None, ...]


class _SelectorMatcher:
    """Matches many selectors against many label sets, evaluating each selector at most once
    per distinct projection of the labels onto the keys it reads (so at most once per
    (selector, workload), and far less when workloads share label values).

    Cost per label set: O(G) projections for G distinct key sets among the selectors, plus
    the selectors of groups whose projection was not seen before.
    """

    __slots__ = ("_cache", "_groups")

    def __init__(self, selectors: Iterable[Selector]) -> None:
        by_keys: dict[tuple[str, ...], list[Selector]] = defaultdict(list)
        for s in selectors:
            by_keys[tuple(sorted(s.keys))].append(s)
        self._groups = tuple((k, tuple(v)) for k, v in sorted(by_keys.items()))
        self._cache: list[dict[_Projection, frozenset[Selector]]] = [{} for _ in self._groups]

    def match(self, labels: Mapping[str, str]) -> frozenset[Selector]:
        out: set[Selector] = set()
        for (keys, selectors), cache in zip(self._groups, self._cache, strict=True):
            projection = tuple(labels.get(k) for k in keys)
            hit = cache.get(projection)
            if hit is None:
                view = {k: v for k, v in zip(keys, projection, strict=True) if v is not None}
                hit = cache[projection] = frozenset(s for s in selectors if s.matches(view))
            out |= hit
        return frozenset(out)


def _holders(repo: Repository, at: datetime, *, workloads: bool) -> Iterator[IPAddress]:
    """Addresses of user sessions (and of workloads, if ``workloads``) valid at ``at``."""
    if workloads:
        for w in repo.workloads:
            for b in w.addresses:
                if b.valid_at(at):
                    yield b.address
    for u in repo.users:
        for b in u.sessions:
            if b.valid_at(at):
                yield b.address


def _held_addresses(repo: Repository, at: datetime) -> dict[int, list[int]]:
    """Per IP version, the sorted integer addresses held by workloads or user sessions."""
    held: dict[int, set[int]] = defaultdict(set)
    for w in repo.workloads:
        for b in w.addresses:
            if b.valid_at(at):
                held[b.address.version].add(int(b.address))
    for u in repo.users:
        for b in u.sessions:
            if b.valid_at(at):
                held[b.address.version].add(int(b.address))
    return {v: sorted(s) for v, s in held.items()}


def _free_addresses(interval: AddressInterval, held: Sequence[int], want: int) -> list[int]:
    """The lowest ``want`` addresses of ``interval`` not in ``held`` (sorted). O(log H + held
    addresses skipped)."""
    out: list[int] = []
    candidate = interval.first
    i = bisect_right(held, candidate - 1)
    while len(out) < want and candidate <= interval.last:
        if i < len(held) and held[i] == candidate:
            i += 1
        else:
            out.append(candidate)
        candidate += 1
    return out


def _managed(w: Workload) -> bool:
    """Whether ``w`` is evaluated for its direction (``semantics.md``): a workload not idle."""
    return w.mode is not Mode.IDLE


#: Above this many workloads, build_partition matches selectors through a LabelIndex.
_INDEX_WORKLOADS_AFTER = 200


def build_partition(
    repo: Repository,
    at: datetime,
    selectors: Iterable[Selector] = (),
    network_selectors: Iterable[Selector] = (),
    *,
    unknown: bool = False,
) -> Partition:
    """The endpoint classes of ``repo`` at time ``at``.

    Endpoints are (a) every workload address valid at ``at``, (b) every address, held by
    no workload or user session at ``at``, of a network that one of ``network_selectors``
    selects, and (c) with ``unknown``, every address of no network held by nobody (kind
    UNKNOWN: it matches only CIDR peers and ``all()``), for connectivity analysis. The
    signature uses every atom of the repository plus ``selectors`` (pass the
    selectors you will :meth:`Partition.select` by, e.g. an invariant's).

    Network addresses are handled as elementary intervals: the selected networks' ranges
    (cidrs minus excepts) cut at every boundary of every CIDR peer, failsafe cidr and network
    range, so that each interval is uniform; intervals whose every address is held are
    skipped; each keeps its lowest one or two free addresses as witnesses.

    Cost: O(R log R) for the R ranges (cidrs, network cidrs and excepts); O(W · (G + log R))
    for W workload addresses and G distinct selector key sets, plus each selector evaluated at
    most once per distinct label projection; O(S · (A + N)) for the S ≤ 2R + 1 segments with A
    active ranges and N networks each; and O(M log M) to sort the M members. Independent of
    the number of address pairs.
    """
    atoms = Atoms.of_repository(repo, [*selectors, *network_selectors])
    matcher = _SelectorMatcher(atoms.selectors)
    all_sel = frozenset(s for s in atoms.selectors if s.is_all)

    ranges: dict[int, list[tuple[_RangeKey, int, int]]] = {4: [], 6: []}
    for c in atoms.cidrs:
        iv = AddressInterval.of(c)
        ranges[iv.version].append((c, iv.first, iv.last))
    for n in repo.networks:
        for part, nets in (
            (_NetworkPart(n.name, False), n.cidrs),
            (_NetworkPart(n.name, True), n.excepts),
        ):
            for c in nets:
                iv = AddressInterval.of(c)
                ranges[iv.version].append((part, iv.first, iv.last))
    if unknown:
        # Held addresses are not external: cut them out of the external intervals (workload
        # addresses only where CIDR peers match them; otherwise workloads live in an address
        # space of their own, as pods do for Kubernetes' ipBlocks).
        for held_at in _holders(repo, at, workloads=repo.settings.cidr_matches_workloads):
            ranges[held_at.version].append((_HELD, int(held_at), int(held_at)))
    index = {v: RangeIndex[_RangeKey](v, r) for v, r in ranges.items()}

    groups: dict[Signature, list[Member]] = defaultdict(list)

    # (a) workload addresses. Many workloads: one label index answers which selectors
    # select each of them by set algebra over posting lists, instead of evaluating every
    # selector whose keys a workload's labels project to something new (selectors over
    # unique labels such as septum.io/name would be evaluated once per workload).
    selected_by: Callable[[Workload], frozenset[Selector]] = _matching(matcher)
    if len(repo.workloads) > _INDEX_WORKLOADS_AFTER:
        label_index = LabelIndex()
        for w in repo.workloads:
            label_index.upsert_endpoint(w.name, w.labels)
        for sel in atoms.selectors:
            label_index.add_selector(sel)
        selected_by = _indexed(label_index)
    for w in repo.workloads:
        matched: frozenset[Selector] | None = None
        for b in w.addresses:
            if not b.valid_at(at):
                continue
            if matched is None:
                matched = selected_by(w)
            keys = index[b.address.version].lookup(int(b.address))
            cidrs = frozenset(k for k in keys if not isinstance(k, _NetworkPart | _Held))
            sig = Signature(
                EndpointKind.WORKLOAD,
                b.address.version,
                matched,
                w.mode,
                _managed(w),
                cidrs,
                frozenset(),
            )
            groups[sig].append(
                Member(
                    EndpointKind.WORKLOAD, AddressInterval.single(b.address), w.name, (b.address,)
                )
            )

    # (b) free addresses of selected networks
    wanted = tuple(network_selectors)
    by_name = {n.name: n for n in repo.networks}
    selected = {n.name for n in repo.networks if any(s.matches(n.labels) for s in wanted)}
    if selected or unknown:
        held = _held_addresses(repo, at)
        network_selectors_cache: dict[frozenset[str], frozenset[Selector]] = {}
        for version, idx in index.items():
            for segment, keys in idx.segments():
                inside = {k.name for k in keys if isinstance(k, _NetworkPart) and not k.excluded}
                inside -= {k.name for k in keys if isinstance(k, _NetworkPart) and k.excluded}
                if _HELD in keys:
                    continue  # a held address: its holder is the endpoint
                if not inside:
                    if unknown:
                        _add_unknown(groups, version, segment, keys, held, all_sel)
                    continue
                if not inside & selected:
                    continue
                free = _free_addresses(segment, held.get(version, []), 2)
                if not free:
                    continue
                names = frozenset(inside)
                matched_n = network_selectors_cache.get(names)
                if matched_n is None:
                    matched_n = network_selectors_cache[names] = all_sel | frozenset(
                        s
                        for s in atoms.selectors
                        if any(s.matches(by_name[n].labels) for n in names)
                    )
                cidrs = frozenset(k for k in keys if not isinstance(k, _NetworkPart | _Held))
                sig = Signature(
                    EndpointKind.NETWORK,
                    version,
                    matched_n,
                    None,
                    False,
                    cidrs,
                    names & atoms.networks,
                )
                groups[sig].append(
                    Member(
                        EndpointKind.NETWORK,
                        segment,
                        ",".join(sorted(names)),
                        tuple(segment.address(a) for a in free),
                    )
                )

    return _sorted_partition(EndpointClass.of(s, m) for s, m in groups.items())


def _matching(matcher: _SelectorMatcher) -> Callable[[Workload], frozenset[Selector]]:
    return lambda w: matcher.match(w.labels)


def _indexed(index: LabelIndex) -> Callable[[Workload], frozenset[Selector]]:
    return lambda w: index.selectors_of(w.name)


def _add_unknown(
    groups: dict[Signature, list[Member]],
    version: int,
    segment: AddressInterval,
    keys: frozenset[_RangeKey],
    held: Mapping[int, Sequence[int]],
    all_sel: frozenset[Selector],
) -> None:
    """Add an elementary segment of addresses of no network (attributed to nobody unless
    held): its signature is what an unknown address shows, the CIDR atoms containing it and
    the ``all()`` selectors."""
    free = _free_addresses(segment, held.get(version, []), 2)
    if not free:
        return
    cidrs = frozenset(k for k in keys if not isinstance(k, _NetworkPart | _Held))
    sig = Signature(EndpointKind.UNKNOWN, version, all_sel, None, False, cidrs, frozenset())
    groups[sig].append(
        Member(EndpointKind.UNKNOWN, segment, "", tuple(segment.address(a) for a in free))
    )
