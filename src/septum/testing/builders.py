"""Terse builders of validated model objects, for tests of every part of Septum.

They build the same frozen objects the parser produces (including the implicit
``septum.io/kind``, ``septum.io/name`` and ``septum.io/namespace`` labels) without YAML, so a
test reads like the policy it checks::

    from septum.testing.builders import (
        T0, cidr, flow, network, policy, repo, rule, tier, user, workload,
    )

    r = repo(
        tier("security", 10, owners=("secops",)),
        workload("web-1", "198.18.0.1", app="web"),
        workload("db-1", "198.18.0.2", app="db"),
        policy("db", "security", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])]),
        policy("web", "security", applies_to='app == "web"',
               egress=[rule("allow", 'app == "db"', ports=["tcp/5432"])]),
    )
    flow("198.18.0.1", "198.18.0.2", "tcp/5432")     # at T0: allowed at both sides

Conventions: selectors are given as text (or ``Selector``); peers as text (a selector) or
built with :func:`cidr`, :func:`net`, :func:`segment`, :func:`users`, :func:`sel`; ports as
the policy language writes them (``tcp/443``, ``udp/8000-8099``, ``icmp``, ``any``); times
as ``datetime`` or RFC 3339 text. :func:`policy` numbers its rules (``Rule.index``) by
position, like the parser. No builder validates cross-references: build what you need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from types import MappingProxyType
from typing import Protocol as _Protocol
from typing import TypeVar

from septum.engine.explain import Flow
from septum.model.parse import parse_service_port
from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    AddressBinding,
    Assertion,
    Direction,
    FailsafeEntry,
    IPAddress,
    Mode,
    Network,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    Repository,
    RepositoryDefault,
    Rule,
    Segment,
    Service,
    ServicePort,
    Settings,
    Tier,
    TierDefault,
    User,
    UserGroup,
    Workload,
    WorkloadKind,
)
from septum.model.selector import Selector, parse_selector

__all__ = [
    "T0",
    "address",
    "at",
    "cidr",
    "failsafe",
    "flow",
    "net",
    "network",
    "parse_port",
    "policy",
    "repo",
    "rule",
    "segment",
    "segment_def",
    "sel",
    "service",
    "settings",
    "tier",
    "user",
    "users",
    "workload",
]

#: The default time of flows built here: 2026-11-01T12:00:00Z.
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

TimeLike = datetime | str
AddressLike = str | IPAddress | AddressBinding | tuple[str, TimeLike | None, TimeLike | None]
PeerLike = str | Selector | Peer
SelectorLike = str | Selector


def at(when: TimeLike) -> datetime:
    """A timezone-aware datetime from RFC 3339 text (``Z`` accepted) or a datetime."""
    if isinstance(when, datetime):
        return when
    return datetime.fromisoformat(when.replace("Z", "+00:00"))


def _selector(s: SelectorLike) -> Selector:
    return s if isinstance(s, Selector) else parse_selector(s)


def _labels(base: Mapping[str, str] | None, extra: Mapping[str, str]) -> dict[str, str]:
    out = dict(base or {})
    out.update(extra)
    return out


def address(
    addr: str | IPAddress,
    valid_from: TimeLike | None = None,
    valid_until: TimeLike | None = None,
) -> AddressBinding:
    """An address binding (workload address or user session), valid in [from, until)."""
    return AddressBinding(
        ip_address(addr) if isinstance(addr, str) else addr,
        at(valid_from) if valid_from is not None else None,
        at(valid_until) if valid_until is not None else None,
    )


def _binding(a: AddressLike) -> AddressBinding:
    if isinstance(a, AddressBinding):
        return a
    if isinstance(a, tuple):
        return address(*a)
    return address(a)


def workload(
    name: str,
    *addresses: AddressLike,
    kind: WorkloadKind = WorkloadKind.HOST,
    mode: Mode = Mode.ENFORCED,
    enforcer: str | None = None,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    description: str | None = None,
    **more_labels: str,
) -> Workload:
    """A workload with implicit labels added. Addresses: text, ``address(...)`` or
    ``(text, from, until)``. Labels: ``labels={...}`` (any key) merged with keyword labels.

    ``workload("web-1", "198.18.0.1", app="web", mode=Mode.ENFORCED, enforcer="h1")``
    """
    all_labels = _labels(labels, more_labels)
    all_labels[KIND_LABEL] = kind.value
    all_labels[NAME_LABEL] = name
    if namespace is not None:
        all_labels[NAMESPACE_LABEL] = namespace
    return Workload(
        name=name,
        kind=kind,
        labels=MappingProxyType(all_labels),
        addresses=tuple(_binding(a) for a in addresses),
        enforcer=enforcer,
        mode=mode,
        namespace=namespace,
        description=description,
    )


def network(
    name: str,
    *cidrs: str,
    excepts: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    **more_labels: str,
) -> Network:
    """A Network with implicit labels ``septum.io/kind=network`` and ``septum.io/name``."""
    all_labels = _labels(labels, more_labels)
    all_labels[KIND_LABEL] = "network"
    all_labels[NAME_LABEL] = name
    return Network(
        name=name,
        labels=MappingProxyType(all_labels),
        cidrs=tuple(ip_network(c) for c in cidrs),
        excepts=tuple(ip_network(c) for c in excepts),
    )


def user(
    name: str,
    *sessions: AddressLike,
    labels: Mapping[str, str] | None = None,
    **more_labels: str,
) -> User:
    """A User with sessions (``(addr, from, until)`` or ``address(...)``) and implicit labels
    ``septum.io/kind=user``, ``septum.io/name``. Group labels: pass them as labels here."""
    all_labels = _labels(labels, more_labels)
    all_labels[KIND_LABEL] = "user"
    all_labels[NAME_LABEL] = name
    return User(
        name=name,
        labels=MappingProxyType(all_labels),
        sessions=tuple(_binding(s) for s in sessions),
    )


def parse_port(text: str) -> ServicePort:
    """``tcp/443``, ``udp/8000-8099``, ``tcp`` (every port), ``icmp``, ``icmpv6``, ``any``:
    the parser's own validated reading, so builders and documents cannot disagree."""
    return parse_service_port(text)


