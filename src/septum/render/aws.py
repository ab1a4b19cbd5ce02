"""Render a repository as AWS security groups: a pure function.

::

    Repository ─analyze_connectivity(at)─► effective connectivity (tiers, deny, pass,
        │                                   defaults, modes, failsafe: all already decided)
        ├─ segments: workloads interchangeable for every connection
        ├─ one security group per segment
        │    pair rules:     S → T on P  =  egress on S referencing T's group
        │                                ∧ ingress on T referencing S's group
        │    external rules: the analysis' external ranges as minimal CIDRs
        ├─ self-check: evaluate the groups (septum.engine.security_groups), carve
        │    workload addresses out of CIDR rules where two CIDR rules together would
        │    allow a pair more than the policy, report anything still different
        └─► Rendering: manifests (EC2 API requests), security-groups.json, main.tf,
                       limitations (quotas, modes, log, staged, users, expiry, …)

Security groups are allow-only, so deny and pass cannot be written: they are *compiled away*.
The connectivity analysis already decides every (source class, target class, port interval)
over the equivalence classes, so what it reports allowed is exactly what the groups must
allow, and nothing else.

**Segments.** Two workloads are in one segment iff they are interchangeable: the same
connections to and from every other workload and every external range, and the same
connections to each other in both directions (the report omits a workload talking to
itself, so this is checked pair by pair). Workloads are bucketed by a fingerprint that
equivalent workloads share (their external rows and the multiset of their rows against
everyone else), then compared exactly within a bucket. Cost: O(W²) to read the pairs, plus
O(W) per comparison.

**Rules.** For segments S ≠ T (or S = T with several members) allowed P: an egress rule on S
referencing T's group and an ingress rule on T referencing S's group, so the AND of the two
sides is exactly P. A group reference covers both IP versions; where a pair's IPv4 and IPv6
connections differ, the common part is written by reference and the rest as CIDR rules to
the members' addresses. External ranges become minimal CIDR blocks per port range (addresses
held by workloads or sessions inside a range are "don't care" and are filled in so the
blocks stay few). Port sets that cover every protocol of the CIDR's version become one ``-1``
rule. sctp has no ports in AWS (protocol 132 allows every port): a partial sctp port set is
left out (reported, NARROWED) unless ``AwsRenderSettings.sctp_widen``.

**Quotas** (``AwsQuotas``): rules per group and direction (60), groups per network interface
(5), groups per VPC (2500). A group over the rule quota is split into overflow groups
attached to the same interfaces (``split_oversized_groups``); every quota still exceeded is a
Limitation naming the group and the count. Outputs are deterministic.

Cost: one connectivity analysis, the segmentation, rule generation linear in the rules, and
one or two evaluations of the groups for the self-check.
"""

from __future__ import annotations

import json
import re
import zlib
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, summarize_address_range
from itertools import pairwise
from typing import Any

from septum.engine.classes import protocols_for_version
from septum.engine.connectivity import (
    ConnectivityMap,
    ConnectivityOptions,
    diff_connectivity,
    format_ports,
    port_set_minus,
    port_set_of,
    port_set_union,
)
from septum.engine.security_groups import (
    GROUP_REF_PREFIX,
    Attachment,
    IpProtocol,
    SecurityGroup,
    SecurityGroupSet,
    SgRule,
    evaluate_security_groups,
    expected_connectivity,
    held_addresses,
    verify_aws,
)
from septum.engine.sides import PROTOCOL_INDEX, PROTOCOLS, PortSet, intersect
from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    Direction,
    IPAddress,
    IPNetwork,
    Mode,
    PeerKind,
    PolicyMode,
    Protocol,
    Repository,
)
from septum.render.manifests import Approximation, Limitation, Manifest, Rendering

__all__ = ["AwsQuotas", "AwsRenderSettings", "render_aws", "verify_aws"]

TARGET = "aws"


@dataclass(frozen=True, slots=True)
class AwsQuotas:
    """AWS's default quotas (Amazon VPC quotas); raise them to match an account's."""

    inbound_rules_per_group: int = 60
    outbound_rules_per_group: int = 60
    groups_per_interface: int = 5
    groups_per_vpc: int = 2500


@dataclass(frozen=True, slots=True)
class AwsRenderSettings:
    """How to render. ``name_prefix`` starts every group name; ``split_oversized_groups``
    spreads the rules of a group over the rule quota into overflow groups attached to the
    same interfaces; ``sctp_widen`` allows every sctp port where only some are allowed
    (instead of none)."""

    quotas: AwsQuotas = field(default_factory=AwsQuotas)
    name_prefix: str = "septum"
    split_oversized_groups: bool = True
    sctp_widen: bool = False


