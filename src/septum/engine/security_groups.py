"""AWS security-group semantics: the connectivity a set of security groups allows, in the
comparable form of :func:`septum.engine.connectivity.canonical`, so that a rendering can be
checked against the policy it came from (``semantics.md`` is the contract; this module is the
other side of it).

::

    security-groups.json ──parse_security_groups──► SecurityGroupSet
        (CreateSecurityGroup,                          groups (ingress/egress rules) and
         Authorize…/Revoke…,                           attachments (workload, addresses,
         SecurityGroupAssignment)                      groups)
                                   evaluate_security_groups
                                   ─────────────────────────► ConnectivityMap
                                                                 │
    Repository ─analyze_connectivity─► canonical ────────────────┴─ diff ─► verify_aws

AWS's rules, as modelled here:

- Security groups are allow-only and stateful: a connection s → t on (protocol, port) is
  allowed iff some group of s has an *egress* rule matching t (a reference to a group of t, or
  a CIDR containing t's address) and the port, and some group of t has an *ingress* rule
  matching s likewise. Replies are allowed by connection tracking, so only the direction of
  the first packet counts (as in Septum).
- An external endpoint (an address no workload holds) is not filtered on its side: s → x
  needs only s's egress, x → t only t's ingress. A group reference never matches it.
- A group reference matches every address (private IPv4 and IPv6) of every interface the
  group is attached to. A new group comes with an allow-all egress rule (IPv4 and IPv6);
  ``RevokeSecurityGroupEgress`` removes it.
- Protocols: ``tcp``/``udp`` with port ranges (ports 1..65535 of the analysis' universe are
  kept); ``icmp``/``icmpv6`` with type ``-1`` (all; a specific type or code is narrower than
  the analysis can say, so such a rule is counted as matching nothing); ``132`` (sctp) has no
  ports in AWS: every port; ``-1``: every protocol. A rule only ever carries traffic of its
  CIDR's IP version; icmp is IPv4-only and icmpv6 IPv6-only.
- Traffic between two addresses of one workload is not filtered (it never leaves the
  instance), as Septum never evaluates a workload talking to itself.

Everything is computed over classes: the address space of each IP version is cut at every
CIDR boundary of every rule (one :class:`~septum.engine.classes.RangeIndex`), endpoints with
the same groups and the same containing CIDRs form one class, and each (class, class) pair or
(class, elementary range) is decided once. Cost: O(R log R) for R rules, plus one port-set
union per distinct (group set, CIDR set) met, plus the size of the output (pairs of endpoints
and external ranges, which the comparable form lists explicitly).
"""

from __future__ import annotations

import enum
import json
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any

from septum.engine.classes import AddressInterval, RangeIndex, protocols_for_version
from septum.engine.connectivity import (
    ConnectivityDiff,
    ConnectivityMap,
    ConnectivityOptions,
    analyze_connectivity,
    canonical,
    diff_connectivity,
    port_set_of,
)
from septum.engine.sides import PROTOCOL_INDEX, PROTOCOLS, PortSet, intersect
from septum.model.resources import Direction, IPAddress, IPNetwork, Protocol, Repository

if TYPE_CHECKING:
    from septum.render.manifests import Limitation, Rendering

__all__ = [
    "GROUP_REF_PREFIX",
    "Attachment",
    "IpProtocol",
    "SecurityGroup",
    "SecurityGroupSet",
    "SgRule",
    "evaluate_security_groups",
    "held_addresses",
    "parse_security_groups",
    "rule_ports",
    "universe_of",
    "verify_aws",
]

#: How a rendered document refers to a group it creates: ``${sg:<group name>}``.
GROUP_REF_PREFIX = "${sg:"

_ALL_V4 = IPv4Network("0.0.0.0/0")
_ALL_V6 = IPv6Network("::/0")


