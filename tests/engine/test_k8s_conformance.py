"""The 47 netpol-analyzer connectivity cases (third-party conformance data, never edited):
``septum k8s connectivity input/`` must agree with ``expected.txt``, compared as the data's
README says (per pair; external ranges address by address).

The data lives in ``../shared/conformance/netpol-analyzer`` beside the checkout; a verbatim
copy (with its LICENSE) is kept in ``tests/conformance/`` so that a clean clone runs the cases
too, and a test checks the copy still equals the original wherever both exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from septum.engine.connectivity import (
    KUBERNETES,
    analyze_connectivity,
    canonical,
    diff_connectivity,
    parse_connlist,
)
from septum.engine.kubernetes import analyze_cluster
from septum.sources.files import load_repository
from septum.sources.kubernetes import load_cluster, write_repository
from septum.testing.builders import T0

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "conformance" / "netpol-analyzer"
VENDORED = ROOT / "tests" / "conformance" / "netpol-analyzer"
CASES = (SHARED if SHARED.is_dir() else VENDORED) / "cases"


def _cases() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "expected.txt").exists())


def test_all_cases_are_present() -> None:
    assert len(_cases()) == 47


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_vendored_copy_equals_the_shared_data() -> None:
    assert (VENDORED / "LICENSE").is_file()
    if SHARED.is_dir():  # a clean clone elsewhere has only the copy
        assert _tree(VENDORED) == _tree(SHARED)


@pytest.mark.parametrize("case", _cases())
def test_case_agrees_with_netpol_analyzer(case: str) -> None:
    cluster = load_cluster(CASES / case / "input")
    mine = canonical(analyze_cluster(cluster, T0))
    expected = parse_connlist((CASES / case / "expected.txt").read_text(), mine.universe,
                              f"{case}/expected.txt")
    diff = diff_connectivity(expected, mine)
    assert diff.empty, "\n".join(diff.lines()[:40])


@pytest.mark.parametrize("case", _cases())
def test_imported_repository_written_as_yaml_means_the_same(case: str, tmp_path: Path) -> None:
    """``septum k8s import --out`` writes policy as code that loads back and analyses to the
    same connectivity (the ingress controller's exposure is Kubernetes-only)."""
    cluster = load_cluster(CASES / case / "input")
    write_repository(cluster.repository, tmp_path)
    loaded = load_repository(tmp_path)
    assert loaded == cluster.repository
    direct = canonical(analyze_cluster(cluster, T0))
    via_yaml = canonical(analyze_connectivity(loaded, T0, KUBERNETES))
    shown = {(cluster.shown(a), cluster.shown(b)): ps for (a, b), ps in via_yaml.pairs.items()
             if a not in cluster.controllers and b not in cluster.controllers}
    assert shown == {k: v for k, v in direct.pairs.items() if k[0] != "{ingress-controller}"}
    externals = {(cluster.shown(w), out): r for (w, out), r in via_yaml.externals.items()
                 if w not in cluster.controllers}
    assert externals == dict(direct.externals)
