"""``--format csv``: comma-separated flows with a header line and a column mapping.

``ImportOptions.columns`` maps Septum fields to CSV columns; a field it does not map is read
from the column of the same name when the header has one. Fields:

==============  ===========================================================================
``source``      address (required)
``destination`` address (required)
``start``       time (required; the column ``time`` serves when there is no ``start``)
``end``         time, default ``start``
``source_port`` default 0; ``port`` (destination port) default 0 — both 0 for protocols
                without ports
``protocol``    name or number, default ``tcp`` when there is no such column
``packets``     default 0; ``bytes`` default 0; ``connections`` default 1
``reporter``    default ``ImportOptions.reporter``, else ``csv``
``verdict``     allow/allowed/accept/forwarded → allowed; deny/denied/reject/drop/dropped →
                denied; would-deny; logged; empty or no column → unknown
``rule``        default None
==============  ===========================================================================

Times are parsed with ``ImportOptions.time_format`` (``strptime``; naive times are UTC) when
given, else as ISO 8601 (``Z`` allowed; naive is UTC) or, when numeric, as epoch seconds
(milliseconds when above 10¹¹). Empty cells take the field's default. A mapping naming a
column the header lacks is an :class:`ImportFormatError` about line 1.

Cost: the stdlib ``csv`` reader plus a conversion per cell; addresses are cached (bounded).
"""

from __future__ import annotations

import csv as _csv
import io
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from septum.flows.importers import ImportFormatError, ImportOptions
from septum.flows.records import Malformed, Row, Skipped, canonical_address, protocol_text

__all__ = ["FIELDS", "IMPORTER", "CsvImporter", "parse_time"]