class IpProtocol(enum.Enum):
    """The ``IpProtocol`` values Septum writes (and reads; numbers are accepted too)."""

    ALL = "-1"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"
    SCTP = "132"

    @property
    def has_ports(self) -> bool:
        """Whether AWS reads FromPort/ToPort as ports (tcp, udp) or ICMP type/code."""
        return self in (IpProtocol.TCP, IpProtocol.UDP, IpProtocol.ICMP, IpProtocol.ICMPV6)

    @classmethod
    def parse(cls, text: str | int) -> IpProtocol | None:
        """The protocol of an ``IpProtocol`` value (name or number); None for a protocol
        outside Septum's universe (such a rule matches no flow the analysis knows)."""
        return _PROTOCOL_ALIASES.get(str(text).lower())


_PROTOCOL_ALIASES = {
    "-1": IpProtocol.ALL,
    "all": IpProtocol.ALL,
    "tcp": IpProtocol.TCP,
    "6": IpProtocol.TCP,
    "udp": IpProtocol.UDP,
    "17": IpProtocol.UDP,
    "icmp": IpProtocol.ICMP,
    "1": IpProtocol.ICMP,
    "icmpv6": IpProtocol.ICMPV6,
    "58": IpProtocol.ICMPV6,
    "sctp": IpProtocol.SCTP,
    "132": IpProtocol.SCTP,
}


@dataclass(frozen=True, slots=True)
class SgRule:
    """One security-group rule: one protocol and port range, one peer (a group by name or a
    CIDR). ``from_port``/``to_port`` are -1 where AWS has none (``-1``, sctp) and hold the
    ICMP type/code for icmp (``-1``: all)."""

    direction: Direction
    protocol: IpProtocol
    from_port: int
    to_port: int
    group: str | None = None
    cidr: IPNetwork | None = None
    description: str = field(default="", compare=False)

    def sort_key(self) -> tuple[int, str, int, int, int, int, int]:
        """A total order (groups first, then CIDRs by version and address, then protocol)."""
        if self.cidr is None:
            peer: tuple[int, str, int, int] = (0, self.group or "", 0, 0)
        else:
            net = self.cidr
            peer = (net.version, "", int(net.network_address), net.prefixlen)
        return (*peer, _PROTOCOL_ORDER[self.protocol], self.from_port, self.to_port)


