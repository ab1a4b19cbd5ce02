"""Connectivity analysis: every allowed connection between workloads, and between workloads
and external address ranges, computed over equivalence classes (never pair by pair).

::

    Repository ─► build_partition(all networks, unknown addresses) ─► endpoint classes
        │            (workload addresses; elementary external intervals)
        ├─ Sides(egress)  over classes: E[g][view] = ports without an enforced deny at egress
        └─ Sides(ingress) over classes: I[h][view] = ports without an enforced deny at ingress
    per source super-class, per target view of its egress group, per ingress group:
        allowed = E ∩ I  (interned port sets, cached intersections)
    ─► class-level edges ─► expanded to (workload | external range) pairs ─► Connectivity

The verdicts are the Evaluator's own side decisions (``semantics.md``), so the report agrees
with ``explain`` by construction; ``tests/engine/test_connectivity.py`` checks it against
brute-force ``explain`` over every address pair and port.

Conventions of the report (those of netpol-analyzer's connlist, which the Kubernetes
conformance cases use): a workload talking to itself is omitted, so are external-to-external
pairs and pairs with no allowed connection; ports run 1..65535; the connections of a pair are
``All Connections`` when every protocol and port of the analysis' universe is allowed, else
protocols (upper case, sorted by name) with port ranges. External ranges are merged where
adjacent ranges have the same connections to the same workload.

Cost: one partition (see :func:`~septum.engine.classes.build_partition`); then O(classes ·
policies) to group, one side evaluation per (group, view, port interval) met, and O(super-
classes · views · groups) intersections; expansion is linear in the output.
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from itertools import pairwise

from septum.engine.attribution import EndpointKind
from septum.engine.classes import AddressInterval, EndpointClass, build_partition
from septum.engine.explain import Evaluator
from septum.engine.sides import (
    PROTOCOL_INDEX,
    PROTOCOLS,
    PortSet,
    PortSets,
    Sides,
    intersect,
    super_classes,
)
from septum.model.resources import (
    Direction,
    PortRange,
    Protocol,
    Repository,
    ServicePort,
)
from septum.model.selector import parse_selector

__all__ = [
    "EXTERNAL_SUFFIX",
    "KUBERNETES",
    "Connection",
    "Connectivity",
    "ConnectivityDiff",
    "ConnectivityOptions",
    "Endpoint",
    "PairChange",
    "ReportFormat",
    "analyze_connectivity",
    "diff_connectivity",
    "format_connectivity",
    "format_ports",
    "parse_connlist",
    "port_set_of",
]

EXTERNAL_SUFFIX = "[External]"
_PORTED = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
_ALL = "All Connections"


class ReportFormat(enum.StrEnum):
    TXT = "txt"
    JSON = "json"
    CSV = "csv"
    MD = "md"
    DOT = "dot"


@dataclass(frozen=True, slots=True)
class ConnectivityOptions:
    """What the analysis covers. ``protocols``: the universe of protocols (ports 1..65535 for
    tcp/udp/sctp); ``versions``: IP versions of the endpoints; ``externals``: whether
    addresses outside every workload (networks and unknown addresses) are endpoints."""

    protocols: tuple[Protocol, ...] = tuple(Protocol)
    versions: tuple[int, ...] = (4, 6)
    externals: bool = True

    def restrict(self) -> tuple[ServicePort, ...]:
        return tuple(
            ServicePort(p, PortRange(1, 65535)) if p.has_ports else ServicePort(p)
            for p in self.protocols
        )


#: The options that match Kubernetes' (and netpol-analyzer's) universe.
KUBERNETES = ConnectivityOptions(protocols=_PORTED, versions=(4,))


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One side of a reported connection: a workload (by name) or an external range."""

    external: bool
    name: str  # workload name; "" for an external range
    interval: AddressInterval | None = None  # the range, for externals

    def __str__(self) -> str:
        if self.external:
            assert self.interval is not None
            iv = self.interval
            return f"{iv.address(iv.first)}-{iv.address(iv.last)}{EXTERNAL_SUFFIX}"
        return self.name

    @classmethod
    def workload(cls, name: str) -> Endpoint:
        return cls(False, name)

    @classmethod
    def range(cls, interval: AddressInterval) -> Endpoint:
        return cls(True, "", interval)