FIELDS: tuple[str, ...] = (
    "start",
    "end",
    "source",
    "destination",
    "source_port",
    "port",
    "protocol",
    "packets",
    "bytes",
    "connections",
    "reporter",
    "verdict",
    "rule",
)
_VERDICTS = {
    "allow": "allowed",
    "allowed": "allowed",
    "accept": "allowed",
    "forwarded": "allowed",
    "deny": "denied",
    "denied": "denied",
    "reject": "denied",
    "drop": "denied",
    "dropped": "denied",
    "would-deny": "would-deny",
    "logged": "logged",
    "unknown": "unknown",
    "": "unknown",
}
_PORTED = frozenset({"tcp", "udp", "sctp", "proto-33", "proto-136"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CACHE_LIMIT = 100_000


def _epoch(text: str) -> datetime:
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"bad time {text!r}")
    number = int(whole)
    if number > 100_000_000_000:  # milliseconds
        micro = (number % 1000) * 1000 + int(fraction[:3].ljust(3, "0"))
        return _EPOCH + timedelta(seconds=number // 1000, microseconds=micro)
    return _EPOCH + timedelta(seconds=number, microseconds=int(fraction[:6].ljust(6, "0")))


def parse_time(text: str, time_format: str | None = None) -> datetime:
    """A CSV time cell → aware UTC datetime (see the module docstring). ValueError when
    the cell is not a time."""
    if time_format is not None:
        at = datetime.strptime(text, time_format)
    elif text[:1].isdigit() and "-" not in text and ":" not in text:
        return _epoch(text)
    else:
        at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"negative count {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} out of range")
    return value


class CsvImporter:
    """Reads CSV flows with a header and a column mapping (see the module docstring)."""

    name = "csv"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        try:
            yield from self._read(text, origin, options)
        finally:
            text.detach()  # the caller owns (and closes) the binary stream

    def _read(
        self, text: io.TextIOWrapper, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        reader = _csv.reader(text)
        header = next(reader, None)
        if header is None:
            return
        at = _columns(header, options.columns, origin)
        width = len(header)
        i_src, i_dst = at["source"], at["destination"]
        i_start, i_end = at["start"], at.get("end", -1)
        i_sport, i_dport = at.get("source_port", -1), at.get("port", -1)
        i_proto = at.get("protocol", -1)
        i_packets, i_bytes = at.get("packets", -1), at.get("bytes", -1)
        i_conns, i_reporter = at.get("connections", -1), at.get("reporter", -1)
        i_verdict, i_rule = at.get("verdict", -1), at.get("rule", -1)
        time_format = options.time_format
        default_reporter = options.reporter or "csv"
        addresses: dict[str, str] = {}
        protocols: dict[str, str] = {}
        times: dict[str, datetime] = {}

        def when(cell: str) -> datetime:
            found = times.get(cell)
            if found is None:
                if len(times) > _CACHE_LIMIT:
                    times.clear()
                found = times[cell] = parse_time(cell, time_format)
            return found

        def address(cell: str) -> str:
            found = addresses.get(cell)
            if found is None:
                if len(addresses) > _CACHE_LIMIT:
                    addresses.clear()
                found = addresses[cell] = canonical_address(cell)
            return found

        def cell_or(index: int, parse: Callable[[str], int], default: int, row: list[str]) -> int:
            if index < 0:
                return default
            cell = row[index].strip()
            return parse(cell) if cell else default

        line = reader.line_num
        for row in reader:
            number, line = line + 1, reader.line_num
            if not row:
                continue
            if len(row) != width:
                yield Malformed(number, f"{len(row)} columns, the header has {width}")
                continue
            try:
                source = address(row[i_src])
                destination = address(row[i_dst])
                start = when(row[i_start].strip())
                end_cell = row[i_end].strip() if i_end >= 0 else ""
                end = when(end_cell) if end_cell else start
                proto_cell = row[i_proto].strip() if i_proto >= 0 else "tcp"
                protocol = protocols.get(proto_cell)
                if protocol is None:
                    protocol = protocols[proto_cell] = protocol_text(proto_cell)
                if protocol in _PORTED:
                    sport = cell_or(i_sport, _port, 0, row)
                    dport = cell_or(i_dport, _port, 0, row)
                else:
                    sport = dport = 0
                packets = cell_or(i_packets, _count, 0, row)
                octets = cell_or(i_bytes, _count, 0, row)
                connections = cell_or(i_conns, _count, 1, row)
            except ValueError as e:
                yield Malformed(number, str(e))
                continue
            if end < start:
                yield Malformed(number, "end is before start")
                continue
            verdict_cell = row[i_verdict].strip().lower() if i_verdict >= 0 else ""
            verdict = _VERDICTS.get(verdict_cell)
            if verdict is None:
                yield Malformed(number, f"unknown verdict {verdict_cell!r}")
                continue
            reporter = row[i_reporter].strip() if i_reporter >= 0 else ""
            rule = row[i_rule].strip() if i_rule >= 0 else ""
            if "\ufffd" in reporter or "\ufffd" in rule:
                yield Malformed(number, "not UTF-8 text")
                continue
            yield (
                start,
                end,
                source,
                destination,
                sport,
                dport,
                protocol,
                packets,
                octets,
                connections,
                reporter or default_reporter,
                verdict,
                rule or None,
            )


def _columns(header: list[str], mapping: Mapping[str, str], origin: str) -> dict[str, int]:
    """Septum field → column index, per the mapping and the header's own names."""
    names = {name.strip(): i for i, name in reversed(list(enumerate(header)))}
    chosen: dict[str, int] = {}
    for field, column in mapping.items():
        if field not in FIELDS:
            raise ImportFormatError(origin, 1, f"unknown field {field!r} in the column mapping")
        if column not in names:
            raise ImportFormatError(origin, 1, f"no column {column!r} (for {field}) in the header")
        chosen[field] = names[column]
    for field in FIELDS:
        if field not in chosen and field in names:
            chosen[field] = names[field]
    if "start" not in chosen and "time" in names:
        chosen["start"] = names["time"]
    missing = [f for f in ("source", "destination", "start") if f not in chosen]
    if missing:
        raise ImportFormatError(origin, 1, f"no column for {', '.join(missing)}")
    return chosen


IMPORTER = CsvImporter()
