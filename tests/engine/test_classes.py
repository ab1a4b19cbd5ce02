"""The partition machinery: port intervals, address intervals, signatures, pair blocks."""

from __future__ import annotations

import itertools
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.attribution import EndpointKind
from septum.engine.classes import (
    AddressInterval,
    Atoms,
    RangeIndex,
    Role,
    address_ranges,
    build_partition,
    pair_blocks,
    port_intervals,
    protocols_for_version,
    repository_services,
    split_ranges,
)
from septum.model.resources import Mode, Protocol
from septum.model.selector import parse_selector
from septum.testing.builders import (
    T0,
    cidr,
    failsafe,
    net,
    network,
    parse_port,
    policy,
    repo,
    rule,
    tier,
    user,
    workload,
)
from septum.testing.builders import (
    settings as repo_settings,
)


def iv(first: str, last: str) -> AddressInterval:
    a, b = ip_address(first), ip_address(last)
    return AddressInterval(a.version, int(a), int(b))


# ------------------------------------------------------------------------------------- ports


def test_port_intervals_split_at_every_boundary() -> None:
    got = port_intervals([parse_port("tcp/80"), parse_port("tcp/8000-8099"),
                          parse_port("udp/53")], protocols=[Protocol.TCP, Protocol.UDP])
    assert [str(p) for p in got] == [
        "tcp/0-79", "tcp/80", "tcp/81-7999", "tcp/8000-8099", "tcp/8100-65535",
        "udp/0-52", "udp/53", "udp/54-65535",
    ]
    assert all(p.representative == p.first for p in got)


def test_port_intervals_restrict_and_icmp_points() -> None:
    got = port_intervals([parse_port("tcp/1-10")], restrict=[parse_port("tcp/5-20"),
                                                              parse_port("icmp")])
    assert [str(p) for p in got] == ["tcp/5-10", "tcp/11-20", "icmp"]
    every = port_intervals([])
    assert [str(p) for p in every] == ["tcp/0-65535", "udp/0-65535", "sctp/0-65535", "icmp",
                                       "icmpv6"]
    assert [str(p) for p in port_intervals([], [parse_port("any")])] == [str(p) for p in every]
    assert [str(p) for p in port_intervals([], [parse_port("udp")])] == ["udp/0-65535"]


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)).map(sorted), max_size=5))
def test_port_intervals_are_uniform_and_cover(ranges: list[list[int]]) -> None:
    services = [parse_port(f"tcp/{a}-{b}") for a, b in ranges]
    got = port_intervals(services, protocols=[Protocol.TCP])
    assert got[0].first == 0
    assert got[-1].last == 65535
    assert all(a.last + 1 == b.first for a, b in itertools.pairwise(got))
    for p in got:
        for s in services:  # each service covers all of an interval or none of it
            assert s.matches(Protocol.TCP, p.first) == s.matches(Protocol.TCP, p.last)


def test_protocols_for_version() -> None:
    assert protocols_for_version(4)[-1] is Protocol.ICMP
    assert protocols_for_version(6)[-1] is Protocol.ICMPV6


def test_repository_services_include_failsafe() -> None:
    r = repo(policy("p", "t", ingress=[rule("allow", ports=["tcp/1"])]),
             repo_settings(failsafe=[failsafe("ingress", "tcp/22")]))
    assert {str(s) for s in repository_services(r)} == {"tcp/1", "tcp/22"}


# --------------------------------------------------------------------------------- addresses


def test_address_ranges_minus_excepts_v4_and_v6() -> None:
    got = address_ranges(
        [ip_network("198.19.0.0/29"), ip_network("2001:db8::/126")],
        [ip_network("198.19.0.4/31"), ip_network("2001:db8::/127")],
    )
    assert [str(x) for x in got] == [
        "198.19.0.0-198.19.0.3", "198.19.0.6-198.19.0.7", "2001:db8::2-2001:db8::3",
    ]
    assert address_ranges([ip_network("198.19.0.0/30")], [ip_network("198.18.0.0/15")]) == ()


