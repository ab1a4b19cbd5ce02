"""The benchmark script runs on a tiny estate and prints every figure (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compile.py"
TINY = ["--workloads", "300", "--policies", "60", "--enforcers", "5", "--changes", "40"]
TINY += ["--naive", "2"]


def _run(*extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bench_prints_every_figure() -> None:
    out = _run()
    for figure in (
        "gc.freeze() after setup",
        "estate generation",
        "full compile, GC paused (as the CLI)",
        "full compile, default GC",
        "target <= 2 s",
        "peak memory (tracemalloc, compile)",
        "peak memory (ru_maxrss, process)",
        "target <= 1 GB",
        "invariant check, estate as generated",
        "invariant check, every workload enforced",
        "incremental label changes",
        "incremental address changes",
        "incremental combined changes",
        "target p99 <= 5 ms",
        "structural",
        "naive compile_delta",
        "x the incremental p50",
    ):
        assert figure in out, figure


def test_bench_json() -> None:
    data = json.loads(_run("--json"))
    assert data["estate"]["workloads"] == 300
    for key in ("generate_s", "full_compile_s", "tracemalloc_peak_mb", "ru_maxrss_mb"):
        assert data[key] >= 0
    assert data["invariants"]["count"] >= 3
    for kind in ("label", "address", "combined"):
        assert {"p50_ms", "p99_ms", "max_ms", "structural"} <= data["incremental"][kind].keys()
    assert data["incremental"]["combined"]["n"] == 40
    assert data["naive"]["n"] == 2
    assert data["incremental"]["fallbacks"] == 0
