"""Visibility at the edge: the flow store and the importers that fill it.

::

    flow files ──► importers/<format>.py ──► Row batches ──► FlowStore.import_rows
    (agent, VPC,    (streaming parsers;        (RAW_SCHEMA)     ├─ staged Parquet (one input)
     Hubble, ...)    malformed lines counted)                   ├─ attribution (ownership
                                                                │   intervals, networks)
                                                                └─ partitions + manifest commit
    FlowStore.groups(...) ──► engine.observed.FlowGroup ──► engine.replay / depmap / recommend

Everything that reads or writes files, Parquet or DuckDB lives here; the analysis itself is
pure and lives in ``septum.engine``.
"""