_PROTOCOL_ORDER = {p: i for i, p in enumerate(IpProtocol)}


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    name: str
    description: str
    ingress: tuple[SgRule, ...]
    egress: tuple[SgRule, ...]

    def rules(self, direction: Direction) -> tuple[SgRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class Attachment:
    """The groups of one workload's network interface(s). ``endpoints`` are its addresses
    with the names the connectivity report gives them (``w``, or ``w@address`` for a
    workload holding several addresses)."""

    workload: str
    endpoints: tuple[tuple[str, IPAddress], ...]
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecurityGroupSet:
    """Security groups and where they are attached: what the evaluator reads."""

    groups: tuple[SecurityGroup, ...]
    attachments: tuple[Attachment, ...]

    def group(self, name: str) -> SecurityGroup | None:
        return next((g for g in self.groups if g.name == name), None)


# ---------------------------------------------------------------------------------- ports


def universe_of(options: ConnectivityOptions, version: int) -> PortSet:
    """Every (protocol, port) a flow between addresses of IP ``version`` can have within the
    analysis' universe: ports 1..65535 of tcp/udp/sctp, and icmp (v4) or icmpv6 (v6)."""
    allowed = set(protocols_for_version(version)) & set(options.protocols)
    return port_set_of(
        (p, 1, 65535) if p.has_ports else (p, 0, 0) for p in Protocol if p in allowed
    )


_EVERYTHING: PortSet = port_set_of(
    (p, 1, 65535) if p.has_ports else (p, 0, 0) for p in Protocol
)


def rule_ports(rule: SgRule) -> PortSet:
    """The (protocol, port) set one rule allows, before restriction to a version."""
    p = rule.protocol
    if p is IpProtocol.ALL:
        return _EVERYTHING
    if p is IpProtocol.SCTP:
        return ((PROTOCOL_INDEX[Protocol.SCTP], 1, 65535),)
    if p in (IpProtocol.ICMP, IpProtocol.ICMPV6):
        if rule.from_port != -1:
            return ()  # one ICMP type: narrower than the analysis can tell apart
        proto = Protocol.ICMP if p is IpProtocol.ICMP else Protocol.ICMPV6
        return ((PROTOCOL_INDEX[proto], 0, 0),)
    proto = Protocol.TCP if p is IpProtocol.TCP else Protocol.UDP
    first, last = max(rule.from_port, 1), min(rule.to_port, 65535)
    return ((PROTOCOL_INDEX[proto], first, last),) if first <= last else ()


def _union(*sets: PortSet) -> PortSet:
    return port_set_of((PROTOCOLS[p], a, b) for s in sets for p, a, b in s)


def _meet(x: PortSet, y: PortSet) -> PortSet:
    return intersect(x, y)


# ---------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Side:
    """One direction of a set of groups, pre-aggregated: ports per referenced group and per
    CIDR."""

    groups: Mapping[str, PortSet]
    cidrs: Mapping[IPNetwork, PortSet]


def _side(sgs: Mapping[str, SecurityGroup], names: Iterable[str], direction: Direction) -> _Side:
    by_group: dict[str, list[PortSet]] = defaultdict(list)
    by_cidr: dict[IPNetwork, list[PortSet]] = defaultdict(list)
    for name in names:
        g = sgs.get(name)
        for r in g.rules(direction) if g is not None else ():
            ports = rule_ports(r)
            if not ports:
                continue
            if r.cidr is not None:
                by_cidr[r.cidr].append(ports)
            elif r.group is not None:
                by_group[r.group].append(ports)
    return _Side(
        {k: _union(*v) for k, v in by_group.items()},
        {k: _union(*v) for k, v in by_cidr.items()},
    )


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str  # display name
    workload: str
    address: IPAddress
    groups: frozenset[str]


def evaluate_security_groups(
    sgs: SecurityGroupSet,
    options: ConnectivityOptions | None = None,
    held: Iterable[IPAddress] = (),
) -> ConnectivityMap:
    """The connectivity ``sgs`` allow, in the comparable form of
    :func:`~septum.engine.connectivity.canonical` (module docstring for the rules).

    External endpoints are the addresses held by no attachment and not in ``held`` (pass the
    addresses user sessions hold, which the analysis does not count as external either).
    Pure. Cost: see the module docstring.
    """
    opts = options or ConnectivityOptions()
    by_name = {g.name: g for g in sgs.groups}
    endpoints = [
        _Endpoint(display, a.workload, address, frozenset(a.groups))
        for a in sgs.attachments
        for display, address in a.endpoints
        if address.version in opts.versions
    ]
    cidrs = {r.cidr for g in sgs.groups for d in Direction for r in g.rules(d) if r.cidr}
    index = {
        v: RangeIndex[IPNetwork](
            v,
            [
                (c, int(c.network_address), int(c.broadcast_address))
                for c in cidrs
                if c.version == v
            ],
        )
        for v in (4, 6)
    }
    universe = {v: universe_of(opts, v) for v in (4, 6)}
    sides: dict[tuple[frozenset[str], Direction], _Side] = {}

    def side(groups: frozenset[str], direction: Direction) -> _Side:
        found = sides.get((groups, direction))
        if found is None:
            found = sides[(groups, direction)] = _side(by_name, sorted(groups), direction)
        return found

    # classes of workload endpoints: (version, groups, CIDRs containing the address)
    classes: dict[tuple[int, frozenset[str], frozenset[IPNetwork]], list[_Endpoint]] = (
        defaultdict(list)
    )
    for e in endpoints:
        keys = index[e.address.version].lookup(int(e.address))
        classes[(e.address.version, e.groups, keys)].append(e)

    def matched(s: _Side, groups: frozenset[str], keys: frozenset[IPNetwork]) -> PortSet:
        return _union(
            *(p for g, p in s.groups.items() if g in groups),
            *(p for c, p in s.cidrs.items() if c in keys),
        )

    pairs: dict[tuple[str, str], PortSet] = {}
    items = sorted(classes.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]),
                                                     sorted(map(str, kv[0][2]))))
    for (v, sg, sk), sources in items:
        out = side(sg, Direction.EGRESS)
        for (w, tg, tk), targets in items:
            if w != v:
                continue
            both = _meet(
                _meet(matched(out, tg, tk), matched(side(tg, Direction.INGRESS), sg, sk)),
                universe[v],
            )
            for s in sources:
                for t in targets:
                    if s.name == t.name:
                        continue
                    ports = universe[v] if s.workload == t.workload else both
                    if ports:
                        pairs[(s.name, t.name)] = ports

    externals: dict[tuple[str, bool], tuple[tuple[int, int, int, PortSet], ...]] = {}
    if opts.externals:
        held_by_version: dict[int, list[int]] = defaultdict(list)
        for e in endpoints:
            held_by_version[e.address.version].append(int(e.address))
        for a in held:
            held_by_version[a.version].append(int(a))
        segments = {
            v: _free_segments(index[v], sorted(set(held_by_version[v]))) for v in (4, 6)
        }
        cache: dict[tuple[frozenset[str], Direction, int], tuple[tuple[int, int, int, PortSet],
                                                                  ...]] = {}
        for e in endpoints:
            v = e.address.version
            for direction, outbound in ((Direction.EGRESS, True), (Direction.INGRESS, False)):
                key = (e.groups, direction, v)
                ranges = cache.get(key)
                if ranges is None:
                    here = side(e.groups, direction)
                    ranges = cache[key] = _merge(
                        (v, iv.first, iv.last,
                         _meet(_union(*(p for c, p in here.cidrs.items() if c in keys)),
                               universe[v]))
                        for iv, keys in segments[v]
                    )
                if ranges:
                    externals[(e.name, outbound)] = ranges
    return ConnectivityMap(pairs, externals, universe[4] if 4 in opts.versions else universe[6])


