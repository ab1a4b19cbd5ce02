"""bench/agent.py runs on a tiny estate, prints every figure and leaves no namespace behind
(no timing checks). Root only: it creates a network namespace and applies nft tables in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_root_nft

BENCH = Path(__file__).resolve().parents[2] / "bench" / "agent.py"
TINY = ["--workloads", "300", "--policies", "40", "--enforcers", "4", "--delta", "50"]
TINY += ["--runs", "2", "--peer-budget", "3"]


def _run(*extra: str) -> str:
    require_root_nft()
    proc = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.root
def test_bench_agent_prints_every_figure() -> None:
    out = _run()
    for figure in (
        "gc.freeze() after setup",
        "network namespace: septum-bench-",
        "elements (",
        " rules in ",
        " chains",
        " sets, ",
        "nft process floor",
        "full apply via the agent",
        "full apply, plain nft -f FILE",
        "agent / plain nft (full apply)",
        "full apply via a restarted agent",
        "restarted agent / plain nft (full apply)",
        "target <= 1.25x",
        "breakdown (medians)",
        "element delta: 50 elements",
        "element delta via the agent, as deltas",
        "element delta via the agent, as ruleset",
        "target <= 20 ms",
        "element delta, plain nft -f FILE",
        "naive peer: ",
        "naive peer: iptables-restore",
        "naive peer: iptables-legacy-restore",
        "libnftables in-process",
    ):
        assert figure in out, figure
    namespace = out.split("network namespace: ", 1)[1].split()[0]
    assert namespace not in _namespaces()


@pytest.mark.root
def test_bench_agent_json() -> None:
    data = json.loads(_run("--json"))
    rs = data["ruleset"]
    for key in ("elements", "rules", "chains", "sets", "maps", "script_bytes"):
        assert rs[key] > 0, key
    assert rs["elements"] == rs["set_elements"] + rs["map_elements"]
    assert rs["delta_elements"] == 50
    steps = {"diff_ms", "render_ms", "nft_ms", "save_ms", "update_ms", "other_ms"}
    full = data["full"]
    assert full["agent"]["n"] == full["plain_nft"]["n"] == 2
    assert steps <= full["agent_breakdown"].keys()
    delta = data["delta"]
    for how in ("received", "diffed", "plain"):
        assert delta[how]["n"] == 4, how  # added and removed in each of 2 runs
    for how in ("received", "diffed"):
        assert steps <= delta[how]["breakdown"].keys()
    assert data["full"]["ratio"] > 0
    assert data["full_cold"]["ratio"] > 0
    peer = data["naive_peer"]
    assert peer["pairs_v4"] > 0
    assert peer["iptables_restore"]["available"]
    assert peer["iptables_restore"]["loaded"] > 0
    assert "iptables_legacy_restore" in peer
    assert "installed" in data["libnftables"]
    assert data["netns"] not in _namespaces()
