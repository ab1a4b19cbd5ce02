"""In-memory fakes of the agent's ports, for unit tests of code that uses them.

Each fake keeps its state in plain attributes so tests can set it up and inspect it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from septum.agent.backend import ApplyFailed
from septum.agent.conntrack import ConntrackEntry

__all__ = ["FakeConntrackTable", "FakeNft"]


class FakeConntrackTable:
    """:class:`septum.agent.conntrack.ConntrackTable` in memory.

    Entries are identified by :attr:`ConntrackEntry.key` (the original tuple), as the real
    table deletes by tuple whatever the counters or state. ``deleted`` records every entry
    actually removed, in order, for assertions."""

    def __init__(self, entries: Iterable[ConntrackEntry] = ()) -> None:
        self._entries: dict[object, ConntrackEntry] = {}
        self.deleted: list[ConntrackEntry] = []
        for e in entries:
            self.add(e)

    def add(self, entry: ConntrackEntry) -> None:
        """Track a connection (replacing one with the same tuple)."""
        self._entries[entry.key] = entry

    def entries(self) -> list[ConntrackEntry]:
        return list(self._entries.values())

    def delete(self, entries: Iterable[ConntrackEntry]) -> int:
        n = 0
        for e in entries:
            gone = self._entries.pop(e.key, None)
            if gone is not None:
                self.deleted.append(gone)
                n += 1
        return n


# A fake ``NftBackend`` for unit tests of the agent's logic (never for enforcement tests: those
# run real nft in network namespaces). It records every transaction and tracks which tables a
# whole-table script leaves behind; it can be told to reject transactions.
_DELETE = re.compile(r"^delete table (\w+) (\w+)$", re.M)
_DEFINE = re.compile(r"^table (\w+) (\w+) \{$", re.M)
_ELEMENT = re.compile(r"^(add|delete) element (\w+) (\w+) ", re.M)


@dataclass
class FakeNft:
    """``applied`` lists accepted scripts in order; ``reject`` makes the next N
    transactions fail (nothing applied), like nft refusing a script."""

    applied: list[str] = field(default_factory=list)
    tables: set[tuple[str, str]] = field(default_factory=set)
    reject: int = 0
    reject_message: str = "Error: syntax error (fake)"

    def apply(self, script: str) -> None:
        if self.reject > 0:
            self.reject -= 1
            raise ApplyFailed(self.reject_message)
        tables = set(self.tables)
        for family, table in _DELETE.findall(script):
            if (family, table) not in tables and f"table {family} {table}\n" not in script:
                raise ApplyFailed(f"No such file or directory: table {family} {table}")
            tables.discard((family, table))
        for family, table in _DEFINE.findall(script):
            tables.add((family, table))
        for _, family, table in _ELEMENT.findall(script):
            if (family, table) not in tables:
                raise ApplyFailed(f"No such file or directory: table {family} {table}")
        self.tables = tables
        self.applied.append(script)

    def table_exists(self, family: str, table: str) -> bool:
        return (family, table) in self.tables

    @property
    def last(self) -> str:
        return self.applied[-1]
