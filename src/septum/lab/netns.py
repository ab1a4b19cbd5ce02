"""The lab's network plumbing: namespaces, veths, bridges, addresses and routes, with ``ip``.

The topology (every address on it is in 198.18.0.0/15, 2001:db8::/32 or link-local)::

    <prefix>br:  br0 ── vh0 ─┬─ vh1 ─ … ─ vh<n>            (a plain L2 bridge, no addresses)
                             │
    <prefix>h1:  eth0  host addresses /32 and /128; on-link 198.18.0.0/15, 2001:db8::/32
                  │    (a container host also has:)
                  │    ip_forward=1, ipv6 forwarding=1, send_redirects=0
                  │    proxy_arp=1 (eth0, cbr0), proxy_arp_pvlan=1 (cbr0), proxy_ndp=1 (eth0)
                  │    routes <container>/32 and /128 dev cbr0; ``neigh proxy`` <container v6>
                 cbr0 (fe80::1/64 only) ── vc0 ─ vc1 …  (ports isolated from each other)
                                            │
    <prefix>c0:  eth0  container addresses /32 and /128; 198.18.0.0/15 on-link (proxy ARP),
                       2001:db8::/32 via fe80::1; accept_redirects=0

Why this shape: two containers on one host must reach each other only through the host's
IP forward path, where its agent enforces policy. The bridge ports of the containers are
therefore *isolated* (``bridge_slave isolated on``: no frame passes between two containers at
layer 2) and the host answers ARP for every other address on ``cbr0`` itself
(``proxy_arp_pvlan``, RFC 3069), so container → container is routed: in on ``cbr0``, out on
``cbr0``, through FORWARD. Without isolation a container's own ARP reply races the host's and
traffic may be bridged around the agent. Routing back out the arriving interface makes the
kernel send ICMP redirects (IPv6 cannot be told not to), so containers ignore redirects. The
rest of the estate reaches container addresses through the host's ``eth0`` (proxy ARP and
proxy NDP), so host ↔ container and container ↔ outside cross the host's INPUT, OUTPUT and
FORWARD hooks. No namespace has a default route: nothing can leave the lab ranges.

Settings inherited from the machine (``devconf_inherit_init_net``: IPv4 ``conf/all`` and
``conf/default`` come from the root namespace) are pinned: ``rp_filter``, ``arp_ignore``,
``arp_filter`` 0. DAD is off (``accept_dad=0``, ``nodad``) so that addresses work at once.

Every command goes through a ``CommandRunner`` (the real one runs ``ip``/``sh``; tests can
record). Commands are grouped in phases of per-namespace steps; a step is one ``ip -batch``
(or one ``sh`` writing ``/proc/sys``), so building a lab costs about four processes per
namespace, whatever the number of addresses.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from septum.lab.plan import NAMESPACE_SUFFIX, EndpointRole, LabEndpoint, LabError, LabPlan
from septum.model.resources import IPAddress

__all__ = [
    "CommandRunner",
    "Step",
    "SubprocessRunner",
    "address_sync_phases",
    "apply_phases",
    "delete_namespaces",
    "lab_namespaces",
    "namespace_pids",
    "read_addresses",
    "topology_phases",
]

#: Host-side routes every endpoint gets, so that the whole lab range is on-link (or via the
#: container host for IPv6 in containers).
V4_RANGE = "198.18.0.0/15"
V6_RANGE = "2001:db8::/32"
#: The container host's router address on ``cbr0``: link-local, so it cannot leave the link.
ROUTER_V6 = "fe80::1"

_PARALLEL = 8  # concurrent ``ip`` processes per phase: enough to hide process start-up


class CommandRunner(Protocol):
    """Runs one command; returns its standard output. Raises LabError when ``check`` and the
    command fails."""

    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str: ...


class SubprocessRunner:
    """The real runner: a subprocess per call (a few milliseconds each)."""

    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
        try:
            done = subprocess.run(
                list(argv), input=stdin, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]}: not installed (the lab needs iproute2)") from exc
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()
            shown = " ".join(argv)
            if stdin:
                shown += " <<< " + "; ".join(stdin.strip().splitlines())[:2000]
            raise LabError(f"{shown}: {detail or f'exit status {done.returncode}'}")
        return done.stdout


@dataclass(frozen=True, slots=True)
class Step:
    """One process: an ``ip -batch`` in ``namespace`` (None: the root namespace), or, with
    ``sysctls``, one ``sh`` in the namespace writing ``/proc/sys``. ``force`` keeps a batch
    going after a failing line (for idempotent syncs that delete what may be gone)."""

    namespace: str | None
    lines: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    force: bool = False

    def argv(self) -> tuple[list[str], str | None]:
        if self.sysctls:
            assert self.namespace is not None
            script = "set -e\n" + "".join(
                f"echo {value} > /proc/sys/{key.replace('.', '/')}\n" for key, value in self.sysctls
            )
            return ["ip", "netns", "exec", self.namespace, "sh", "-c", script], None
        argv = ["ip"]
        if self.namespace is not None:
            argv += ["-n", self.namespace]
        if self.force:
            argv.append("-force")
        return [*argv, "-batch", "-"], "".join(line + "\n" for line in self.lines)


Phase = list[Step]


def apply_phases(runner: CommandRunner, phases: Iterable[Phase]) -> None:
    """Run the phases in order, the steps of one phase concurrently (they touch different
    namespaces). The first failure raises LabError after its phase has finished."""
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        for phase in phases:
            steps = [s for s in phase if s.lines or s.sysctls]
            futures = []
            for step in steps:
                argv, stdin = step.argv()
                futures.append(pool.submit(runner.run, argv, stdin=stdin, check=not step.force))
            errors = [f.exception() for f in futures]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first


def _addr_line(verb: str, address: IPAddress, device: str) -> str:
    if address.version == 4:
        return f"addr {verb} {address}/32 dev {device}"
    return f"addr {verb} {address}/128 dev {device}" + (" nodad" if verb == "add" else "")


def _container_host_lines(verb: str, address: IPAddress) -> list[str]:
    """In the container's host: the route to the container address (and, for IPv6, the
    proxy NDP entry that makes the rest of the lab send it to this host)."""
    length = 32 if address.version == 4 else 128
    lines = [f"route {verb} {address}/{length} dev cbr0"]
    if address.version == 6:
        lines.append(f"neigh {verb} proxy {address} dev eth0")
    return lines


def _base_sysctls(role: str) -> tuple[tuple[str, str], ...]:
    """Per namespace, before interfaces exist (so that new interfaces inherit ``default``)."""
    pinned = [
        (f"net.ipv4.conf.{scope}.{key}", "0")
        for scope in ("all", "default")
        for key in ("rp_filter", "arp_ignore", "arp_filter", "accept_redirects")
    ]
    pinned += [
        (f"net.ipv6.conf.{scope}.{key}", "0")
        for scope in ("all", "default")
        for key in ("accept_redirects", "accept_dad", "accept_ra")
    ]
    if role == "bridge":  # a pure L2 switch: no addresses of its own, not even link-local
        pinned += [("net.ipv6.conf.default.disable_ipv6", "1")]
    if role == "router":
        pinned += [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ]
    return tuple(pinned)


def _router_sysctls() -> tuple[tuple[str, str], ...]:
    """A container host's per-interface settings (after ``cbr0`` and ``eth0`` exist)."""
    return (
        ("net.ipv4.conf.cbr0.proxy_arp", "1"),
        ("net.ipv4.conf.cbr0.proxy_arp_pvlan", "1"),
        ("net.ipv4.conf.eth0.proxy_arp", "1"),
        ("net.ipv4.conf.cbr0.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
        ("net.ipv6.conf.eth0.proxy_ndp", "1"),
        # Proxy answers are otherwise delayed by up to 0.8 s (``proxy_delay``).
        ("net.ipv4.neigh.cbr0.proxy_delay", "0"),
        ("net.ipv4.neigh.eth0.proxy_delay", "0"),
        ("net.ipv6.neigh.eth0.proxy_delay", "0"),
    )


def topology_phases(plan: LabPlan) -> list[Phase]:
    """The commands that build ``plan``'s estate from nothing, in six phases. Pure."""
    bridge = plan.bridge_namespace
    routers = {h.name for h in plan.hosts if plan.containers_of(h.name)}
    by_name = {e.name: e for e in plan.endpoints}

    def role(e: LabEndpoint) -> str:
        return "router" if e.name in routers else e.role.value

    create: Phase = [Step(None, tuple(f"netns add {ns}" for ns in plan.namespaces))]
    base: Phase = [Step(bridge, sysctls=_base_sysctls("bridge"))]
    base += [Step(e.namespace, sysctls=_base_sysctls(role(e))) for e in plan.endpoints]

    links: Phase = [
        Step(
            bridge,
            ("link set lo up", "link add br0 type bridge mcast_snooping 0", "link set br0 up"),
        )
    ]
    for e in plan.endpoints:
        outer = bridge if e.host is None else by_name[e.host].namespace
        lines = [
            "link set lo up",
            f"link add eth0 type veth peer name {e.peer_interface} netns {outer}",
        ]
        if e.name in routers:
            lines += [
                "link add cbr0 type bridge mcast_snooping 0",
                f"addr add {ROUTER_V6}/64 dev cbr0 nodad",
                "link set cbr0 up",
            ]
        links.append(Step(e.namespace, tuple(lines)))

    ports: Phase = [
        Step(
            bridge,
            tuple(
                line
                for h in plan.hosts
                for line in (
                    f"link set {h.peer_interface} master br0",
                    f"link set {h.peer_interface} up",
                )
            ),
        )
    ]
    for h in plan.hosts:
        lines = []
        for c in plan.containers_of(h.name):
            lines += [
                f"link set {c.peer_interface} master cbr0",
                f"link set {c.peer_interface} type bridge_slave isolated on",
                f"link set {c.peer_interface} up",
            ]
        ports.append(Step(h.namespace, tuple(lines)))

    addresses: Phase = []
    for e in plan.endpoints:
        lines = [
            "link set eth0 up",
            *(_addr_line("add", a, "eth0") for a in e.addresses),
            *_range_routes(e, "add"),
        ]
        for c in plan.containers_of(e.name):
            for a in c.addresses:
                lines += _container_host_lines("add", a)
        addresses.append(Step(e.namespace, tuple(lines)))

    proxies: Phase = [
        Step(h.namespace, sysctls=_router_sysctls()) for h in plan.hosts if h.name in routers
    ]
    return [create, base, links, ports, addresses, proxies]


def _range_routes(e: LabEndpoint, verb: str) -> list[str]:
    """The on-link routes of an endpoint's ``eth0`` (IPv6 via the host for a container)."""
    if e.role is EndpointRole.CONTAINER:
        return [
            f"route {verb} {V4_RANGE} dev eth0",
            f"route {verb} {V6_RANGE} via {ROUTER_V6} dev eth0",
        ]
    return [f"route {verb} {V4_RANGE} dev eth0", f"route {verb} {V6_RANGE} dev eth0"]


def address_sync_phases(
    plan: LabPlan, current: Mapping[str, frozenset[IPAddress]]
) -> tuple[list[Phase], dict[str, tuple[list[IPAddress], list[IPAddress]]]]:
    """The commands that change a built lab's addresses to ``plan``'s, given the addresses
    ``current``ly on each endpoint's ``eth0`` (by workload name), and the changes as
    workload → (added, removed). Pure.

    Three phases: add the new addresses (and their container-host routes); remove the old
    ones (a host's route to a container address goes only when no container of that host
    holds it any more, so an address can move between two containers); then restore the
    on-link routes of every changed namespace, because the kernel flushes a device's IPv4
    routes when its last IPv4 address goes.
    """
    by_name = {e.name: e for e in plan.endpoints}
    held_behind = {
        h.name: {a for c in plan.containers_of(h.name) for a in c.addresses} for h in plan.hosts
    }
    changes: dict[str, tuple[list[IPAddress], list[IPAddress]]] = {}
    additions: dict[str, list[str]] = {}
    removals: dict[str, list[str]] = {}
    routes: dict[str, list[str]] = {}
    for e in plan.endpoints:
        have = current.get(e.name, frozenset())
        added = [a for a in e.addresses if a not in have]
        removed = sorted(have - set(e.addresses), key=lambda a: (a.version, a))
        if not added and not removed:
            continue
        changes[e.name] = (added, removed)
        additions.setdefault(e.namespace, []).extend(_addr_line("add", a, "eth0") for a in added)
        removals.setdefault(e.namespace, []).extend(_addr_line("del", a, "eth0") for a in removed)
        routes[e.namespace] = _range_routes(e, "replace")
        if e.host is not None:
            host_ns = by_name[e.host].namespace
            for a in added:
                additions.setdefault(host_ns, []).extend(_container_host_lines("replace", a))
            for a in removed:
                if a not in held_behind[e.host]:
                    removals.setdefault(host_ns, []).extend(_container_host_lines("del", a))
    phases = [
        [Step(ns, tuple(lines)) for ns, lines in additions.items()],
        [Step(ns, tuple(lines), force=True) for ns, lines in removals.items() if lines],
        [Step(ns, tuple(lines)) for ns, lines in routes.items()],
    ]
    return phases, changes


def read_addresses(runner: CommandRunner, namespace: str) -> frozenset[IPAddress]:
    """The global addresses on ``eth0`` in ``namespace`` (one ``ip`` process)."""
    import ipaddress

    data = json.loads(runner.run(["ip", "-j", "-n", namespace, "addr", "show", "dev", "eth0"]))
    return frozenset(
        ipaddress.ip_address(info["local"])
        for link in data
        for info in link.get("addr_info", [])
        if info.get("scope") == "global"
    )


def lab_namespaces(runner: CommandRunner, prefix: str) -> list[str]:
    """Every namespace on the machine that this lab could have made: ``<prefix>`` followed by
    ``br``, ``h<n>`` or ``c<n>`` (so a lab never touches another lab's namespaces, even one
    whose prefix extends this one)."""
    found = []
    for line in runner.run(["ip", "netns", "list"]).splitlines():
        name = line.split(" ", 1)[0].strip()
        if name.startswith(prefix) and NAMESPACE_SUFFIX.fullmatch(name[len(prefix) :]):
            found.append(name)
    return sorted(found)


def namespace_pids(runner: CommandRunner, namespace: str) -> list[int]:
    """The processes running in ``namespace`` (empty when it is gone)."""
    out = runner.run(["ip", "netns", "pids", namespace], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def delete_namespaces(runner: CommandRunner, names: Sequence[str]) -> None:
    """Delete namespaces (one ``ip -force -batch``; missing ones are not an error). Deleting
    a namespace destroys its interfaces, so veths and bridges go with it."""
    if names:
        runner.run(
            ["ip", "-force", "-batch", "-"],
            stdin="".join(f"netns delete {n}\n" for n in names),
            check=False,
        )
