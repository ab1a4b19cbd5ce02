"""bench/k8s.py on a tiny cluster (20 pods): it prints its table and headline, and septum and
network-config-analyzer agree (no timing checks). Also its parsers and comparator, on the
netpol-analyzer conformance outputs where those are beside the checkout.

The peer (pip package ``network-config-analyzer``) is a dev dependency, so these tests run it
everywhere the suite runs; the conformance cases are the vendored copy in tests/conformance."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "k8s.py"
NCA = Path(sys.executable).parent / "nca"
CASES = ROOT / "tests" / "conformance" / "netpol-analyzer" / "cases"


def _bench_module() -> ModuleType:
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_k8s", BENCH)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_k8s"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH.parent))


k8s = _bench_module()


def _require_septum_k8s() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "septum.cli.main", "k8s", "connectivity", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, "`septum k8s connectivity` is missing"


def _run(*extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _check_table(out: str) -> None:
    for figure in (
        "septum k8s connectivity benchmark: seed 1",
        "process floor (start-up, no input)",
        "septum s",
        "septum MiB",
        "nca s",
        "nca MiB",
        "nca/septum",
        "agree",
        "1k pods: not measured in this run",
    ):
        assert figure in out, figure
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] == ["20"]]
    assert [r[2] for r in rows] == ["full", "np-only"]
    assert rows[1][5] == "0", "the np-only variant holds no AdminNetworkPolicy"
    assert int(rows[0][5]) > 0, "the full variant holds AdminNetworkPolicies"


def _np_only(data: dict[str, object]) -> dict[str, object]:
    rows = data["rows"]
    assert isinstance(rows, list)
    return next(r for r in rows if r["variant"] == "np-only")


# --------------------------------------------------------------------------- the real command


def test_bench_k8s_table_and_agreement() -> None:
    """The table at 20 pods with the real `septum k8s connectivity`; with the peer
    installed, both outputs agree on the NetworkPolicy-only variant."""
    _require_septum_k8s()
    out = _run()
    _check_table(out)
    assert "NOT AVAILABLE" not in out
    data = json.loads(_run("--json"))
    for row in data["rows"]:
        assert row["septum"]["status"] == "ok", row["septum"]["status"]
        assert row["septum"]["lines"] > 0
        assert row["septum"]["max_rss_mib"] > 0
    assert NCA.exists(), "network-config-analyzer is a dev dependency"
    row = _np_only(data)
    assert row["nca"]["status"] == "ok", row["nca"]["status"]
    assert row["agree"] == "yes", "\n".join(row["differences"])
    if data["nca"]["reads_admin_policies"]:
        full = next(r for r in data["rows"] if r["variant"] == "full")
        assert full["agree"] == "yes", "\n".join(full["differences"])


# --------------------------------------------------------------------------- the harness


def test_bench_k8s_table_without_septum_command() -> None:
    """The harness runs and prints its table whatever the state of the septum command."""
    _check_table(_run("--no-peer"))


def test_bench_k8s_harness_with_a_stand_in() -> None:
    """The whole path (generate, run, measure, parse, compare, print) with a stand-in for
    septum: the peer's own answer, printed in connlist text by the bench."""
    standin = f"{shlex.quote(sys.executable)} {shlex.quote(str(BENCH))} --standin-from-nca {{dir}}"
    out = _run("--septum-cmd", standin)
    _check_table(out)
    assert "reads AdminNetworkPolicy/BaselineAdminNetworkPolicy:" in out
    data = json.loads(_run("--septum-cmd", standin, "--json"))
    row = _np_only(data)
    assert row["septum"]["status"] == row["nca"]["status"] == "ok"
    assert row["agree"] == "yes", "\n".join(row["differences"])
    assert row["ratio"] > 0
    assert row["stats"]["pods"] == 20
    assert row["stats"]["workloads"] >= 3
    assert row["nca"]["max_rss_mib"] > 0


# --------------------------------------------------------------------------- parsers


