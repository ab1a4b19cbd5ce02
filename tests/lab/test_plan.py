"""The lab without the kernel: the plan, the commands it turns into, and the probe set."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

import septum.lab
from septum.lab.netns import Step, address_sync_phases, topology_phases
from septum.lab.plan import LAB_RANGES, EndpointRole, LabError, LabPlan, plan_lab
from septum.lab.probe import ANY_PORT, probe_set, probe_targets
from septum.model.resources import Protocol, Repository
from septum.sources.files import load_repository
from tests.conftest import EXAMPLES, EXAMPLES_AT

PREFIX = "septum-plan-"
AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def workload(name: str, kind: str, addresses: str, enforcer: str | None = None) -> str:
    extra = f"\n  enforcer: {enforcer}" if enforcer else ""
    return (
        textwrap.dedent(f"""\
        apiVersion: septum/v1
        kind: Workload
        metadata: {{name: {name}, labels: {{app: {name}}}}}
        spec:
          kind: {kind}
          addresses: {addresses}""")
        + extra
        + "\n"
    )


def repository(tmp_path: Path, *documents: str) -> Repository:
    (tmp_path / "repo.yaml").write_text("---\n".join(documents))
    return load_repository(tmp_path)


def container_estate(tmp_path: Path) -> Repository:
    return repository(
        tmp_path,
        workload("box", "host", "[198.18.30.10, 2001:db8:30::10]", "host-box"),
        workload("web", "container", "[198.18.30.11, 2001:db8:30::11]", "host-box"),
        workload("db", "container", "[198.18.30.12]", "host-box"),
        workload("other", "vm", "[198.18.1.1, 2001:db8:1::1]", "vm-other"),
    )


# ---------------------------------------------------------------------------- plan


def test_examples_plan_has_every_workload_and_two_container_hosts() -> None:
    plan = plan_lab(load_repository(EXAMPLES), EXAMPLES_AT, PREFIX)
    assert len(plan.endpoints) == 26
    assert not plan.skipped
    assert len(plan.containers) == 6
    assert len(plan.containers_of("dev-docker-1")) == 5
    assert [c.name for c in plan.containers_of("shop-api-prod-1")] == ["shop-cache-prod-1"]
    assert len(plan.agents) == len(plan.hosts) == 20  # every host names its enforcer
    assert plan.bridge_namespace == "septum-plan-br"
    for e in plan.endpoints:
        assert e.namespace == PREFIX + e.short
        assert len(e.peer_interface) <= 15
        assert all(any(a in net for net in LAB_RANGES) for a in e.addresses)
    loadgen = plan.endpoint("shop-loadgen-1")  # the cloud workload plays a host
    assert loadgen.role is EndpointRole.HOST
    assert loadgen.enforcer == "aws-eu-west-1"


def test_plan_json_round_trips() -> None:
    plan = plan_lab(load_repository(EXAMPLES), EXAMPLES_AT, PREFIX)
    assert LabPlan.from_json(plan.to_json()) == plan


def test_address_outside_lab_ranges_names_workload_address_and_position(tmp_path: Path) -> None:
    repo = repository(
        tmp_path,
        workload("ok", "host", "[198.18.1.1]", "h-ok"),
        workload("leaky", "host", "[198.18.1.2, 10.0.0.5]", "h-leaky"),
    )
    with pytest.raises(LabError) as info:
        plan_lab(repo, AT, PREFIX)
    message = str(info.value)
    assert "'leaky'" in message
    assert "10.0.0.5" in message
    assert re.search(r"repo\.yaml:\d+:\d+", message), message


def test_ipv6_outside_documentation_range_is_refused(tmp_path: Path) -> None:
    repo = repository(tmp_path, workload("v6", "host", "[198.18.1.1, 2001:db9::1]", "h"))
    with pytest.raises(LabError, match="2001:db9::1"):
        plan_lab(repo, AT, PREFIX)


def test_only_addresses_valid_now_are_used_and_future_ones_are_checked(tmp_path: Path) -> None:
    addresses = (
        "[{address: 198.18.1.1, until: 2026-01-01T00:00:00Z},"
        " {address: 198.18.1.2, from: 2026-01-01T00:00:00Z},"
        " {address: 10.1.1.1, until: 2025-01-01T00:00:00Z}]"  # expired: never used, fine
    )
    repo = repository(
        tmp_path,
        workload("moved", "host", addresses, "h-moved"),
        workload("later", "host", "[{address: 198.18.1.9, from: 2027-01-01T00:00:00Z}]", "h-l"),
    )
    plan = plan_lab(repo, AT, PREFIX)
    assert plan.endpoint("moved").addresses == (ipaddress.ip_address("198.18.1.2"),)
    assert [name for name, _ in plan.skipped] == ["later"]
    future = repository(
        tmp_path, workload("soon", "host", "[{address: 10.0.0.1, from: 2027-01-01T00:00:00Z}]")
    )
    with pytest.raises(LabError, match=r"10\.0\.0\.1"):
        plan_lab(future, AT, PREFIX)


def test_container_needs_exactly_one_host(tmp_path: Path) -> None:
    orphan = repository(tmp_path, workload("c", "container", "[198.18.1.5]", "nobody"))
    with pytest.raises(LabError, match="no host workload has its enforcer"):
        plan_lab(orphan, AT, PREFIX)
    shared = repository(
        tmp_path,
        workload("a", "host", "[198.18.1.1]", "same"),
        workload("b", "vm", "[198.18.1.2]", "same"),
    )
    with pytest.raises(LabError, match="enforcer 'same' is named by 'a' and 'b'"):
        plan_lab(shared, AT, PREFIX)
    homeless = repository(
        tmp_path,
        workload("h", "host", "[{address: 198.18.1.1, until: 2026-01-01T00:00:00Z}]", "e"),
        workload("c", "container", "[198.18.1.5]", "e"),
    )
    with pytest.raises(LabError, match="holds no address"):
        plan_lab(homeless, AT, PREFIX)


@pytest.mark.parametrize("prefix", ["", "x", "Septum-", "septum", "a b-", "-x-", "a" * 41 + "-"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(LabError, match="prefix"):
        plan_lab(Repository(), AT, prefix)


# ---------------------------------------------------------------------------- commands


def _lines(phases: list[list[Step]]) -> list[tuple[str | None, str]]:
    return [(s.namespace, line) for phase in phases for s in phase for line in s.lines]


def _sysctls(phases: list[list[Step]]) -> dict[tuple[str | None, str], str]:
    return {(s.namespace, k): v for phase in phases for s in phase for k, v in s.sysctls}


def test_topology_routes_containers_through_their_host(tmp_path: Path) -> None:
    plan = plan_lab(container_estate(tmp_path), AT, PREFIX)
    box, web = plan.endpoint("box"), plan.endpoint("web")
    phases = topology_phases(plan)
    lines, sysctls = _lines(phases), _sysctls(phases)
    assert (None, f"netns add {PREFIX}br") in lines
    assert (box.namespace, "link add cbr0 type bridge mcast_snooping 0") in lines
    # containers' bridge ports cannot talk to each other: the host routes them (FORWARD)
    assert (box.namespace, f"link set {web.peer_interface} type bridge_slave isolated on") in lines
    assert sysctls[box.namespace, "net.ipv4.conf.cbr0.proxy_arp_pvlan"] == "1"
    assert sysctls[box.namespace, "net.ipv4.ip_forward"] == "1"
    assert sysctls[web.namespace, "net.ipv6.conf.all.accept_redirects"] == "0"
    assert (web.namespace, "route add 2001:db8::/32 via fe80::1 dev eth0") in lines
    assert (box.namespace, "route add 198.18.30.11/32 dev cbr0") in lines
    assert (box.namespace, "neigh add proxy 2001:db8:30::11 dev eth0") in lines
    assert (box.namespace, "addr add 2001:db8:30::10/128 dev eth0 nodad") in lines
    other = plan.endpoint("other")
    assert (other.namespace, "route add 2001:db8::/32 dev eth0") in lines
    assert (other.namespace, "net.ipv4.ip_forward") not in sysctls  # only hosts of containers


def test_topology_uses_no_address_outside_the_lab_ranges(tmp_path: Path) -> None:
    """Every address or prefix in every command is in the lab ranges or link-local."""
    plan = plan_lab(load_repository(EXAMPLES), EXAMPLES_AT, PREFIX)
    tokens = [t for _, line in _lines(topology_phases(plan)) for t in line.split()]
    seen = 0
    for token in tokens:
        try:
            net = ipaddress.ip_network(token, strict=False)
        except ValueError:
            continue
        seen += 1
        in_lab = any(r.version == net.version and net.subnet_of(r) for r in LAB_RANGES)
        assert net.is_link_local or in_lab, token
    assert seen > 60


def test_address_sync_adds_then_removes_then_restores_routes(tmp_path: Path) -> None:
    plan = plan_lab(container_estate(tmp_path), AT, PREFIX)
    box, web = plan.endpoint("box"), plan.endpoint("web")
    old = ipaddress.ip_address("198.18.30.99")
    current = {e.name: frozenset(e.addresses) for e in plan.endpoints}
    current["web"] = frozenset({old, ipaddress.ip_address("2001:db8:30::11")})
    phases, changes = address_sync_phases(plan, current)
    assert changes == {"web": ([ipaddress.ip_address("198.18.30.11")], [old])}
    additions, removals, routes = (_lines([phase]) for phase in phases)
    assert (web.namespace, "addr add 198.18.30.11/32 dev eth0") in additions
    assert (box.namespace, "route replace 198.18.30.11/32 dev cbr0") in additions
    assert (web.namespace, "addr del 198.18.30.99/32 dev eth0") in removals
    assert (box.namespace, "route del 198.18.30.99/32 dev cbr0") in removals
    assert all(s.force for s in phases[1])
    # removing a container's last IPv4 address flushes its routes: they are put back
    assert routes == [
        (web.namespace, "route replace 198.18.0.0/15 dev eth0"),
        (web.namespace, "route replace 2001:db8::/32 via fe80::1 dev eth0"),
    ]
    nothing, none = address_sync_phases(
        plan, {e.name: frozenset(e.addresses) for e in plan.endpoints}
    )
    assert none == {}
    assert not _lines(nothing)


def test_address_moving_between_containers_keeps_the_host_route(tmp_path: Path) -> None:
    plan = plan_lab(container_estate(tmp_path), AT, PREFIX)
    box = plan.endpoint("box")
    moved = ipaddress.ip_address("198.18.30.12")  # now db's; it was web's
    current = {e.name: frozenset(e.addresses) for e in plan.endpoints}
    current["web"] = current["web"] | {moved}
    current["db"] = frozenset()
    phases, _ = address_sync_phases(plan, current)
    assert (box.namespace, "route del 198.18.30.12/32 dev cbr0") not in _lines([phases[1]])
    assert (box.namespace, "route replace 198.18.30.12/32 dev cbr0") in _lines([phases[0]])


# ---------------------------------------------------------------------------- probes


def test_probe_targets_cover_services_inline_ports_and_failsafe(tmp_path: Path) -> None:
    services = textwrap.dedent("""\
        apiVersion: septum/v1
        kind: Service
        metadata: {name: mixed}
        spec:
          ports: [tcp/443, udp/53, tcp/8000-8099, tcp/0-10, icmp, sctp/9, any]
        ---
        apiVersion: septum/v1
        kind: Tier
        metadata: {name: t}
        spec: {order: 1}
        ---
        apiVersion: septum/v1
        kind: Policy
        metadata: {name: p}
        spec:
          tier: t
          ingress:
            - action: allow
              services: [mixed]
              ports: [udp/5000]
        ---
        apiVersion: septum/v1
        kind: Settings
        metadata: {name: settings}
        spec:
          failsafe:
            - {direction: ingress, ports: [tcp/22], cidrs: [198.19.255.0/24]}
        """)
    targets, skipped = probe_targets(repository(tmp_path, services))
    assert targets == {
        (Protocol.TCP, 1): ("mixed",),
        (Protocol.TCP, ANY_PORT): ("mixed",),
        (Protocol.TCP, 10): ("mixed",),
        (Protocol.TCP, 22): ("failsafe",),
        (Protocol.TCP, 443): ("mixed",),
        (Protocol.TCP, 8000): ("mixed",),
        (Protocol.TCP, 8099): ("mixed",),
        (Protocol.UDP, 53): ("mixed",),
        (Protocol.UDP, 5000): ("policy p",),
    }
    assert skipped == {"icmp": 1, "sctp": 1}


def test_probe_set_is_every_ordered_pair_in_every_shared_family(tmp_path: Path) -> None:
    plan = plan_lab(container_estate(tmp_path), AT, PREFIX)
    targets = {(Protocol.TCP, 80): ("web",), (Protocol.UDP, 53): ("dns",)}
    probes = probe_set(plan, targets)
    dual = {"box", "web", "other"}  # db is IPv4 only
    pairs = 4 * 3
    assert len(probes) == 2 * (pairs + len(dual) * (len(dual) - 1))
    assert not any(p.source == p.destination for p in probes)
    assert all(p.source_address.version == p.destination_address.version for p in probes)
    assert {str(p.source_address) for p in probes if p.source == "web"} == {
        "198.18.30.11",
        "2001:db8:30::11",
    }


def test_examples_probe_set_size() -> None:
    repo = load_repository(EXAMPLES)
    targets, _ = probe_targets(repo)
    assert (Protocol.TCP, 9100) in targets
    assert (Protocol.TCP, 9199) in targets
    assert (Protocol.UDP, 53) in targets
    probes = probe_set(plan_lab(repo, EXAMPLES_AT, PREFIX), targets)
    assert len(probes) > 5000


# ---------------------------------------------------------------------------- package


def test_public_names_resolve() -> None:
    for name in septum.lab.__all__:
        assert getattr(septum.lab, name) is not None
    with pytest.raises(AttributeError):
        _ = septum.lab.nothing_here  # type: ignore[attr-defined]


def test_node_starts_without_the_engine() -> None:
    """One node runs per workload: its import must stay light (standard library only)."""
    code = (
        "import sys, septum.lab.node; "
        "print(sorted(m for m in sys.modules if m.startswith('septum')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['septum', 'septum.lab', 'septum.lab.node']"