def test_split_ranges_at_cut_boundaries() -> None:
    got = split_ranges([iv("198.19.0.0", "198.19.0.15")],
                       [iv("198.19.0.4", "198.19.0.7"), iv("198.19.0.6", "198.19.0.6"),
                        iv("2001:db8::", "2001:db8::1")])
    assert [str(x) for x in got] == [
        "198.19.0.0-198.19.0.3", "198.19.0.4-198.19.0.5", "198.19.0.6",
        "198.19.0.7", "198.19.0.8-198.19.0.15",
    ]


def test_range_index_lookup_and_segments() -> None:
    a, b = iv("198.18.0.0", "198.18.0.255"), iv("198.18.0.16", "198.18.0.31")
    index = RangeIndex[str](4, [("a", a.first, a.last), ("b", b.first, b.last),
                                ("all", 0, (1 << 32) - 1)])
    assert index.lookup(int(ip_address("198.18.0.17"))) == {"a", "b", "all"}
    assert index.lookup(int(ip_address("198.18.0.32"))) == {"a", "all"}
    assert index.lookup(int(ip_address("198.19.0.0"))) == {"all"}
    segments = list(index.segments())
    assert segments[0][0].first == 0
    assert segments[-1][0].last == (1 << 32) - 1
    assert len(segments) == 5


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(24, 32)), min_size=1, max_size=4))
def test_range_index_agrees_with_containment(nets: list[tuple[int, int]]) -> None:
    cidrs = [ip_network(f"198.18.0.{(i * 8) % 256}/{p}", strict=False) for i, p in nets]
    index = RangeIndex[str](4, [(str(c), int(c.network_address), int(c.broadcast_address))
                                for c in cidrs])
    for host in range(0, 64):
        a = ip_address(f"198.18.0.{host}")
        assert index.lookup(int(a)) == {str(c) for c in cidrs if a in c}


# -------------------------------------------------------------------------------- signatures


def test_workload_signatures_group_equivalent_addresses() -> None:
    r = repo(
        tier("t", 1),
        workload("a1", "198.18.0.1", app="a"),
        workload("a2", "198.18.0.2", app="a"),
        workload("a3", "198.18.0.9", app="a"),  # outside the cidr peer
        workload("a4", "198.18.0.3", app="a", mode=Mode.TEST),
        workload("b1", "198.18.0.4", "2001:db8::4", app="b"),
        workload("late", ("198.18.0.5", T0.replace(year=2030), None), app="a"),
        policy("p", "t", applies_to='app == "a"',
               ingress=[rule("allow", cidr("198.18.0.0/29"))]),
    )
    p = build_partition(r, T0)
    groups = sorted(sorted(m.name for m in c.members) for c in p)
    assert groups == [["a1", "a2"], ["a3"], ["a4"], ["b1"], ["b1"]]  # b1: v4 and v6 apart
    a12 = next(c for c in p if c.members[0].name == "a1")
    assert a12.signature.cidrs == {ip_network("198.18.0.0/29")}
    assert parse_selector('app == "a"') in a12.signature.selectors
    assert [w.name for w in a12.witnesses] == ["a1", "a2"]


def test_network_intervals_split_skip_held_and_pick_lowest_free() -> None:
    r = repo(
        workload("w", "198.19.0.0"),
        user("alice", "198.19.0.1"),
        network("net", "198.19.0.0/29", excepts=["198.19.0.6/31"], zone="z"),
        network("inner", "198.19.0.2/31", zone="q"),
        policy("p", "t", egress=[rule("allow", cidr("198.19.0.4/32"), net("inner"))]),
    )
    z = parse_selector('zone == "z"')
    p = build_partition(r, T0, [z], [z])
    nets = [c for c in p if c.signature.kind is EndpointKind.NETWORK]
    intervals = {str(m.interval): m for c in nets for m in c.members}
    assert "198.19.0.0-198.19.0.1" not in intervals  # both held (workload, user session)
    assert set(intervals) == {"198.19.0.2-198.19.0.3", "198.19.0.4", "198.19.0.5"}
    assert intervals["198.19.0.2-198.19.0.3"].name == "inner,net"
    assert intervals["198.19.0.2-198.19.0.3"].free == (ip_address("198.19.0.2"),
                                                       ip_address("198.19.0.3"))
    by_interval = {str(c.members[0].interval): c for c in nets}
    inner = by_interval["198.19.0.2-198.19.0.3"].signature
    assert inner.networks == {"inner"}
    assert by_interval["198.19.0.4"].signature.cidrs == {ip_network("198.19.0.4/32")}
    # 198.19.0.5 and nothing else: its own class (no cidr, not in inner)
    assert len(nets) == 3


