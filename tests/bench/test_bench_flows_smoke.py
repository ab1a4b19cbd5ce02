"""The flow benchmark runs on a small seeded estate and prints every figure (no timing
checks: timings belong to the benchmark, not to pass/fail tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "flows.py"
SMALL = ["--flows", "100000", "--workloads", "600", "--policies", "60"]


def test_bench_prints_every_figure_and_target() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    for figure in (
        "100,000 flows generated",
        "import (Parquet → attributed, daily partitions)",
        "target >= 1M flows/s",
        "attribution alone",
        "aggregation by app,env (records and bytes per edge",
        "DuckDB floor",
        "target <= 2x",
        "replay of 100,000 flows",
        "target <= 30 s",
        "recommendation for env",
        "target <= 60 s",
        "dependency map at app,env",
    ):
        assert figure in proc.stdout, (figure, proc.stdout)


def test_bench_json_has_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    for key in (
        "import_rate",
        "attribution_rate",
        "floor_s",
        "aggregate_s",
        "aggregate_ratio",
        "replay_s",
        "recommend_s",
        "map_s",
    ):
        assert figures[key] > 0, key
