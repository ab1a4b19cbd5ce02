"""``--format vpc``: AWS VPC flow logs (versions 2 to 8, default or custom format).

The fields of a line are named by, in order of preference: a first line of field names (as
S3 and CloudWatch Logs delivery write it), ``ImportOptions.fields`` (the log's custom
format, ``srcaddr`` or ``${srcaddr}`` spellings), or the default version 2 format::

    version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes
    start end action log-status

Fields Septum does not use are ignored, known or not. ``pkt-srcaddr``/``pkt-dstaddr`` win
over ``srcaddr``/``dstaddr`` when present and not ``-`` (they see through NAT and
ENIs of intermediate services). ``start``/``end`` are epoch seconds; ``ACCEPT`` → allowed,
``REJECT`` → denied, no action → unknown; ``reject-reason`` (version 8) becomes the rule.
Records with log-status ``NODATA``/``SKIPDATA`` or ``-`` addresses are skipped. The reporter
is the instance id, else the interface id, else ``ImportOptions.reporter``, else ``vpc``.

Cost: one ``split()`` per line plus dictionary look-ups; addresses and times are cached
(bounded), because a log repeats them a lot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from septum.flows.importers import ImportFormatError, ImportOptions
from septum.flows.records import Malformed, Row, Skipped, canonical_address, protocol_text

__all__ = ["DEFAULT_FIELDS", "IMPORTER", "KNOWN_FIELDS", "VpcImporter"]

DEFAULT_FIELDS: tuple[str, ...] = (
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
)

#: Every field AWS documents (versions 2 to 8); only some are used, the rest are ignored.
KNOWN_FIELDS: frozenset[str] = frozenset(
    (
        *DEFAULT_FIELDS,
        "vpc-id",
        "subnet-id",
        "instance-id",
        "tcp-flags",
        "type",
        "pkt-srcaddr",
        "pkt-dstaddr",
        "region",
        "az-id",
        "sublocation-type",
        "sublocation-id",
        "pkt-src-aws-service",
        "pkt-dst-aws-service",
        "flow-direction",
        "traffic-path",
        "ecs-cluster-arn",
        "ecs-cluster-name",
        "ecs-container-instance-arn",
        "ecs-container-instance-id",
        "ecs-container-id",
        "ecs-second-container-id",
        "ecs-service-name",
        "ecs-task-definition-arn",
        "ecs-task-arn",
        "ecs-task-id",
        "reject-reason",
    )
)

_REQUIRED = ("start", "end", "protocol")
_ACTIONS = {"ACCEPT": "allowed", "REJECT": "denied", "-": "unknown"}
_PORTED = frozenset({6, 17, 33, 132, 136})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CACHE_LIMIT = 100_000


def field_name(text: str) -> str:
    """``"${srcaddr}"`` or ``"srcaddr"`` → ``"srcaddr"``."""
    text = text.strip()
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return text


def _is_header(tokens: Sequence[str]) -> bool:
    return bool(tokens) and field_name(tokens[0]) in KNOWN_FIELDS


class _Layout:
    """Where each used field sits in a line (-1: absent)."""

    def __init__(self, names: Sequence[str], origin: str, line: int) -> None:
        self.names = tuple(field_name(n) for n in names)
        self.width = len(self.names)
        at = {n: i for i, n in reversed(list(enumerate(self.names)))}
        if "srcaddr" not in at and "pkt-srcaddr" not in at:
            raise ImportFormatError(origin, line, "the format has no srcaddr field")
        if "dstaddr" not in at and "pkt-dstaddr" not in at:
            raise ImportFormatError(origin, line, "the format has no dstaddr field")
        missing = [n for n in _REQUIRED if n not in at]
        if missing:
            raise ImportFormatError(origin, line, f"the format has no {', '.join(missing)} field")

        def get(name: str) -> int:
            return at.get(name, -1)

        self.src, self.dst = get("srcaddr"), get("dstaddr")
        self.pkt_src, self.pkt_dst = get("pkt-srcaddr"), get("pkt-dstaddr")
        self.sport, self.dport = get("srcport"), get("dstport")
        self.protocol = get("protocol")
        self.packets, self.bytes = get("packets"), get("bytes")
        self.start, self.end = get("start"), get("end")
        self.action, self.status = get("action"), get("log-status")
        self.instance, self.interface = get("instance-id"), get("interface-id")
        self.reject_reason = get("reject-reason")


class VpcImporter:
    """Reads AWS VPC flow logs (see the module docstring)."""

    name = "vpc"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        layout: _Layout | None = None
        fallback_reporter = options.reporter or "vpc"
        addresses: dict[str, str] = {}
        times: dict[str, datetime] = {}
        protocols: dict[str, tuple[str, bool]] = {}
        for number, raw in enumerate(stream, 1):
            try:
                parts = raw.decode().split()
            except UnicodeDecodeError:
                yield Malformed(number, "not UTF-8 text")
                continue
            if not parts:
                continue
            if layout is None:
                if _is_header(parts):
                    layout = _Layout(parts, origin, number)
                    continue
                layout = _Layout(options.fields or DEFAULT_FIELDS, origin, 0)
            if len(parts) != layout.width:
                yield Malformed(number, f"{len(parts)} fields, expected {layout.width}")
                continue
            lay = layout
            if lay.status >= 0:
                status = parts[lay.status]
                if status == "NODATA" or status == "SKIPDATA":
                    yield Skipped(number, f"log-status {status}")
                    continue
            source = parts[lay.pkt_src] if lay.pkt_src >= 0 else "-"
            if source == "-" and lay.src >= 0:
                source = parts[lay.src]
            destination = parts[lay.pkt_dst] if lay.pkt_dst >= 0 else "-"
            if destination == "-" and lay.dst >= 0:
                destination = parts[lay.dst]
            if source == "-" or destination == "-":
                yield Skipped(number, "no address")
                continue
            try:
                src = addresses.get(source)
                if src is None:
                    src = addresses[source] = canonical_address(source)
                dst = addresses.get(destination)
                if dst is None:
                    dst = addresses[destination] = canonical_address(destination)
                text = parts[lay.protocol]
                known = protocols.get(text)
                if known is None:
                    value = int(text)
                    if not 0 <= value <= 255:
                        raise ValueError(f"protocol {value} out of range")
                    known = protocols[text] = (protocol_text(value), value in _PORTED)
                protocol, ported = known
                if ported:
                    sport = int(parts[lay.sport]) if lay.sport >= 0 else 0
                    dport = int(parts[lay.dport]) if lay.dport >= 0 else 0
                    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
                        raise ValueError("port out of range")
                else:
                    sport = dport = 0
                packets = int(parts[lay.packets]) if lay.packets >= 0 else 0
                octets = int(parts[lay.bytes]) if lay.bytes >= 0 else 0
                if packets < 0 or octets < 0:
                    raise ValueError("negative count")
                text = parts[lay.start]
                start = times.get(text)
                if start is None:
                    start = times[text] = _EPOCH + timedelta(seconds=int(text))
                text = parts[lay.end]
                end = times.get(text)
                if end is None:
                    end = times[text] = _EPOCH + timedelta(seconds=int(text))
            except (ValueError, OverflowError) as e:
                if _is_header(parts):  # files concatenated with their headers
                    yield Skipped(number, "header line")
                else:
                    yield Malformed(number, str(e))
                continue
            if end < start:
                yield Malformed(number, "end is before start")
                continue
            verdict = _ACTIONS.get(parts[lay.action], "") if lay.action >= 0 else "unknown"
            if not verdict:
                yield Malformed(number, f"unknown action {parts[lay.action]!r}")
                continue
            reporter = parts[lay.instance] if lay.instance >= 0 else "-"
            if reporter == "-":
                reporter = parts[lay.interface] if lay.interface >= 0 else "-"
                if reporter == "-":
                    reporter = fallback_reporter
            rule = parts[lay.reject_reason] if lay.reject_reason >= 0 else "-"
            if len(addresses) > _CACHE_LIMIT:
                addresses.clear()
            if len(times) > _CACHE_LIMIT:
                times.clear()
            yield (
                start,
                end,
                src,
                dst,
                sport,
                dport,
                protocol,
                packets,
                octets,
                1,
                reporter,
                verdict,
                None if rule == "-" else rule,
            )


IMPORTER = VpcImporter()
