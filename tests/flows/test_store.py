"""The flow store: commit protocol, attribution over time, retention, compaction, groups."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from septum.engine.attribution import EndpointKind
from septum.engine.observed import RecordedVerdict
from septum.flows.importers import ImportFormatError, ImportOptions, importer_for
from septum.flows.records import RAW_SCHEMA, Malformed, Row, Skipped, rows_to_batch
from septum.flows.store import FlowStore, StoreSettings
from septum.model.resources import Protocol
from septum.testing.builders import network, repo, user, workload

DAY = datetime(2026, 11, 24, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=1)
REUSED = "198.18.0.10"


def row(
    at: datetime,
    source: str,
    destination: str,
    port: int = 443,
    *,
    verdict: str = "allowed",
    protocol: str = "tcp",
    bytes_: int = 100,
) -> Row:
    return (at, at, source, destination, 40000, port, protocol, 1, bytes_, 1, "t", verdict, None)


class ListImporter:
    """Yields what it was given; raises ImportFormatError when it meets one (a fake importer:
    the real ones are tested on their own files)."""

    name = "fake"

    def __init__(self, items: list[Row | Malformed | Skipped | Exception]) -> None:
        self.items = items

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        stream.read()
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item


def three_holders() -> object:
    """One address held by three workloads over one day, eight hours each."""
    return repo(
        workload("batch-a", (REUSED, DAY, DAY + timedelta(hours=8)), app="batch", env="prod"),
        workload(
            "batch-b",
            (REUSED, DAY + timedelta(hours=8), DAY + timedelta(hours=16)),
            app="etl",
            env="prod",
        ),
        workload("batch-c", (REUSED, DAY + timedelta(hours=16), None), app="report", env="dev"),
        workload("db", "198.18.0.20", app="db", env="prod"),
        user("alice", ("198.18.5.1", DAY, DAY + timedelta(hours=2)), role="admin"),
        network("internet", "0.0.0.0/0", excepts=["198.18.0.0/15"]),
    )


def imported(tmp_path: Path, model: object, rows: list[Row], **options: object) -> FlowStore:
    store = FlowStore(tmp_path / "data")
    source = tmp_path / "in.txt"
    source.write_text("x")
    report = store.import_file(
        source,
        ListImporter(list(rows)),
        ImportOptions(now=NOW, **options),
        model,  # type: ignore[arg-type]
    )
    assert report.ok, report.error
    return store


def test_an_address_reused_by_three_workloads_is_attributed_by_time(tmp_path: Path) -> None:
    hours = [1, 7, 8, 12, 15, 16, 23]
    rows = [row(DAY + timedelta(hours=h, minutes=30), REUSED, "198.18.0.20", 5432) for h in hours]
    store = imported(tmp_path, three_holders(), rows)
    con = store.connect()
    got = con.execute(
        "SELECT hour(start), source_kind, source_name, destination_name FROM flows ORDER BY 1"
    ).fetchall()
    con.close()
    expected_owner = {
        1: "batch-a",
        7: "batch-a",
        8: "batch-b",
        12: "batch-b",
        15: "batch-b",
        16: "batch-c",
        23: "batch-c",
    }
    assert got == [(h, "workload", expected_owner[h], "db") for h in hours]


def test_attribution_from_recorded_history(tmp_path: Path) -> None:
    """Snapshots of the inventory over time: the address moved from one workload to another;
    flows are attributed to who held it then, though the repository now says otherwise."""
    store = FlowStore(tmp_path / "data")
    first = repo(workload("old", REUSED, app="old"), workload("db", "198.18.0.20", app="db"))
    second = repo(workload("new", REUSED, app="new"), workload("db", "198.18.0.20", app="db"))
    store.record_inventory(first, DAY)
    store.record_inventory(second, DAY + timedelta(hours=12))
    rows = [
        row(DAY + timedelta(hours=3), REUSED, "198.18.0.20"),
        row(DAY + timedelta(hours=13), REUSED, "198.18.0.20"),
    ]
    source = tmp_path / "in.txt"
    source.write_text("x")
    report = store.import_file(source, ListImporter(list(rows)), ImportOptions(now=NOW), second)
    assert report.ok
    con = store.connect()
    got = con.execute("SELECT source_name FROM flows ORDER BY start").fetchall()
    con.close()
    assert got == [("old",), ("new",)]
    assert store.identities()[("workload", "old")]["app"] == "old"


def test_users_networks_and_unknown(tmp_path: Path) -> None:
    rows = [
        row(DAY + timedelta(hours=1), "198.18.5.1", "198.18.0.20"),  # alice's session
        row(DAY + timedelta(hours=3), "198.18.5.1", "198.18.0.20"),  # session over: unknown
        row(DAY + timedelta(hours=1), "203.0.113.7", "198.18.0.20"),  # internet
        row(DAY + timedelta(hours=1), "2001:db8::99", "198.18.0.20"),  # nobody
    ]
    store = imported(tmp_path, three_holders(), rows)
    groups = store.groups()
    by_source = {(str(g.source), g.first_seen.hour): g.source_identity for g in groups}
    assert by_source[("198.18.5.1", 1)].kind is EndpointKind.USER
    assert by_source[("198.18.5.1", 1)].labels["role"] == "admin"
    assert by_source[("198.18.5.1", 3)].kind is EndpointKind.UNKNOWN
    assert by_source[("203.0.113.7", 1)].kind is EndpointKind.NETWORK
    assert by_source[("203.0.113.7", 1)].name == "internet"
    assert by_source[("2001:db8::99", 1)].kind is EndpointKind.UNKNOWN


def test_failed_import_changes_nothing_and_says_how_far_it_got(tmp_path: Path) -> None:
    good = [row(DAY + timedelta(hours=h), "198.18.0.20", REUSED) for h in range(3)]
    store = imported(tmp_path, three_holders(), good)
    manifest = (store.flows_dir / "_manifest.json").read_text()
    before = store.count()
    source = tmp_path / "bad.txt"
    source.write_text("x")
    items: list[Row | Malformed | Skipped | Exception] = [
        *good,
        *[row(DAY + timedelta(hours=5), "198.18.0.20", REUSED)] * 70_000,  # past one batch
        ImportFormatError(str(source), 70_004, "not this format"),
    ]
    report = store.import_file(
        source,
        ListImporter(items),
        ImportOptions(now=NOW),
        three_holders(),  # type: ignore[arg-type]
    )
    assert not report.ok
    assert report.line == 70_004
    assert "not this format" in (report.error or "")
    assert report.stored == 0
    assert store.count() == before
    assert (store.flows_dir / "_manifest.json").read_text() == manifest
    # no staged or half-written file is visible: every Parquet file is in the manifest
    live = {str(p) for p in store.files()}
    assert {str(p) for p in store.flows_dir.rglob("*.parquet")} == live


def test_malformed_and_skipped_lines_are_counted_with_line_numbers(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "data")
    source = tmp_path / "in.txt"
    source.write_text("x")
    items: list[Row | Malformed | Skipped | Exception] = [
        row(DAY, "198.18.0.20", REUSED),
        Malformed(2, "bad address"),
        Skipped(3, "NODATA"),
        Skipped(4, "NODATA"),
        row(DAY, "198.18.0.20", REUSED),
        Malformed(6, "short line"),
    ]
    report = store.import_file(
        source,
        ListImporter(items),
        ImportOptions(now=NOW),
        three_holders(),  # type: ignore[arg-type]
    )
    assert report.ok
    assert (report.rows, report.stored, report.malformed) == (2, 2, 2)
    assert [m.line for m in report.malformed_examples] == [2, 6]
    assert report.skipped == {"NODATA": 2}
    assert report.to_json()["malformed_examples"] == [
        {"line": 2, "reason": "bad address"},
        {"line": 6, "reason": "short line"},
    ]


def test_partitions_by_day_and_retention(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "data")
    store.configure(StoreSettings(retention_days=2))
    rows = [
        row(NOW - timedelta(days=3), "198.18.0.20", REUSED),  # past retention: not stored
        row(DAY - timedelta(hours=22), "198.18.0.20", REUSED),
        row(DAY + timedelta(hours=2), "198.18.0.20", REUSED),
        row(DAY + timedelta(hours=20), "198.18.0.20", REUSED),
    ]
    source = tmp_path / "in.txt"
    source.write_text("x")
    report = store.import_file(
        source,
        ListImporter(list(rows)),
        ImportOptions(now=NOW),
        three_holders(),  # type: ignore[arg-type]
    )
    assert (report.stored, report.expired) == (3, 1)
    assert report.partitions == ["day=2026-11-23", "day=2026-11-24"]
    # a day later, the 23rd is out of the window, the 24th not yet
    result = store.compact(NOW + timedelta(days=1))
    assert result.expired_partitions == 1
    assert sorted(store.partitions()) == ["day=2026-11-24"]


def test_a_partition_on_the_last_day_a_datetime_holds_expires_like_any_other(
    tmp_path: Path,
) -> None:
    """A record dated 9999-12-31 (an importer's clock gone wrong) makes a partition whose
    end is past the largest datetime: retention and compaction keep working."""
    store = FlowStore(tmp_path / "data")
    store.configure(StoreSettings(retention_days=2))
    last = datetime(9999, 12, 31, 12, tzinfo=UTC)
    source = tmp_path / "in.txt"
    source.write_text("x")
    report = store.import_file(
        source,
        ListImporter(
            [row(DAY + timedelta(hours=2), "198.18.0.20", REUSED), row(last, "198.18.0.20", REUSED)]
        ),
        ImportOptions(now=NOW),
        three_holders(),  # type: ignore[arg-type]
    )
    assert report.ok
    assert "day=9999-12-31" in store.partitions()
    result = store.compact(NOW + timedelta(days=5))  # the 24th expires; the last day stays
    assert result.expired_partitions == 1
    assert sorted(store.partitions()) == ["day=9999-12-31"]


def test_compaction_merges_files_and_keeps_every_row(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "data")
    store.configure(StoreSettings(retention_days=None, compact_min_files=2))
    source = tmp_path / "in.txt"
    source.write_text("x")
    for i in range(5):
        rows = [row(DAY + timedelta(hours=1, minutes=i), "198.18.0.20", REUSED, 1000 + i)]
        store.import_file(
            source,
            ListImporter(list(rows)),
            ImportOptions(now=NOW),
            three_holders(),  # type: ignore[arg-type]
        )
    con = store.connect()
    before = sorted(con.execute("SELECT * FROM flows").fetchall())
    con.close()
    assert len(store.files()) == 5
    (store.flows_dir / "day=2026-11-24" / "orphan.parquet").write_bytes(b"x")
    result = store.compact(NOW)
    assert (result.merged_partitions, result.files_before, result.files_after) == (1, 5, 1)
    assert result.orphans_removed == 1
    con = store.connect()
    after = sorted(con.execute("SELECT * FROM flows").fetchall())
    con.close()
    assert after == before


def test_parquet_import_fast_path_and_missing_columns(tmp_path: Path) -> None:
    rows = [row(DAY + timedelta(hours=h), REUSED, "198.18.0.20", 5432) for h in (1, 9, 17)]
    path = tmp_path / "flows.parquet"
    pq.write_table(pa.Table.from_batches([rows_to_batch(rows)], schema=RAW_SCHEMA), path)
    store = FlowStore(tmp_path / "data")
    report = store.import_file(
        path, importer_for("parquet"), ImportOptions(now=NOW), three_holders()
    )  # type: ignore[arg-type]
    assert report.ok, report.error
    assert report.stored == 3
    con = store.connect()
    names = [n for (n,) in con.execute("SELECT source_name FROM flows ORDER BY start").fetchall()]
    con.close()
    assert names == ["batch-a", "batch-b", "batch-c"]

    thin = tmp_path / "thin.parquet"
    pq.write_table(pa.table({"start": [DAY], "source": ["198.18.0.1"]}), thin)
    report = store.import_file(
        thin, importer_for("parquet"), ImportOptions(now=NOW), three_holders()
    )  # type: ignore[arg-type]
    assert not report.ok
    assert "end, destination" in (report.error or "")
    assert store.count() == 3


def test_gzip_input_is_read_transparently(tmp_path: Path) -> None:
    seen: list[bytes] = []

    class Recording(ListImporter):
        def read(
            self, stream: BinaryIO, origin: str, options: ImportOptions
        ) -> Iterator[Row | Malformed | Skipped]:
            seen.append(stream.read())
            yield row(DAY, "198.18.0.20", REUSED)

    path = tmp_path / "in.gz"
    path.write_bytes(gzip.compress(b"hello flows\n"))
    store = FlowStore(tmp_path / "data")
    report = store.import_file(path, Recording([]), ImportOptions(now=NOW), three_holders())  # type: ignore[arg-type]
    assert report.ok
    assert seen == [b"hello flows\n"]


def test_groups_aggregate_and_split_at_change_points(tmp_path: Path) -> None:
    rows = [
        row(DAY + timedelta(hours=1), "198.18.0.20", "203.0.113.7", 443, bytes_=10),
        row(DAY + timedelta(hours=2), "198.18.0.20", "203.0.113.7", 443, bytes_=20),
        row(DAY + timedelta(hours=5), "198.18.0.20", "203.0.113.7", 443, verdict="denied"),
        row(DAY + timedelta(hours=5), "198.18.0.20", "203.0.113.7", 0, protocol="proto-47"),
    ]
    store = imported(tmp_path, three_holders(), rows)
    (whole,) = store.groups()
    assert (whole.records, whole.bytes, whole.protocol, whole.port) == (3, 130, Protocol.TCP, 443)
    assert whole.verdicts == {RecordedVerdict.ALLOWED: 2, RecordedVerdict.DENIED: 1}
    assert whole.first_seen == DAY + timedelta(hours=1)
    assert whole.last_seen == DAY + timedelta(hours=5)
    parts = store.groups(change_points=[DAY + timedelta(hours=3)])
    assert [(g.records, g.first_seen.hour) for g in parts] == [(2, 1), (1, 5)]
    assert (
        store.groups(since=DAY + timedelta(hours=2), until=DAY + timedelta(hours=3))[0].records == 1
    )


def test_not_a_store_and_corrupt_settings(tmp_path: Path) -> None:
    from septum.flows.store import StoreError

    with pytest.raises(StoreError, match="not a Septum data directory"):
        FlowStore(tmp_path / "nothing", create=False)
    root = tmp_path / "data"
    FlowStore(root)
    (root / "settings.json").write_text('{"retention_days": 0}')
    with pytest.raises(StoreError, match=r"settings\.json: retention_days"):
        FlowStore(root)
    (root / "settings.json").write_text('{"retention_days": ')
    with pytest.raises(StoreError, match=r"settings\.json:1:\d+"):
        FlowStore(root)
    (root / "settings.json").write_text(json.dumps({"retention_days": None}))
    assert FlowStore(root).settings.retention_days is None


def test_reattribution_with_a_later_inventory_keeps_every_row(tmp_path: Path) -> None:
    rows = [row(DAY + timedelta(hours=h, minutes=30), REUSED, "198.18.0.20", 5432) for h in (1, 9)]
    rows.append(row(DAY + timedelta(days=1, hours=1), "203.0.113.7", "198.18.0.20"))
    store = imported(tmp_path, repo(), rows)  # imported before the inventory was known
    con = store.connect()
    assert {k for (k,) in con.execute("SELECT DISTINCT source_kind FROM flows").fetchall()} == {
        "unknown"
    }
    before = con.execute("SELECT count(*), sum(bytes) FROM flows").fetchall()
    con.close()
    manifest = store.partitions()
    assert store.reattribute(three_holders(), NOW) == 3
    con = store.connect()
    got = con.execute(
        "SELECT source_kind, source_name, destination_name FROM flows ORDER BY start"
    ).fetchall()
    after = con.execute("SELECT count(*), sum(bytes) FROM flows").fetchall()
    con.close()
    assert got == [
        ("workload", "batch-a", "db"),
        ("workload", "batch-b", "db"),
        ("network", "internet", "db"),
    ]
    assert after == before
    assert sorted(store.partitions()) == sorted(manifest)  # the same days, one file each
    assert {str(p) for p in store.flows_dir.rglob("*.parquet")} == {str(p) for p in store.files()}
