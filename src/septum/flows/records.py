"""The row every importer produces, and its Arrow schema (``RAW_SCHEMA``).

A row is a plain tuple in ``RAW_FIELDS`` order, because the importers build millions of them
and a tuple is the cheapest thing Python can build; the store turns batches of rows into
Arrow record batches with :func:`rows_to_batch`.

Field conventions (every importer follows them; the tests check them per format):

- ``start``/``end``: timezone-aware datetimes (UTC after conversion), ``start <= end``;
- ``source``/``destination``: addresses in :mod:`ipaddress`'s canonical text (``str(ip)``);
- ``source_port``/``port``: 0 when the protocol has no ports or the source does not say;
- ``protocol``: ``tcp``, ``udp``, ``sctp``, ``icmp``, ``icmpv6``, else ``proto-<number>``;
- ``packets``/``bytes``/``connections``: non-negative; ``connections`` 1 unless known;
- ``reporter``: who observed it (enforcer, interface id, node, exporter address);
- ``verdict``: a :class:`~septum.engine.observed.RecordedVerdict` value;
- ``rule``: the deciding policy/rule as the reporter names it, or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address

import pyarrow as pa

from septum.engine.observed import protocol_of

__all__ = [
    "RAW_FIELDS",
    "RAW_SCHEMA",
    "TIMESTAMP",
    "Malformed",
    "Row",
    "Skipped",
    "canonical_address",
    "protocol_text",
    "rows_to_batch",
]

Row = tuple[
    datetime,  # start
    datetime,  # end
    str,  # source
    str,  # destination
    int,  # source_port
    int,  # port (destination)
    str,  # protocol
    int,  # packets
    int,  # bytes
    int,  # connections
    str,  # reporter
    str,  # verdict
    str | None,  # rule
]

#: Every time in the store: microseconds, UTC.
TIMESTAMP = pa.timestamp("us", tz="UTC")
RAW_SCHEMA = pa.schema(
    [
        pa.field("start", TIMESTAMP, nullable=False),
        pa.field("end", TIMESTAMP, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("destination", pa.string(), nullable=False),
        pa.field("source_port", pa.int32(), nullable=False),
        pa.field("port", pa.int32(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("packets", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("connections", pa.int64(), nullable=False),
        pa.field("reporter", pa.string(), nullable=False),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=True),
    ]
)
RAW_FIELDS: tuple[str, ...] = tuple(RAW_SCHEMA.names)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line (or, for binary formats, a record or packet) that could not be read.

    ``line`` is 1-based in the input file (the packet number for pcap input)."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A well-formed line that is not a flow (a VPC ``NODATA`` record, a Hubble reply or
    lost-events notice, a conntrack UPDATE event). Counted per ``reason`` in the import
    report, never stored."""

    line: int
    reason: str


def canonical_address(text: str) -> str:
    """``"198.018.0.1"`` is refused, ``"2001:DB8::1"`` → ``"2001:db8::1"``. Raises
    ``ValueError`` for text that is not an address."""
    return str(ip_address(text.strip()))


def protocol_text(value: str | int) -> str:
    """Protocol name or number → the stored protocol text (see the module docstring)."""
    known = protocol_of(value)
    if known is not None:
        return known.value
    text = str(value).strip().lower()
    if text.isdigit():
        return f"proto-{int(text)}"
    if not text:
        raise ValueError("empty protocol")
    return text


def rows_to_batch(rows: Sequence[Row]) -> pa.RecordBatch:
    """Rows → one Arrow record batch in ``RAW_SCHEMA`` (column by column: fast)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in RAW_FIELDS]
    return pa.RecordBatch.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, RAW_SCHEMA, strict=True)],
        schema=RAW_SCHEMA,
    )