def _free_segments(
    index: RangeIndex[IPNetwork], held: Sequence[int]
) -> list[tuple[AddressInterval, frozenset[IPNetwork]]]:
    """The elementary segments of ``index`` with the ``held`` addresses cut out."""
    out: list[tuple[AddressInterval, frozenset[IPNetwork]]] = []
    for iv, keys in index.segments():
        start = iv.first
        i = bisect_left(held, iv.first)
        j = bisect_right(held, iv.last)
        for h in held[i:j]:
            if h > start:
                out.append((AddressInterval(iv.version, start, h - 1), keys))
            start = h + 1
        if start <= iv.last:
            out.append((AddressInterval(iv.version, start, iv.last), keys))
    return out


def _merge(
    pieces: Iterable[tuple[int, int, int, PortSet]],
) -> tuple[tuple[int, int, int, PortSet], ...]:
    """Sorted pieces with empty port sets dropped and adjacent equal ones merged."""
    out: list[tuple[int, int, int, PortSet]] = []
    for v, a, b, ps in pieces:
        if not ps:
            continue
        if out and out[-1][0] == v and out[-1][2] + 1 == a and out[-1][3] == ps:
            out[-1] = (v, out[-1][1], b, ps)
        else:
            out.append((v, a, b, ps))
    return tuple(out)


# --------------------------------------------------------------------------------- parsing


class SecurityGroupDocumentError(ValueError):
    """A rendered security-group document Septum cannot read (not one it wrote)."""


def _group_ref(text: object, where: str) -> str:
    if not isinstance(text, str) or not text.startswith(GROUP_REF_PREFIX) or not text.endswith(
        "}"
    ):
        raise SecurityGroupDocumentError(f"{where}: expected '${{sg:<name>}}', got {text!r}")
    return text[len(GROUP_REF_PREFIX):-1]


