"""The command line, in process: exit codes, JSON shapes, and bad input without tracebacks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from septum.cli.main import app
from tests.conftest import EXAMPLES, ROOT

AT = ["--at", "2026-11-25T12:00:00Z"]
BAD = sorted((ROOT / "tests" / "corpus" / "bad").glob("*.y*ml"))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_validate_examples() -> None:
    code, output = run("validate", EXAMPLES)
    assert code == 0
    assert "valid" in output
    code, output = run("validate", EXAMPLES, "--json")
    assert json.loads(output)["counts"]["workloads"] >= 20


def test_explain_json_has_verdict_staged_and_causes() -> None:
    code, output = run(
        "explain", EXAMPLES, "shop-web-prod-1", "shop-api-prod-1", "tcp/8080", *AT, "--json"
    )
    assert code == 0
    data = json.loads(output)
    assert data["verdict"] == "allow"
    assert "staged" in data
    causes = data["causes"]
    assert {c["direction"] for c in causes} == {"egress", "ingress"}
    assert all(c["tier"] and c["owners"] for c in causes)


def test_explain_accepts_port_slash_proto_and_addresses() -> None:
    code, output = run("explain", EXAMPLES, "shop-web-prod-1", "billing-db-prod-1", "5432/tcp", *AT)
    assert code == 0
    assert "DENY" in output
    assert "pci-guardrail" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "shop-api-prod-1", "tcp/1"), "neither an address nor a workload"),
        (("shop-web-prod-1", "shop-api-prod-1", "tcp/70000"), "needs one port"),
        (("shop-web-prod-1", "shop-api-prod-1", "foo/1"), "unknown protocol"),
        (("shop-web-prod-1", "shop-api-prod-1", "icmp/3"), "has no ports"),
    ],
)
def test_explain_bad_arguments(args: tuple[str, ...], message: str) -> None:
    code, output = run("explain", EXAMPLES, *args, *AT)
    assert code == 2
    assert message in output


def test_bad_time_is_reported() -> None:
    code, output = run("test", EXAMPLES, "--at", "2026-11-25T12:00:00")
    assert code == 2
    assert "time zone" in output


def test_test_passes_on_examples_and_fails_with_counterexample(tmp_path: Path) -> None:
    code, output = run("test", EXAMPLES, *AT)
    assert code == 0, output
    assert re.search(r"\d+ passed, 0 failed", output)
    broken = tmp_path / "repo"
    shutil.copytree(EXAMPLES, broken)
    (broken / "assertions" / "wrong.yaml").write_text(
        "apiVersion: septum/v1\nkind: Assertion\nmetadata: {name: wrongly-expects-allow}\n"
        "spec: {from: shop-web-prod-1, to: billing-db-prod-1, port: tcp/5432, expect: allow}\n"
    )
    code, output = run("test", broken, *AT)
    assert code == 1
    assert "FAIL wrongly-expects-allow" in output
    assert "counter-example" in output
    code, output = run("test", broken, *AT, "--json")
    assert code == 1
    assert json.loads(output)["passed"] is False


def test_compile_one_enforcer_and_all(tmp_path: Path) -> None:
    code, output = run("compile", EXAMPLES, "--enforcer", "host-shop-web-prod-1", *AT)
    assert code == 0
    assert output.startswith("# septum ruleset")
    assert "table inet septum" in output
    code, output = run("compile", EXAMPLES, "--out", tmp_path / "out", *AT)
    assert code == 0
    assert len(list((tmp_path / "out").glob("*.nft"))) >= 10
    code, output = run("compile", EXAMPLES, "--enforcer", "no-such-host", *AT)
    assert code == 2
    assert "no enforcer" in output
    code, output = run("compile", EXAMPLES, *AT)
    assert code == 2


def test_plan_reports_rules_elements_and_verdicts(tmp_path: Path) -> None:
    new = tmp_path / "new"
    shutil.copytree(EXAMPLES, new)
    workloads = new / "inventory" / "workloads" / "shop.yaml"
    text = workloads.read_text()
    # Move the billing api into reach of nothing new, but give shop-web-prod-1 a new address.
    assert "198.18.10.11" in text
    workloads.write_text(text.replace("198.18.10.11", "198.18.10.99"))
    code, output = run("plan", new, "--against", EXAMPLES, *AT, "--json")
    assert code == 0
    data = json.loads(output)
    changed = {e["enforcer"]: e for e in data["enforcers"]}
    assert changed, "an address change must touch some enforcer"
    assert all(not e["rules_added"] and not e["rules_removed"] for e in changed.values())
    assert any(e["elements_added"] for e in changed.values())
    code, output = run("plan", EXAMPLES, "--against", EXAMPLES, *AT)
    assert code == 0
    assert "no enforcer changes" in output


def test_schema_is_json() -> None:
    code, output = run("schema")
    assert code == 0
    assert "Policy" in json.dumps(json.loads(output))


def test_missing_directory() -> None:
    code, output = run("validate", "/nonexistent/septum-repo")
    assert code == 2
    assert "no such file" in output


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_file_reports_file_line_column(path: Path) -> None:
    expect = re.match(r"# expect: (\d+):(\d+): (.*)", path.read_text().splitlines()[0])
    assert expect is not None
    line, column, message = expect.groups()
    for args in (
        ("validate", path),
        ("test", path),
        ("compile", path, "--out", "/nonexistent"),
        ("explain", path, "a", "b", "tcp/1"),
    ):
        code, output = run(*args)
        assert code == 2
        assert f"{path}:{line}:{column}" in output
        # Messages may name other files of the corpus by their path relative to the project.
        flat = output.replace("\n", " ").replace(f"{path.parent}/", "")
        assert message.replace("tests/corpus/bad/", "") in flat


def test_bad_file_json_errors() -> None:
    code, output = run("validate", BAD[0], "--json")
    assert code == 2
    problem = json.loads(output)["problems"][0]
    assert set(problem) == {"file", "line", "column", "message"}


def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 30


def test_demo_runs_the_main_job() -> None:
    code, output = run("demo", EXAMPLES, *AT)
    assert code == 0, output
    assert "Compiled host rulesets" in output
    assert "explained flows" in output
    code, output = run("demo", EXAMPLES, *AT, "--json")
    assert code == 0
    data = json.loads(output)
    assert data["assertions"]["passed"] is True
    assert len(data["enforcers"]) == len(set(e["enforcer"] for e in data["enforcers"])) >= 10
    # An enforcer whose workloads are all idle installs nothing; one in visibility installs
    # only rules that count new connections (no verdicts).
    few = {e["enforcer"]: e["rules"] for e in data["enforcers"] if e["rules"] <= 3}
    assert few == {"vm-billing-db-dev-1": 0, "vm-billing-api-staging-1": 3}
    assert {e["verdict"] for e in data["explained"]} <= {"allow", "deny"}
