"""The control-plane benchmark runs on a small seeded estate (a real server process and
simulated agents on loopback) and prints every figure (no timing checks: timings belong to
the benchmark, not to pass/fail tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "server.py"
SMALL = ["--workloads", "200", "--policies", "40", "--enforcers", "20", "--changes", "10"]


def test_bench_prints_every_figure_and_target() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    for figure in (
        "200 workloads on 20 enforcers",
        "provision of the whole estate",
        "target <= 5 s",
        "initial sync of 20 agents",
        "10 label changes",
        "label change -> affected agent holds its delta",
        "target p99 <= 1 s",
        "of which after the provision returned",
    ):
        assert figure in proc.stdout, (figure, proc.stdout)


def test_bench_json_has_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL, "--json"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["enforcers"] == 20
    assert out["changes"] == 10
    for key in ("provision_initial_s", "initial_sync_s", "end_to_end_p99_s", "propagation_p99_s"):
        assert out[key] >= 0, key