def _permissions(
    permissions: object, direction: Direction, where: str
) -> list[SgRule]:
    if not isinstance(permissions, list):
        raise SecurityGroupDocumentError(f"{where}: IpPermissions is not a list")
    out: list[SgRule] = []
    for n, perm in enumerate(permissions):
        here = f"{where}.IpPermissions[{n}]"
        if not isinstance(perm, dict):
            raise SecurityGroupDocumentError(f"{here}: not an object")
        protocol = IpProtocol.parse(perm.get("IpProtocol", ""))
        if protocol is None:
            continue  # a protocol outside the analysis' universe
        first = int(perm.get("FromPort", -1))
        last = int(perm.get("ToPort", -1))
        for r in perm.get("IpRanges", ()):
            out.append(SgRule(direction, protocol, first, last,
                              cidr=IPv4Network(r["CidrIp"]), description=r.get("Description", "")))
        for r in perm.get("Ipv6Ranges", ()):
            out.append(SgRule(direction, protocol, first, last,
                              cidr=IPv6Network(r["CidrIpv6"]),
                              description=r.get("Description", "")))
        for r in perm.get("UserIdGroupPairs", ()):
            out.append(SgRule(direction, protocol, first, last,
                              group=_group_ref(r.get("GroupId"), here),
                              description=r.get("Description", "")))
    return out


def parse_security_groups(manifests: Sequence[Mapping[str, Any]] | str) -> SecurityGroupSet:
    """Read the documents :func:`septum.render.aws.render_aws` writes (its manifests, or the
    text of ``security-groups.json``) back into a :class:`SecurityGroupSet`, applying the
    requests in order as EC2 would: ``CreateSecurityGroup`` (with AWS's default allow-all
    egress), ``AuthorizeSecurityGroupIngress``/``Egress`` (add), ``RevokeSecurityGroupEgress``
    /``Ingress`` (remove), and the ``SecurityGroupAssignment`` of groups to workloads.
    Raises :class:`SecurityGroupDocumentError` on a document it cannot read. O(rules)."""
    docs: Any = json.loads(manifests) if isinstance(manifests, str) else manifests
    if not isinstance(docs, list):
        raise SecurityGroupDocumentError("expected a list of documents")
    order: list[str] = []
    descriptions: dict[str, str] = {}
    rules: dict[str, dict[Direction, list[SgRule]]] = {}
    attachments: list[Attachment] = []
    for i, doc in enumerate(docs):
        where = f"document[{i}]"
        if not isinstance(doc, dict):
            raise SecurityGroupDocumentError(f"{where}: not an object")
        kind, request = doc.get("kind"), doc.get("request", {})
        if kind == "CreateSecurityGroup":
            name = request["GroupName"]
            order.append(name)
            descriptions[name] = request.get("Description", "")
            rules[name] = {
                Direction.INGRESS: [],
                Direction.EGRESS: [
                    SgRule(Direction.EGRESS, IpProtocol.ALL, -1, -1, cidr=_ALL_V4),
                    SgRule(Direction.EGRESS, IpProtocol.ALL, -1, -1, cidr=_ALL_V6),
                ],
            }
        elif kind in (
            "AuthorizeSecurityGroupIngress",
            "AuthorizeSecurityGroupEgress",
            "RevokeSecurityGroupIngress",
            "RevokeSecurityGroupEgress",
        ):
            assert isinstance(kind, str)
            direction = Direction.INGRESS if kind.endswith("Ingress") else Direction.EGRESS
            name = _group_ref(request.get("GroupId"), where)
            if name not in rules:
                raise SecurityGroupDocumentError(f"{where}: group {name!r} not created before")
            found = _permissions(request.get("IpPermissions"), direction, where)
            if kind.startswith("Authorize"):
                rules[name][direction].extend(found)
            else:
                gone = set(found)
                rules[name][direction] = [r for r in rules[name][direction] if r not in gone]
        elif kind == "SecurityGroupAssignment":
            for a in doc.get("assignments", ()):
                attachments.append(
                    Attachment(
                        a["Workload"],
                        tuple((e["Endpoint"], ip_address(e["Address"]))
                              for e in a.get("Addresses", ())),
                        tuple(_group_ref(g, where) for g in a["Request"]["Groups"]),
                    )
                )
        else:
            raise SecurityGroupDocumentError(f"{where}: unknown document kind {kind!r}")
    groups = tuple(
        SecurityGroup(
            n,
            descriptions[n],
            tuple(rules[n][Direction.INGRESS]),
            tuple(rules[n][Direction.EGRESS]),
        )
        for n in order
    )
    return SecurityGroupSet(groups, tuple(attachments))


