"""The flow store: Parquet files partitioned by day in the data directory, queried with DuckDB.

Layout of a data directory::

    DATA/settings.json                      StoreSettings (retention, compaction)
    DATA/lock                               writers hold an exclusive flock on it
    DATA/flows/_manifest.json               the committed files: the only ones readers see
    DATA/flows/day=2026-11-25/<import>.parquet   raw fields + attribution (the day is the dir)
    DATA/flows/.staging/<import>/           work in progress of one import or compaction
    DATA/inventory/ownership.json           ownership history (record_inventory)
    DATA/inventory/identities.json          labels of every workload, user and network seen

::

    importer rows ─► Arrow batches ─► conform, validate, retention ─► BatchAttributor
         (or Parquet batches directly)                                      │
                       writer thread: one Parquet file per day in staging ◄─┘
                       ─► files moved into flows/day=… ─► manifest replaced (the commit)

Design goals:

- **All or nothing per input file.** An import streams its rows through attribution into one
  file per day in a staging directory, moves the files into place and only then commits by
  atomically replacing the manifest. A crash or an error before the manifest is replaced
  leaves the store as it was; files not in the manifest are orphans that the next compaction
  deletes. Readers only ever read files the manifest names.
- **Attribution without per-row Python** (``septum.flows.attribute``): hash lookups in Arrow
  kernels for addresses with one owner for all time, one narrow DuckDB range join for rows of
  addresses whose owner changed over time.
- **Aggregate before touching Python.** Queries group in DuckDB down to distinct edges
  (thousands, not millions) and only those cross into Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from septum.engine.attribution import EndpointKind
from septum.engine.observed import FlowGroup, Identity, RecordedVerdict, protocol_of
from septum.engine.ownership import (
    OwnershipInterval,
    record_snapshot,
)
from septum.errors import SeptumError
from septum.flows.attribute import ATTRIBUTED_SCHEMA, KINDS, BatchAttributor
from septum.flows.importers import FlowImporter, ImportFormatError, ImportOptions
from septum.flows.records import (
    RAW_FIELDS,
    RAW_SCHEMA,
    TIMESTAMP,
    Malformed,
    Row,
    Skipped,
    rows_to_batch,
)
from septum.model.resources import Repository

__all__ = [
    "FlowStore",
    "ImportReport",
    "StoreError",
    "StoreSettings",
    "repository_identities",
]

_MANIFEST = "_manifest.json"
_BATCH = 65_536
#: how many malformed lines an import report keeps (all are counted)
_MALFORMED_KEPT = 50


class StoreError(SeptumError):
    """The data directory is unusable (not a store, corrupt manifest, locked)."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Typed settings of a data directory (``settings.json``).

    ``retention_days``: partitions whose day ended more than this many days before "now"
    are deleted by imports and compaction (None: keep forever). ``compact_min_files``: a
    partition with at least this many files is merged into one by ``compact``.
    """

    retention_days: int | None = 30
    compact_min_files: int = 4

    def to_json(self) -> dict[str, object]:
        return {
            "retention_days": self.retention_days,
            "compact_min_files": self.compact_min_files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], origin: str) -> StoreSettings:
        try:
            retention = data.get("retention_days", 30)
            files = data.get("compact_min_files", 4)
            if retention is not None and (not isinstance(retention, int) or retention < 1):
                raise ValueError("retention_days must be a positive integer or null")
            if not isinstance(files, int) or files < 2:
                raise ValueError("compact_min_files must be an integer >= 2")
        except (ValueError, AttributeError) as e:
            raise StoreError(f"{origin}: {e}") from e
        return cls(retention_days=retention, compact_min_files=files)


@dataclass(slots=True)
class ImportReport:
    """What one input file gave. ``stored`` rows are committed (0 when the import failed:
    ``error`` says why and ``line`` how far parsing got)."""

    origin: str
    rows: int = 0
    stored: int = 0
    expired: int = 0
    malformed: int = 0
    malformed_examples: list[Malformed] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    partitions: list[str] = field(default_factory=list)
    line: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.origin,
            "ok": self.ok,
            "rows": self.rows,
            "stored": self.stored,
            "expired": self.expired,
            "malformed": self.malformed,
            "malformed_examples": [
                {"line": m.line, "reason": m.reason} for m in self.malformed_examples
            ],
            "skipped": dict(sorted(self.skipped.items())),
            "partitions": self.partitions,
            "error": self.error,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class CompactReport:
    merged_partitions: int
    files_before: int
    files_after: int
    expired_partitions: int
    orphans_removed: int

    def to_json(self) -> dict[str, object]:
        return {
            "merged_partitions": self.merged_partitions,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "expired_partitions": self.expired_partitions,
            "orphans_removed": self.orphans_removed,
        }


Progress = Callable[[int], None]  # bytes of the input consumed so far


def _open_input(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(stream to read, the raw file whose position is the progress); gzip transparently."""
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    raw.seek(0)
    return raw, raw