def test_connection_texts() -> None:
    text = "SCTP 1-9002,9004-65535,TCP 80,UDP 53"
    conn = k8s.parse_connlist_conn(text)
    assert k8s.format_conn(conn) == text
    assert k8s.parse_connlist_conn("All Connections") == k8s.ALL
    assert k8s.format_conn(k8s.ALL) == "All Connections"
    assert k8s.parse_nca_conn("{protocols:TCP, UDP,dst_ports:53}") == k8s.parse_connlist_conn(
        "TCP 53,UDP 53"
    )
    assert k8s.parse_nca_conn(
        "{protocols:TCP,dst_ports:443,8000,8443-8453},{protocols:SCTP}"
    ) == k8s.parse_connlist_conn("SCTP 1-65535,TCP 443,8000,8443-8453")
    assert k8s.parse_nca_conn("All but {protocols:TCP,dst_ports:80}") == k8s.parse_connlist_conn(
        "SCTP 1-65535,TCP 1-79,81-65535,UDP 1-65535"
    )
    assert k8s.parse_nca_conn("{protocols:all but TCP}") == k8s.parse_connlist_conn(
        "SCTP 1-65535,UDP 1-65535"
    )
    assert k8s.parse_nca_conn("All connections") == k8s.ALL


def test_compare_is_partition_agnostic_for_externals() -> None:
    a = k8s.parse_connectivity(
        "0.0.0.0-9.255.255.255[External] => ns/a[Deployment] : TCP 80\n"
        "11.0.0.0-255.255.255.255[External] => ns/a[Deployment] : TCP 80\n"
        "ns/a[Deployment] => ns/b[Deployment] : All Connections\n"
    )
    b = k8s.parse_connectivity(
        "0.0.0.0-5.0.0.0 => ns/a[Deployment] : {protocols:TCP,dst_ports:80}\n"
        "5.0.0.1-9.255.255.255 => ns/a[Deployment] : {protocols:TCP,dst_ports:80}\n"
        "11.0.0.0/8 => ns/a[Deployment] : {protocols:TCP,dst_ports:80}\n"
        "12.0.0.0-255.255.255.255 => ns/a[Deployment] : {protocols:TCP,dst_ports:80}\n"
        "ns/a[Deployment] => ns/b[Deployment] : All connections\n"
        "ns/a[Deployment] => kube-system/kube-dns-livesim[Pod] : All connections\n",
        nca=True,
    )
    assert k8s.compare(a, b) == []
    assert b.skipped == 1
    c = k8s.parse_connectivity(
        "0.0.0.0-255.255.255.255[External] => ns/a[Deployment] : TCP 80\n"
        "ns/a[Deployment] => ns/b[Deployment] : TCP 1-65535\n"
    )
    diffs = k8s.compare(a, c)
    assert len(diffs) == 2
    assert "10.0.0.0-10.255.255.255[External] => ns/a[Deployment]" in diffs[-1]
    assert "septum No Connections | nca TCP 80" in diffs[-1]


def test_conformance_outputs_round_trip() -> None:
    """Every expected connlist of the conformance cases parses, and prints back equal."""
    for case in sorted(CASES.iterdir()):
        expected = k8s.parse_connectivity((case / "expected.txt").read_text())
        again = k8s.parse_connectivity(k8s.format_connlist(expected))
        assert k8s.compare(expected, again) == [], case.name


NCA_CASES = ("ipblockstest_2", "onlineboutique_workloads", "test_with_named_ports_changed_netpol")


@pytest.mark.parametrize("case", NCA_CASES)
def test_peer_output_normalised_agrees_with_conformance(case: str, tmp_path: Path) -> None:
    """network-config-analyzer's output, normalised by the bench, agrees with netpol-analyzer's
    expected output on NetworkPolicy-only cases (ipBlocks with except, named ports, protocols
    and port ranges, simulated kube-dns): the comparison the bench makes is the README's."""
    out = tmp_path / "nca.txt"
    m = k8s.measure(k8s.nca_command(str(NCA), CASES / case / "input"), 120, out)
    assert m.ok, m.stderr_tail
    got = k8s.parse_connectivity(out.read_text(), nca=True)
    expected = k8s.parse_connectivity((CASES / case / "expected.txt").read_text())
    assert got.lines > 0
    assert k8s.compare(expected, got, ("expected", "nca")) == []