# ------------------------------------------------------------------------------- helpers

_Role = tuple[int, int]  # (IP version, index among the workload's addresses of that version)
_Pieces = list[tuple[int, int, int, PortSet]]  # (version, first, last, ports), disjoint sorted
_SCTP = PROTOCOL_INDEX[Protocol.SCTP]
_EVERYTHING: PortSet = port_set_of(
    (p, 1, 65535) if p.has_ports else (p, 0, 0) for p in Protocol
)
_SAFE = re.compile(r"[^A-Za-z0-9._\-:/()#,@\[\]+=&;{}!$* ]")


_union = port_set_union
_minus = port_set_minus


def _full(protocols: Iterable[Protocol]) -> PortSet:
    return port_set_of((p, 1, 65535) if p.has_ports else (p, 0, 0) for p in protocols)


def _other_version_only(version: int) -> PortSet:
    """Protocols a flow of ``version`` can never carry (icmpv6 for v4, icmp for v6)."""
    return _full(p for p in Protocol if p not in protocols_for_version(version))


def _aws_text(text: str, limit: int = 255) -> str:
    """A description AWS accepts: its character set, at most ``limit`` characters."""
    clean = _SAFE.sub("_", text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _address(version: int, value: int) -> IPAddress:
    return IPv4Address(value) if version == 4 else IPv6Address(value)


def _cidrs(version: int, first: int, last: int) -> list[IPNetwork]:
    return list(summarize_address_range(_address(version, first), _address(version, last)))


def _merge(pieces: Iterable[tuple[int, int, int, PortSet]]) -> _Pieces:
    out: _Pieces = []
    for v, a, b, ps in sorted(pieces, key=lambda x: (x[0], x[1])):
        if not ps:
            continue
        if out and out[-1][0] == v and out[-1][2] + 1 == a and out[-1][3] == ps:
            out[-1] = (v, out[-1][1], b, ps)
        else:
            out.append((v, a, b, ps))
    return out


def _update_points(
    pieces: _Pieces, updates: Mapping[tuple[int, int], tuple[PortSet, PortSet]]
) -> _Pieces:
    """``pieces`` (disjoint) with the value at each single address (version, value) changed
    to (old ∪ add) − remove. O(U · P)."""
    if not updates:
        return pieces
    out = list(pieces)
    for (v, x), (add, remove) in sorted(updates.items()):
        keys = [(p[0], p[1]) for p in out]
        i = bisect_right(keys, (v, x)) - 1
        old: PortSet = ()
        if i >= 0 and out[i][0] == v and out[i][1] <= x <= out[i][2]:
            _, a, b, old = out[i]
            repl = [(v, a, x - 1, old), (v, x, x, _minus(_union(old, add), remove)),
                    (v, x + 1, b, old)]
            out[i:i + 1] = [r for r in repl if r[1] <= r[2]]
        else:
            out.insert(i + 1, (v, x, x, _minus(add, remove)))
    return _merge(out)


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class _Endpoint:
    display: str
    workload: str
    address: IPAddress
    role: _Role


def _endpoints(repo: Repository, at: datetime) -> dict[str, list[_Endpoint]]:
    """Per workload, its addresses at ``at`` with the connectivity report's names (``w``, or
    ``w@address`` for a workload holding several addresses at ``at``) and roles."""
    out: dict[str, list[_Endpoint]] = {}
    for w in repo.workloads:
        valid = sorted((b.address for b in w.addresses if b.valid_at(at)),
                       key=lambda a: (a.version, int(a)))
        seen: Counter[int] = Counter()
        found: list[_Endpoint] = []
        for a in valid:
            display = f"{w.name}@{a}" if len(valid) > 1 else w.name
            found.append(_Endpoint(display, w.name, a, (a.version, seen[a.version])))
            seen[a.version] += 1
        if found:
            out[w.name] = found
    return out


# -------------------------------------------------------------------------------- segments

_Row = frozenset[tuple[tuple[_Role, _Role], PortSet]]
_ExtRow = frozenset[tuple[_Role, bool, tuple[tuple[int, int, int, PortSet], ...]]]


def _segments(
    names: Sequence[str], rows: Mapping[tuple[str, str], _Row], ext: Mapping[str, _ExtRow]
) -> list[list[str]]:
    """The coarsest partition of ``names`` into interchangeable workloads (module docstring).
    Buckets by an invariant fingerprint, then compares exactly against each bucket's
    representatives."""
    empty: _Row = frozenset()

    def row(a: str, b: str) -> _Row:
        return rows.get((a, b), empty)

    def fingerprint(w: str) -> tuple[_ExtRow, frozenset[tuple[tuple[_Row, _Row], int]]]:
        counts = Counter((row(w, x), row(x, w)) for x in names if x != w)
        return ext.get(w, frozenset()), frozenset(counts.items())

    def same(a: str, b: str) -> bool:
        if row(a, b) != row(b, a):
            return False
        return all(
            row(a, x) == row(b, x) and row(x, a) == row(x, b)
            for x in names
            if x != a and x != b
        )

    buckets: dict[object, list[list[str]]] = defaultdict(list)
    order: list[list[str]] = []
    for w in names:
        segs = buckets[fingerprint(w)]
        for seg in segs:
            if same(w, seg[0]):
                seg.append(w)
                break
        else:
            seg = [w]
            segs.append(seg)
            order.append(seg)
    return order


def _group_names(
    segments: Sequence[Sequence[str]], labels: Mapping[str, Mapping[str, str]], prefix: str
) -> list[str]:
    """Deterministic, unique names: ``<prefix>-<workload>`` for one member, else the labels all
    members share (``<prefix>-app-web-env-prod``), else ``<prefix>-segment``; a name met twice
    gets a checksum of its members."""
    implicit = {NAME_LABEL, KIND_LABEL, NAMESPACE_LABEL}

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"

    base: list[str] = []
    for seg in segments:
        if len(seg) == 1:
            base.append(f"{prefix}-{clean(seg[0])}")
            continue
        shared = set(labels[seg[0]].items())
        for w in seg[1:]:
            shared &= set(labels[w].items())
        own = sorted((k, v) for k, v in shared if k not in implicit)
        base.append(
            f"{prefix}-" + "-".join(clean(f"{k}-{v}") for k, v in own)
            if own else f"{prefix}-segment"
        )
    counts = Counter(base)
    out: list[str] = []
    for seg, name in zip(segments, base, strict=True):
        if counts[name] > 1 or len(name) > 200 or name.lower().startswith("sg-"):
            digest = zlib.crc32("\n".join(sorted(seg)).encode())
            name = f"{name[:190]}-{digest:08x}"
        out.append(name)
    return out


# ------------------------------------------------------------------------ the renderer


@dataclass
class _Builder:
    """Collects rules and limitations for one rendering. Not shared; one per call."""

    settings: AwsRenderSettings
    limitations: list[Limitation] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def limit(self, source: str, what: str, how: Approximation, detail: str = "") -> None:
        if (source, what) in self._seen:
            return
        self._seen.add((source, what))
        self.limitations.append(Limitation(source, what, how, detail))

    def port_rules(
        self, ports: PortSet, versions: Iterable[int], source: str
    ) -> list[tuple[IpProtocol, int, int]]:
        """(IpProtocol, from, to) for a port set whose traffic is of ``versions`` only."""
        relevant = {p for v in versions for p in protocols_for_version(v)}
        full = _full(relevant)
        if not _minus(full, ports):
            return [(IpProtocol.ALL, -1, -1)]
        out: list[tuple[IpProtocol, int, int]] = []
        for p, a, b in ports:
            proto = PROTOCOLS[p]
            if proto not in relevant:
                continue
            if proto is Protocol.TCP or proto is Protocol.UDP:
                kind = IpProtocol.TCP if proto is Protocol.TCP else IpProtocol.UDP
                out.append((kind, 0 if a == 1 and b == 65535 else a, b))
            elif proto is Protocol.ICMP:
                out.append((IpProtocol.ICMP, -1, -1))
            elif proto is Protocol.ICMPV6:
                out.append((IpProtocol.ICMPV6, -1, -1))
            elif (a, b) == (1, 65535) or self.settings.sctp_widen:
                if (IpProtocol.SCTP, -1, -1) not in out:
                    out.append((IpProtocol.SCTP, -1, -1))
                if (a, b) != (1, 65535):
                    self.limit(source, f"sctp ports {a}-{b}", Approximation.WIDENED,
                               "AWS allows every sctp port (protocol 132 has no ports)")
            else:
                self.limit(source, f"sctp ports {a}-{b}", Approximation.NARROWED,
                           "AWS has no sctp port ranges (protocol 132 allows every port): "
                           "left out")
        return out

    def cidr_rules(
        self, direction: Direction, pieces: _Pieces, source: str, peer: str
    ) -> list[SgRule]:
        """Rules for an address function (disjoint pieces): per port range with one address
        set, the minimal CIDRs; addresses allowed everything of their version get ``-1``."""
        out: list[SgRule] = []
        desc = _aws_text(f"septum: {peer}")
        for v in (4, 6):
            mine = [p for p in pieces if p[0] == v]
            if not mine:
                continue
            universe = _full(protocols_for_version(v))
            everything = _merge((v, a, b, universe) for _, a, b, ps in mine
                                if not _minus(universe, ps))
            starts = [a for _, a, _, _ in everything]

            def inside(net: IPNetwork, starts: list[int] = starts,
                       everything: _Pieces = everything) -> bool:
                i = bisect_right(starts, int(net.network_address)) - 1
                return i >= 0 and everything[i][2] >= int(net.broadcast_address)

            for _, a, b, _ in everything:
                for net in _cidrs(v, a, b):
                    out.append(SgRule(direction, IpProtocol.ALL, -1, -1, cidr=net,
                                      description=desc))
            # port atoms: cut every protocol's ports at every boundary of every piece
            cuts: dict[int, set[int]] = defaultdict(set)
            for _, _, _, ps in mine:
                for p, lo, hi in ps:
                    cuts[p].update((lo, hi + 1))
            for p in sorted(cuts):
                points = sorted(cuts[p])
                atoms: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
                for lo, hi in pairwise(points):
                    where = tuple(
                        (a, b) for _, a, b, ps in mine
                        if any(q == p and c <= lo and hi - 1 <= d for q, c, d in ps)
                    )
                    if not where:
                        continue
                    if atoms and atoms[-1][1] + 1 == lo and atoms[-1][2] == where:
                        atoms[-1] = (atoms[-1][0], hi - 1, where)
                    else:
                        atoms.append((lo, hi - 1, where))
                for lo, hi, where in atoms:
                    kinds = self.port_rules(((p, lo, hi),), (v,), source)
                    nets = [n for a, b in where for n in _cidrs(v, a, b) if not inside(n)]
                    for kind, f, t in kinds:
                        for net in nets:
                            out.append(SgRule(direction, kind, f, t, cidr=net, description=desc))
        return out


def _fill_held(pieces: _Pieces, held: Mapping[int, Sequence[int]]) -> _Pieces:
    """Fill each gap between two pieces made only of held addresses with the common part of
    its neighbours' ports (held addresses are not external: any value is right there), so
    that CIDR blocks do not fragment around every workload. O(P log H)."""
    out: _Pieces = []
    for piece in pieces:
        if out and out[-1][0] == piece[0] and out[-1][2] + 1 < piece[1]:
            v, _, last, before = out[-1]
            hs = held.get(v, ())
            gap = piece[1] - last - 1
            count = bisect_left(hs, piece[1]) - bisect_right(hs, last)
            common = intersect(before, piece[3])
            if count == gap and common:
                out.append((v, last + 1, piece[1] - 1, common))
        out.append(piece)
    return _merge(out)


def _limitations_of_repository(repo: Repository, at: datetime, b: _Builder,
                               rendered: Mapping[str, list[_Endpoint]]) -> None:
    for w in repo.workloads:
        source = f"workload/{w.name}"
        if w.name not in rendered:
            b.limit(source, f"no address at {at.isoformat()}", Approximation.DROPPED,
                    "no security group is attached to it")
        if w.mode is not Mode.ENFORCED:
            b.limit(source, f"mode {w.mode.value}: security groups always enforce",
                    Approximation.REWRITTEN,
                    "rendered with the effective verdicts of the mode (denies it does not "
                    "enforce are allowed); would-be denies are not reported")
        if any(x.valid_from is not None or x.valid_until is not None for x in w.addresses):
            b.limit(source, f"address validity: rendered as at {at.isoformat()}",
                    Approximation.REWRITTEN, "render again when an address changes")
        if len(rendered.get(w.name, ())) > 1:
            b.limit(source, "traffic between its own addresses", Approximation.REWRITTEN,
                    "security groups do not filter it; Septum does not evaluate it either")
    if repo.settings.failsafe:
        b.limit("settings", "failsafe entries", Approximation.REWRITTEN,
                "folded into the allowed connections of every group")
    for p in repo.policies:
        if p.mode is PolicyMode.STAGED:
            b.limit(f"policy/{p.name}", "staged policy", Approximation.DROPPED,
                    "staged policies are never enforced; security groups cannot evaluate "
                    "them on the side")
            continue
        for direction in Direction:
            for r in p.rules(direction) or ():
                source = f"policy/{p.name}/{direction.value}/{r.index}"
                if r.expires is not None and not r.alive_at(at):
                    b.limit(source, f"rule expired at {r.expires.isoformat()}",
                            Approximation.REWRITTEN, "left out")
                    continue
                if r.expires is not None:
                    how = (Approximation.NARROWED if r.action is Action.DENY
                           else Approximation.WIDENED)
                    b.limit(source, f"rule expires at {r.expires.isoformat()}", how,
                            "security-group rules do not expire: render again at that time")
                if r.action is Action.LOG:
                    b.limit(source, "log rule", Approximation.REWRITTEN,
                            "security groups cannot log; verdicts are unchanged")
                if any(peer.kind is PeerKind.USERS for peer in r.peers):
                    b.limit(source, "users: peer", Approximation.DROPPED,
                            "session addresses get no rule of their own (security groups "
                            "know no users); they are treated like the external addresses "
                            "around them")


def render_aws(
    repo: Repository, at: datetime, settings: AwsRenderSettings | None = None
) -> Rendering:
    """``repo`` at ``at`` as AWS security groups (module docstring). Pure and deterministic.

    Returns a :class:`Rendering` whose ``manifests`` are EC2 API requests (group creation,
    default-egress revocation, ingress/egress authorizations, then the workload → groups
    assignment) and whose ``files`` are ``security-groups.json`` (the same documents) and
    ``main.tf`` (Terraform). Cost: see the module docstring.
    """
    cfg = settings or AwsRenderSettings()
    b = _Builder(cfg)
    options = ConnectivityOptions()
    expected = expected_connectivity(repo, at)
    endpoints = _endpoints(repo, at)
    _limitations_of_repository(repo, at, b, endpoints)
    by_display = {e.display: e for es in endpoints.values() for e in es}

    # rows: workload pair -> {(role, role): ports}; externals per workload
    row_items: dict[tuple[str, str], dict[tuple[_Role, _Role], PortSet]] = defaultdict(dict)
    for (s, t), ports in expected.pairs.items():
        es, et = by_display.get(s), by_display.get(t)
        if es is None or et is None or es.workload == et.workload:
            continue
        row_items[(es.workload, et.workload)][(es.role, et.role)] = ports
    rows = {k: frozenset(v.items()) for k, v in row_items.items()}
    ext_items: dict[str, set[tuple[_Role, bool, tuple[tuple[int, int, int, PortSet], ...]]]] = (
        defaultdict(set)
    )
    for (name, outbound), ranges in expected.externals.items():
        e = by_display.get(name)
        if e is not None:
            ext_items[e.workload].add((e.role, outbound, tuple(ranges)))
    ext = {k: frozenset(v) for k, v in ext_items.items()}

    names = sorted(endpoints)
    segments = _segments(names, rows, ext)
    labels = {w.name: w.labels for w in repo.workloads}
    group_names = _group_names(segments, labels, cfg.name_prefix)
    segment_of = {w: i for i, seg in enumerate(segments) for w in seg}

    held: dict[int, list[int]] = defaultdict(list)
    for mine in endpoints.values():
        for e in mine:
            held[e.address.version].append(int(e.address))
    for a in held_addresses(repo, at):
        held[a.version].append(int(a))
    held_sorted = {v: sorted(set(x)) for v, x in held.items()}

    # per segment and direction: group references and the CIDR address function
    refs: dict[tuple[int, Direction], dict[int, tuple[PortSet, frozenset[int]]]] = (
        defaultdict(dict)
    )
    functions: dict[tuple[int, Direction], _Pieces] = {}
    residual: dict[tuple[int, Direction], dict[tuple[int, int], PortSet]] = defaultdict(dict)
    for si, seg in enumerate(segments):
        roles_s = {e.role for w in seg for e in endpoints[w]}
        for ti, other in enumerate(segments):
            if si == ti and len(seg) < 2:
                continue
            s0 = seg[0]
            t0 = other[1] if si == ti else other[0]
            roles_t = {e.role for w in other for e in endpoints[w]}
            got = dict(rows.get((s0, t0), frozenset()))
            existing = [(rs, rt) for rs in sorted(roles_s) for rt in sorted(roles_t)
                        if rs[0] == rt[0]]
            if not existing or not any(got.get(k) for k in existing):
                continue
            common = _EVERYTHING
            for rs, rt in existing:
                common = intersect(common, _union(got.get((rs, rt), ()),
                                                  _other_version_only(rs[0])))
            versions = {rs[0] for rs, _ in existing}
            relevant = _full(p for v in versions for p in protocols_for_version(v))
            if intersect(common, relevant):
                refs[(si, Direction.EGRESS)][ti] = (common, frozenset(versions))
                refs[(ti, Direction.INGRESS)][si] = (common, frozenset(versions))
            for rs, rt in existing:
                rest = _minus(got.get((rs, rt), ()), common)
                if not rest:
                    continue
                out_res = residual[(si, Direction.EGRESS)]
                for w in other:
                    for e in endpoints[w]:
                        if e.role == rt:
                            k = (e.address.version, int(e.address))
                            out_res[k] = _union(out_res.get(k, ()), rest)
                in_res = residual[(ti, Direction.INGRESS)]
                for w in seg:
                    for e in endpoints[w]:
                        if e.role == rs:
                            k = (e.address.version, int(e.address))
                            in_res[k] = _union(in_res.get(k, ()), rest)
        for direction, outbound in ((Direction.EGRESS, True), (Direction.INGRESS, False)):
            pieces: _Pieces = []
            for _role, ob, ranges in ext.get(seg[0], frozenset()):
                if ob == outbound:
                    pieces.extend(ranges)
            functions[(si, direction)] = _fill_held(_merge(pieces), held_sorted)

    def build(carve: Mapping[tuple[int, Direction], Mapping[tuple[int, int], PortSet]]
              ) -> SecurityGroupSet:
        groups: list[SecurityGroup] = []
        for si, seg in enumerate(segments):
            made: dict[Direction, list[SgRule]] = {}
            for direction in Direction:
                source = f"group/{group_names[si]}/{direction.value}"
                rules: list[SgRule] = []
                for ti, (ports, versions) in sorted(refs[(si, direction)].items()):
                    for kind, f, t in b.port_rules(ports, versions, source):
                        rules.append(SgRule(direction, kind, f, t, group=group_names[ti],
                                            description=_aws_text(
                                                f"septum: {group_names[ti]}")))
                updates: dict[tuple[int, int], tuple[PortSet, PortSet]] = {
                    k: (v, ()) for k, v in residual[(si, direction)].items()
                }
                for k, v in carve.get((si, direction), {}).items():
                    add, _ = updates.get(k, ((), ()))
                    updates[k] = (add, v)
                pieces = _update_points(functions[(si, direction)], updates)
                rules.extend(b.cidr_rules(direction, pieces, source, "addresses"))
                made[direction] = sorted(set(rules), key=SgRule.sort_key)
            groups.append(SecurityGroup(
                group_names[si],
                _aws_text("Septum segment: " + ", ".join(seg)),
                tuple(made[Direction.INGRESS]),
                tuple(made[Direction.EGRESS]),
            ))
        attachments = tuple(
            Attachment(w, tuple((e.display, e.address) for e in endpoints[w]),
                       (group_names[segment_of[w]],))
            for w in names
        )
        return SecurityGroupSet(tuple(groups), attachments)

    sessions = held_addresses(repo, at)
    sgs = build({})
    actual = evaluate_security_groups(sgs, options, sessions)
    carve = _carving(expected, actual, by_display, segment_of)
    if carve:
        sgs = build(carve)
        actual = evaluate_security_groups(sgs, options, sessions)
    _report_differences(expected, actual, by_display, b)
    sgs = _split(sgs, cfg, b)
    _check_quotas(sgs, cfg, b)

    manifests = _manifests(sgs)
    files = {
        "security-groups.json": json.dumps(manifests, indent=2) + "\n",
        "main.tf": _terraform(sgs),
    }
    return Rendering(TARGET, tuple(manifests), tuple(b.limitations), files)


def _carving(
    expected: ConnectivityMap,
    actual: ConnectivityMap,
    by_display: Mapping[str, _Endpoint],
    segment_of: Mapping[str, int],
) -> dict[tuple[int, Direction], dict[tuple[int, int], PortSet]]:
    """Where the groups allow a workload pair more than the policy (two CIDR rules, one on
    each side, both covering the other's address), the extra ports to carve out of the
    source's egress CIDR rules at the target's address."""
    out: dict[tuple[int, Direction], dict[tuple[int, int], PortSet]] = defaultdict(dict)
    for c in diff_connectivity(expected, actual).changes:
        es, et = by_display.get(c.source), by_display.get(c.target)
        if es is None or et is None or not c.added:
            continue
        k = (et.address.version, int(et.address))
        slot = out[(segment_of[es.workload], Direction.EGRESS)]
        slot[k] = _union(slot.get(k, ()), c.added)
    return dict(out)


def _report_differences(
    expected: ConnectivityMap,
    actual: ConnectivityMap,
    by_display: Mapping[str, _Endpoint],
    b: _Builder,
) -> None:
    """Whatever the groups still allow differently from the policy, one Limitation per
    workload pair or (workload, external range)."""
    for c in diff_connectivity(expected, actual).changes:
        who = [by_display[x].workload for x in (c.source, c.target) if x in by_display]
        source = f"workload/{who[0]}" if who else "settings"
        if c.added:
            b.limit(source, f"{c.source} => {c.target} also allows {format_ports(c.added)}",
                    Approximation.WIDENED,
                    "security groups cannot tell these addresses apart here"
                    + (f" (workloads {', '.join(who)})" if who else ""))
        if c.removed:
            b.limit(source, f"{c.source} => {c.target} misses {format_ports(c.removed)}",
                    Approximation.NARROWED,
                    "not expressible in security groups"
                    + (f" (workloads {', '.join(who)})" if who else ""))


def _split(sgs: SecurityGroupSet, cfg: AwsRenderSettings, b: _Builder) -> SecurityGroupSet:
    """Spread the rules of a group over the rule quota into overflow groups (``<name>-2``,
    …) attached wherever the group is; references keep naming the first group, which every
    member carries. Rules are a union, so the meaning is unchanged."""
    if not cfg.split_oversized_groups:
        return sgs
    q = cfg.quotas
    groups: list[SecurityGroup] = []
    extra: dict[str, list[str]] = {}
    for g in sgs.groups:
        chunks = max(
            1,
            -(-len(g.ingress) // max(q.inbound_rules_per_group, 1)),
            -(-len(g.egress) // max(q.outbound_rules_per_group, 1)),
        )
        if chunks == 1:
            groups.append(g)
            continue
        names = [g.name] + [f"{g.name}-{i}" for i in range(2, chunks + 1)]
        for i, name in enumerate(names):
            ins = g.ingress[i * q.inbound_rules_per_group:(i + 1) * q.inbound_rules_per_group]
            outs = g.egress[i * q.outbound_rules_per_group:
                            (i + 1) * q.outbound_rules_per_group]
            desc = g.description if i == 0 else _aws_text(f"Septum: rules of {g.name}, part "
                                                          f"{i + 1}")
            groups.append(SecurityGroup(name, desc, ins, outs))
        extra[g.name] = names[1:]
        b.limit(f"group/{g.name}", f"split into {chunks} groups", Approximation.REWRITTEN,
                f"{len(g.ingress)} inbound and {len(g.egress)} outbound rules exceed the "
                f"per-group quota; the overflow groups are attached to the same interfaces")
    attachments = tuple(
        Attachment(a.workload, a.endpoints,
                   tuple(n for g in a.groups for n in (g, *extra.get(g, ()))))
        for a in sgs.attachments
    )
    return SecurityGroupSet(tuple(groups), attachments)


def _check_quotas(sgs: SecurityGroupSet, cfg: AwsRenderSettings, b: _Builder) -> None:
    q = cfg.quotas
    for g in sgs.groups:
        if len(g.ingress) > q.inbound_rules_per_group:
            b.limit(f"group/{g.name}",
                    f"quota: {len(g.ingress)} inbound rules > {q.inbound_rules_per_group}",
                    Approximation.DROPPED,
                    "AWS rejects the rules over the quota: raise the quota or coarsen policy")
        if len(g.egress) > q.outbound_rules_per_group:
            b.limit(f"group/{g.name}",
                    f"quota: {len(g.egress)} outbound rules > {q.outbound_rules_per_group}",
                    Approximation.DROPPED,
                    "AWS rejects the rules over the quota: raise the quota or coarsen policy")
    for a in sgs.attachments:
        if len(a.groups) > q.groups_per_interface:
            b.limit(f"workload/{a.workload}",
                    f"quota: {len(a.groups)} groups per network interface > "
                    f"{q.groups_per_interface}",
                    Approximation.DROPPED, "AWS rejects attaching more groups")
    if len(sgs.groups) > q.groups_per_vpc:
        b.limit("settings", f"quota: {len(sgs.groups)} security groups per VPC > "
                f"{q.groups_per_vpc}", Approximation.DROPPED,
                "AWS rejects creating more groups")


# --------------------------------------------------------------------------------- output


def _ref(name: str) -> str:
    return f"{GROUP_REF_PREFIX}{name}}}"


def _permissions(rules: Sequence[SgRule]) -> list[dict[str, Any]]:
    """EC2 ``IpPermissions``: rules with one (protocol, from, to) share one permission."""
    by_ports: dict[tuple[IpProtocol, int, int], list[SgRule]] = defaultdict(list)
    for r in rules:
        by_ports[(r.protocol, r.from_port, r.to_port)].append(r)
    out: list[dict[str, Any]] = []
    for (proto, first, last), rs in sorted(
        by_ports.items(), key=lambda kv: (list(IpProtocol).index(kv[0][0]), kv[0][1], kv[0][2])
    ):
        perm: dict[str, Any] = {"IpProtocol": proto.value}
        if proto.has_ports:
            perm["FromPort"], perm["ToPort"] = first, last
        v4 = [{"CidrIp": str(r.cidr), "Description": r.description}
              for r in rs if r.cidr is not None and r.cidr.version == 4]
        v6 = [{"CidrIpv6": str(r.cidr), "Description": r.description}
              for r in rs if r.cidr is not None and r.cidr.version == 6]
        pairs = [{"GroupId": _ref(r.group), "Description": r.description}
                 for r in rs if r.group is not None]
        if v4:
            perm["IpRanges"] = v4
        if v6:
            perm["Ipv6Ranges"] = v6
        if pairs:
            perm["UserIdGroupPairs"] = pairs
        out.append(perm)
    return out


def _manifests(sgs: SecurityGroupSet) -> list[Manifest]:
    out: list[Manifest] = []
    for g in sgs.groups:
        out.append({
            "kind": "CreateSecurityGroup",
            "group": g.name,
            "request": {
                "GroupName": g.name,
                "Description": g.description,
                "VpcId": "${vpc_id}",
                "TagSpecifications": [{
                    "ResourceType": "security-group",
                    "Tags": [{"Key": "Name", "Value": g.name},
                             {"Key": "septum.io/managed-by", "Value": "septum"}],
                }],
            },
        })
    for g in sgs.groups:
        out.append({
            "kind": "RevokeSecurityGroupEgress",
            "group": g.name,
            "request": {"GroupId": _ref(g.name), "IpPermissions": [{
                "IpProtocol": "-1",
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
            }]},
        })
    for g in sgs.groups:
        for kind, rules in (("AuthorizeSecurityGroupIngress", g.ingress),
                            ("AuthorizeSecurityGroupEgress", g.egress)):
            if rules:
                out.append({"kind": kind, "group": g.name, "request": {
                    "GroupId": _ref(g.name), "IpPermissions": _permissions(rules)}})
    out.append({
        "kind": "SecurityGroupAssignment",
        "assignments": [
            {
                "Workload": a.workload,
                "Addresses": [{"Address": str(addr), "Endpoint": display}
                              for display, addr in a.endpoints],
                "Request": {"NetworkInterfaceId": f"${{eni:{a.workload}}}",
                            "Groups": [_ref(g) for g in a.groups]},
            }
            for a in sgs.attachments
        ],
    })
    return out


def _hcl(text: str) -> str:
    """An HCL string literal (JSON escapes, with template sequences escaped)."""
    return json.dumps(text).replace("${", "$${").replace("%{", "%%{")


def _terraform(sgs: SecurityGroupSet) -> str:
    """``main.tf``: a ``vpc_id`` variable, one ``aws_security_group`` per group (no inline
    rules: Terraform removes AWS's default egress rule itself), one
    ``aws_vpc_security_group_{ingress,egress}_rule`` per rule, and the workload → group ids
    map as an output."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for g in sgs.groups:
        base = "sg_" + re.sub(r"[^A-Za-z0-9_]", "_", g.name)
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        ids[g.name] = name
    lines = [
        "# Generated by Septum: AWS security groups (one per segment).",
        "",
        'variable "vpc_id" {',
        "  type        = string",
        '  description = "The VPC the security groups belong to."',
        "}",
    ]
    for g in sgs.groups:
        r = ids[g.name]
        lines += [
            "",
            f'resource "aws_security_group" "{r}" {{',
            f"  name        = {_hcl(g.name)}",
            f"  description = {_hcl(g.description)}",
            "  vpc_id      = var.vpc_id",
            "  tags = {",
            f"    Name                   = {_hcl(g.name)}",
            '    "septum.io/managed-by" = "septum"',
            "  }",
            "}",
        ]
    for g in sgs.groups:
        r = ids[g.name]
        for direction, rules in ((Direction.INGRESS, g.ingress), (Direction.EGRESS, g.egress)):
            short = "in" if direction is Direction.INGRESS else "out"
            for i, rule in enumerate(rules, 1):
                body = [f"  security_group_id = aws_security_group.{r}.id"]
                if rule.group is not None:
                    body.append("  referenced_security_group_id = "
                                f"aws_security_group.{ids[rule.group]}.id")
                elif rule.cidr is not None:
                    key = "cidr_ipv4" if rule.cidr.version == 4 else "cidr_ipv6"
                    body.append(f"  {key} = {_hcl(str(rule.cidr))}")
                body.append(f"  ip_protocol = {_hcl(rule.protocol.value)}")
                if rule.protocol.has_ports:
                    body.append(f"  from_port = {rule.from_port}")
                    body.append(f"  to_port = {rule.to_port}")
                if rule.description:
                    body.append(f"  description = {_hcl(rule.description)}")
                lines += [
                    "",
                    f'resource "aws_vpc_security_group_{direction.value}_rule" '
                    f'"{r}_{short}_{i}" {{',
                    *body,
                    "}",
                ]
    lines += ["", 'output "workload_security_groups" {',
              '  description = "Security group ids per workload."', "  value = {"]
    for a in sgs.attachments:
        groups = ", ".join(f"aws_security_group.{ids[g]}.id" for g in a.groups)
        lines.append(f"    {_hcl(a.workload)} = [{groups}]")
    lines += ["  }", "}", ""]
    return "\n".join(lines)