# -------------------------------------------------------------------------------- checking


def held_addresses(repo: Repository, at: datetime) -> tuple[IPAddress, ...]:
    """Addresses user sessions hold at ``at``: not external endpoints in the analysis, so not
    in the evaluator's either (workload addresses come with the attachments)."""
    return tuple(
        sorted(
            {b.address for u in repo.users for b in u.sessions if b.valid_at(at)},
            key=lambda a: (a.version, int(a)),
        )
    )


def mask_addresses(cmap: ConnectivityMap, addresses: Iterable[IPAddress]) -> ConnectivityMap:
    """``cmap`` with ``addresses`` cut out of its external ranges. An address a workload or a
    user session holds is not an external endpoint (its connections are the workload's, in
    the pairs), but the analysis may report it inside an external range (it cuts external
    ranges at CIDR boundaries only); comparisons mask such addresses on both sides.
    O(ranges + addresses · log)."""
    held: dict[int, list[int]] = defaultdict(list)
    for a in addresses:
        held[a.version].append(int(a))
    points = {v: sorted(set(x)) for v, x in held.items()}
    externals: dict[tuple[str, bool], tuple[tuple[int, int, int, PortSet], ...]] = {}
    for key, ranges in cmap.externals.items():
        pieces: list[tuple[int, int, int, PortSet]] = []
        for v, first, last, ports in ranges:
            hs = points.get(v, [])
            start = first
            for h in hs[bisect_left(hs, first):bisect_right(hs, last)]:
                if h > start:
                    pieces.append((v, start, h - 1, ports))
                start = h + 1
            if start <= last:
                pieces.append((v, start, last, ports))
        merged = _merge(pieces)
        if merged:
            externals[key] = merged
    return ConnectivityMap(cmap.pairs, externals, cmap.universe)


def expected_connectivity(repo: Repository, at: datetime) -> ConnectivityMap:
    """What a rendering must allow: the effective connectivity of ``repo`` at ``at`` (every
    protocol, both IP versions, externals), held addresses masked (:func:`mask_addresses`)."""
    options = ConnectivityOptions()
    workloads = [b.address for w in repo.workloads for b in w.addresses if b.valid_at(at)]
    return mask_addresses(canonical(analyze_connectivity(repo, at, options)),
                          [*workloads, *held_addresses(repo, at)])


def verify_aws(
    repo: Repository, at: datetime, rendering: Rendering
) -> tuple[ConnectivityDiff, tuple[Limitation, ...]]:
    """Check an AWS rendering the way ``septum render --verify`` does: read its
    ``security-groups.json`` back, evaluate it with AWS's semantics and compare with the
    effective connectivity of ``repo`` at ``at``. Returns the difference (empty when they
    allow exactly the same connections) and the limitations the renderer reported, which
    should explain any difference. Addresses that workloads or sessions hold are compared as
    the workloads they are, never as external addresses (:func:`mask_addresses`).
    Cost: one connectivity analysis plus one evaluation."""
    text = rendering.files.get("security-groups.json")
    sgs = parse_security_groups(text if text is not None else list(rendering.manifests))
    expected = expected_connectivity(repo, at)
    actual = evaluate_security_groups(sgs, ConnectivityOptions(), held_addresses(repo, at))
    return diff_connectivity(expected, actual), rendering.limitations


__all__ += ["SecurityGroupDocumentError", "expected_connectivity", "mask_addresses"]