@dataclass(frozen=True, slots=True)
class Connection:
    """Allowed connections from ``source`` to ``target``: a normalized port set (see
    :mod:`septum.engine.sides`) and whether it is everything the analysis covers."""

    source: Endpoint
    target: Endpoint
    ports: PortSet
    everything: bool

    def describe(self) -> str:
        return _ALL if self.everything else format_ports(self.ports)


def describe_ports(ports: PortSet, universe: PortSet) -> str:
    """``All Connections`` for the whole universe, else :func:`format_ports`."""
    return _ALL if ports == universe else format_ports(ports)

    def to_json(self) -> dict[str, object]:
        return {"src": str(self.source), "dst": str(self.target), "conn": self.describe()}


@dataclass(frozen=True, slots=True)
class Connectivity:
    """The result: connections sorted by (source text, target text), plus the size of the
    computation (classes and side evaluations) for the curious."""

    connections: tuple[Connection, ...]
    options: ConnectivityOptions
    classes: int = 0
    evaluations: int = 0
    universe: Mapping[int, PortSet] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{c.source} => {c.target} : {c.describe()}" for c in self.connections]


def port_set_of(pieces: Iterable[tuple[Protocol, int, int]]) -> PortSet:
    """Normalize (protocol, first, last) triples into a port set (sorted, merged)."""
    out: list[tuple[int, int, int]] = []
    for pr, a, b in sorted((PROTOCOL_INDEX[p], a, b) for p, a, b in pieces):
        if out and out[-1][0] == pr and out[-1][2] + 1 >= a:
            out[-1] = (pr, out[-1][1], max(out[-1][2], b))
        else:
            out.append((pr, a, b))
    return tuple(out)


def port_set_union(*sets: PortSet) -> PortSet:
    """The union of port sets, normalized."""
    return port_set_of((PROTOCOLS[p], a, b) for ps in sets for p, a, b in ps)


def port_set_minus(x: PortSet, y: PortSet) -> PortSet:
    """``x`` without ``y``. O(|x| · |y|)."""
    out: list[tuple[Protocol, int, int]] = []
    for p, a, b in x:
        start = a
        for q, c, d in y:
            if q != p or d < start or c > b:
                continue
            if c > start:
                out.append((PROTOCOLS[p], start, c - 1))
            start = max(start, d + 1)
        if start <= b:
            out.append((PROTOCOLS[p], start, b))
    return port_set_of(out)


def format_ports(ports: PortSet) -> str:
    """``SCTP 1-9002,9004-65535,TCP 80,UDP 53``: protocols by name, ranges ascending."""
    by_protocol: dict[str, list[str]] = defaultdict(list)
    for p, a, b in ports:
        protocol = PROTOCOLS[p]
        text = protocol.value.upper()
        if not protocol.has_ports:
            by_protocol[text] = []
            continue
        by_protocol[text].append(str(a) if a == b else f"{a}-{b}")
    parts = []
    for name in sorted(by_protocol):
        ranges = by_protocol[name]
        parts.append(f"{name} {','.join(ranges)}" if ranges else name)
    return ",".join(parts)


# ----------------------------------------------------------------------------------- analysis


