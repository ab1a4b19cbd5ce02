"""The application dependency map: who talks to whom, on which services, and what the policy
says about it.

::

    FlowGroup* ──► node of each side ──► edge (source node, destination node)
     (observed)     (granularity labels,    ├─ per service (protocol/port): counts, first/last
                     user group, network,   ├─ status per record: Evaluator.explain(flow at
                     or ``unknown``)        │   first_seen), or the recorded verdicts
                                            └─ up to N example flows with their explanation
                                                       │
                                                       ▼
                                                 DependencyMap  ──► render.graph (JSON,
                                                                    GraphML, DOT)

Nodes. A workload goes to the node of its values for the granularity label keys (``app=shop,
env=prod``; keys it lacks are left out); a workload lacking every key is a node of its own,
by name. Users are grouped by the same keys (kind user). Each ``Network`` is a node (an
address in several networks goes to the first by name, as the store attributes it). Every
address attributed to nobody goes to the single ``unknown`` node.

Status. With an ``Evaluator``, every group is evaluated once at its ``first_seen`` and all its
records count for that status: DENIED when the effective verdict is deny, WOULD_BE_DENIED when
the explanation reports ``would_be_denied`` (an unenforced deny, by the workload's mode), else
ALLOWED. Records a *staged* policy would deny are counted apart (``staged_denied``): they do
not change the status, which describes the active, enforced policy. Without an evaluator the
recorded verdicts decide (``StatusSource.RECORDED``): denied → DENIED, would-deny →
WOULD_BE_DENIED, every other record (allowed, logged, unknown, unreported) → ALLOWED, which
then means "not reported denied". An edge (and a service of it) is DENIED if any record is,
else WOULD_BE_DENIED if any record is, else ALLOWED.

Every output is deterministic: the same groups in any order give an equal map (nodes by
kind then id, edges by node ids, services by protocol then port, examples by severity then
flow). Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from septum.engine.attribution import EndpointKind
from septum.engine.explain import Evaluator, Explanation, Flow, StagedChange, Verdict
from septum.engine.observed import FlowGroup, Identity, RecordedVerdict
from septum.model.resources import IPAddress, Protocol

__all__ = [
    "UNKNOWN_NODE",
    "DependencyMap",
    "EdgeStatus",
    "Example",
    "MapEdge",
    "MapNode",
    "MapOptions",
    "ServiceUse",
    "StatusCounts",
    "StatusSource",
    "build_dependency_map",
]

#: The id of the one node holding every address attributed to nobody.
UNKNOWN_NODE = "unknown"

_KIND_ORDER = {kind: i for i, kind in enumerate(EndpointKind)}


class EdgeStatus(enum.Enum):
    """What the active policy (or the reporter) says about an edge, a service or a record."""

    ALLOWED = "allowed"
    WOULD_BE_DENIED = "would-be-denied"
    DENIED = "denied"

    @property
    def severity(self) -> int:
        """0 allowed, 1 would be denied, 2 denied."""
        return _SEVERITY[self]


_SEVERITY = {EdgeStatus.ALLOWED: 0, EdgeStatus.WOULD_BE_DENIED: 1, EdgeStatus.DENIED: 2}


class StatusSource(enum.Enum):
    """Where the statuses of a map come from."""

    POLICY = "policy"  # Evaluator.explain of every group
    RECORDED = "recorded"  # the verdicts the flow reporters recorded


@dataclass(frozen=True, slots=True)
class MapOptions:
    """How to draw the map.

    ``granularity``: the label keys whose values name a workload (and user) node, e.g.
    ``("app", "env")``; empty: one node per workload and per user. ``max_examples``: example
    flows kept per service of an edge (denied, would-be-denied or staged-denied ones).
    """

    granularity: tuple[str, ...]
    max_examples: int = 3


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Records per status."""

    allowed: int = 0
    would_be_denied: int = 0
    denied: int = 0

    @property
    def status(self) -> EdgeStatus:
        """DENIED if any record is denied, else WOULD_BE_DENIED if any would be, else ALLOWED."""
        if self.denied:
            return EdgeStatus.DENIED
        if self.would_be_denied:
            return EdgeStatus.WOULD_BE_DENIED
        return EdgeStatus.ALLOWED

    @property
    def total(self) -> int:
        return self.allowed + self.would_be_denied + self.denied

    def __add__(self, other: StatusCounts) -> StatusCounts:
        return StatusCounts(
            self.allowed + other.allowed,
            self.would_be_denied + other.would_be_denied,
            self.denied + other.denied,
        )

    def to_json(self) -> dict[str, int]:
        return {
            EdgeStatus.ALLOWED.value: self.allowed,
            EdgeStatus.WOULD_BE_DENIED.value: self.would_be_denied,
            EdgeStatus.DENIED.value: self.denied,
        }


