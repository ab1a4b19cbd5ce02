"""Validated, frozen model objects: the output of parsing, the input of the engine.

Every object here has passed validation (see :mod:`septum.model.parse`); the engine trusts
them. Names follow ``semantics.md``. Positions (file/line/column) are kept in ``Origin`` so
that later stages can still point a user at the document a thing came from.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType

from septum.model.selector import Selector

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: Implicit labels every workload (and network, user) carries, so that selectors can name them.
KIND_LABEL = "septum.io/kind"
NAME_LABEL = "septum.io/name"
NAMESPACE_LABEL = "septum.io/namespace"

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    PASS = "pass"
    LOG = "log"


class Direction(enum.Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


class TierDefault(enum.Enum):
    DENY = "deny"
    PASS = "pass"


class RepositoryDefault(enum.Enum):
    DENY = "deny"
    ALLOW = "allow"


class Mode(enum.Enum):
    """Per-workload enforcement mode (``semantics.md``, "Modes of a workload")."""

    IDLE = "idle"
    VISIBILITY = "visibility"
    TEST = "test"
    ENFORCED = "enforced"
    SELECTIVE = "selective"

    @property
    def installs_rules(self) -> bool:
        """Whether an agent puts rules for the workload in the kernel: not for ``idle``
        (unmanaged) nor ``visibility`` (the agent records its flows from conntrack and
        reports would-be denies by evaluating them; the kernel is untouched). ``test`` does
        install rules, which log would-be denies and accept."""
        return self not in (Mode.IDLE, Mode.VISIBILITY)


class PolicyMode(enum.Enum):
    ENFORCE = "enforce"
    STAGED = "staged"


class WorkloadKind(enum.Enum):
    HOST = "host"
    VM = "vm"
    CONTAINER = "container"
    POD = "pod"
    CLOUD = "cloud"


class Protocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"

    @property
    def has_ports(self) -> bool:
        return self in (Protocol.TCP, Protocol.UDP, Protocol.SCTP)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource (or part of one) was written: for error messages and provenance."""

    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive destination-port range, 0..65535."""

    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


ALL_PORTS = PortRange(0, 65535)


@dataclass(frozen=True, slots=True, order=True)
class ServicePort:
    """One protocol with a port range: ``tcp/443``, ``udp/8000-8099``, ``icmp``.

    ``protocol`` None means any protocol (the ``any`` entry); then ``ports`` is ALL_PORTS.
    For protocols without ports (icmp), ``ports`` is ALL_PORTS and ignored when matching.
    """

    protocol: Protocol | None
    ports: PortRange = ALL_PORTS

    def matches(self, protocol: Protocol, port: int) -> bool:
        if self.protocol is None:
            return True
        if self.protocol is not protocol:
            return False
        return not protocol.has_ports or port in self.ports

    def __str__(self) -> str:
        if self.protocol is None:
            return "any"
        if not self.protocol.has_ports:
            return self.protocol.value
        if self.ports == ALL_PORTS:
            return self.protocol.value
        return f"{self.protocol.value}/{self.ports}"


@dataclass(frozen=True, slots=True)
class AddressBinding:
    """An address held by a workload or user session, valid in [valid_from, valid_until)."""

    address: IPAddress
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def valid_at(self, when: datetime) -> bool:
        if self.valid_from is not None and when < self.valid_from:
            return False
        return not (self.valid_until is not None and when >= self.valid_until)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    kind: WorkloadKind
    labels: Mapping[str, str]  # includes the implicit septum.io/* labels
    addresses: tuple[AddressBinding, ...]
    enforcer: str | None
    mode: Mode  # already defaulted from Settings
    namespace: str | None = None
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Network:
    """Named external address ranges; an address is in it when in some cidr and no except."""

    name: str
    labels: Mapping[str, str]  # includes septum.io/kind=network, septum.io/name
    cidrs: tuple[IPNetwork, ...]
    excepts: tuple[IPNetwork, ...] = ()
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)

    def contains(self, address: IPAddress) -> bool:
        return any(address in c for c in self.cidrs) and not any(address in e for e in self.excepts)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    ports: tuple[ServicePort, ...]
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    selector: Selector
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    order: float
    default_action: TierDefault = TierDefault.DENY
    owners: tuple[str, ...] = ()
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


class PeerKind(enum.Enum):
    SELECTOR = "selector"  # workloads and networks whose labels the selector selects
    SEGMENT = "segment"  # a named Segment's selector
    NETWORK = "network"  # addresses attributed to a named Network
    CIDR = "cidr"  # any address in the range
    USERS = "users"  # addresses held by sessions of users the selector selects


@dataclass(frozen=True, slots=True)
class Peer:
    """One peer of a rule. Exactly the fields its kind needs are set.

    SELECTOR and SEGMENT carry the effective ``selector`` (for SEGMENT, the segment's, with
    ``ref`` naming the segment); NETWORK carries ``ref``; CIDR carries ``cidr``; USERS carries
    ``selector`` (evaluated over user labels).
    """

    kind: PeerKind
    selector: Selector | None = None
    ref: str | None = None
    cidr: IPNetwork | None = None

    def __str__(self) -> str:
        if self.kind is PeerKind.CIDR:
            return f"cidr:{self.cidr}"
        if self.kind in (PeerKind.SEGMENT, PeerKind.NETWORK):
            return f"{self.kind.value}:{self.ref}"
        assert self.selector is not None
        prefix = "users:" if self.kind is PeerKind.USERS else ""
        return f"{prefix}{self.selector.text}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy. Empty ``peers`` means any peer; empty ``services`` any service.

    ``services`` is already the union of named Services and inline ports, flattened.
    ``service_refs`` keeps the names for display. ``index`` is the 0-based position within the
    policy's rule list for its direction (provenance: tier/policy/direction/index).
    """

    action: Action
    index: int
    peers: tuple[Peer, ...] = ()
    services: tuple[ServicePort, ...] = ()
    service_refs: tuple[str, ...] = ()
    expires: datetime | None = None
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)

    def alive_at(self, when: datetime) -> bool:
        return self.expires is None or when < self.expires

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return not self.services or any(s.matches(protocol, port) for s in self.services)


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy in one tier. ``ingress``/``egress`` None: the policy has no rules for (does not
    apply to) that direction; an empty tuple: applies and matches nothing."""

    name: str
    tier: str
    order: float
    applies_to: Selector  # all() when absent in the document
    mode: PolicyMode = PolicyMode.ENFORCE
    ingress: tuple[Rule, ...] | None = None
    egress: tuple[Rule, ...] | None = None
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)

    def rules(self, direction: Direction) -> tuple[Rule, ...] | None:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class User:
    name: str
    labels: Mapping[str, str]  # own labels, inherited group labels, septum.io/kind=user, name
    sessions: tuple[AddressBinding, ...] = ()
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UserGroup:
    """A group of users; members inherit the group's labels (a member's own labels win)."""

    name: str
    members: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


class Expect(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class InvariantKind(enum.Enum):
    NEVER = "never"  # no workload/network selected by `source` reaches any selected by `target`
    ALWAYS = "always"  # every such pair is allowed


@dataclass(frozen=True, slots=True)
class FlowAssertion:
    """One flow that must be allowed or denied (effective verdict). Endpoints are workload
    names or literal addresses; ``at`` None means the evaluation time given by the caller."""

    source: str
    target: str
    service: ServicePort  # a single protocol/port (ports.first == ports.last for tcp/udp/sctp)
    expect: Expect
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Invariant:
    kind: InvariantKind
    source: Selector
    target: Selector
    services: tuple[ServicePort, ...] = ()  # empty: every protocol and port


@dataclass(frozen=True, slots=True)
class Assertion:
    name: str
    check: FlowAssertion | Invariant
    description: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class FailsafeEntry:
    """Traffic no policy can block: matching flows are accepted before any tier."""

    direction: Direction | None  # None: both directions
    services: tuple[ServicePort, ...]
    cidrs: tuple[IPNetwork, ...] = ()  # empty: any remote address
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    default_action: RepositoryDefault = RepositoryDefault.DENY
    default_mode: Mode = Mode.ENFORCED
    failsafe: tuple[FailsafeEntry, ...] = ()
    cidr_matches_workloads: bool = True
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Repository:
    """A whole validated policy repository. Tuples are sorted by name for determinism."""

    workloads: tuple[Workload, ...] = ()
    networks: tuple[Network, ...] = ()
    services: tuple[Service, ...] = ()
    segments: tuple[Segment, ...] = ()
    tiers: tuple[Tier, ...] = ()
    policies: tuple[Policy, ...] = ()
    users: tuple[User, ...] = ()
    user_groups: tuple[UserGroup, ...] = ()
    assertions: tuple[Assertion, ...] = ()
    settings: Settings = Settings()

    def workload(self, name: str) -> Workload | None:
        return next((w for w in self.workloads if w.name == name), None)

    def enforcers(self) -> tuple[str, ...]:
        return tuple(sorted({w.enforcer for w in self.workloads if w.enforcer is not None}))