def analyze_connectivity(
    repo: Repository,
    at: datetime,
    options: ConnectivityOptions | None = None,
    evaluator: Evaluator | None = None,
) -> Connectivity:
    """Every allowed connection of ``repo`` at ``at`` (module docstring). Pure."""
    opts = options or ConnectivityOptions()
    ev = evaluator if evaluator is not None else Evaluator(repo)
    partition = build_partition(
        repo, at, network_selectors=[parse_selector("all()")], unknown=opts.externals
    )
    classes = [
        c
        for c in partition
        if c.version in opts.versions
        and (opts.externals or c.signature.kind is EndpointKind.WORKLOAD)
    ]
    workloads = {w.name: w for w in repo.workloads}
    restrict = opts.restrict()
    port_sets = PortSets()
    egress = Sides(Direction.EGRESS, repo, workloads, classes, classes, restrict, at, ev,
                   port_sets)
    ingress = Sides(Direction.INGRESS, repo, workloads, classes, classes, restrict, at, ev,
                    port_sets)
    source_supers = super_classes(classes, ingress.remote_mask, egress.group_of)
    target_supers = super_classes(classes, egress.remote_mask, ingress.group_of)
    egress.use_remotes(target_supers, ingress)
    ingress.use_remotes(source_supers, egress)

    edges: list[tuple[int, int, int]] = []  # (source super, target super, port set id)
    by_group: dict[int, list[int]] = defaultdict(list)
    for sk, members in enumerate(source_supers):
        by_group[egress.group_of[members[0]]].append(sk)
    meet = port_sets.meet
    ingress_groups = ingress.groups
    source_masks = ingress.remote_masks_of_supers()
    for g, sks in by_group.items():
        # each egress group once: its table (size: supers) is dropped after use
        table = egress.by_view_then_group(g, keep=False)
        for v, targets in table.items():
            e = egress.allowed(g, v)
            if e == 0:
                continue
            for sk in sks:
                smask = source_masks[sk]
                for h, tks in targets.items():
                    # ingress.allowed_for(h, sk) inlined for the cached case: this loop
                    # runs (source supers x target groups) times
                    group = ingress_groups[h]
                    vid = group.view_ids.get(smask & group.mask)
                    i = -1 if vid is None else group.allowed.get(vid, -1)
                    if i < 0:
                        i = ingress.allowed_for(h, sk)
                    if i:
                        both = meet(e, i)
                        if both:
                            edges.extend((sk, tk, both) for tk in tks)

    universe = {v: port_sets.sets[egress.universe(v)] for v in opts.versions}
    names = _display_names(repo, at, opts.versions)
    connections = _expand(edges, classes, source_supers, target_supers, port_sets, universe,
                          names)
    return Connectivity(
        connections,
        opts,
        classes=len(classes),
        evaluations=egress.evaluations + ingress.evaluations,
        universe=universe,
    )


def _display_names(repo: Repository, at: datetime, versions: tuple[int, ...]
                   ) -> dict[tuple[str, str], str]:
    """Workload names as reported: the name, or ``name@address`` for a workload holding
    several addresses in the analysis at ``at`` (their connections may differ)."""
    out: dict[tuple[str, str], str] = {}
    for w in repo.workloads:
        held = [b for b in w.addresses if b.valid_at(at) and b.address.version in versions]
        if len(held) > 1:
            for b in held:
                out[(w.name, str(b.address))] = f"{w.name}@{b.address}"
    return out


def _expand(
    edges: Sequence[tuple[int, int, int]],
    classes: Sequence[EndpointClass],
    source_supers: Sequence[Sequence[int]],
    target_supers: Sequence[Sequence[int]],
    port_sets: PortSets,
    universe: Mapping[int, PortSet],
    names: Mapping[tuple[str, str], str],
) -> tuple[Connection, ...]:
    """Class-level edges to (workload | external range) connections, merging adjacent
    external ranges with equal connections to the same workload. Linear in the output."""
    pairs: dict[tuple[Endpoint, Endpoint], tuple[int, int]] = {}
    # external ranges per (workload endpoint, outbound?) -> [(interval, port set id)]
    externals: dict[tuple[Endpoint, bool], list[tuple[AddressInterval, int]]] = defaultdict(list)
    members: dict[int, list[Endpoint]] = {}

    def endpoints(ci: int) -> list[Endpoint]:
        found = members.get(ci)
        if found is None:
            found = members[ci] = []
            for m in classes[ci].members:
                if m.kind is EndpointKind.WORKLOAD:
                    address = str(m.free[0]) if m.free else ""
                    found.append(Endpoint.workload(names.get((m.name, address), m.name)))
                else:
                    found.append(Endpoint.range(m.interval))
        return found

    for sk, tk, ports in edges:
        for si in source_supers[sk]:
            version = classes[si].version
            for ti in target_supers[tk]:
                for s in endpoints(si):
                    for t in endpoints(ti):
                        if s.external:
                            if not t.external:
                                assert s.interval is not None
                                externals[(t, False)].append((s.interval, ports))
                        elif t.external:
                            assert t.interval is not None
                            externals[(s, True)].append((t.interval, ports))
                        elif s.name != t.name:
                            pairs[(s, t)] = (ports, version)

    out: list[Connection] = []
    for (s, t), (ports, version) in pairs.items():
        ps = port_sets.sets[ports]
        out.append(Connection(s, t, ps, ps == universe.get(version)))
    for (w, outbound), ranges in externals.items():
        for iv, ports in _merge_ranges(ranges):
            ps = port_sets.sets[ports]
            e = Endpoint.range(iv)
            everything = ps == universe.get(iv.version)
            out.append(Connection(w, e, ps, everything) if outbound
                       else Connection(e, w, ps, everything))
    out.sort(key=lambda c: (str(c.source), str(c.target)))
    return tuple(out)


