"""Hypothesis strategies for small random policy repositories, for property tests.

The repositories are tiny on purpose, so that a brute-force oracle (explain every pair of
addresses and every port) stays cheap, yet they exercise every feature the semantics has:
labels from a tiny alphabet, every workload mode, tiers with ties in order and both default
actions, policies with ``appliesTo``, enforce/staged, absent/empty/non-empty rule lists,
allow/deny/pass/log rules with selector, segment, network and CIDR peers, services over a
small port space, expired rules, networks with excepts, user sessions holding addresses, and
the repository settings (default action, ``cidrMatchesWorkloads``, failsafe).

Addresses come from 198.18.0.0/15 and 2001:db8::/32 only. Ports used by rules and invariants
lie in ``1..PORT_SPACE``: every port above it is equivalent to ``PORT_SPACE + 1``.

::

    from septum.testing.strategies import repositories, invariants, T0

    @given(repositories(), st.data())
    def test_something(repo, data):
        inv = data.draw(invariants())
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from datetime import timedelta
from ipaddress import ip_address, ip_network
from types import MappingProxyType

from hypothesis import strategies as st

from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    Action,
    AddressBinding,
    Assertion,
    Direction,
    FailsafeEntry,
    Invariant,
    InvariantKind,
    IPNetwork,
    Mode,
    Network,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    Segment,
    ServicePort,
    Settings,
    Tier,
    TierDefault,
    User,
    Workload,
    WorkloadKind,
)
from septum.model.selector import Selector, parse_selector
from septum.testing.builders import T0

__all__ = [
    "CIDR_POOL",
    "NETWORK_POOL",
    "PORT_SPACE",
    "T0",
    "V4_POOL",
    "V6_POOL",
    "invariants",
    "peers",
    "repositories",
    "rules",
    "segment_name",
    "selectors",
    "service_ports",
    "with_invariants",
]

#: Rules and invariants use ports 1..PORT_SPACE only.
PORT_SPACE = 6

#: Workload and session addresses. A few lie inside NETWORK_POOL ranges on purpose (held
#: addresses are not network endpoints).
V4_POOL: tuple[str, ...] = (
    *(f"198.18.0.{i}" for i in range(1, 9)),
    "198.18.1.1",
    "198.19.0.1",
    "198.19.0.9",
    "198.19.0.13",
)
V6_POOL: tuple[str, ...] = ("2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:1::1")

#: (cidr, possible excepts) of the networks a repository may define; each has ≤ 8 addresses.
NETWORK_POOL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("198.19.0.0/29", ("198.19.0.4/30", "198.19.0.6/31")),
    ("198.19.0.8/29", ("198.19.0.12/30",)),
    ("198.19.0.0/30", ()),
    ("2001:db8:1::/126", ("2001:db8:1::2/127",)),
)

#: CIDR peers and failsafe cidrs: nested, overlapping and crossing the pools above.
CIDR_POOL: tuple[str, ...] = (
    "198.18.0.0/15",
    "198.18.0.0/29",
    "198.18.0.4/30",
    "198.18.0.2/31",
    "198.18.0.8/32",
    "198.19.0.0/28",
    "198.19.0.2/31",
    "198.19.0.8/30",
    "198.19.0.13/32",
    "2001:db8::/32",
    "2001:db8::2/127",
    "2001:db8:1::/127",
)

_KEYS = ("app", "env")
_VALUES = ("a", "b")
_ZONES = ("x", "y")


def _label_maps() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(_VALUES), max_size=2)


def _atom_texts() -> st.SearchStrategy[str]:
    key = st.sampled_from(_KEYS)
    value = st.sampled_from(_VALUES)
    return st.one_of(
        st.builds(lambda k, v: f'{k} == "{v}"', key, value),
        st.builds(lambda k, v: f'{k} != "{v}"', key, value),
        st.builds(lambda k: f"has({k})", key),
        st.builds(lambda k: f"!has({k})", key),
        st.builds(lambda k: f'{k} in {{"a", "b"}}', key),
        st.builds(lambda z: f'zone == "{z}"', st.sampled_from(_ZONES)),
        st.sampled_from(('septum.io/kind == "network"', 'septum.io/name == "w0"')),
    )


def selectors() -> st.SearchStrategy[Selector]:
    """Random selectors over the tiny label alphabet: single terms, ``&&``/``||`` of two
    terms, or ``all()``."""
    term = _atom_texts()
    text = st.one_of(
        term,
        term,
        st.builds(lambda a, b: f"{a} && {b}", term, term),
        st.builds(lambda a, b: f"{a} || {b}", term, term),
        st.just("all()"),
    )
    return text.map(parse_selector)


def service_ports(*, with_any: bool = True) -> st.SearchStrategy[ServicePort]:
    """tcp/udp port ranges in 1..PORT_SPACE, whole protocols, icmp and (optionally) ``any``."""

    def ranged(protocol: Protocol) -> st.SearchStrategy[ServicePort]:
        bounds = st.tuples(st.integers(1, PORT_SPACE), st.integers(1, PORT_SPACE)).map(sorted)
        return bounds.map(lambda b: ServicePort(protocol, PortRange(b[0], b[1])))

    options = [
        ranged(Protocol.TCP),
        ranged(Protocol.TCP),
        ranged(Protocol.UDP),
        st.just(ServicePort(Protocol.TCP)),
        st.just(ServicePort(Protocol.ICMP)),
        st.just(ServicePort(Protocol.ICMPV6)),
    ]
    if with_any:
        options.append(st.just(ServicePort(None)))
    return st.one_of(*options)


def segment_name(selector: Selector) -> str:
    """The name the strategies give the Segment whose selector is ``selector``."""
    return f"seg-{zlib.crc32(selector.text.encode()):08x}"


def peers(network_names: tuple[str, ...] = ()) -> st.SearchStrategy[Peer]:
    """Selector, segment, CIDR, network (when ``network_names``) and users peers."""
    options: list[st.SearchStrategy[Peer]] = [
        selectors().map(lambda s: Peer(PeerKind.SELECTOR, selector=s)),
        selectors().map(lambda s: Peer(PeerKind.SEGMENT, selector=s, ref=segment_name(s))),
        st.sampled_from(CIDR_POOL).map(lambda c: Peer(PeerKind.CIDR, cidr=ip_network(c))),
        st.just(Peer(PeerKind.USERS, selector=parse_selector("all()"))),
    ]
    if network_names:
        options.append(st.sampled_from(network_names).map(lambda n: Peer(PeerKind.NETWORK, ref=n)))
    return st.one_of(*options)


@st.composite
def rules(draw: st.DrawFn, network_names: tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """0..3 rules, numbered by position, some expired before T0."""
    count = draw(st.integers(0, 3))
    out: list[Rule] = []
    for index in range(count):
        expired = draw(st.integers(0, 9)) == 0
        out.append(
            Rule(
                action=draw(st.sampled_from(tuple(Action))),
                index=index,
                peers=tuple(draw(st.lists(peers(network_names), max_size=2))),
                services=tuple(draw(st.lists(service_ports(), max_size=2))),
                expires=T0 - timedelta(hours=1) if expired else None,
            )
        )
    return tuple(out)


def _workload(
    name: str,
    labels: dict[str, str],
    bindings: tuple[AddressBinding, ...],
    mode: Mode,
    enforcer: str | None,
) -> Workload:
    all_labels = dict(labels)
    all_labels[KIND_LABEL] = WorkloadKind.HOST.value
    all_labels[NAME_LABEL] = name
    return Workload(
        name=name,
        kind=WorkloadKind.HOST,
        labels=MappingProxyType(all_labels),
        addresses=bindings,
        enforcer=enforcer,
        mode=mode,
    )


@st.composite
def repositories(draw: st.DrawFn, min_workloads: int = 3, max_workloads: int = 8) -> Repository:
    """A small random, valid repository (no two workloads hold one address at T0)."""
    n = draw(st.integers(min_workloads, max_workloads))
    v4 = draw(st.permutations(V4_POOL))
    v6 = draw(st.permutations(V6_POOL))
    workloads: list[Workload] = []
    used_v4 = 0
    used_v6 = 0
    for i in range(n):
        bindings: list[AddressBinding] = [AddressBinding(ip_address(v4[used_v4]))]
        used_v4 += 1
        extra = draw(st.integers(0, 5))
        if extra == 0 and used_v6 < len(v6):  # a second, IPv6 address
            bindings.append(AddressBinding(ip_address(v6[used_v6])))
            used_v6 += 1
        elif extra == 1 and used_v4 + (n - i) <= len(v4):  # an address not valid at T0
            # (only while the pool still holds one address for each remaining workload)
            bindings.append(
                AddressBinding(ip_address(v4[used_v4]), valid_from=T0 + timedelta(days=1))
            )
            used_v4 += 1
        workloads.append(
            _workload(
                f"w{i}",
                draw(_label_maps()),
                tuple(bindings),
                draw(st.sampled_from(tuple(Mode))),
                draw(st.sampled_from((None, "h1"))),
            )
        )

    networks: list[Network] = []
    for i, (cidr, excepts) in enumerate(
        draw(st.lists(st.sampled_from(NETWORK_POOL), max_size=2, unique=True))
    ):
        chosen = draw(st.lists(st.sampled_from(excepts), max_size=1)) if excepts else []
        name = f"n{i}"
        labels = {"zone": draw(st.sampled_from(_ZONES)), KIND_LABEL: "network", NAME_LABEL: name}
        networks.append(
            Network(
                name=name,
                labels=MappingProxyType(labels),
                cidrs=(ip_network(cidr),),
                excepts=tuple(ip_network(e) for e in chosen),
            )
        )
    network_names = tuple(n.name for n in networks)

    users: list[User] = []
    if used_v4 < len(v4) and draw(st.booleans()):
        users.append(
            User(
                name="u0",
                labels=MappingProxyType({KIND_LABEL: "user", NAME_LABEL: "u0"}),
                sessions=(AddressBinding(ip_address(v4[used_v4])),),
            )
        )

    tiers = [
        Tier(
            name=f"t{i}",
            order=draw(st.integers(0, 2)),
            default_action=draw(st.sampled_from(tuple(TierDefault))),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    direction_rules = st.one_of(st.none(), rules(network_names))
    policies = [
        Policy(
            name=f"p{i}",
            tier=draw(st.sampled_from(tiers)).name,
            order=draw(st.integers(0, 2)),
            applies_to=draw(selectors()),
            mode=draw(st.sampled_from((PolicyMode.ENFORCE, PolicyMode.ENFORCE, PolicyMode.STAGED))),
            ingress=draw(direction_rules),
            egress=draw(direction_rules),
        )
        for i in range(draw(st.integers(0, 5)))
    ]

    failsafe: list[FailsafeEntry] = []
    if draw(st.booleans()):
        cidrs: tuple[IPNetwork, ...] = tuple(
            ip_network(c) for c in draw(st.lists(st.sampled_from(CIDR_POOL), max_size=1))
        )
        failsafe.append(
            FailsafeEntry(
                direction=draw(st.sampled_from((None, Direction.INGRESS, Direction.EGRESS))),
                services=tuple(
                    draw(st.lists(service_ports(with_any=False), min_size=1, max_size=1))
                ),
                cidrs=cidrs,
            )
        )
    settings = Settings(
        default_action=draw(st.sampled_from(tuple(RepositoryDefault))),
        default_mode=Mode.ENFORCED,
        failsafe=tuple(failsafe),
        cidr_matches_workloads=draw(st.booleans()),
    )
    segments = {
        peer.ref: Segment(peer.ref, peer.selector)
        for p in policies
        for rs in (p.ingress, p.egress)
        for r in rs or ()
        for peer in r.peers
        if peer.kind is PeerKind.SEGMENT and peer.ref is not None and peer.selector is not None
    }
    return Repository(
        workloads=tuple(workloads),
        segments=tuple(segments[k] for k in sorted(segments)),
        networks=tuple(networks),
        tiers=tuple(tiers),
        policies=tuple(policies),
        users=tuple(users),
        settings=settings,
    )


@st.composite
def invariants(draw: st.DrawFn) -> Invariant:
    """A random ``never``/``always`` invariant; services absent (every protocol and port) or
    one or two service ports."""
    services = draw(
        st.one_of(st.just(()), st.lists(service_ports(), min_size=1, max_size=2).map(tuple))
    )
    return Invariant(
        kind=draw(st.sampled_from(tuple(InvariantKind))),
        source=draw(selectors()),
        target=draw(selectors()),
        services=services,
    )


def with_invariants(repo: Repository, checks: list[Invariant]) -> Repository:
    """``repo`` with one Assertion per invariant (named ``i0``, ``i1``, ...)."""
    return replace(
        repo,
        assertions=tuple(Assertion(f"i{i}", check) for i, check in enumerate(checks)),
    )