@dataclass(frozen=True, slots=True)
class MapNode:
    """One node of the map.

    ``id`` is stable text: ``workload[app=shop,env=prod]`` (a label group; ``\\``, ``,``,
    ``=`` and ``]`` in keys and values are escaped with a backslash), ``workload/web-1`` (a
    workload lacking every granularity key), likewise ``user[...]`` and ``user/alice``,
    ``network/internet`` and ``unknown``. ``name`` is for humans (``app=shop, env=prod``).
    ``labels`` are the granularity values the node stands for, in granularity order.
    ``members`` are the workload or user names seen in it, sorted (empty for networks and
    ``unknown``); ``address_count`` counts the distinct addresses seen in it.
    """

    id: str
    kind: EndpointKind
    name: str
    labels: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    address_count: int


@dataclass(frozen=True, slots=True)
class Example:
    """One flow that justifies a service's status: the flow (at the group's first_seen), its
    status, the records of its group, and why, in one line (``Explanation.summary()``, or
    the recorded verdict counts when the map's statuses are recorded ones). ``explanation``
    is the full explanation with its causes (None for recorded statuses)."""

    flow: Flow
    status: EdgeStatus
    records: int
    summary: str
    explanation: Explanation | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ServiceUse:
    """One service (protocol and destination port; 0 for protocols without ports) on one
    edge: summed counts, records per status, records a staged policy would deny, and up to
    ``MapOptions.max_examples`` examples (most severe first, then by flow)."""

    protocol: Protocol
    port: int
    records: int
    connections: int
    packets: int
    bytes: int
    counts: StatusCounts
    staged_denied: int
    examples: tuple[Example, ...]

    @property
    def status(self) -> EdgeStatus:
        return self.counts.status

    @property
    def text(self) -> str:
        """``tcp/443``, ``udp/53``, ``icmp``."""
        return (
            f"{self.protocol.value}/{self.port}"
            if self.protocol.has_ports
            else (self.protocol.value)
        )


@dataclass(frozen=True, slots=True)
class MapEdge:
    """Traffic from one node to another (possibly the same: a self-edge)."""

    source: str
    destination: str
    services: tuple[ServiceUse, ...]
    records: int
    connections: int
    packets: int
    bytes: int
    first_seen: datetime
    last_seen: datetime
    counts: StatusCounts
    staged_denied: int

    @property
    def status(self) -> EdgeStatus:
        return self.counts.status

    @property
    def is_self(self) -> bool:
        return self.source == self.destination

    @property
    def examples(self) -> tuple[Example, ...]:
        """Every service's examples, services in order."""
        return tuple(e for s in self.services for e in s.examples)