def _merge_ranges(
    ranges: list[tuple[AddressInterval, int]],
) -> list[tuple[AddressInterval, int]]:
    ranges.sort(key=lambda r: (r[0].version, r[0].first))
    out: list[tuple[AddressInterval, int]] = []
    for iv, ports in ranges:
        if out:
            last, last_ports = out[-1]
            if (last_ports == ports and last.version == iv.version
                    and last.last + 1 == iv.first):
                out[-1] = (AddressInterval(iv.version, last.first, iv.last), ports)
                continue
        out.append((iv, ports))
    return out


# ------------------------------------------------------------------- canonical form and diff

_ExternalKey = tuple[str, bool]  # (workload text, outbound?)
_Ranges = tuple[tuple[int, int, int, PortSet], ...]  # (version, first, last, ports), merged


@dataclass(frozen=True, slots=True)
class ConnectivityMap:
    """A connectivity report in a form two reports can be compared in, whatever their split of
    external ranges: per workload pair, the allowed port set; per (workload, direction), the
    external addresses as maximal ranges with equal port sets (empty sets left out)."""

    pairs: Mapping[tuple[str, str], PortSet]
    externals: Mapping[_ExternalKey, _Ranges]
    universe: PortSet


def _normalize(pieces: Iterable[tuple[int, int, int, PortSet]]) -> _Ranges:
    """Cut overlapping (version, first, last, ports) pieces at every boundary, union the port
    sets of overlaps, drop empty ones and merge adjacent equal ones. O(P log P)."""
    items = sorted(pieces)
    out: list[tuple[int, int, int, PortSet]] = []
    by_version: dict[int, list[tuple[int, int, PortSet]]] = defaultdict(list)
    for v, a, b, ps in items:
        by_version[v].append((a, b, ps))
    for v in sorted(by_version):
        ranges = by_version[v]
        points = sorted({a for a, _, _ in ranges} | {b + 1 for _, b, _ in ranges})
        for lo, hi in pairwise(points):
            ports: PortSet = ()
            for a, b, ps in ranges:
                if a <= lo and hi - 1 <= b:
                    ports = port_set_union(ports, ps)
            if not ports:
                continue
            if out and out[-1][0] == v and out[-1][2] + 1 == lo and out[-1][3] == ports:
                out[-1] = (v, out[-1][1], hi - 1, ports)
            else:
                out.append((v, lo, hi - 1, ports))
    return tuple(out)


def canonical(conn: Connectivity) -> ConnectivityMap:
    """The comparable form of an analysis result."""
    pairs: dict[tuple[str, str], PortSet] = {}
    externals: dict[_ExternalKey, list[tuple[int, int, int, PortSet]]] = defaultdict(list)
    for c in conn.connections:
        if c.source.external or c.target.external:
            outbound = c.target.external
            w = c.source if outbound else c.target
            iv = c.target.interval if outbound else c.source.interval
            assert iv is not None
            externals[(str(w), outbound)].append((iv.version, iv.first, iv.last, c.ports))
        else:
            pairs[(str(c.source), str(c.target))] = c.ports
    universe = next(iter(conn.universe.values()), ())
    return ConnectivityMap(pairs, {k: _normalize(v) for k, v in externals.items()}, universe)


_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conn>.+)$")
_PROTOCOL_NAMES = {p.value.upper(): p for p in Protocol}


def _parse_ports(text: str, universe: PortSet, where: str) -> PortSet:
    if text.strip() == _ALL:
        return universe
    pieces: list[tuple[Protocol, int, int]] = []
    protocol: Protocol | None = None
    for token in text.split(","):
        token = token.strip()
        head, _, rest = token.partition(" ")
        if head in _PROTOCOL_NAMES:
            protocol = _PROTOCOL_NAMES[head]
            if not protocol.has_ports:
                pieces.append((protocol, 0, 0))
                continue
            token = rest
        if protocol is None or not token:
            raise ValueError(f"{where}: cannot read connections {text!r}")
        first, _, last = token.partition("-")
        pieces.append((protocol, int(first), int(last or first)))
    return port_set_of(pieces)


