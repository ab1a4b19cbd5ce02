"""``--format conntrack``: ``conntrack -L`` listings and ``conntrack -E`` event logs.

Lines are parsed by :mod:`septum.agent.conntrack` (``-o extended`` or the plain format):

- a listing line (``conntrack -L``) is a live connection, stamped ``ImportOptions.now``;
- ``[NEW]`` and ``[DESTROY]`` events carry their ``[seconds.micro]`` time when the log was
  written with ``-o timestamp``, else they are stamped ``ImportOptions.now`` too;
- ``[UPDATE]`` events and the tool's own messages are skipped.

Every flow is ``allowed`` (conntrack only holds accepted connections). ``packets``/``bytes``
sum both directions (0 when accounting was off). A NEW event is one connection; a DESTROY
carries the final counters and counts as a connection only when this file did not show the
connection's NEW (a log that started while it was open), so each connection counts once.
The reporter is ``ImportOptions.reporter``, else ``conntrack``.

Cost: the agent's parser (a ``split()`` and a dictionary per line); memory: the tuples of
connections whose NEW was seen and whose DESTROY was not yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from septum.agent.conntrack import (
    ConntrackEntry,
    ConntrackParseError,
    parse_conntrack_event,
    parse_conntrack_line,
)
from septum.flows.importers import ImportOptions
from septum.flows.records import Malformed, Row, Skipped, protocol_text

__all__ = ["IMPORTER", "ConntrackImporter"]

_TOOL_MESSAGES = ("flow entries have been shown", "flow events have been shown", "NOTICE")


def _event_tags(line: str) -> tuple[bool, str | None]:
    """Whether the line starts with a ``[seconds.micro]`` stamp, and its event tag
    (``NEW``, ``DESTROY``, ``UPDATE``...) or None for a listing line."""
    text = line.lstrip()
    stamped = False
    if text.startswith("[") and text[1:2].isdigit():
        stamped = True
        text = text[text.find("]") + 1 :].lstrip()
    if text.startswith("["):
        return stamped, text[1 : text.find("]")]
    return stamped, None


class ConntrackImporter:
    """Reads conntrack listings and event logs (see the module docstring)."""

    name = "conntrack"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        reporter = options.reporter or "conntrack"
        now = options.now
        opened: set[tuple[object, ...]] = set()
        protocols: dict[str, str] = {}
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                yield Malformed(number, "not UTF-8 text")
                continue
            if not line.strip():
                continue
            stamped, tag = _event_tags(line)
            entry: ConntrackEntry
            try:
                if tag is None:
                    if any(m in line for m in _TOOL_MESSAGES):
                        yield Skipped(number, "conntrack message")
                        continue
                    entry, at, connections = parse_conntrack_line(line), now, 1
                elif tag == "NEW" or tag == "DESTROY":
                    if stamped:
                        event = parse_conntrack_event(line)
                        entry, at = event.entry, event.at
                    else:
                        entry, at = parse_conntrack_line(line), now
                    key = entry.key
                    if tag == "NEW":
                        opened.add(key)
                        connections = 1
                    elif key in opened:
                        opened.discard(key)
                        connections = 0
                    else:
                        connections = 1
                elif tag == "UPDATE":
                    yield Skipped(number, "UPDATE event")
                    continue
                else:
                    yield Malformed(number, f"unknown conntrack event [{tag}]")
                    continue
            except (ConntrackParseError, ValueError, OverflowError, OSError) as e:
                yield Malformed(number, str(e))
                continue
            protocol = protocols.get(entry.protocol)
            if protocol is None:
                protocol = protocols[entry.protocol] = protocol_text(entry.protocol)
            yield (
                at,
                at,
                str(entry.source),
                str(entry.destination),
                entry.source_port,
                entry.destination_port,
                protocol,
                entry.packets + entry.reply_packets,
                entry.bytes + entry.reply_bytes,
                connections,
                reporter,
                "allowed",
                None,
            )


IMPORTER = ConntrackImporter()
