"""``--format agent``: the Septum agent's flow log, one JSON object a line.

The lines are what :meth:`septum.agent.capture.FlowRecord.to_json` writes; they are read back
with :meth:`~septum.agent.capture.FlowRecord.from_json`, so the two cannot drift apart. The
record carries no source port (the agent aggregates over them): ``source_port`` is 0.
``rule`` is the record's provenance joined with commas (None when empty), ``reporter`` the
enforcer.

Cost: one ``json.loads`` and one ``from_json`` per line (about 10 µs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from septum.agent.capture import CaptureError, FlowRecord
from septum.flows.importers import ImportOptions
from septum.flows.records import Malformed, Row, Skipped, protocol_text

__all__ = ["IMPORTER", "AgentImporter"]


class AgentImporter:
    """Reads the agent's JSON-lines flow log (see the module docstring)."""

    name = "agent"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        protocols: dict[str, str] = {}
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as e:  # also UnicodeDecodeError
                yield Malformed(number, f"not JSON: {e}")
                continue
            if not isinstance(data, dict):
                yield Malformed(number, "not a JSON object")
                continue
            try:
                record = FlowRecord.from_json(data)
            except CaptureError as e:
                yield Malformed(number, str(e))
                continue
            if record.end < record.start:
                yield Malformed(number, "end is before start")
                continue
            if not 0 <= record.port <= 65535:
                yield Malformed(number, f"port {record.port} out of range")
                continue
            if record.packets < 0 or record.bytes < 0 or record.connections < 0:
                yield Malformed(number, "negative count")
                continue
            protocol = protocols.get(record.protocol)
            if protocol is None:
                try:
                    protocol = protocols[record.protocol] = protocol_text(record.protocol)
                except ValueError as e:
                    yield Malformed(number, str(e))
                    continue
            yield (
                record.start,
                record.end,
                str(record.source),
                str(record.destination),
                0,
                record.port,
                protocol,
                record.packets,
                record.bytes,
                record.connections,
                record.enforcer,
                record.verdict.value,
                ",".join(record.provenance) or None,
            )


IMPORTER = AgentImporter()
