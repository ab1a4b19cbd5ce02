"""Turning what a person types (a workload name or an address, ``tcp/443`` or ``443/tcp``)
into the engine's values. Pure: the repository and the time come in as arguments."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from septum.engine.explain import Flow
from septum.errors import LookupFailed
from septum.model.resources import FlowAssertion, IPAddress, Protocol, Repository

__all__ = ["assertion_flow", "endpoint_address", "parse_flow_port"]


def endpoint_address(repo: Repository, ref: str, at: datetime) -> IPAddress:
    """The address ``ref`` stands for at ``at``: a literal address, or the first address (in
    written order) that the workload named ``ref`` holds then. Cost: O(workloads)."""
    try:
        return ipaddress.ip_address(ref)
    except ValueError:
        pass
    workload = repo.workload(ref)
    if workload is None:
        raise LookupFailed(f"{ref!r} is neither an address nor a workload name")
    for binding in workload.addresses:
        if binding.valid_at(at):
            return binding.address
    raise LookupFailed(f"workload {ref!r} holds no address at {at.isoformat()}")


def parse_flow_port(text: str) -> tuple[Protocol, int]:
    """``tcp/443``, ``443/tcp``, ``udp/53``, ``icmp``: one protocol and one destination port
    (0 for protocols without ports)."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        proto_text, port_text = parts[0], None
    elif len(parts) == 2:
        proto_text, port_text = (parts[1], parts[0]) if parts[0].isdigit() else parts
    else:
        raise LookupFailed(f"{text!r} is not PROTO/PORT (e.g. tcp/443) or PORT/PROTO")
    try:
        protocol = Protocol(proto_text)
    except ValueError:
        names = ", ".join(p.value for p in Protocol)
        raise LookupFailed(
            f"unknown protocol {proto_text!r} in {text!r} (one of {names})"
        ) from None
    if not protocol.has_ports:
        if port_text is not None:
            raise LookupFailed(f"{protocol.value} has no ports: write {protocol.value!r}")
        return protocol, 0
    if port_text is None or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise LookupFailed(f"{text!r} needs one port 0..65535, e.g. {protocol.value}/443")
    return protocol, int(port_text)


def assertion_flow(repo: Repository, check: FlowAssertion, at: datetime) -> Flow:
    """The concrete flow a flow assertion names, at ``check.at`` or else ``at``."""
    when = check.at or at
    protocol = check.service.protocol
    if protocol is None:
        raise LookupFailed("a flow needs one protocol, not 'any'")
    return Flow(
        endpoint_address(repo, check.source, when),
        endpoint_address(repo, check.target, when),
        protocol,
        check.service.ports.first,
        when,
    )