def _parse_external(text: str) -> tuple[int, int, int] | None:
    if not text.endswith(EXTERNAL_SUFFIX):
        return None
    body = text[: -len(EXTERNAL_SUFFIX)]
    first_text, _, last_text = body.partition("-") if body.count("-") == 1 else (body, "", body)
    first: IPv4Address | IPv6Address = ip_address(first_text)
    last = ip_address(last_text or first_text)
    return first.version, int(first), int(last)


def parse_connlist(text: str, universe: PortSet, source: str = "<connlist>") -> ConnectivityMap:
    """Read a connlist text (``src => dst : connections`` per line, netpol-analyzer's format)
    into its comparable form. ``universe`` is what ``All Connections`` means. A line that
    cannot be read raises ValueError naming ``source`` and the line number."""
    pairs: dict[tuple[str, str], PortSet] = {}
    externals: dict[_ExternalKey, list[tuple[int, int, int, PortSet]]] = defaultdict(list)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"{source}:{n}: not a connection line: {line!r}")
        ports = _parse_ports(m["conn"], universe, f"{source}:{n}")
        src, dst = _parse_external(m["src"]), _parse_external(m["dst"])
        if src is not None and dst is not None:
            continue  # external to external is never reported
        if src is not None:
            externals[(m["dst"], False)].append((*src, ports))
        elif dst is not None:
            externals[(m["src"], True)].append((*dst, ports))
        else:
            pairs[(m["src"], m["dst"])] = port_set_union(pairs.get((m["src"], m["dst"]), ()), ports)
    return ConnectivityMap(pairs, {k: _normalize(v) for k, v in externals.items()}, universe)


@dataclass(frozen=True, slots=True)
class PairChange:
    """What changed for one (source, target): ports now allowed that were not (``added``) and
    ports no longer allowed (``removed``). An external side is a range text."""

    source: str
    target: str
    added: PortSet
    removed: PortSet


@dataclass(frozen=True, slots=True)
class ConnectivityDiff:
    """The semantic difference between two connectivity reports, sorted."""

    changes: tuple[PairChange, ...]
    universe: PortSet

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        out = []
        for c in self.changes:
            if c.added:
                out.append(f"+ {c.source} => {c.target} : "
                           f"{describe_ports(c.added, self.universe)}")
            if c.removed:
                out.append(f"- {c.source} => {c.target} : "
                           f"{describe_ports(c.removed, self.universe)}")
        return out


def _range_text(version: int, first: int, last: int) -> str:
    iv = AddressInterval(version, first, last)
    return f"{iv.address(first)}-{iv.address(last)}{EXTERNAL_SUFFIX}"


def diff_connectivity(old: ConnectivityMap, new: ConnectivityMap) -> ConnectivityDiff:
    """Connections added and removed from ``old`` to ``new``, per pair; external ranges are
    compared address by address (cut at both reports' boundaries, then merged back).
    Cost: O(pairs + ranges log ranges)."""
    changes: list[PairChange] = []
    for key in sorted(old.pairs.keys() | new.pairs.keys()):
        a, b = old.pairs.get(key, ()), new.pairs.get(key, ())
        if a != b:
            changes.append(PairChange(key[0], key[1], port_set_minus(b, a), port_set_minus(a, b)))
    for ext in sorted(old.externals.keys() | new.externals.keys()):
        w, outbound = ext
        for v, first, last, added, removed in _range_changes(
            old.externals.get(ext, ()), new.externals.get(ext, ())
        ):
            r = _range_text(v, first, last)
            changes.append(PairChange(w, r, added, removed) if outbound
                           else PairChange(r, w, added, removed))
    changes.sort(key=lambda c: (c.source, c.target))
    return ConnectivityDiff(tuple(changes), new.universe or old.universe)


