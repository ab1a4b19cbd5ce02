"""``--format agent``: the Septum agent's flow log, one JSON object a line.

The lines are what :meth:`septum.agent.capture.FlowRecord.to_json` writes. They are read with
the same rules as :meth:`~septum.agent.capture.FlowRecord.from_json` (every field present and
of its type; the tests check both agree on every sample line), without building a record per
line: addresses repeat, so their canonical text is cached, which is most of the cost saved.
The record carries no source port (the agent aggregates over them): ``source_port`` is 0.
``rule`` is the record's provenance joined with commas (None when empty), ``reporter`` the
enforcer.

Cost: one ``json.loads`` and two ``fromisoformat`` per line (a few µs).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any, BinaryIO

from septum.agent.capture import FlowVerdict
from septum.flows.importers import ImportOptions, json_lines
from septum.flows.records import Malformed, Row, Skipped, protocol_text

__all__ = ["IMPORTER", "AgentImporter"]

_VERDICTS = {v.value for v in FlowVerdict}
#: beyond this many cached addresses the cache is cleared (bounds memory on scans)
_CACHE_LIMIT = 1 << 18


def _count(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key}: expected an integer, got {value!r}")
    return value


def _time(text: object) -> datetime:
    when = datetime.fromisoformat(str(text))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class AgentImporter:
    """Reads the agent's JSON-lines flow log (see the module docstring)."""

    name = "agent"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        protocols: dict[str, str] = {}
        addresses: dict[str, str] = {}
        for line in json_lines(stream):
            if isinstance(line, Malformed):
                yield line
                continue
            number, data = line
            try:
                start = _time(data["start"])
                end = _time(data["end"])
                ends = []
                for key in ("source", "destination"):
                    text = data[key]
                    canonical = addresses.get(text)
                    if canonical is None:
                        canonical = str(ip_address(str(text)))
                        if len(addresses) >= _CACHE_LIMIT:
                            addresses.clear()
                        addresses[text] = canonical
                    ends.append(canonical)
                port = _count(data, "port")
                packets = _count(data, "packets")
                size = _count(data, "bytes")
                connections = _count(data, "connections")
                verdict = data["verdict"]
                if verdict not in _VERDICTS:
                    raise ValueError(f"unknown verdict {verdict!r}")
                provenance = data["provenance"]
                if not isinstance(provenance, list):
                    raise TypeError("provenance: expected a list")
                enforcer = str(data["enforcer"])
                raw_protocol = str(data["protocol"])
            except KeyError as e:
                yield Malformed(number, f"not a flow record: missing {e}")
                continue
            except (ValueError, TypeError) as e:
                yield Malformed(number, f"not a flow record: {e}")
                continue
            if end < start:
                yield Malformed(number, "end is before start")
                continue
            if not 0 <= port <= 65535:
                yield Malformed(number, f"port {port} out of range")
                continue
            if packets < 0 or size < 0 or connections < 0:
                yield Malformed(number, "negative count")
                continue
            protocol = protocols.get(raw_protocol)
            if protocol is None:
                try:
                    protocol = protocols[raw_protocol] = protocol_text(raw_protocol)
                except ValueError as e:
                    yield Malformed(number, str(e))
                    continue
            yield (
                start,
                end,
                ends[0],
                ends[1],
                0,
                port,
                protocol,
                packets,
                size,
                connections,
                enforcer,
                verdict,
                ",".join(str(p) for p in provenance) or None,
            )


IMPORTER = AgentImporter()