def repository_identities(repo: Repository) -> dict[tuple[str, str], dict[str, str]]:
    """(kind, name) → labels of the repository's workloads, users and networks."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for w in repo.workloads:
        found[(EndpointKind.WORKLOAD.value, w.name)] = dict(w.labels)
    for u in repo.users:
        found[(EndpointKind.USER.value, u.name)] = dict(u.labels)
    for n in repo.networks:
        found[(EndpointKind.NETWORK.value, n.name)] = dict(n.labels)
    return found


def _write_json_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FlowStore:
    """One data directory's flows, ownership history and identities. See the module
    docstring for the layout and the commit protocol. Writers (imports, compaction,
    inventory recording) take an exclusive lock on ``DATA/lock``; readers take none."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        self.flows_dir = root / "flows"
        self.inventory_dir = root / "inventory"
        if not (self.flows_dir / _MANIFEST).exists():
            if not create:
                raise StoreError(f"{root}: not a Septum data directory (no flows/{_MANIFEST})")
            self.flows_dir.mkdir(parents=True, exist_ok=True)
            self.inventory_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomically(self.flows_dir / _MANIFEST, {"version": 0, "files": []})
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        settings_path = root / "settings.json"
        if settings_path.exists():
            try:
                data = json.loads(settings_path.read_text())
            except json.JSONDecodeError as e:
                raise StoreError(f"{settings_path}:{e.lineno}:{e.colno}: {e.msg}") from e
            if not isinstance(data, dict):
                raise StoreError(f"{settings_path}: expected a JSON object")
            self.settings = StoreSettings.from_json(data, str(settings_path))
        else:
            self.settings = StoreSettings()

    # ------------------------------------------------------------------ settings, manifest

    def configure(self, settings: StoreSettings) -> None:
        with self._locked():
            _write_json_atomically(self.root / "settings.json", settings.to_json())
            self.settings = settings

    def _manifest(self) -> dict[str, Any]:
        path = self.flows_dir / _MANIFEST
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{path}:{e.lineno}:{e.colno}: corrupt manifest: {e.msg}") from e
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise StoreError(f"{path}: corrupt manifest (no files list)")
        return data

    def files(self) -> list[Path]:
        """The committed Parquet files, in partition order."""
        return [self.flows_dir / entry["path"] for entry in self._manifest()["files"]]

    def partitions(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for entry in self._manifest()["files"]:
            out.setdefault(entry["partition"], []).append(entry)
        return out

    def _commit(self, files: list[dict[str, Any]]) -> None:
        manifest = self._manifest()
        files = sorted(files, key=lambda e: (e["partition"], e["path"]))
        _write_json_atomically(
            self.flows_dir / _MANIFEST, {"version": manifest.get("version", 0) + 1, "files": files}
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / "lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"{self.root}: another import or compaction holds the lock; try again"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ inventory

    def history(self) -> tuple[OwnershipInterval, ...]:
        path = self.inventory_dir / "ownership.json"
        if not path.exists():
            return ()
        out: list[OwnershipInterval] = []
        for entry in json.loads(path.read_text()):
            out.append(
                OwnershipInterval(
                    ip_address(entry["address"]),
                    EndpointKind(entry["kind"]),
                    entry["owner"],
                    datetime.fromisoformat(entry["start"]) if entry["start"] else None,
                    datetime.fromisoformat(entry["end"]) if entry["end"] else None,
                )
            )
        return tuple(out)

    def identities(self) -> dict[tuple[str, str], dict[str, str]]:
        """(kind, name) → labels, of every workload, user and network the store has seen
        (the latest labels recorded)."""
        path = self.inventory_dir / "identities.json"
        if not path.exists():
            return {}
        return {(e["kind"], e["name"]): e["labels"] for e in json.loads(path.read_text())}

    def record_inventory(self, repo: Repository, at: datetime) -> int:
        """Record the repository's inventory as a snapshot at ``at`` (ownership history and
        identity labels). Returns the number of history intervals."""
        with self._locked():
            return len(self._record_inventory(repo, at))

    def _record_inventory(self, repo: Repository, at: datetime) -> tuple[OwnershipInterval, ...]:
        """Record a snapshot and return the history after it; files are rewritten only when
        something changed (a repeated import with the same inventory writes nothing)."""
        before = self.history()
        history = record_snapshot(before, repo, at)
        if history != before:
            self._write_history(history)
        seen = self.identities()
        identities = {**seen, **repository_identities(repo)}
        if identities != seen:
            _write_json_atomically(
                self.inventory_dir / "identities.json",
                [
                    {"kind": k, "name": n, "labels": labels}
                    for (k, n), labels in sorted(identities.items())
                ],
            )
        return history

    def _write_history(self, history: Sequence[OwnershipInterval]) -> None:
        _write_json_atomically(
            self.inventory_dir / "ownership.json",
            [
                {
                    "address": str(i.address),
                    "kind": i.kind.value,
                    "owner": i.owner,
                    "start": i.start.isoformat() if i.start else None,
                    "end": i.end.isoformat() if i.end else None,
                }
                for i in history
            ],
        )

    # ------------------------------------------------------------------ import

    def import_file(
        self,
        path: Path,
        importer: FlowImporter,
        options: ImportOptions,
        repo: Repository,
        *,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Parse, attribute and commit one input file (all or nothing, see the module
        docstring). Bad lines are counted, never fatal; an exception from the importer (a
        stream that is not its format) or from the disk leaves the store unchanged and is
        reported in ``ImportReport.error`` with the line reached."""
        report = ImportReport(origin=str(path))
        with self._locked():
            staging = self._staging()
            try:
                if importer.name == "parquet":
                    batches = _parquet_batches(path, report)
                else:
                    batches = self._parsed_batches(path, importer, options, report, progress)
                history = self._record_inventory(repo, options.now)
                attributor = BatchAttributor(repo, history)
                self._attribute_and_commit(batches, attributor, options.now, staging, report)
            except (SeptumError, OSError, duckdb.Error, pa.ArrowException) as e:
                report.error = str(e)
                if isinstance(e, ImportFormatError):
                    report.line = e.line
                report.stored = 0
                report.partitions = []
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return report

    def attribution_summary(self, path: Path, repo: Repository) -> dict[str, int]:
        """Attribute a Parquet flow file without storing it: rows per source kind. The
        attribution step of an import alone (the benchmark measures it this way)."""
        attributor = BatchAttributor(repo, self.history())
        counts: Counter[str] = Counter()
        try:
            for raw in _parquet_batches(path, ImportReport(origin=str(path))):
                batch = _conform(raw)
                attributor.learn(batch)
                out = attributor.attribute(batch)
                tally = pc.value_counts(out.column("source_kind").indices)
                for value, n in zip(*tally.flatten(), strict=True):
                    counts[KINDS[value.as_py()]] += n.as_py()
        finally:
            attributor.close()
        return dict(counts)

    def _staging(self) -> Path:
        staging = self.flows_dir / ".staging" / uuid.uuid4().hex[:12]
        staging.mkdir(parents=True)
        return staging

    def _parsed_batches(
        self,
        path: Path,
        importer: FlowImporter,
        options: ImportOptions,
        report: ImportReport,
        progress: Progress | None,
    ) -> Iterator[pa.RecordBatch]:
        """The importer's rows of ``path`` in Arrow batches, counting malformed and skipped
        lines into ``report`` on the way."""
        stream, position = _open_input(path)
        try:
            rows: list[Row] = []
            for item in importer.read(stream, str(path), options):
                if isinstance(item, tuple):
                    rows.append(item)
                    if len(rows) >= _BATCH:
                        report.rows += len(rows)
                        yield rows_to_batch(rows)
                        rows = []
                        if progress is not None:
                            progress(position.tell())
                elif isinstance(item, Malformed):
                    report.malformed += 1
                    report.line = max(report.line, item.line)
                    if len(report.malformed_examples) < _MALFORMED_KEPT:
                        report.malformed_examples.append(item)
                elif isinstance(item, Skipped):
                    report.skipped[item.reason] += 1
            if rows:
                report.rows += len(rows)
                yield rows_to_batch(rows)
            if progress is not None:
                progress(position.tell())
        finally:
            stream.close()
            position.close()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        return con

    def _attribute_and_commit(
        self,
        batches: Iterator[pa.RecordBatch],
        attributor: BatchAttributor,
        now: datetime,
        staging: Path,
        report: ImportReport,
    ) -> None:
        """Validate, attribute and write ``batches`` into one file per day under
        ``staging``, then move the files into place and commit the manifest."""
        cutoff = self._retention_cutoff(now)
        writers: dict[str, pq.ParquetWriter] = {}
        rows: Counter[str] = Counter()
        # Parquet encoding is the slowest step and releases the GIL: one writer thread
        # encodes batch n while this thread reads and attributes batch n+1 (order kept).
        pending: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="septum-write") as pool:
            try:
                for raw in batches:
                    batch = _conform(raw)
                    attributor.learn(batch)
                    valid = _valid(batch, attributor.invalid_mask(batch))
                    kept = pc.sum(valid).as_py() or 0
                    if kept < batch.num_rows:
                        report.malformed += batch.num_rows - kept
                        batch = batch.filter(valid)
                    if cutoff is not None and batch.num_rows:
                        fresh = pc.greater_equal(
                            batch.column("start"), pa.scalar(cutoff, TIMESTAMP)
                        )
                        kept = pc.sum(fresh).as_py() or 0
                        report.expired += batch.num_rows - kept
                        batch = batch.filter(fresh)
                    if batch.num_rows == 0:
                        continue
                    out = attributor.attribute(batch)
                    days, distinct = _days(out.column("start"))
                    for day in distinct:
                        part = (
                            out
                            if days is None
                            else out.filter(pc.equal(days, pa.scalar(day, TIMESTAMP)))
                        )
                        key = f"day={day.date().isoformat()}"
                        writer = writers.get(key)
                        if writer is None:
                            (staging / key).mkdir(parents=True, exist_ok=True)
                            writer = writers[key] = pq.ParquetWriter(
                                staging / key / "part.parquet",
                                ATTRIBUTED_SCHEMA,
                                compression="zstd",
                                write_statistics=["start", "end"],
                            )
                        while len(pending) >= 2:
                            pending.pop(0).result()
                        pending.append(pool.submit(writer.write_batch, part))
                        rows[key] += part.num_rows
                for done in pending:
                    done.result()
            finally:
                for done in pending:
                    done.cancel()
                pool.shutdown(wait=True)
                for writer in writers.values():
                    writer.close()
                attributor.close()
        written: list[dict[str, Any]] = []
        for key in sorted(writers):
            target_dir = self.flows_dir / key
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / f"{staging.name}.parquet"
            (staging / key / "part.parquet").replace(target)
            written.append(
                {
                    "path": str(target.relative_to(self.flows_dir)),
                    "partition": key,
                    "rows": rows[key],
                }
            )
        self._commit([*self._manifest()["files"], *written])
        report.stored = sum(e["rows"] for e in written)
        report.partitions = sorted(writers)
        self._expire(now)

    def _retention_cutoff(self, now: datetime) -> datetime | None:
        days = self.settings.retention_days
        if days is None:
            return None
        cutoff = now.astimezone(UTC) - timedelta(days=days)
        return cutoff.replace(minute=0, second=0, microsecond=0)

    def _expire(self, now: datetime) -> int:
        """Drop whole partitions older than the retention window (lock held)."""
        cutoff = self._retention_cutoff(now)
        if cutoff is None:
            return 0
        keep: list[dict[str, Any]] = []
        drop: list[dict[str, Any]] = []
        for entry in self._manifest()["files"]:
            (keep if _partition_end(entry["partition"]) > cutoff else drop).append(entry)
        if not drop:
            return 0
        self._commit(keep)
        for entry in drop:
            with contextlib.suppress(OSError):
                (self.flows_dir / entry["path"]).unlink()
        return len({e["partition"] for e in drop})

    # ------------------------------------------------------------------ re-attribution

    def reattribute(self, repo: Repository, now: datetime) -> int:
        """Attribute every stored flow again with ``repo``'s inventory (recorded as a
        snapshot at ``now``) and the ownership history: for flows imported before the
        inventory was known, or after the history was completed. One day at a time, each
        committed through the manifest like an import (an interruption leaves every day
        either as it was or fully re-attributed). Returns the rows rewritten."""
        rewritten = 0
        with self._locked():
            attributor = BatchAttributor(repo, self._record_inventory(repo, now))
            try:
                for _day, entries in sorted(self.partitions().items()):
                    staging = self._staging()
                    try:
                        tmp = staging / "part.parquet"
                        rows = 0
                        with pq.ParquetWriter(
                            tmp, ATTRIBUTED_SCHEMA, compression="zstd",
                            write_statistics=["start", "end"],
                        ) as writer:  # fmt: skip
                            for entry in entries:
                                stored = pq.ParquetFile(self.flows_dir / entry["path"])
                                for raw in stored.iter_batches(
                                    batch_size=1 << 20, columns=list(RAW_FIELDS)
                                ):
                                    batch = _conform(raw)
                                    attributor.learn(batch)
                                    writer.write_batch(attributor.attribute(batch))
                                    rows += batch.num_rows
                        self._swap(entries, tmp, f"{staging.name}.parquet", rows)
                        rewritten += rows
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
            finally:
                attributor.close()
        return rewritten

    # ------------------------------------------------------------------ compaction

    def compact(self, now: datetime) -> CompactReport:
        """Merge partitions holding ``compact_min_files`` files or more into one file each
        (sorted by start), drop partitions past retention, delete orphan files. Each step
        commits through the manifest, so an interruption loses nothing."""
        with self._locked():
            expired = self._expire(now)
            before = len(self._manifest()["files"])
            merged = 0
            staging = self._staging()
            con = self._connection()
            try:
                for partition, entries in sorted(self.partitions().items()):
                    if len(entries) < self.settings.compact_min_files:
                        continue
                    paths = [str(self.flows_dir / e["path"]) for e in entries]
                    tmp = staging / f"{partition.replace('/', '_')}.parquet"
                    con.execute(
                        f"COPY (SELECT * FROM read_parquet({_sql_list(paths)}) ORDER BY start) "
                        f"TO {_sql_text(str(tmp))} (FORMAT parquet, COMPRESSION zstd)"
                    )
                    rows = int(pq.read_metadata(tmp).num_rows)
                    self._swap(entries, tmp, f"compact-{uuid.uuid4().hex[:12]}.parquet", rows)
                    merged += 1
            finally:
                con.close()
                shutil.rmtree(staging, ignore_errors=True)
            orphans = self._remove_orphans()
            after = len(self._manifest()["files"])
        return CompactReport(merged, before, after, expired, orphans)

    def _swap(
        self, entries: Sequence[Mapping[str, Any]], written: Path, name: str, rows: int
    ) -> None:
        """Replace the files ``entries`` (of one partition) by ``written``: move it into the
        partition as ``name``, commit the manifest, then delete the old files."""
        partition = entries[0]["partition"]
        target = self.flows_dir / partition / name
        written.replace(target)
        old = {e["path"] for e in entries}
        kept = [e for e in self._manifest()["files"] if e["path"] not in old]
        entry = {"path": str(target.relative_to(self.flows_dir)), "partition": partition,
                 "rows": rows}  # fmt: skip
        self._commit([*kept, entry])
        for path in old:
            with contextlib.suppress(OSError):
                (self.flows_dir / path).unlink()

    def _remove_orphans(self) -> int:
        live = {str(self.flows_dir / e["path"]) for e in self._manifest()["files"]}
        removed = 0
        for path in self.flows_dir.rglob("*.parquet"):
            if ".staging" in path.parts:
                continue
            if str(path) not in live:
                path.unlink()
                removed += 1
        shutil.rmtree(self.flows_dir / ".staging", ignore_errors=True)
        for directory in self.flows_dir.glob("day=*"):
            with contextlib.suppress(OSError):
                directory.rmdir()
        return removed

    # ------------------------------------------------------------------ reading

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the view ``flows`` over the committed files (an empty
        view of the stored schema when there are none). Close it after use."""
        con = self._connection()
        files = [str(p) for p in self.files()]
        if files:
            con.execute(
                f"CREATE VIEW flows AS SELECT * EXCLUDE (day) FROM read_parquet("
                f"{_sql_list(files)}, hive_partitioning = true, union_by_name = true)"
            )
        else:
            con.execute(f"CREATE VIEW flows AS {_EMPTY_STORED}")
        return con

    def count(self) -> int:
        return sum(int(e["rows"]) for e in self._manifest()["files"])

    def groups(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        change_points: Sequence[datetime] = (),
        identities: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    ) -> list[FlowGroup]:
        """The stored flows in [since, until) aggregated per (source, destination,
        protocol, port, attribution) and, when ``change_points`` are given, per stretch of
        time between consecutive change points (so each group has one meaning for the
        policy: see ``septum.engine.replay``). Protocols Septum cannot name are left out.
        Cost: one DuckDB aggregation over the files, then O(groups) in Python."""
        labels = identities if identities is not None else self.identities()
        con = self.connect()
        try:
            where, params = _time_filter(since, until)
            epoch = ""
            join = ""
            points = sorted({t.astimezone(UTC) for t in change_points})
            if 0 < len(points) <= 64:
                # a CASE is vectorized and cheap for a few instants (typically rule expiries)
                cases = " ".join(
                    f"WHEN start < TIMESTAMPTZ '{t.isoformat()}' THEN {i}"
                    for i, t in enumerate(points)
                )
                epoch = f", CASE {cases} ELSE {len(points)} END"
            elif points:
                con.register(
                    "cp_arrow",
                    pa.table(
                        {
                            "t": pa.array(points, TIMESTAMP),
                            "i": pa.array(range(1, len(points) + 1), pa.int64()),
                        }
                    ),
                )
                con.execute("CREATE TEMP TABLE cp AS SELECT * FROM cp_arrow")
                join = "ASOF LEFT JOIN cp ON f.start >= cp.t"
                epoch = ", coalesce(cp.i, 0)"
            rows = con.execute(
                f"""
                SELECT source, destination, protocol, port,
                       source_kind, source_name, destination_kind, destination_name,
                       min(start), max(start), count(*), sum(connections), sum(packets),
                       sum(bytes),
                       count(*) FILTER (WHERE verdict = 'allowed'),
                       count(*) FILTER (WHERE verdict = 'denied'),
                       count(*) FILTER (WHERE verdict = 'would-deny'),
                       count(*) FILTER (WHERE verdict = 'logged'),
                       count(*) FILTER (WHERE verdict = 'unknown')
                FROM flows f {join}
                {where}
                GROUP BY source, destination, protocol, port, source_kind, source_name,
                         destination_kind, destination_name{epoch}
                ORDER BY source, destination, protocol, port, min(start)
                """,
                params,
            ).fetchall()
        finally:
            con.close()
        return list(_to_groups(rows, labels))


_VERDICT_ORDER = (
    RecordedVerdict.ALLOWED,
    RecordedVerdict.DENIED,
    RecordedVerdict.WOULD_DENY,
    RecordedVerdict.LOGGED,
    RecordedVerdict.UNKNOWN,
)


def _to_groups(
    rows: Iterable[tuple[Any, ...]], labels: Mapping[tuple[str, str], Mapping[str, str]]
) -> Iterator[FlowGroup]:
    identity_cache: dict[tuple[str, str | None], Identity] = {}

    def identity(kind: str, name: str | None) -> Identity:
        key = (kind, name)
        found = identity_cache.get(key)
        if found is None:
            found = identity_cache[key] = Identity(
                EndpointKind(kind),
                name,
                labels.get((kind, name), {}) if name is not None else {},
            )
        return found

    for row in rows:
        protocol = protocol_of(row[2])
        if protocol is None:
            continue
        counts = row[14:19]
        yield FlowGroup(
            source=ip_address(row[0]),
            destination=ip_address(row[1]),
            protocol=protocol,
            port=int(row[3]) if protocol.has_ports else 0,
            first_seen=row[8],
            last_seen=row[9],
            records=int(row[10]),
            connections=int(row[11]),
            packets=int(row[12]),
            bytes=int(row[13]),
            source_identity=identity(row[4], row[5]),
            destination_identity=identity(row[6], row[7]),
            verdicts={v: int(c) for v, c in zip(_VERDICT_ORDER, counts, strict=True) if c},
        )


def _time_filter(since: datetime | None, until: datetime | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append("start >= ?")
        params.append(since)
    if until is not None:
        clauses.append("start < ?")
        params.append(until)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _partition_end(partition: str) -> datetime:
    """``day=2026-11-25`` → 2026-11-26T00:00Z (the end of that day). The last day a
    datetime holds, 9999-12-31, ends at the largest datetime (the next day has none)."""
    parts = dict(p.split("=", 1) for p in partition.split("/"))
    day = datetime.fromisoformat(parts["day"]).replace(tzinfo=UTC)
    try:
        return day + timedelta(days=1)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_text(i) for i in items) + "]"


#: Values of columns a Parquet input may leave out.
_DEFAULTS: dict[str, object] = {
    "source_port": 0,
    "port": 0,
    "protocol": "tcp",
    "packets": 0,
    "bytes": 0,
    "connections": 1,
    "reporter": "parquet",
    "verdict": "unknown",
}
_REQUIRED = ("start", "end", "source", "destination")


def _parquet_batches(path: Path, report: ImportReport) -> Iterator[pa.RecordBatch]:
    """Batches of a Parquet flow file in the raw or stored layout (only start, end,
    source and destination are required), streamed; counts rows into ``report``."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise StoreError(f"{path}: not a Parquet file ({e})") from e
    names = set(parquet.schema_arrow.names)
    missing = [f for f in _REQUIRED if f not in names]
    if missing:
        raise StoreError(f"{path}: Parquet flow file lacks the column(s) {', '.join(missing)}")
    present = [f for f in RAW_FIELDS if f in names]
    for batch in parquet.iter_batches(batch_size=1 << 20, columns=present):
        report.rows += batch.num_rows
        yield batch


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` in RAW_SCHEMA: columns cast to their types, absent or null optional
    values filled with their defaults. A column that cannot be cast is a StoreError."""
    columns: list[pa.Array] = []
    n = batch.num_rows
    names = batch.schema.names
    for f in RAW_SCHEMA:
        if f.name in names:
            column = batch.column(f.name)
            if column.type != f.type:
                try:
                    column = pc.cast(column, f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise StoreError(f"column {f.name!r}: cannot read as {f.type}: {e}") from e
        else:
            column = pa.nulls(n, f.type)
        default = _DEFAULTS.get(f.name)
        if default is not None and column.null_count:
            column = pc.fill_null(column, pa.scalar(default, f.type))
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=RAW_SCHEMA)


def _days(start: pa.Array) -> tuple[pa.Array | None, list[datetime]]:
    """The UTC days of ``start`` (floored timestamps, and the distinct ones). A batch within
    one day, the usual case, is recognised from its min and max alone (no per-row work)."""
    bounds = pc.min_max(start).as_py()
    first, last = bounds["min"], bounds["max"]
    if first.date() == last.date():
        return None, [datetime(first.year, first.month, first.day, tzinfo=UTC)]
    days = pc.floor_temporal(start, unit="day")
    return days, pc.unique(days).to_pylist()


def _valid(batch: pa.RecordBatch, bad_addresses: pa.Array | None) -> pa.Array:
    """Rows the store accepts: times, addresses and protocol present, start <= end,
    counters not negative, addresses that parse."""
    start, end = batch.column("start"), batch.column("end")
    ok = pc.and_(pc.is_valid(start), pc.is_valid(end))
    for name in ("source", "destination", "protocol"):
        ok = pc.and_(ok, pc.is_valid(batch.column(name)))
    ok = pc.and_(ok, pc.fill_null(pc.less_equal(start, end), False))
    for name in ("packets", "bytes", "connections"):
        ok = pc.and_(ok, pc.fill_null(pc.greater_equal(batch.column(name), 0), False))
    if bad_addresses is not None:
        ok = pc.and_(ok, pc.invert(pc.fill_null(bad_addresses, False)))
    return pc.fill_null(ok, False)


_EMPTY_STORED = """
    SELECT * FROM (VALUES (
        NULL::TIMESTAMPTZ, NULL::TIMESTAMPTZ, NULL::VARCHAR, NULL::VARCHAR, NULL::INTEGER,
        NULL::INTEGER, NULL::VARCHAR, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::VARCHAR,
        NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR,
        NULL::VARCHAR))
    AS t(start, "end", source, destination, source_port, port, protocol, packets, bytes,
         connections, reporter, verdict, rule, source_kind, source_name, destination_kind,
         destination_name)
    WHERE false
"""
