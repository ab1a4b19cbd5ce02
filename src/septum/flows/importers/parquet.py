"""``--format parquet``: flow files already in Septum's row layout (``RAW_SCHEMA`` or the
stored schema; optional columns may be absent). They are not parsed row by row: the store
reads them with DuckDB directly (``FlowStore.import_file``), which is what makes a Parquet
import run at millions of rows per second."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from septum.flows.importers import ImportFormatError, ImportOptions
from septum.flows.records import Malformed, Row, Skipped

__all__ = ["IMPORTER", "ParquetImporter"]


class ParquetImporter:
    name = "parquet"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        """Never used row by row: the store special-cases this format."""
        raise ImportFormatError(origin, 0, "Parquet input is read by the store, not streamed")


IMPORTER = ParquetImporter()
