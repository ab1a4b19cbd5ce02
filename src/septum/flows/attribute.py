"""Attribution of Arrow batches of flow rows: who held each address at the flow's start.

::

    batch ──► distinct addresses new to this import ──► static table (address → kind, name)
      │            (Attributor.networks_containing for those nobody owns for all time)
      ├─► pc.index_in(source, static addresses) ─► kind/name indices (vectorized, no join)
      └─► rows whose address has time-bounded owners ─► DuckDB range join on those rows only
                                                         └─► replace_with_mask

Design goals: attribution must run at millions of rows per second, so nothing is done per
row in Python. Most addresses have one owner for all time (or none: then a network or
unknown), which is an exact-match lookup done by Arrow's hash kernels; only rows of addresses
whose ownership changes over time (ephemeral pods, DHCP, VPN sessions) need their time
looked at, and those go through one narrow DuckDB range join. Kind and name columns come out
dictionary-encoded, which Parquet stores as such.

Rows with an address that does not parse are reported as invalid (a mask), never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from ipaddress import ip_address

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from septum.engine.attribution import Attributor, EndpointKind
from septum.engine.ownership import OwnershipInterval, resolve_ownership
from septum.flows.records import RAW_SCHEMA, TIMESTAMP
from septum.model.resources import Repository

__all__ = ["ATTRIBUTED_SCHEMA", "KINDS", "BatchAttributor"]

#: The kind dictionary, in EndpointKind order.
KINDS: tuple[str, ...] = tuple(k.value for k in EndpointKind)
_UNKNOWN = KINDS.index(EndpointKind.UNKNOWN.value)
_NETWORK = KINDS.index(EndpointKind.NETWORK.value)
_DICT = pa.dictionary(pa.int32(), pa.string())
#: What the store writes: the raw fields, then the attribution, dictionary-encoded.
ATTRIBUTED_SCHEMA = pa.schema(
    [
        *RAW_SCHEMA,
        pa.field("source_kind", _DICT, nullable=False),
        pa.field("source_name", _DICT, nullable=True),
        pa.field("destination_kind", _DICT, nullable=False),
        pa.field("destination_name", _DICT, nullable=True),
    ]
)


class BatchAttributor:
    """Attributes batches of one import. Construction costs O(ownership intervals); each
    batch costs O(rows) in Arrow kernels plus O(new distinct addresses) in Python."""

    def __init__(self, repo: Repository, history: Sequence[OwnershipInterval] = ()) -> None:
        self._attributor = Attributor(repo)
        by_address: dict[str, list[OwnershipInterval]] = defaultdict(list)
        for i in resolve_ownership(repo, history):
            by_address[str(i.address)].append(i)
        self._owners: dict[str, tuple[int, str]] = {}  # owned for all time: (kind, name)
        dynamic: list[OwnershipInterval] = []
        for address, intervals in by_address.items():
            only = intervals[0]
            if len(intervals) == 1 and only.start is None and only.end is None:
                self._owners[address] = (KINDS.index(only.kind.value), only.owner)
            else:
                dynamic.extend(intervals)
        self._dynamic_keys = pa.array(sorted({str(i.address) for i in dynamic}), pa.string())
        self._dynamic = pa.table(
            {
                "address": pa.array([str(i.address) for i in dynamic], pa.string()),
                "kind": pa.array([KINDS.index(i.kind.value) for i in dynamic], pa.int32()),
                "owner": pa.array([i.owner for i in dynamic], pa.string()),
                "valid_from": pa.array([i.start for i in dynamic], TIMESTAMP),
                "valid_until": pa.array([i.end for i in dynamic], TIMESTAMP),
            }
        )
        self._con: duckdb.DuckDBPyConnection | None = None
        # the static lookup table, grown as new addresses show up
        self._known: dict[str, int] = {}
        self._keys: list[str] = []
        self._kind_of: list[int] = []
        self._name_of: list[int | None] = []
        self._names: list[str] = []
        self._name_index: dict[str, int] = {}
        self._arrays: tuple[pa.Array, pa.Array, pa.Array] | None = None
        self.invalid: set[str] = set()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _name(self, name: str) -> int:
        found = self._name_index.get(name)
        if found is None:
            found = self._name_index[name] = len(self._names)
            self._names.append(name)
        return found

    def _learn(self, addresses: pa.Array) -> None:
        """Add the static attribution of every address not seen before in this import."""
        new = [
            a for a in pc.unique(addresses).to_pylist() if a is not None and a not in self._known
        ]
        if not new:
            return
        for text in new:
            owner = self._owners.get(text)
            kind, name = _UNKNOWN, None
            if owner is not None:
                kind, name = owner[0], self._name(owner[1])
            else:
                try:
                    networks = self._attributor.networks_containing(ip_address(text))
                except ValueError:
                    self.invalid.add(text)
                    networks = ()
                if networks:
                    kind, name = _NETWORK, self._name(networks[0].name)
            self._known[text] = len(self._keys)
            self._keys.append(text)
            self._kind_of.append(kind)
            self._name_of.append(name)
        self._arrays = (
            pa.array(self._keys, pa.string()),
            pa.array(self._kind_of, pa.int32()),
            pa.array(self._name_of, pa.int32()),
        )

    def invalid_mask(self, batch: pa.RecordBatch) -> pa.Array | None:
        """Rows whose source or destination is not an address (after :meth:`learn`)."""
        if not self.invalid:
            return None
        bad = pa.array(sorted(self.invalid), pa.string())
        return pc.or_(
            pc.is_in(batch.column("source"), value_set=bad),
            pc.is_in(batch.column("destination"), value_set=bad),
        )

    def learn(self, batch: pa.RecordBatch) -> None:
        self._learn(pc.fill_null(batch.column("source"), ""))
        self._learn(pc.fill_null(batch.column("destination"), ""))

    def _side(self, addresses: pa.Array, starts: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(kind indices, name indices) of one side of a batch (after :meth:`learn`)."""
        assert self._arrays is not None
        keys, kinds, names = self._arrays
        at = pc.index_in(addresses, value_set=keys)
        kind = pc.fill_null(pc.take(kinds, at), _UNKNOWN)
        name = pc.take(names, at)
        if len(self._dynamic_keys) == 0:
            return kind, name
        mask = pc.fill_null(pc.is_in(addresses, value_set=self._dynamic_keys), False)
        if not pc.any(mask).as_py():
            return kind, name
        sub = pa.table(
            {
                "address": pc.filter(addresses, mask),
                "start": pc.filter(starts, mask),
            }
        )
        sub = sub.append_column("pos", pa.array(range(len(sub)), pa.int64()))
        if self._con is None:
            self._con = duckdb.connect()
            self._con.register("dyn_arrow", self._dynamic)
            self._con.execute(
                "CREATE TEMP TABLE dyn AS SELECT address, kind, owner, "
                "coalesce(valid_from, TIMESTAMPTZ '-infinity') AS valid_from, "
                "coalesce(valid_until, TIMESTAMPTZ 'infinity') AS valid_until FROM dyn_arrow"
            )
        self._con.register("sub_arrow", sub)
        found = self._con.sql(
            "SELECT s.pos, d.kind, d.owner FROM sub_arrow s LEFT JOIN dyn d "
            "ON d.address = s.address AND s.start >= d.valid_from AND s.start < d.valid_until "
            "ORDER BY s.pos"
        ).to_arrow_table()
        self._con.unregister("sub_arrow")
        owners = found.column("owner").combine_chunks()
        found_kind = found.column("kind").combine_chunks()
        for owner in pc.unique(owners).to_pylist():
            if owner is not None:
                self._name(owner)
        dyn_name = pc.cast(
            pc.index_in(owners, value_set=pa.array(self._names, pa.string())), pa.int32()
        )
        # where no time-bounded interval covers the flow, the static answer stands
        base_kind = pc.filter(kind, mask)
        base_name = pc.filter(name, mask)
        covered = pc.is_valid(found_kind)
        dyn_kind = pc.if_else(covered, found_kind, base_kind)
        dyn_name = pc.if_else(covered, dyn_name, base_name)
        return (
            pc.replace_with_mask(kind, mask, dyn_kind),
            pc.replace_with_mask(name, mask, dyn_name),
        )

    def attribute(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` (raw rows, addresses learnt) with source_kind, source_name,
        destination_kind and destination_name appended, dictionary-encoded."""
        starts = batch.column("start")
        sides = [self._side(batch.column(side), starts) for side in ("source", "destination")]
        kinds_dict = pa.array(KINDS, pa.string())
        names_dict = pa.array(self._names, pa.string())  # after _side: it may add names
        columns = list(batch.columns)
        for kind, name in sides:
            columns.append(pa.DictionaryArray.from_arrays(kind, kinds_dict))
            columns.append(pa.DictionaryArray.from_arrays(name, names_dict))
        return pa.RecordBatch.from_arrays(columns, schema=ATTRIBUTED_SCHEMA)
