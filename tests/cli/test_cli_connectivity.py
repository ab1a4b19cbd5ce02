"""``septum analyze``, ``diff``, ``k8s connectivity``, ``k8s import`` in process: formats,
exit codes, and bad input reported without a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from septum.cli.main import app
from tests.conftest import EXAMPLES, ROOT

AT = ["--at", "2026-11-25T12:00:00Z"]
CASES = ROOT / "tests" / "conformance" / "netpol-analyzer" / "cases"


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_k8s_connectivity_prints_the_connlist() -> None:
    code, out, _ = run("k8s", "connectivity", CASES / "acs-security-demos" / "input", *AT)
    assert code == 0
    assert out.splitlines() == (CASES / "acs-security-demos" / "expected.txt").read_text(
    ).splitlines()


def test_k8s_connectivity_json_and_bad_format() -> None:
    code, out, _ = run("k8s", "connectivity", CASES / "anp_test_4" / "input", "--format",
                       "json", *AT)
    assert code == 0
    assert {"src", "dst", "conn"} <= set(json.loads(out)[0])
    code, _, err = run("k8s", "connectivity", CASES / "anp_test_4" / "input", "--format", "xml")
    assert code == 2
    assert "--format" in err


def test_k8s_connectivity_bad_manifest_exits_2_with_position(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n"
        "metadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n")
    code, out, err = run("k8s", "connectivity", tmp_path)
    assert code == 2
    assert out == ""
    assert "p.yaml:6:" in err


def test_k8s_import_writes_a_repository_that_analyze_reads(tmp_path: Path) -> None:
    code, out, _ = run("k8s", "import", CASES / "anp_demo" / "input", "--out", tmp_path / "r")
    assert code == 0
    assert "policies" in out
    code, out, _ = run("analyze", tmp_path / "r", *AT)
    assert code == 0
    assert " => " in out


def test_analyze_examples_and_diff_against_itself_and_a_change(tmp_path: Path) -> None:
    code, out, _ = run("analyze", EXAMPLES, "--format", "csv", *AT)
    assert code == 0
    assert out.startswith("src,dst,conn\n")
    assert run("diff", EXAMPLES, EXAMPLES, *AT)[0] == 0
    changed = tmp_path / "changed"
    shutil.copytree(EXAMPLES, changed)
    for f in changed.rglob("*.yaml"):
        text = f.read_text()
        if "kind: Policy" in text:
            f.unlink()  # remove a file of policies: connections appear or disappear
            break
    code, out, err = run("diff", EXAMPLES, changed, *AT)
    assert code == 1
    assert out.startswith(("+ ", "- "))
    assert "changed" in err


def test_diff_of_two_clusters() -> None:
    code, out, _ = run("diff", CASES / "semanticDiff-same-topologies-old1" / "input",
                       CASES / "semanticDiff-same-topologies-new2" / "input", *AT)
    assert code == 1
    assert out.strip()
