"""Streaming flow importers, one module per input format.

Each importer is a :class:`FlowImporter`: given a binary stream (already decompressed when
the file was gzip) it yields :data:`~septum.flows.records.Row` tuples and, for input it
cannot read, :class:`~septum.flows.records.Malformed` values with the line number; it never
raises for bad input lines, only for a stream that is not its format at all
(:class:`ImportFormatError`, with the line). Importers hold no state between files except
what the format itself carries across packets (NetFlow v9/IPFIX templates, per exporter).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Protocol

from septum.errors import SeptumError
from septum.flows.records import Malformed, Row, Skipped

__all__ = ["FORMATS", "FlowImporter", "ImportFormatError", "ImportOptions", "importer_for"]


class ImportFormatError(SeptumError):
    """The input cannot be read in the requested format at all (e.g. a CSV mapping names a
    column the header does not have). ``line`` is 1-based; 0 when not about a line."""

    def __init__(self, origin: str, line: int, message: str) -> None:
        where = f"{origin}:{line}" if line else origin
        super().__init__(f"{where}: {message}")
        self.origin = origin
        self.line = line


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What some formats need besides the bytes.

    - ``now``: the time to stamp records whose format carries none (``conntrack -L``);
    - ``reporter``: who observed the flows, when the format does not say;
    - ``fields``: AWS VPC flow log custom format (field names, in order), when the file has
      no header line;
    - ``columns``: CSV mapping, Septum field → CSV column name (see ``importers.csv``);
    - ``time_format``: CSV ``strptime`` format for time columns (default: ISO 8601, or epoch
      seconds when the value is a number).
    """

    now: datetime
    reporter: str | None = None
    fields: tuple[str, ...] | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    time_format: str | None = None


class FlowImporter(Protocol):
    """One input format."""

    #: the ``--format`` name
    name: str

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        """Yield rows, malformed-line and skipped-line reports, streaming (bounded memory)."""
        ...


#: ``--format`` name → module under ``septum.flows.importers`` defining ``IMPORTER``
FORMATS: dict[str, str] = {
    "agent": "agent",
    "vpc": "vpc",
    "hubble": "hubble",
    "conntrack": "conntrack",
    "netflow": "netflow",
    "csv": "csv",
    "parquet": "parquet",
}


def importer_for(name: str) -> FlowImporter:
    """The importer for a ``--format`` name; SeptumError naming the known ones otherwise."""
    import importlib

    module = FORMATS.get(name)
    if module is None:
        raise SeptumError(f"unknown flow format {name!r} (known: {', '.join(sorted(FORMATS))})")
    imported = importlib.import_module(f"septum.flows.importers.{module}")
    importer: FlowImporter = imported.IMPORTER
    return importer


def json_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any]] | Malformed]:
    """(line number, object) for every JSON-object line; blank lines are passed over and any
    other line is Malformed. The framing shared by the JSON-lines formats."""
    loads = json.loads
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            data = loads(raw)
        except ValueError as e:  # also UnicodeDecodeError
            yield Malformed(number, f"not JSON: {e}")
            continue
        if not isinstance(data, dict):
            yield Malformed(number, "not a JSON object")
            continue
        yield number, data
