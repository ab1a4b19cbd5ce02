"""Which network namespaces a lab builds for a repository: a pure function of the model.

::

    Repository ──► plan_lab(repo, at, prefix) ──► LabPlan
                     │  every non-container workload with an address now ──► a host namespace
                     │  every container ──► a namespace behind the host with its enforcer
                     └─ every address inside 198.18.0.0/15 or 2001:db8::/32, else LabError

Names: the bridge namespace is ``<prefix>br``; hosts are ``<prefix>h<i>`` and containers
``<prefix>c<j>``, numbered in workload-name order. Inside a namespace the interfaces have short
fixed names (``eth0``, ``br0``, ``cbr0``, ``vh<i>``, ``vc<j>``), always within Linux's 15
characters. The plan is what ``lab.json`` records, so ``to_json``/``from_json`` round-trip.

Design goal: everything ``up``, ``down`` and ``probe`` must agree on (names, addresses, which
agent runs where) is decided here, once, without I/O, so that it can be tested without root.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from septum.errors import SeptumError
from septum.model.resources import IPAddress, IPNetwork, Repository, Workload, WorkloadKind

__all__ = [
    "LAB_RANGES",
    "EndpointRole",
    "LabEndpoint",
    "LabError",
    "LabPlan",
    "plan_lab",
    "validate_prefix",
]

#: The only ranges a lab puts on interfaces that can carry traffic (RFC 2544 and RFC 3849
#: documentation ranges), besides IPv6 link-local. Nothing in them is routable on the Internet.
LAB_RANGES: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("198.18.0.0/15"),
    ipaddress.IPv6Network("2001:db8::/32"),
)

_PREFIX = re.compile(r"[a-z0-9][a-z0-9.-]{0,38}-")
#: Namespace suffixes a lab creates: what ``down`` may delete after the prefix.
NAMESPACE_SUFFIX = re.compile(r"br|[hc][0-9]+")


class LabError(SeptumError):
    """The lab cannot be built, probed or torn down as asked (the message says why)."""


class EndpointRole(enum.Enum):
    HOST = "host"  # its own namespace on the lab bridge
    CONTAINER = "container"  # its own namespace behind its host's bridge ``cbr0``


@dataclass(frozen=True, slots=True)
class LabEndpoint:
    """One workload of the lab and the namespace that plays it.

    ``addresses`` are those valid at the plan's time, in written order. ``index`` numbers the
    endpoints of one role (``h<index>``/``c<index>``); ``host`` is the host workload of a
    container (None for hosts). ``enforcer`` is the workload's, so a container's equals its
    host's.
    """

    name: str
    role: EndpointRole
    kind: WorkloadKind
    index: int
    namespace: str
    addresses: tuple[IPAddress, ...]
    enforcer: str | None = None
    host: str | None = None

    @property
    def short(self) -> str:
        """``h3`` or ``c0``: the namespace name without the lab prefix."""
        return f"{'h' if self.role is EndpointRole.HOST else 'c'}{self.index}"

    @property
    def peer_interface(self) -> str:
        """The outer end of this namespace's ``eth0`` veth: ``vh<i>`` in the bridge namespace
        for a host, ``vc<j>`` in the host's namespace for a container."""
        return f"v{self.short}"

    def address(self, version: int) -> IPAddress | None:
        """The first address of IP ``version`` (4 or 6), the one probes use."""
        return next((a for a in self.addresses if a.version == version), None)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role.value,
            "kind": self.kind.value,
            "index": self.index,
            "namespace": self.namespace,
            "addresses": [str(a) for a in self.addresses],
            "enforcer": self.enforcer,
            "host": self.host,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LabEndpoint:
        addresses = data["addresses"]
        if not isinstance(addresses, list):
            raise ValueError("lab state: addresses must be a list")
        enforcer, host = data.get("enforcer"), data.get("host")
        return cls(
            name=str(data["name"]),
            role=EndpointRole(data["role"]),
            kind=WorkloadKind(data["kind"]),
            index=int(str(data["index"])),
            namespace=str(data["namespace"]),
            addresses=tuple(ipaddress.ip_address(str(a)) for a in addresses),
            enforcer=None if enforcer is None else str(enforcer),
            host=None if host is None else str(host),
        )