@dataclass(frozen=True, slots=True)
class DependencyMap:
    """Nodes (by kind, then id) and edges (by source id, then destination id)."""

    granularity: tuple[str, ...]
    status_source: StatusSource
    nodes: tuple[MapNode, ...]
    edges: tuple[MapEdge, ...]
    groups: int

    def node(self, node_id: str) -> MapNode:
        """The node with this id (``KeyError`` if none). O(nodes)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def edge(self, source: str, destination: str) -> MapEdge | None:
        """The edge between two node ids, or None. O(edges)."""
        for e in self.edges:
            if e.source == source and e.destination == destination:
                return e
        return None


# ---------------------------------------------------------------------------- building


def build_dependency_map(
    groups: Iterable[FlowGroup], evaluator: Evaluator | None, options: MapOptions
) -> DependencyMap:
    """The dependency map of ``groups`` (see the module docstring for nodes and statuses).

    Cost: one ``evaluator.explain`` per group (itself memoized per side inside the
    evaluator; none without an evaluator) plus O(G · granularity) to place the groups, then
    O(N log N + E log E + S log S) to sort N nodes, E edges and S (edge, service) pairs.
    Memory O(N + E + S + distinct addresses). Consumes ``groups`` once (an iterator is fine).
    """
    granularity = tuple(options.granularity)
    nodes: dict[str, _NodeAcc] = {}
    edges: dict[tuple[str, str], dict[tuple[Protocol, int], _ServiceAcc]] = {}
    count = 0
    for g in groups:
        count += 1
        src = _place(nodes, g.source_identity, g.source, granularity)
        dst = _place(nodes, g.destination_identity, g.destination, granularity)
        port = g.port if g.protocol.has_ports else 0
        services = edges.setdefault((src, dst), {})
        acc = services.get((g.protocol, port))
        if acc is None:
            acc = services[(g.protocol, port)] = _ServiceAcc(g.protocol, port)
        flow = Flow(g.source, g.destination, g.protocol, port, g.first_seen)
        if evaluator is not None:
            _add_evaluated(acc, g, flow, evaluator.explain(flow), options.max_examples)
        else:
            _add_recorded(acc, g, flow, options.max_examples)

    frozen_nodes = tuple(
        sorted((n.freeze() for n in nodes.values()), key=lambda n: (_KIND_ORDER[n.kind], n.id))
    )
    frozen_edges = tuple(
        _freeze_edge(src, dst, services) for (src, dst), services in sorted(edges.items())
    )
    return DependencyMap(
        granularity=granularity,
        status_source=StatusSource.POLICY if evaluator is not None else StatusSource.RECORDED,
        nodes=frozen_nodes,
        edges=frozen_edges,
        groups=count,
    )


class _NodeAcc:
    __slots__ = ("addresses", "id", "kind", "labels", "members", "name")

    def __init__(
        self, node_id: str, kind: EndpointKind, name: str, labels: tuple[tuple[str, str], ...]
    ) -> None:
        self.id = node_id
        self.kind = kind
        self.name = name
        self.labels = labels
        self.members: set[str] = set()
        self.addresses: set[IPAddress] = set()

    def freeze(self) -> MapNode:
        return MapNode(
            self.id,
            self.kind,
            self.name,
            self.labels,
            tuple(sorted(self.members)),
            len(self.addresses),
        )


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace("]", "\\]")


def _place(
    nodes: dict[str, _NodeAcc],
    identity: Identity,
    address: IPAddress,
    granularity: tuple[str, ...],
) -> str:
    """The id of the node ``identity`` belongs to, creating the node; records the address
    (and the member name). O(granularity)."""
    kind = identity.kind
    member: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    if kind is EndpointKind.WORKLOAD or kind is EndpointKind.USER:
        member = str(identity)
        present = identity.labels
        labels = tuple((k, present[k]) for k in granularity if k in present)
        if labels:
            node_id = (
                f"{kind.value}[" + ",".join(f"{_escape(k)}={_escape(v)}" for k, v in labels) + "]"
            )
            name = ", ".join(f"{k}={v}" for k, v in labels)
        else:
            node_id = f"{kind.value}/{member}"
            name = member
    elif kind is EndpointKind.NETWORK:
        name = str(identity)
        node_id = f"network/{name}"
    else:
        node_id = name = UNKNOWN_NODE
    acc = nodes.get(node_id)
    if acc is None:
        acc = nodes[node_id] = _NodeAcc(node_id, kind, name, labels)
    if member is not None:
        acc.members.add(member)
    acc.addresses.add(address)
    return node_id


# (-severity, source version, source, destination version, destination, time, -records, why)
_ExampleKey = tuple[int, int, int, int, int, datetime, int, str]


class _ServiceAcc:
    __slots__ = (
        "allowed",
        "bytes",
        "connections",
        "denied",
        "examples",
        "first_seen",
        "last_seen",
        "packets",
        "port",
        "protocol",
        "records",
        "staged_denied",
        "would_be_denied",
    )

    def __init__(self, protocol: Protocol, port: int) -> None:
        self.protocol = protocol
        self.port = port
        self.records = self.connections = self.packets = self.bytes = 0
        self.allowed = self.would_be_denied = self.denied = self.staged_denied = 0
        self.first_seen: datetime | None = None
        self.last_seen: datetime | None = None
        # (sort key, example), at most max_examples, kept sorted
        self.examples: list[tuple[_ExampleKey, Example]] = []

    def add_group(self, g: FlowGroup) -> None:
        self.records += g.records
        self.connections += g.connections
        self.packets += g.packets
        self.bytes += g.bytes
        if self.first_seen is None or g.first_seen < self.first_seen:
            self.first_seen = g.first_seen
        if self.last_seen is None or g.last_seen > self.last_seen:
            self.last_seen = g.last_seen

    def add_example(self, example: Example, limit: int) -> None:
        """Keep the ``limit`` most telling examples: most severe first, then by flow (source,
        destination, time; then more records first), whatever order the groups arrive in.
        O(limit log limit)."""
        if limit <= 0:
            return
        f = example.flow
        key = (
            -example.status.severity,
            f.source.version,
            int(f.source),
            f.destination.version,
            int(f.destination),
            f.at,
            -example.records,
            example.summary,
        )
        if len(self.examples) >= limit and key >= self.examples[-1][0]:
            return
        self.examples.append((key, example))
        self.examples.sort(key=lambda item: item[0])
        del self.examples[limit:]


def _status_of(explanation: Explanation) -> EdgeStatus:
    if explanation.verdict is Verdict.DENY:
        return EdgeStatus.DENIED
    if explanation.would_be_denied:
        return EdgeStatus.WOULD_BE_DENIED
    return EdgeStatus.ALLOWED


def _add_evaluated(
    acc: _ServiceAcc, g: FlowGroup, flow: Flow, explanation: Explanation, limit: int
) -> None:
    acc.add_group(g)
    status = _status_of(explanation)
    if status is EdgeStatus.DENIED:
        acc.denied += g.records
    elif status is EdgeStatus.WOULD_BE_DENIED:
        acc.would_be_denied += g.records
    else:
        acc.allowed += g.records
    staged = explanation.staged_change is StagedChange.WOULD_BE_DENIED
    if staged:
        acc.staged_denied += g.records
    if status is not EdgeStatus.ALLOWED or staged:
        acc.add_example(Example(flow, status, g.records, explanation.summary(), explanation), limit)


def _add_recorded(acc: _ServiceAcc, g: FlowGroup, flow: Flow, limit: int) -> None:
    acc.add_group(g)
    verdicts: Mapping[RecordedVerdict, int] = g.verdicts
    denied = min(max(verdicts.get(RecordedVerdict.DENIED, 0), 0), g.records)
    would = min(max(verdicts.get(RecordedVerdict.WOULD_DENY, 0), 0), g.records - denied)
    acc.denied += denied
    acc.would_be_denied += would
    acc.allowed += g.records - denied - would
    if denied or would:
        status = EdgeStatus.DENIED if denied else EdgeStatus.WOULD_BE_DENIED
        parts = [f"{denied} denied"] if denied else []
        if would:
            parts.append(f"{would} would-deny")
        summary = f"recorded: {', '.join(parts)} of {g.records} records"
        acc.add_example(Example(flow, status, g.records, summary), limit)


def _freeze_edge(
    source: str, destination: str, services: Mapping[tuple[Protocol, int], _ServiceAcc]
) -> MapEdge:
    uses = [services[key] for key in sorted(services, key=lambda k: (k[0].value, k[1]))]
    frozen = tuple(
        ServiceUse(
            protocol=s.protocol,
            port=s.port,
            records=s.records,
            connections=s.connections,
            packets=s.packets,
            bytes=s.bytes,
            counts=StatusCounts(s.allowed, s.would_be_denied, s.denied),
            staged_denied=s.staged_denied,
            examples=tuple(e for _, e in s.examples),
        )
        for s in uses
    )
    firsts = [s.first_seen for s in uses if s.first_seen is not None]
    lasts = [s.last_seen for s in uses if s.last_seen is not None]
    counts = StatusCounts()
    for s in frozen:
        counts = counts + s.counts
    return MapEdge(
        source=source,
        destination=destination,
        services=frozen,
        records=sum(s.records for s in frozen),
        connections=sum(s.connections for s in frozen),
        packets=sum(s.packets for s in frozen),
        bytes=sum(s.bytes for s in frozen),
        first_seen=min(firsts),
        last_seen=max(lasts),
        counts=counts,
        staged_denied=sum(s.staged_denied for s in frozen),
    )
