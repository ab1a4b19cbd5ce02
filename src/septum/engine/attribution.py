"""Who holds an address at a given time (``semantics.md``, "Rules", attribution paragraph).

An address is attributed, at the flow's time, to

1. the workload holding it (an ``AddressBinding`` valid at that time), else
2. the user whose session holds it, else
3. every ``Network`` whose ranges contain it (some cidr, no except), else
4. nobody: it is *unknown* and matches only CIDR peers and ``all()``.

Design goals: build once per repository, answer many times. Workload and user bindings are
kept in dicts keyed by address, so a lookup costs O(bindings of that address) — normally one.
Network containment is answered by an index per (IP version, prefix length) keyed by the
address's leading bits, so it costs O(distinct prefix lengths), and the (time-independent)
network answer of recently seen addresses is cached. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from septum.model.resources import (
    EMPTY_LABELS,
    AddressBinding,
    IPAddress,
    Network,
    Repository,
    User,
    Workload,
)

__all__ = ["Attributor", "Endpoint", "EndpointKind"]

#: Beyond this many cached network answers the cache is cleared (bounds memory on scans).
_NETWORK_CACHE_LIMIT = 1 << 16


class EndpointKind(enum.Enum):
    """What an address was attributed to, in precedence order."""

    WORKLOAD = "workload"
    USER = "user"
    NETWORK = "network"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The attribution of one address at one time.

    Exactly one of the following holds, according to ``kind``: WORKLOAD sets ``workload``;
    USER sets ``user``; NETWORK sets ``networks`` (every network containing the address,
    sorted by name, never empty); UNKNOWN sets none of them.
    """

    address: IPAddress
    kind: EndpointKind
    workload: Workload | None = None
    user: User | None = None
    networks: tuple[Network, ...] = ()

    @property
    def name(self) -> str | None:
        """The workload's or user's name; for a network attribution the first network's."""
        if self.workload is not None:
            return self.workload.name
        if self.user is not None:
            return self.user.name
        if self.networks:
            return self.networks[0].name
        return None

    @property
    def labels(self) -> Mapping[str, str]:
        """Labels of the workload or user (empty for networks and unknown addresses)."""
        if self.workload is not None:
            return self.workload.labels
        if self.user is not None:
            return self.user.labels
        return EMPTY_LABELS

    def to_json(self) -> dict[str, object]:
        """A JSON-ready description: address, kind and who (names only)."""
        out: dict[str, object] = {"address": str(self.address), "kind": self.kind.value}
        if self.workload is not None:
            out["workload"] = self.workload.name
            out["mode"] = self.workload.mode.value
            out["enforcer"] = self.workload.enforcer
        if self.user is not None:
            out["user"] = self.user.name
        if self.kind is EndpointKind.NETWORK:
            out["networks"] = [n.name for n in self.networks]
        return out


class Attributor:
    """Attributes addresses to workloads, user sessions or networks at a time.

    Construction costs O(addresses + sessions + network cidrs). ``attribute`` costs
    O(bindings of the address + distinct network prefix lengths); repeated network lookups of
    one address are answered from a bounded cache.

    Precondition (validated at parse time): no two workloads hold one address at one time. If
    it happens anyway, the first workload by name wins, deterministically; same for users.
    """

    __slots__ = ("_network_cache", "_prefix_index", "_users", "_workloads")

    def __init__(self, repo: Repository) -> None:
        workloads: dict[IPAddress, list[tuple[AddressBinding, Workload]]] = defaultdict(list)
        for w in sorted(repo.workloads, key=lambda w: w.name):
            for b in w.addresses:
                workloads[b.address].append((b, w))
        users: dict[IPAddress, list[tuple[AddressBinding, User]]] = defaultdict(list)
        for u in sorted(repo.users, key=lambda u: u.name):
            for b in u.sessions:
                users[b.address].append((b, u))
        self._workloads = {a: tuple(v) for a, v in workloads.items()}
        self._users = {a: tuple(v) for a, v in users.items()}

        # (version, prefixlen) -> {address bits >> host bits: networks with such a cidr}
        index: dict[tuple[int, int], dict[int, list[Network]]] = {}
        for n in sorted(repo.networks, key=lambda n: n.name):
            for c in n.cidrs:
                host_bits = c.max_prefixlen - c.prefixlen
                bucket = index.setdefault((c.version, c.prefixlen), {})
                members = bucket.setdefault(int(c.network_address) >> host_bits, [])
                if n not in members:
                    members.append(n)
        # Longest prefixes first: purely cosmetic, the answer collects all of them.
        self._prefix_index: tuple[tuple[int, int, int, dict[int, list[Network]]], ...] = tuple(
            (version, prefixlen, (32 if version == 4 else 128) - prefixlen, bucket)
            for (version, prefixlen), bucket in sorted(index.items(), key=lambda kv: -kv[0][1])
        )
        self._network_cache: dict[IPAddress, tuple[Network, ...]] = {}

    def attribute(self, address: IPAddress, at: datetime) -> Endpoint:
        """Who holds ``address`` at time ``at``: workload, then user session, then networks."""
        for binding, workload in self._workloads.get(address, ()):
            if binding.valid_at(at):
                return Endpoint(address, EndpointKind.WORKLOAD, workload=workload)
        for binding, user in self._users.get(address, ()):
            if binding.valid_at(at):
                return Endpoint(address, EndpointKind.USER, user=user)
        networks = self.networks_containing(address)
        if networks:
            return Endpoint(address, EndpointKind.NETWORK, networks=networks)
        return Endpoint(address, EndpointKind.UNKNOWN)

    def networks_containing(self, address: IPAddress) -> tuple[Network, ...]:
        """Every network with a cidr containing ``address`` and no except containing it,
        sorted by name. Time-independent, hence cached (bounded)."""
        cached = self._network_cache.get(address)
        if cached is not None:
            return cached
        value = int(address)
        found: set[str] = set()
        hits: list[Network] = []
        for version, _prefixlen, host_bits, bucket in self._prefix_index:
            if version != address.version:
                continue
            for n in bucket.get(value >> host_bits, ()):
                if n.name not in found and not any(address in e for e in n.excepts):
                    found.add(n.name)
                    hits.append(n)
        result = tuple(sorted(hits, key=lambda n: n.name))
        if len(self._network_cache) >= _NETWORK_CACHE_LIMIT:
            self._network_cache.clear()
        self._network_cache[address] = result
        return result