def service(name: str, *ports: str) -> Service:
    """A named Service: ``service("https", "tcp/443")``."""
    return Service(name, tuple(parse_port(p) for p in ports))


def sel(text: SelectorLike) -> Peer:
    """A selector peer (a bare string passed as a peer means the same)."""
    return Peer(PeerKind.SELECTOR, selector=_selector(text))


def segment(name: str, selector: SelectorLike) -> Peer:
    """A ``segment:`` peer carrying the segment's selector (as the parser resolves it)."""
    return Peer(PeerKind.SEGMENT, selector=_selector(selector), ref=name)


def segment_def(name: str, selector: SelectorLike) -> Segment:
    """The Segment resource itself."""
    return Segment(name, _selector(selector))


def net(name: str) -> Peer:
    """A ``network:`` peer."""
    return Peer(PeerKind.NETWORK, ref=name)


def cidr(text: str) -> Peer:
    """A ``cidr:`` peer."""
    return Peer(PeerKind.CIDR, cidr=ip_network(text))


def users(selector: SelectorLike) -> Peer:
    """A ``users:`` peer (selector over user labels)."""
    return Peer(PeerKind.USERS, selector=_selector(selector))


def _peer(p: PeerLike) -> Peer:
    return p if isinstance(p, Peer) else sel(p)


def rule(
    action: Action | str,
    *peers: PeerLike,
    ports: Iterable[str] = (),
    services: Iterable[Service] = (),
    expires: TimeLike | None = None,
    description: str | None = None,
) -> Rule:
    """A rule: ``rule("allow", 'app == "web"', cidr("10.0.0.0/8"), ports=["tcp/443"])``.

    No peers: any peer. No ports/services: any service. ``services`` are Service objects
    (flattened with the inline ports, names kept in ``service_refs``). ``index`` is set by
    :func:`policy`.
    """
    service_list = tuple(services)
    flat = tuple(sp for s in service_list for sp in s.ports) + tuple(parse_port(p) for p in ports)
    return Rule(
        action=action if isinstance(action, Action) else Action(action),
        index=0,
        peers=tuple(_peer(p) for p in peers),
        services=flat,
        service_refs=tuple(s.name for s in service_list),
        expires=at(expires) if expires is not None else None,
        description=description,
    )


def _numbered(rules: Iterable[Rule] | None) -> tuple[Rule, ...] | None:
    if rules is None:
        return None
    return tuple(replace(r, index=i) for i, r in enumerate(rules))


def policy(
    name: str,
    tier: str,
    *,
    order: float = 1000,
    applies_to: SelectorLike | None = None,
    ingress: Iterable[Rule] | None = None,
    egress: Iterable[Rule] | None = None,
    mode: PolicyMode = PolicyMode.ENFORCE,
    description: str | None = None,
) -> Policy:
    """A policy. ``applies_to`` None: every workload (``all()``). ``ingress``/``egress`` None:
    the policy does not apply to that direction; ``[]``: applies and matches nothing."""
    return Policy(
        name=name,
        tier=tier,
        order=order,
        applies_to=_selector(applies_to if applies_to is not None else "all()"),
        mode=mode,
        ingress=_numbered(ingress),
        egress=_numbered(egress),
        description=description,
    )