def _range_changes(
    old: _Ranges, new: _Ranges
) -> list[tuple[int, int, int, PortSet, PortSet]]:
    points: dict[int, set[int]] = defaultdict(set)
    for v, a, b, _ in (*old, *new):
        points[v].update((a, b + 1))
    out: list[tuple[int, int, int, PortSet, PortSet]] = []

    def at(ranges: _Ranges, v: int, x: int) -> PortSet:
        for rv, a, b, ps in ranges:
            if rv == v and a <= x <= b:
                return ps
        return ()

    for v in sorted(points):
        pts = sorted(points[v])
        for lo, hi in pairwise(pts):
            before, after = at(old, v, lo), at(new, v, lo)
            if before == after:
                continue
            added, removed = port_set_minus(after, before), port_set_minus(before, after)
            if out and out[-1][0] == v and out[-1][2] + 1 == lo and out[-1][3:] == (
                added, removed
            ):
                out[-1] = (v, out[-1][1], hi - 1, added, removed)
            else:
                out.append((v, lo, hi - 1, added, removed))
    return out


# -------------------------------------------------------------------------------- formats


def format_connectivity(conn: Connectivity, fmt: ReportFormat) -> str:
    """The report as text: connlist lines (txt), JSON, CSV, a Markdown table or a Graphviz
    DOT graph."""
    rows = [(str(c.source), str(c.target), c.describe()) for c in conn.connections]
    return _format_rows(rows, fmt)


def _format_rows(rows: Sequence[tuple[str, str, str]], fmt: ReportFormat) -> str:
    import json

    if fmt is ReportFormat.TXT:
        return "".join(f"{s} => {t} : {c}\n" for s, t, c in rows)
    if fmt is ReportFormat.JSON:
        return json.dumps([{"src": s, "dst": t, "conn": c} for s, t, c in rows], indent=2) + "\n"
    if fmt is ReportFormat.CSV:
        return "".join(",".join(_csv_field(x) for x in row) + "\n"
                       for row in [("src", "dst", "conn"), *rows])
    if fmt is ReportFormat.MD:
        lines = ["| src | dst | conn |", "|-----|-----|------|"]
        lines += [f"| {s} | {t} | {c} |" for s, t, c in rows]
        return "\n".join(lines) + "\n"
    nodes = sorted({x for s, t, _ in rows for x in (s, t)})
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    out = ["digraph connectivity {", "  rankdir=LR;", "  node [shape=box];"]
    for n in nodes:
        shape = ", shape=ellipse" if n.endswith(EXTERNAL_SUFFIX) else ""
        out.append(f"  {ids[n]} [label={json.dumps(n)}{shape}];")
    for s, t, c in rows:
        out.append(f"  {ids[s]} -> {ids[t]} [label={json.dumps(c)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _csv_field(text: str) -> str:
    """RFC 4180 quoting (no ``csv`` module: it would pull ``io`` into the pure core)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_diff(diff: ConnectivityDiff, fmt: ReportFormat) -> str:
    """The diff as text: ``+``/``-`` lines (txt) or rows with a change column."""
    if fmt is ReportFormat.TXT:
        return "".join(f"{line}\n" for line in diff.lines())
    rows: list[tuple[str, str, str]] = []
    for c in diff.changes:
        if c.added:
            rows.append((c.source, c.target, f"added: {describe_ports(c.added, diff.universe)}"))
        if c.removed:
            rows.append((c.source, c.target,
                         f"removed: {describe_ports(c.removed, diff.universe)}"))
    return _format_rows(rows, fmt)


__all__ += ["ConnectivityMap", "canonical", "describe_ports", "format_diff", "intersect",
            "port_set_minus", "port_set_union"]


def without_addresses(m: ConnectivityMap, addresses: Iterable[IPv4Address | IPv6Address]
                      ) -> ConnectivityMap:
    """``m`` with the given addresses cut out of every external range: used when two
    reports disagree on whether an address is external at all (a Septum workload's address
    is its own; rendered as a pod, it is external to Kubernetes' ipBlocks)."""
    cuts: dict[int, list[int]] = defaultdict(list)
    for a in addresses:
        cuts[a.version].append(int(a))
    for v in cuts:
        cuts[v].sort()
    externals: dict[_ExternalKey, _Ranges] = {}
    for key, ranges in m.externals.items():
        pieces: list[tuple[int, int, int, PortSet]] = []
        for v, first, last, ports in ranges:
            start = first
            for x in cuts.get(v, ()):
                if x < start or x > last:
                    continue
                if x > start:
                    pieces.append((v, start, x - 1, ports))
                start = x + 1
            if start <= last:
                pieces.append((v, start, last, ports))
        if pieces:
            externals[key] = tuple(pieces)
    return ConnectivityMap(m.pairs, externals, m.universe)


__all__ += ["without_addresses"]
