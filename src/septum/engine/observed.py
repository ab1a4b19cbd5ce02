"""Observed traffic as the pure engines see it: aggregated flow groups with their attribution.

The flow store (``septum.flows``) reads Parquet and hands the engines these frozen values;
replay, the dependency map and recommendation never touch a file or a database.

A :class:`FlowGroup` is every recorded flow sharing (source address, destination address,
protocol, destination port) within one store query, with counts, first/last seen and the
identities the addresses were attributed to at the time of the flows (``semantics.md``,
attribution paragraph). Groups of one query never overlap.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from septum.engine.attribution import EndpointKind
from septum.model.resources import EMPTY_LABELS, IPAddress, Protocol

__all__ = ["FlowGroup", "Identity", "RecordedVerdict", "protocol_of"]


class RecordedVerdict(enum.Enum):
    """What the reporter saw happen to a flow (not what Septum's policy says)."""

    ALLOWED = "allowed"  # the flow passed (conntrack entry, VPC ACCEPT, Hubble FORWARDED)
    DENIED = "denied"  # dropped by an enforced deny (NFLOG deny group, VPC REJECT, DROPPED)
    WOULD_DENY = "would-deny"  # denied by policy but accepted by the workload's mode
    LOGGED = "logged"  # matched a ``log`` rule
    UNKNOWN = "unknown"  # the source does not say (NetFlow, CSV without a verdict column)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who held an address: a workload, a user session, a network (``name`` is the first
    network by name) or nobody (``UNKNOWN``, ``name`` None). ``labels`` are the identity's
    labels as the inventory knew them (empty for networks and unknown addresses)."""

    kind: EndpointKind
    name: str | None
    labels: Mapping[str, str] = field(
        default_factory=lambda: EMPTY_LABELS, compare=False, hash=False
    )

    def __str__(self) -> str:
        return self.name if self.name is not None else self.kind.value


@dataclass(frozen=True, slots=True)
class FlowGroup:
    """Recorded flows with one (source, destination, protocol, port), aggregated.

    ``port`` is the destination port, 0 for protocols without ports. ``records`` counts the
    stored flow records; ``connections``, ``packets`` and ``bytes`` are summed. ``verdicts``
    counts records per recorded verdict. ``first_seen``/``last_seen`` bound the records'
    start times; replay evaluates a group at ``first_seen`` unless the store split it at a
    change of inventory or rule expiry (then each part is its own group).
    """

    source: IPAddress
    destination: IPAddress
    protocol: Protocol
    port: int
    first_seen: datetime
    last_seen: datetime
    records: int
    connections: int
    packets: int
    bytes: int
    source_identity: Identity
    destination_identity: Identity
    verdicts: Mapping[RecordedVerdict, int] = field(default_factory=dict, compare=False, hash=False)


_PROTOCOL_NUMBERS = {
    6: Protocol.TCP,
    17: Protocol.UDP,
    132: Protocol.SCTP,
    1: Protocol.ICMP,
    58: Protocol.ICMPV6,
}
_PROTOCOL_NAMES = {p.value: p for p in Protocol} | {"ipv6-icmp": Protocol.ICMPV6}


def protocol_of(value: str | int) -> Protocol | None:
    """``"tcp"``, ``"TCP"``, ``6`` or ``"6"`` → ``Protocol.TCP``; None for protocols Septum's
    policy language cannot name (GRE, ESP, ...), which replay and recommendation skip."""
    if isinstance(value, int):
        return _PROTOCOL_NUMBERS.get(value)
    text = value.strip().lower()
    if text.isdigit():
        return _PROTOCOL_NUMBERS.get(int(text))
    return _PROTOCOL_NAMES.get(text)