@dataclass(frozen=True, slots=True)
class LabPlan:
    """The estate a lab builds: the bridge namespace and one namespace per endpoint.

    ``endpoints`` lists hosts (by index) then containers (by index). ``skipped`` names the
    workloads left out with the reason (no address at the plan's time).
    """

    prefix: str
    endpoints: tuple[LabEndpoint, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def bridge_namespace(self) -> str:
        return f"{self.prefix}br"

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, the bridge first."""
        return (self.bridge_namespace, *(e.namespace for e in self.endpoints))

    @property
    def hosts(self) -> tuple[LabEndpoint, ...]:
        return tuple(e for e in self.endpoints if e.role is EndpointRole.HOST)

    @property
    def containers(self) -> tuple[LabEndpoint, ...]:
        return tuple(e for e in self.endpoints if e.role is EndpointRole.CONTAINER)

    def endpoint(self, name: str) -> LabEndpoint:
        """The endpoint of workload ``name`` (KeyError when the lab has none)."""
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    def containers_of(self, host: str) -> tuple[LabEndpoint, ...]:
        return tuple(e for e in self.containers if e.host == host)

    @property
    def agents(self) -> tuple[tuple[str, LabEndpoint], ...]:
        """(enforcer, host endpoint) for every host whose workload names an enforcer: where
        ``up`` starts an agent. Containers are enforced by their host's agent."""
        return tuple((h.enforcer, h) for h in self.hosts if h.enforcer is not None)

    def shape(self) -> tuple[tuple[str, str, str, str | None, str | None], ...]:
        """Everything but the addresses: two plans with equal shapes differ only in addresses,
        which ``up`` can change in place; any other difference needs a rebuild."""
        return tuple(
            (e.name, e.role.value, e.namespace, e.host, e.enforcer) for e in self.endpoints
        )

    def to_json(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "bridge": self.bridge_namespace,
            "endpoints": [e.to_json() for e in self.endpoints],
            "skipped": [list(s) for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LabPlan:
        endpoints, skipped = data["endpoints"], data.get("skipped", [])
        if not isinstance(endpoints, list):
            raise ValueError("lab state: endpoints must be a list")
        if not isinstance(skipped, list):
            raise ValueError("lab state: skipped must be a list")
        return cls(
            prefix=str(data["prefix"]),
            endpoints=tuple(LabEndpoint.from_json(e) for e in endpoints),
            skipped=tuple((str(a), str(b)) for a, b in skipped),
        )


def validate_prefix(prefix: str) -> str:
    """A namespace prefix is 2..40 characters of ``[a-z0-9.-]`` ending in ``-``, so that a
    lab's names (``<prefix>br``, ``<prefix>h0``) can never be another lab's."""
    if not _PREFIX.fullmatch(prefix):
        raise LabError(
            f"lab prefix {prefix!r} must be 2 to 40 characters of a-z, 0-9, '.', '-', "
            "start with a letter or digit and end with '-'"
        )
    return prefix


def _where(workload: Workload) -> str:
    return f" ({workload.origin})" if workload.origin is not None else ""


def _check_ranges(workload: Workload, at: datetime) -> None:
    """Every address the workload holds now or later must be in a lab range."""
    for binding in workload.addresses:
        if binding.valid_until is not None and binding.valid_until <= at:
            continue  # expired: the lab never puts it on an interface
        if not any(binding.address in net for net in LAB_RANGES):
            raise LabError(
                f"workload {workload.name!r}{_where(workload)}: address {binding.address} is "
                "outside the lab ranges 198.18.0.0/15 and 2001:db8::/32 (a lab must never "
                "use addresses that could exist elsewhere)"
            )


def plan_lab(repo: Repository, at: datetime, prefix: str) -> LabPlan:
    """The lab estate for ``repo`` at time ``at``, with namespace names starting ``prefix``.

    Hosts are the non-container workloads holding an address at ``at``; a container runs on
    the unique non-container workload with the same enforcer. Raises LabError for an address
    outside the lab ranges, a container without exactly one host, a host of containers
    without an address, or two hosts sharing an enforcer (an enforcer is one agent on one
    machine). Cost: O(workloads × addresses).
    """
    validate_prefix(prefix)
    skipped: list[tuple[str, str]] = []
    hosts: list[Workload] = []
    containers: list[Workload] = []
    by_enforcer: dict[str, list[Workload]] = {}
    for w in sorted(repo.workloads, key=lambda w: w.name):
        if w.kind is not WorkloadKind.CONTAINER and w.enforcer is not None:
            by_enforcer.setdefault(w.enforcer, []).append(w)
        _check_ranges(w, at)
        if not any(b.valid_at(at) for b in w.addresses):
            skipped.append((w.name, f"holds no address at {at.isoformat()}"))
            continue
        (containers if w.kind is WorkloadKind.CONTAINER else hosts).append(w)
    for enforcer, owners in by_enforcer.items():
        if len(owners) > 1:
            names = " and ".join(repr(o.name) for o in owners)
            raise LabError(
                f"enforcer {enforcer!r} is named by {names}: the lab gives each host its own "
                "namespace and agent, so an enforcer must belong to one non-container workload"
            )
    endpoints = [
        LabEndpoint(
            name=w.name,
            role=EndpointRole.HOST,
            kind=w.kind,
            index=i,
            namespace=f"{prefix}h{i}",
            addresses=tuple(b.address for b in w.addresses if b.valid_at(at)),
            enforcer=w.enforcer,
        )
        for i, w in enumerate(hosts)
    ]
    host_names = {w.name for w in hosts}
    for j, c in enumerate(containers):
        owners = by_enforcer.get(c.enforcer or "", [])
        if c.enforcer is None or not owners:
            raise LabError(
                f"container {c.name!r}{_where(c)}: no host workload has its enforcer "
                f"{c.enforcer!r} (a container runs on the host whose agent enforces it)"
            )
        host = owners[0]
        if host.name not in host_names:
            raise LabError(
                f"container {c.name!r}{_where(c)} runs on {host.name!r}, which holds no "
                f"address at {at.isoformat()}"
            )
        endpoints.append(
            LabEndpoint(
                name=c.name,
                role=EndpointRole.CONTAINER,
                kind=c.kind,
                index=j,
                namespace=f"{prefix}c{j}",
                addresses=tuple(b.address for b in c.addresses if b.valid_at(at)),
                enforcer=c.enforcer,
                host=host.name,
            )
        )
    return LabPlan(prefix=prefix, endpoints=tuple(endpoints), skipped=tuple(skipped))
