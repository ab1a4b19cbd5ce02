"""``--format hubble``: ``hubble observe -o json`` output, one JSON object a line.

Current Hubble prints ``{"flow": {...}, "node_name": "...", "time": "..."}`` (and, for other
event types, ``{"lost_events": ...}``, ``{"node_status": ...}`` and the like, which are
skipped); older Hubble printed the flow object itself. Both are read.

Per flow: ``time`` (RFC 3339 with nanoseconds, truncated to microseconds) is both start and
end; addresses from ``IP``; ports from ``l4.TCP``/``UDP``/``SCTP`` (``ICMPv4``/``ICMPv6``:
ports 0). Verdicts: FORWARDED, REDIRECTED, TRANSLATED, TRACED → allowed; DROPPED, ERROR →
denied; AUDIT → would-deny; anything else → unknown. Replies (``is_reply``) are skipped, so
a connection is seen from its initiator's side only, as are flows without ``IP`` or a
layer-4 protocol Septum can name. ``rule`` names the policies of ``*_allowed_by`` /
``*_denied_by`` (``namespace/name``, comma separated), else the drop reason of a drop.
Each flow is one packet of unknown size: ``packets`` 1, ``bytes`` 0; ``connections`` is 1
for a TCP SYN without ACK and for any other protocol's flow, else 0.

Cost: one ``json.loads`` per line dominates (Hubble lines are about 1 KB).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

from septum.flows.importers import ImportOptions, json_lines
from septum.flows.records import Malformed, Row, Skipped, canonical_address

__all__ = ["IMPORTER", "HubbleImporter"]

_VERDICTS = {
    "FORWARDED": "allowed",
    "REDIRECTED": "allowed",
    "TRANSLATED": "allowed",
    "TRACED": "allowed",
    "DROPPED": "denied",
    "ERROR": "denied",
    "AUDIT": "would-deny",
}
_PORTED = (("TCP", "tcp"), ("UDP", "udp"), ("SCTP", "sctp"))
_PORTLESS = (("ICMPv4", "icmp"), ("ICMPv6", "icmpv6"))
_POLICY_LISTS = ("egress_allowed_by", "ingress_allowed_by", "egress_denied_by", "ingress_denied_by")
#: Keys of the other event types ``hubble observe`` may print (GetFlowsResponse oneof).
_NOT_FLOWS = ("lost_events", "node_status", "agent_event", "debug_event")


class _Bad(ValueError):
    """A flow line that cannot be read."""


class _Skip(Exception):
    """A well-formed flow Septum does not import."""


def parse_time(text: object) -> datetime:
    """RFC 3339 → aware UTC datetime (fractions beyond microseconds are truncated)."""
    if not isinstance(text, str):
        raise _Bad(f"time {text!r} is not a string")
    try:
        at = datetime.fromisoformat(text)
    except ValueError as e:
        raise _Bad(f"bad time {text!r}") from e
    if at.tzinfo is None:
        raise _Bad(f"time {text!r} has no time zone")
    return at.astimezone(UTC)


def _port(l4: Mapping[str, Any], key: str) -> int:
    value = l4.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise _Bad(f"bad {key} {value!r}")
    return value


def _policy_names(flow: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for key in _POLICY_LISTS:
        policies = flow.get(key)
        if not policies:
            continue
        if not isinstance(policies, list):
            raise _Bad(f"{key} is not a list")
        for policy in policies:
            if not isinstance(policy, dict) or not isinstance(policy.get("name"), str):
                raise _Bad(f"bad policy in {key}: {policy!r}")
            namespace = policy.get("namespace")
            names.append(f"{namespace}/{policy['name']}" if namespace else policy["name"])
    return names


def _row(event: Mapping[str, Any], flow: Mapping[str, Any], fallback_reporter: str) -> Row:
    if flow.get("is_reply") is True or flow.get("reply") is True:
        raise _Skip("reply")
    ip = flow.get("IP")
    if not ip:
        raise _Skip("no IP")
    if not isinstance(ip, dict):
        raise _Bad("IP is not an object")
    try:
        source = canonical_address(str(ip["source"]))
        destination = canonical_address(str(ip["destination"]))
    except (KeyError, ValueError) as e:
        raise _Bad(f"bad IP {ip!r}") from e
    at = parse_time(flow.get("time") or event.get("time"))
    l4 = flow.get("l4")
    if not isinstance(l4, dict) or not l4:
        raise _Skip("no layer 4")
    sport = dport = 0
    connections = 1
    protocol: str | None = None
    for key, name in _PORTED:
        ports = l4.get(key)
        if ports is not None:
            if not isinstance(ports, dict):
                raise _Bad(f"l4.{key} is not an object")
            sport, dport = _port(ports, "source_port"), _port(ports, "destination_port")
            if key == "TCP":
                flags = ports.get("flags") or {}
                if not isinstance(flags, dict):
                    raise _Bad("l4.TCP.flags is not an object")
                connections = 1 if flags.get("SYN") and not flags.get("ACK") else 0
            protocol = name
            break
    if protocol is None:
        protocol = next((name for key, name in _PORTLESS if key in l4), None)
        if protocol is None:
            raise _Skip(f"layer 4 {'/'.join(sorted(l4))}")
    verdict_text = flow.get("verdict")
    verdict = _VERDICTS.get(verdict_text, "unknown") if isinstance(verdict_text, str) else "unknown"
    names = _policy_names(flow)
    rule: str | None = ",".join(names) if names else None
    if rule is None and verdict_text == "DROPPED":
        reason = flow.get("drop_reason_desc")
        rule = reason if isinstance(reason, str) and reason else None
    reporter = event.get("node_name") or flow.get("node_name") or fallback_reporter
    if not isinstance(reporter, str):
        raise _Bad(f"bad node_name {reporter!r}")
    return (
        at,
        at,
        source,
        destination,
        sport,
        dport,
        protocol,
        1,
        0,
        connections,
        reporter,
        verdict,
        rule,
    )


class HubbleImporter:
    """Reads ``hubble observe -o json`` output (see the module docstring)."""

    name = "hubble"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        fallback_reporter = options.reporter or "hubble"
        for line in json_lines(stream):
            if isinstance(line, Malformed):
                yield line
                continue
            number, event = line
            flow = event.get("flow")
            if flow is None:
                other = next((k for k in _NOT_FLOWS if k in event), None)
                if other is not None:
                    yield Skipped(number, other)
                    continue
                if "IP" not in event and "verdict" not in event:
                    yield Skipped(number, "not a flow")
                    continue
                flow = event  # older Hubble: the flow itself
            if not isinstance(flow, dict):
                yield Malformed(number, "flow is not an object")
                continue
            try:
                yield _row(event, flow, fallback_reporter)
            except _Skip as e:
                yield Skipped(number, str(e))
            except _Bad as e:
                yield Malformed(number, str(e))


IMPORTER = HubbleImporter()
