"""The visibility commands, in process: flows import|query|compact|settings|inventory, replay,
map. Flows between the examples' workloads, in the agent's record format."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from septum.cli.main import app
from tests.conftest import EXAMPLES

AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WEB, API, DB = "198.18.10.11", "198.18.10.21", "198.18.10.31"  # shop web, api, db (prod)
RUN = ["--at", AT.isoformat()]


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def record(
    source: str,
    destination: str,
    port: int,
    minutes: int,
    verdict: str = "allowed",
    protocol: str = "tcp",
) -> str:
    start = AT - timedelta(hours=2) + timedelta(minutes=minutes)
    return json.dumps(
        {
            "start": start.isoformat(),
            "end": (start + timedelta(seconds=5)).isoformat(),
            "enforcer": "host-shop",
            "source": source,
            "destination": destination,
            "protocol": protocol,
            "port": port,
            "verdict": verdict,
            "provenance": ["shop/shop-api/ingress/0"] if verdict == "allowed" else [],
            "connections": 1,
            "packets": 10,
            "bytes": 1000,
        }
    )


def broken_draft(tmp_path: Path) -> Path:
    """The examples with the shop API moved from tcp/8080 to tcp/8081: web -> api breaks."""
    draft = tmp_path / "draft"
    shutil.copytree(EXAMPLES, draft)
    services = draft / "services.yaml"
    services.write_text(services.read_text().replace("ports: [tcp/8080]", "ports: [tcp/8081]"))
    return draft


@pytest.fixture
def store(tmp_path: Path) -> Path:
    flows = tmp_path / "flows.jsonl"
    lines = [record(WEB, API, 8080, m) for m in range(10)]
    lines += [record(WEB, DB, 5432, 3, verdict="denied")]
    lines += [record("203.0.113.50", WEB, 443, m) for m in range(4)]
    flows.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    code, out, err = run(
        "flows", "import", flows, "--format", "agent", "--repo", EXAMPLES, "--data", data, *RUN
    )
    assert code == 0, err
    assert "15 flows stored" in out
    return data


def test_import_reports_malformed_lines_and_stores_the_rest(tmp_path: Path) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_text(record(WEB, API, 8080, 1) + "\n{not json\n" + record(WEB, API, 8080, 2) + "\n")
    data = tmp_path / "data"
    code, out, err = run(
        "flows",
        "import",
        flows,
        "--format",
        "agent",
        "--repo",
        EXAMPLES,
        "--data",
        data,
        *RUN,
        "--json",
    )
    assert code == 1
    report = json.loads(out)["files"][0]
    assert (report["stored"], report["malformed"]) == (2, 1)
    assert report["malformed_examples"][0]["line"] == 2
    code, out, err = run("flows", "import", flows, "--format", "agent", "--data", data, *RUN)
    assert code == 1
    assert f"{flows}:2:" in err


def test_a_file_that_is_not_the_format_stores_nothing(tmp_path: Path, store: Path) -> None:
    before = run("flows", "query", "--data", store, "--format", "json")[1]
    bogus = tmp_path / "bogus.csv"
    bogus.write_text("a,b\n1,2\n")
    code, _, err = run(
        "flows", "import", bogus, "--format", "csv", "--map", "source=src", "--data", store, *RUN
    )
    assert code == 2
    assert "nothing of this file was stored" in err
    assert run("flows", "query", "--data", store, "--format", "json")[1] == before
    code, _, err = run("flows", "import", bogus, "--format", "nope", "--data", store)
    assert code == 2
    assert "unknown flow format 'nope'" in err


def test_query_groups_by_labels_and_filters(store: Path) -> None:
    code, out, _ = run(
        "flows", "query", "--data", store, "--group-by", "app,role", "--format", "json"
    )
    assert code == 0
    rows = {(r["source"], r["destination"]): r for r in json.loads(out)["rows"]}
    web_api = rows[("app=shop,role=web", "app=shop,role=api")]
    assert (web_api["records"], web_api["services"], web_api["allowed"]) == (10, ["tcp/8080"], 10)
    assert rows[("app=shop,role=web", "app=shop,role=db")]["denied"] == 1
    assert rows[("network:internet", "app=shop,role=web")]["records"] == 4

    code, out, _ = run(
        "flows",
        "query",
        "--data",
        store,
        "--from",
        'role == "web"',
        "--verdict",
        "denied",
        "--format",
        "json",
    )
    assert [(r["source"], r["destination"]) for r in json.loads(out)["rows"]] == [
        ("shop-web-prod-1", "shop-db-prod-1")
    ]
    code, out, _ = run(
        "flows", "query", "--data", store, "--service", "tcp/8000-8099", "--format", "csv"
    )
    rows_csv = list(csv.DictReader(io.StringIO(out)))
    assert [(r["source"], r["services"], r["records"]) for r in rows_csv] == [
        ("shop-web-prod-1", "tcp/8080", "10")
    ]
    code, out, _ = run(
        "flows",
        "query",
        "--data",
        store,
        "--since",
        (AT - timedelta(hours=2, minutes=-5)).isoformat(),
        "--until",
        "1h",
        "--rule",
        "shop/",
        "--format",
        "json",
        *RUN,
    )
    assert json.loads(out)["records"] == 5  # minutes 5..9 of web -> api
    code, out, _ = run("flows", "query", "--data", store)
    assert code == 0
    assert "shop-web-prod-1" in out
    code, out, _ = run(
        "flows",
        "query",
        "--data",
        store,
        "--group-by",
        "app,role",
        "--counts-only",
        "--format",
        "json",
    )
    lean = {(r["source"], r["destination"]): r for r in json.loads(out)["rows"]}
    assert lean[("app=shop,role=web", "app=shop,role=api")]["records"] == 10
    assert lean[("app=shop,role=web", "app=shop,role=api")]["bytes"] == 10_000
    assert lean[("app=shop,role=web", "app=shop,role=api")]["services"] == []


def test_query_bad_input_is_reported(store: Path) -> None:
    assert run("flows", "query", "--data", store, "--from", 'app == "x')[0] == 2
    code, _, err = run("flows", "query", "--data", store, "--verdict", "maybe")
    assert code == 2
    assert "--verdict" in err
    code, _, err = run("flows", "query", "--data", store / "nowhere")
    assert code == 2
    assert "not a Septum data directory" in err


def test_replay_reports_newly_denied_flows_with_owners(tmp_path: Path, store: Path) -> None:
    code, out, _ = run(
        "replay",
        EXAMPLES,
        "--flows",
        store,
        "--against",
        EXAMPLES,
        "--fail-on",
        "newly-denied",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["newly_denied"]["records"] == 0

    draft = broken_draft(tmp_path)
    code, out, _ = run(
        "replay",
        draft,
        "--flows",
        store,
        "--against",
        EXAMPLES,
        "--fail-on",
        "newly-denied",
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert report["newly_denied"]["records"] == 10
    (owner,) = [o for o in report["by_owner"] if o["change"] == "newly denied"]
    assert owner["tier"] == "shop"
    assert owner["owners"]
    assert owner["examples"][0]["source_identity"] == "shop-web-prod-1"
    assert owner["examples"][0]["service"] == "tcp/8080"
    # against the recorded verdicts: the same flows break (the recorded deny stays denied)
    code, out, _ = run("replay", draft, "--flows", store, "--fail-on", "any", "--json")
    assert code == 1
    assert json.loads(out)["newly_denied"]["records"] == 10
    code, out, _ = run("replay", draft, "--flows", store, "--against", EXAMPLES)
    assert code == 0  # no --fail-on: report only
    assert "newly denied" in out
    assert "tier shop" in out


def test_map_in_every_format(tmp_path: Path, store: Path) -> None:
    code, out, _ = run("map", EXAMPLES, "--flows", store, "--granularity", "app,role")
    assert code == 0
    graph = json.loads(out)
    assert len(graph["nodes"]) >= 3
    statuses = {e["status"] for e in graph["edges"]}
    assert "allowed" in statuses
    code, out, _ = run("map", EXAMPLES, "--flows", store, "--format", "graphml")
    assert code == 0
    assert ET.fromstring(out).tag.endswith("graphml")
    code, out, _ = run("map", EXAMPLES, "--flows", store, "--format", "dot")
    assert out.startswith("digraph")
    if shutil.which("dot") is not None or os.environ.get("CI") == "true":
        svg = tmp_path / "map.svg"
        code, _, err = run("map", EXAMPLES, "--flows", store, "--format", "svg", "--out", svg)
        assert code == 0, err
        assert ET.fromstring(svg.read_text()).tag.endswith("svg")
    assert run("map", "--flows", store, "--format", "png")[0] == 2
    code, out, _ = run("map", "--flows", store)  # no repository: the recorded verdicts
    assert code == 0
    assert json.loads(out)["status_source"] == "recorded"


def test_settings_compact_and_inventory(tmp_path: Path, store: Path) -> None:
    code, out, _ = run("flows", "settings", "--data", store, "--retention-days", "7")
    assert json.loads(out)["retention_days"] == 7
    code, out, _ = run("flows", "compact", "--data", store, *RUN, "--json")
    assert code == 0
    assert json.loads(out)["files_after"] >= 1
    code, out, _ = run("flows", "inventory", EXAMPLES, "--data", store, *RUN)
    assert code == 0
    assert "interval" in out


def test_recommend_writes_policies_that_load_with_the_repository(
    tmp_path: Path, store: Path
) -> None:
    proposal = tmp_path / "proposal.yaml"
    code, out, err = run(
        "recommend",
        EXAMPLES,
        "--flows",
        store,
        "--scope",
        'app == "shop"',
        "--granularity",
        "app,role,env",
        "--out",
        proposal,
        "--json",
        *RUN,
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["coverage"]["records_share"] == 1.0
    assert report["tier"]["name"] == "shop"
    assert {p["name"] for p in report["policies"]} >= {"rec-shop-web-prod", "rec-shop-api-prod"}
    # the recorded-denied attempt web -> db is an outlier, never proposed
    assert any(o["reason"] == "recorded-denied" for o in report["outliers"]), report["outliers"]
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    shutil.copy(proposal, repo / "policies" / "proposal.yaml")
    assert run("validate", repo)[0] == 0
    # refining with the same data changes nothing; the file keeps its names and rules
    again = tmp_path / "again.yaml"
    code, _, err = run(
        "recommend",
        EXAMPLES,
        "--flows",
        store,
        "--scope",
        'app == "shop"',
        "--granularity",
        "app,role,env",
        "--previous",
        proposal,
        "--out",
        again,
        *RUN,
    )
    assert code == 0, err
    assert again.read_text() == proposal.read_text()
    code, _, err = run("recommend", EXAMPLES, "--flows", store, "--tier", "nope", *RUN)
    assert code == 2
    assert "nope" in err


def test_flows_may_be_a_file_imported_for_one_command(tmp_path: Path) -> None:
    flows = tmp_path / "exported.jsonl"
    flows.write_text("\n".join(record(WEB, API, 8080, m) for m in range(3)) + "\n")
    draft = broken_draft(tmp_path)
    code, out, err = run(
        "replay",
        draft,
        "--flows",
        flows,
        "--against",
        EXAMPLES,
        "--fail-on",
        "newly-denied",
        "--json",
        *RUN,
    )
    assert code == 1, err
    assert json.loads(out)["newly_denied"]["records"] == 3
    code, out, _ = run("map", EXAMPLES, "--flows", flows, *RUN)
    assert code == 0
    assert json.loads(out)["edges"]
    odd = tmp_path / "exported.txt"
    odd.write_text("x\n")
    code, _, err = run("replay", EXAMPLES, "--flows", odd)
    assert code == 2
    assert "--flows-format" in err
    code, _, err = run("replay", EXAMPLES, "--flows", odd, "--flows-format", "hubble")
    assert code == 0  # a file of nothing but a malformed line: replays nothing, says so
    assert "malformed" in err


def test_reattribute_after_an_import_without_inventory(tmp_path: Path) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_text("\n".join(record(WEB, API, 8080, m) for m in range(3)) + "\n")
    data = tmp_path / "data"
    code, _, err = run("flows", "import", flows, "--format", "agent", "--data", data, *RUN)
    assert code == 0
    assert "no --repo" in err
    query = ("flows", "query", "--data", data, "--group-by", "app,role", "--format", "json")
    assert json.loads(run(*query)[1])["rows"][0]["source"] == "unknown"
    code, out, _ = run("flows", "reattribute", EXAMPLES, "--data", data, *RUN)
    assert code == 0
    assert "3 flow records attributed again" in out
    assert json.loads(run(*query)[1])["rows"][0]["source"] == "app=shop,role=web"
