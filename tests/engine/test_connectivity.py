"""Connectivity analysis: computed over classes, it must agree with brute-force ``explain``
over every workload address pair and every external address and port that could differ."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import HealthCheck, given, settings

from septum.engine.classes import AddressInterval, repository_services
from septum.engine.connectivity import (
    ConnectivityOptions,
    ReportFormat,
    analyze_connectivity,
    canonical,
    diff_connectivity,
    format_connectivity,
    parse_connlist,
    port_set_of,
)
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.engine.sides import PROTOCOLS
from septum.model.resources import IPAddress, Protocol, Repository
from septum.testing.builders import (
    T0,
    cidr,
    policy,
    repo,
    rule,
    tier,
    workload,
)
from septum.testing.builders import (
    settings as repo_settings,
)
from septum.testing.strategies import repositories


def _contains(ports: tuple[tuple[int, int, int], ...], protocol: Protocol, port: int) -> bool:
    return any(PROTOCOLS[p] is protocol and a <= port <= b for p, a, b in ports)


def _sample_ports(r: Repository) -> list[tuple[Protocol, int]]:
    """Every port where some service starts or ends (and its neighbours), per protocol."""
    points = {1, 65535}
    for s in repository_services(r):
        if s.protocol is not None and s.protocol.has_ports:
            for x in (s.ports.first, s.ports.last):
                points.update(p for p in (x - 1, x, x + 1) if 1 <= p <= 65535)
    out = [(p, n) for p in (Protocol.TCP, Protocol.UDP, Protocol.SCTP) for n in sorted(points)]
    return [*out, (Protocol.ICMP, 0)]


def _external_samples(r: Repository) -> list[IPAddress]:
    """Addresses at every CIDR and network boundary (IPv4), held by nobody."""
    held = {b.address for w in r.workloads for b in w.addresses}
    held |= {b.address for u in r.users for b in u.sessions}
    points = {0, 2**32 - 1}
    nets = [c for n in r.networks for c in (*n.cidrs, *n.excepts)]
    for p in r.policies:
        for rules in (p.ingress, p.egress):
            for ru in rules or ():
                nets += [x.cidr for x in ru.peers if x.cidr is not None]
    for n in nets:
        if n.version == 4:
            iv = AddressInterval.of(n)
            points.update(x for x in (iv.first - 1, iv.first, iv.last, iv.last + 1)
                          if 0 <= x < 2**32)
    return [a for a in (ip_address(x) for x in sorted(points)) if a not in held]


def _check_against_explain(r: Repository) -> None:
    opts = ConnectivityOptions(versions=(4,))
    conn = canonical(analyze_connectivity(r, T0, opts))
    ev = Evaluator(r)
    ports = _sample_ports(r)
    v4 = [(w.name, b.address) for w in r.workloads for b in w.addresses
          if b.valid_at(T0) and b.address.version == 4]
    multi = {w.name for w in r.workloads
             if sum(1 for b in w.addresses if b.valid_at(T0) and b.address.version == 4) > 1}

    def label(name: str, address: IPAddress) -> str:
        return f"{name}@{address}" if name in multi else name

    for sn, sa in v4:
        for tn, ta in v4:
            if sn == tn:
                continue
            got = conn.pairs.get((label(sn, sa), label(tn, ta)), ())
            for protocol, port in ports:
                allowed = ev.explain(Flow(sa, ta, protocol, port, T0)).verdict is Verdict.ALLOW
                assert allowed == _contains(got, protocol, port), (sn, tn, protocol, port)
    for address in _external_samples(r):
        for wn, wa in v4:
            for outbound in (True, False):
                ranges = conn.externals.get((label(wn, wa), outbound), ())
                here = next((ps for v, a, b, ps in ranges if v == 4 and a <= int(address) <= b),
                            ())
                for protocol, port in ports:
                    flow = (Flow(wa, address, protocol, port, T0) if outbound
                            else Flow(address, wa, protocol, port, T0))
                    allowed = ev.explain(flow).verdict is Verdict.ALLOW
                    assert allowed == _contains(here, protocol, port), (
                        wn, str(address), outbound, protocol, port)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories())
def test_connectivity_agrees_with_explain_on_random_repositories(r: Repository) -> None:
    _check_against_explain(r)


def _three_tier() -> Repository:
    return repo(
        workload("web", "198.18.0.1", app="web"),
        workload("api", "198.18.0.2", app="api"),
        workload("db", "198.18.0.3", app="db"),
        tier("apps", 10),
        policy("web", "apps", applies_to='app == "web"',
               egress=[rule("allow", 'app == "api"', ports=["tcp/443"])],
               ingress=[rule("allow", cidr("203.0.113.0/24"), ports=["tcp/80"])]),
        policy("api", "apps", applies_to='app == "api"', ingress=[rule("allow", 'app == "web"')],
               egress=[rule("allow", 'app == "db"', ports=["tcp/5432"])]),
        policy("db", "apps", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "api"', ports=["tcp/5432-5433"])], egress=[]),
        repo_settings(default_action="allow"),
    )


def test_three_tier_report_is_the_connlist() -> None:
    conn = analyze_connectivity(_three_tier(), T0, ConnectivityOptions(versions=(4,)))
    assert format_connectivity(conn, ReportFormat.TXT).splitlines() == [
        "203.0.113.0-203.0.113.255[External] => web : TCP 80",
        "api => db : TCP 5432",
        "web => api : TCP 443",
    ]


def test_formats_carry_the_same_rows() -> None:
    conn = analyze_connectivity(_three_tier(), T0, ConnectivityOptions(versions=(4,)))
    assert '"dst": "db"' in format_connectivity(conn, ReportFormat.JSON)
    assert "api,db,TCP 5432" in format_connectivity(conn, ReportFormat.CSV)
    assert "| api | db | TCP 5432 |" in format_connectivity(conn, ReportFormat.MD)
    dot = format_connectivity(conn, ReportFormat.DOT)
    assert dot.startswith("digraph")
    assert '"TCP 5432"' in dot


def test_diff_reports_added_and_removed_ports_and_is_partition_agnostic() -> None:
    universe = port_set_of([(p, 1, 65535) for p in (Protocol.TCP, Protocol.UDP, Protocol.SCTP)])
    old = parse_connlist(
        "a => b : TCP 80\n"
        "a => 0.0.0.0-9.255.255.255[External] : All Connections\n"
        "a => 10.0.0.0-255.255.255.255[External] : All Connections\n",
        universe,
    )
    same = parse_connlist("a => 0.0.0.0-255.255.255.255[External] : All Connections\n"
                          "a => b : TCP 80\n", universe)
    assert diff_connectivity(old, same).empty
    new = parse_connlist("a => b : TCP 80-81,UDP 53\n"
                         "a => 0.0.0.0-9.255.255.255[External] : All Connections\n", universe)
    lines = diff_connectivity(old, new).lines()
    assert "+ a => b : TCP 81,UDP 53" in lines
    assert "- a => 10.0.0.0-255.255.255.255[External] : All Connections" in lines