def test_network_selected_only_when_a_network_selector_selects_it() -> None:
    r = repo(network("net", "198.19.0.0/30", zone="z"), workload("w", "198.18.0.1"))
    assert all(c.signature.kind is EndpointKind.WORKLOAD for c in build_partition(r, T0))


def test_selector_matches_any_network_containing_the_address() -> None:
    r = repo(network("big", "198.19.0.0/30", zone="z"),
             network("small", "198.19.0.2/31", tag="x"))
    z, x = parse_selector('zone == "z"'), parse_selector('tag == "x"')
    p = build_partition(r, T0, [z, x], [z])
    sigs = {str(c.members[0].interval): c.signature for c in p}
    assert x in sigs["198.19.0.2-198.19.0.3"].selectors
    assert x not in sigs["198.19.0.0-198.19.0.1"].selectors


def test_pair_with_needs_distinct_endpoints() -> None:
    r = repo(workload("solo", "198.18.0.1", "198.18.0.2", app="a"),
             network("one", "198.19.0.1/32", zone="z"),
             network("two", "198.19.0.2/31", zone="y"))
    sels = [parse_selector('zone == "z"'), parse_selector('zone == "y"')]
    p = build_partition(r, T0, sels, sels)
    solo = next(c for c in p if c.signature.kind is EndpointKind.WORKLOAD)
    one = next(c for c in p if c.members[0].name == "one")
    two = next(c for c in p if c.members[0].name == "two")
    assert solo.pair_with(solo) is None
    assert one.pair_with(one) is None
    pair = two.pair_with(two)
    assert pair is not None
    assert pair[0].address != pair[1].address
    assert solo.pair_with(one) is not None


# ------------------------------------------------------------------------------- pair blocks


def test_atoms_for_role() -> None:
    r = repo(policy("p", "t", applies_to='app == "db"',
                    ingress=[rule("allow", 'app == "web"', cidr("198.18.0.0/24"))]),
             repo_settings(failsafe=[failsafe("egress", "tcp/1", cidrs=["198.19.0.0/24"])]))
    src = Atoms.for_role(r, Role.SOURCE)
    tgt = Atoms.for_role(r, Role.TARGET)
    assert src.selectors == {parse_selector('app == "web"')}
    assert src.cidrs == {ip_network("198.18.0.0/24")}
    assert tgt.selectors == {parse_selector('app == "db"')}
    assert tgt.cidrs == {ip_network("198.19.0.0/24")}


def test_pair_blocks_coarsen_by_what_the_plans_read() -> None:
    r = repo(
        tier("t", 1),
        *(workload(f"web-{i}", f"198.18.0.{i}", app="web", color=str(i % 3))
          for i in range(1, 10)),
        workload("db", "198.18.1.1", app="db"),
        policy("db", "t", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/5432"])]),
        policy("web", "t", applies_to='color == "1"', egress=[rule("allow", ports=["tcp/1"])]),
    )
    web, db = parse_selector('app == "web"'), parse_selector('app == "db"')
    p = build_partition(r, T0, [web, db])
    blocks = list(pair_blocks(r, p.select(web), p.select(db)))
    assert len(blocks) == 2  # webs with / without an egress policy, one db group
    for b in blocks:
        assert len(b.sources) == 1
        assert len(b.targets) == 1
        assert "tcp/5432" in [str(x) for x in b.ports]
    restricted = list(pair_blocks(r, p.select(web), p.select(db), [parse_port("tcp/5432")]))
    assert all([str(x) for x in b.ports] == ["tcp/5432"] for b in restricted)