def tier(
    name: str,
    order: float,
    default: TierDefault | str = TierDefault.DENY,
    owners: Iterable[str] = (),
) -> Tier:
    """A tier: ``tier("security", 10, "pass", owners=["secops"])``."""
    return Tier(
        name=name,
        order=order,
        default_action=default if isinstance(default, TierDefault) else TierDefault(default),
        owners=tuple(owners),
    )


def failsafe(
    direction: Direction | str | None,
    *ports: str,
    cidrs: Iterable[str] = (),
) -> FailsafeEntry:
    """A failsafe entry: ``failsafe("ingress", "tcp/22", cidrs=["198.18.255.0/24"])``."""
    d = direction if direction is None or isinstance(direction, Direction) else Direction(direction)
    return FailsafeEntry(
        direction=d,
        services=tuple(parse_port(p) for p in ports),
        cidrs=tuple(ip_network(c) for c in cidrs),
    )


def settings(
    default_action: RepositoryDefault | str = RepositoryDefault.DENY,
    *,
    default_mode: Mode = Mode.ENFORCED,
    failsafe: Iterable[FailsafeEntry] = (),
    cidr_matches_workloads: bool = True,
) -> Settings:
    """Repository settings: ``settings("allow", cidr_matches_workloads=False)``."""
    return Settings(
        default_action=(
            default_action
            if isinstance(default_action, RepositoryDefault)
            else RepositoryDefault(default_action)
        ),
        default_mode=default_mode,
        failsafe=tuple(failsafe),
        cidr_matches_workloads=cidr_matches_workloads,
    )


class _Named(_Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)

ModelObject = (
    Workload | Network | Service | Segment | Tier | Policy | User | UserGroup | Assertion | Settings
)


def _by_name(items: list[_N], sort: bool) -> tuple[_N, ...]:
    return tuple(sorted(items, key=lambda o: o.name)) if sort else tuple(items)


def repo(*objects: ModelObject, sort: bool = True) -> Repository:
    """A Repository from model objects of any kind, in any order (at most one Settings).

    Each kind's tuple is sorted by name, as the parser does; ``sort=False`` keeps the given
    order (useful to check that the order of the tuples does not matter).
    """
    workloads: list[Workload] = []
    networks: list[Network] = []
    services: list[Service] = []
    segments: list[Segment] = []
    tiers: list[Tier] = []
    policies: list[Policy] = []
    users_: list[User] = []
    groups: list[UserGroup] = []
    assertions: list[Assertion] = []
    chosen: Settings | None = None
    for o in objects:
        if isinstance(o, Settings):
            if chosen is not None:
                raise ValueError("at most one Settings per repository")
            chosen = o
        elif isinstance(o, Workload):
            workloads.append(o)
        elif isinstance(o, Network):
            networks.append(o)
        elif isinstance(o, Service):
            services.append(o)
        elif isinstance(o, Segment):
            segments.append(o)
        elif isinstance(o, Tier):
            tiers.append(o)
        elif isinstance(o, Policy):
            policies.append(o)
        elif isinstance(o, User):
            users_.append(o)
        elif isinstance(o, UserGroup):
            groups.append(o)
        else:
            assertions.append(o)
    return Repository(
        workloads=_by_name(workloads, sort),
        networks=_by_name(networks, sort),
        services=_by_name(services, sort),
        segments=_by_name(segments, sort),
        tiers=_by_name(tiers, sort),
        policies=_by_name(policies, sort),
        users=_by_name(users_, sort),
        user_groups=_by_name(groups, sort),
        assertions=_by_name(assertions, sort),
        settings=chosen if chosen is not None else Settings(),
    )


def flow(
    source: str | IPAddress,
    destination: str | IPAddress,
    service: str = "tcp/443",
    when: TimeLike = T0,
) -> Flow:
    """A flow: ``flow("198.18.0.1", "198.18.0.2", "tcp/5432")`` at T0. The service is one
    protocol and port (``udp/53``), or ``icmp``/``icmpv6`` (port 0)."""
    sp = parse_port(service)
    if sp.protocol is None:
        raise ValueError("a flow has one protocol, not 'any'")
    return Flow(
        source=ip_address(source) if isinstance(source, str) else source,
        destination=ip_address(destination) if isinstance(destination, str) else destination,
        protocol=sp.protocol,
        port=sp.ports.first if sp.protocol.has_ports else 0,
        at=at(when),
    )
