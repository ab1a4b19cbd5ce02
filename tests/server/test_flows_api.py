"""Flows over the API on real SQLite and real PostgreSQL: agents' records ingested into the
server's flow store (own enforcer only, all or nothing, refused records named by field),
queried back attributed to the active version's workloads, scoped for owners, and replayed
by provision."""

from __future__ import annotations

import io
import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from septum.flows.importers import ImportOptions
from septum.flows.importers.agent import IMPORTER
from septum.server import flows_api
from septum.server.documents import DocumentError
from tests.conftest import EXAMPLES, EXAMPLES_AT
from tests.server.harness import Harness, running_harness

AGENT_ENFORCER = "host-shop-web-prod-1"  # the harness agent token's enforcer


@pytest.fixture
def h(database_url: str, tmp_path: Path) -> Any:
    with running_harness(database_url, tmp_path) as harness:
        yield harness


def _example_records(enforcer: str | None = None) -> list[dict[str, Any]]:
    """The recorded hour of the shop (examples/flows/shop-agent.jsonl), of one enforcer."""
    lines = (EXAMPLES / "flows" / "shop-agent.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if enforcer is None or r["enforcer"] == enforcer]


def _record(enforcer: str, source: str, destination: str, port: int, **extra: Any) -> Any:
    return {
        "start": "2026-11-25T10:00:00+00:00",
        "end": "2026-11-25T10:00:40+00:00",
        "enforcer": enforcer,
        "source": source,
        "destination": destination,
        "protocol": "tcp",
        "port": port,
        "verdict": "allowed",
        "provenance": [],
        "connections": 2,
        "packets": 20,
        "bytes": 4000,
        **extra,
    }


#: billing-api-prod-1 → billing-db-prod-1, and shop-api-prod-1 → billing-api-prod-1 (PCI).
BILLING_INSIDE = _record("host-billing-db-prod-1", "198.18.11.21", "198.18.11.31", 5432)
SHOP_TO_BILLING = _record("host-shop-api-prod-1", "198.18.10.21", "198.18.11.21", 8443)


def _flows(h: Harness, role: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = h.ok(role, "GET", "/api/v1/flows", params=params)
    return result


def _stored(h: Harness) -> int:
    from septum.flows.store import FlowStore, StoreError

    try:
        return FlowStore(h.data / "flows-store", create=False).count()
    except StoreError:
        return 0


def _edge(flows: list[dict[str, Any]], source: str, destination: str) -> dict[str, Any]:
    """The edge between two named sides."""
    found = [
        f
        for f in flows
        if f["source"].get("name") == source and f["destination"].get("name") == destination
    ]
    assert len(found) == 1, (source, destination, flows)
    return found[0]


def test_agent_ingests_its_flows_and_they_come_back_attributed(h: Harness) -> None:
    records = _example_records(AGENT_ENFORCER)
    assert len(records) == 24
    before = h.fingerprint()
    answer = h.ok("agent", "POST", "/api/v1/flows", json={"records": records})
    assert answer == {
        "accepted": 24,
        "rejected": 0,
        "expired": 0,
        "partitions": ["day=2026-11-25"],
        "version": 1,
    }
    assert h.fingerprint() == before  # flows are observations: no audit entry, no version

    result = _flows(h, "auditor")
    assert result["total"] == 2
    assert result["truncated"] is False
    assert result["version"] == 1
    assert result["since"] == "2026-11-18T12:00:00+00:00"  # the replay window: 7 days
    web_to_api = _edge(result["flows"], "shop-web-prod-1", "shop-api-prod-1")
    source = web_to_api["source"]
    assert (source["address"], source["kind"], source["name"]) == (
        "198.18.10.11",
        "workload",
        "shop-web-prod-1",
    )
    # The active version's labels, with the implicit ones selectors see.
    assert source["labels"] == {
        "app": "shop",
        "role": "web",
        "env": "prod",
        "loc": "par1",
        "team": "shop-team",
        "septum.io/kind": "host",
        "septum.io/name": "shop-web-prod-1",
    }
    assert web_to_api["destination"]["address"] == "198.18.10.21"
    assert (web_to_api["protocol"], web_to_api["port"]) == ("tcp", 8080)
    assert web_to_api["records"] == 12
    assert web_to_api["connections"] == 36
    assert web_to_api["verdicts"] == {"allowed": 12}
    assert web_to_api["first_seen"] == "2026-11-25T09:01:00+00:00"
    internet = _edge(result["flows"], "internet", "shop-web-prod-1")
    assert internet["source"]["kind"] == "network"
    assert internet["source"]["address"] == "203.0.113.80"

    # The window: [since, until) on the records' start; the limit truncates.
    window = _flows(
        h, "auditor", since="2026-11-25T09:00:00Z", until="2026-11-25T09:01:00Z", limit=1
    )
    assert [f["source"].get("name") for f in window["flows"]] == ["internet"]
    assert window["flows"][0]["records"] == 1
    assert _flows(h, "auditor", limit=1)["truncated"] is True
    assert _flows(h, "auditor", since="2026-11-25T10:00:00+00:00")["flows"] == []


def test_an_agent_reports_only_its_own_enforcer(h: Harness) -> None:
    own = _example_records(AGENT_ENFORCER)[:2]
    other = _example_records("host-shop-api-prod-1")[0]
    r = h.call("agent", "POST", "/api/v1/flows", json={"records": [*own, other]})
    assert r.status_code == 403
    assert "records[2]" in r.json()["error"]
    assert "host-shop-api-prod-1" in r.json()["error"]
    assert _stored(h) == 0  # nothing of the batch, not even the agent's own records
    # The security team may send any enforcer's records (e.g. a re-import).
    assert (
        h.ok("security", "POST", "/api/v1/flows", json={"records": [*own, other]})["accepted"] == 3
    )
    # Readers that may not write flows get 403; agents may not read them.
    for role in ("owner", "auditor"):
        assert h.call(role, "POST", "/api/v1/flows", json={"records": own}).status_code == 403
    assert h.call("agent", "GET", "/api/v1/flows").status_code == 403
    assert _stored(h) == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": "443"}, "port"),
        ({"port": 70000}, "port"),
        ({"destination": "198.18.10.300"}, "destination"),
        ({"verdict": "maybe"}, "verdict"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-11-25T08:00:00+00:00"}, "end"),  # before start
        ({"bytes": -1}, "bytes"),
        ({"packets": 2**70}, "packets"),  # more than the store's counters hold
        ({"provenance": "shop/shop-web/ingress/0"}, "provenance"),
        # A time whose offset takes it below the first datetime once in UTC.
        ({"start": "0001-01-01T00:00:00+01:00"}, "start"),
        # From the future: more than a day after the server's clock (2026-11-25T12:00Z).
        ({"end": "2026-11-26T12:00:01+00:00"}, "end"),
        ({"start": "9999-12-31T00:00:00+00:00", "end": "9999-12-31T00:00:01+00:00"}, "start"),
    ],
)
def test_a_refused_record_is_named_and_nothing_is_stored(
    h: Harness, change: dict[str, Any], field: str
) -> None:
    good = _example_records(AGENT_ENFORCER)[:2]
    bad = {**good[1], **change}
    r = h.call("security", "POST", "/api/v1/flows", json={"records": [good[0], bad]})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [(p["document"], p["field"]) for p in problems] == [("flows", f"records[1].{field}")]
    assert f"records[1].{field}" in r.json()["error"]
    assert _stored(h) == 0


def test_a_missing_field_and_a_non_object_are_named() -> None:
    good = _example_records(AGENT_ENFORCER)[0]
    missing = {k: v for k, v in good.items() if k != "verdict"}
    with pytest.raises(DocumentError) as caught:
        flows_api.read_records([good, missing, 7, good], EXAMPLES_AT)
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("records[1].verdict", "missing"),
        ("records[2]", "a flow record must be a JSON object"),
    ]
    # The agent importer reads the probe the fields are tried in (else it blames them all).
    probe = io.BytesIO(json.dumps(flows_api.probe_record()).encode())
    read = list(IMPORTER.read(probe, "probe", ImportOptions(now=EXAMPLES_AT)))
    assert [type(x) for x in read] == [tuple]
    # Fields the importer does not know are ignored, as `septum flows import` ignores them.
    assert len(flows_api.read_records([{**good, "from_a_newer_agent": 1}], EXAMPLES_AT)) == 1


def test_a_batch_over_the_limit_is_refused_with_413(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows_api, "MAX_RECORDS", 3)
    records = _example_records(AGENT_ENFORCER)[:4]
    r = h.call("security", "POST", "/api/v1/flows", json={"records": records})
    assert r.status_code == 413
    assert "at most 3" in r.json()["error"]
    assert _stored(h) == 0
    assert h.ok("security", "POST", "/api/v1/flows", json={"records": records[:3]})["accepted"] == 3


def test_owners_see_flows_touching_their_scope_only(h: Harness) -> None:
    records = [*_example_records(), BILLING_INSIDE, SHOP_TO_BILLING]
    assert h.ok("security", "POST", "/api/v1/flows", json={"records": records})["accepted"] == 88

    everything = _flows(h, "auditor")["flows"]
    _edge(everything, "billing-api-prod-1", "billing-db-prod-1")
    assert _edge(everything, "shop-api-prod-1", "billing-api-prod-1")["records"] == 1

    owned = _flows(h, "owner")["flows"]  # scope: app == "shop"
    assert owned
    for f in owned:
        sides = [f["source"], f["destination"]]
        # At least one side is a shop workload, shown in full ...
        assert any(s.get("labels", {}).get("app") == "shop" for s in sides), f
        # ... and every other side is its kind alone.
        for s in sides:
            assert s.get("labels", {}).get("app") == "shop" or s.keys() == {"kind"}, f
    assert not any("billing" in json.dumps(f) for f in owned)
    to_billing = [
        f for f in owned if f["source"].get("name") == "shop-api-prod-1" and f["port"] == 8443
    ]
    assert [f["destination"] for f in to_billing] == [{"kind": "workload"}]
    # The internet's addresses reaching shop-web-prod-1 are one edge, from "a network".
    from_outside = [
        f for f in owned if f["destination"].get("name") == "shop-web-prod-1" and f["port"] == 443
    ]
    assert len(from_outside) == 1
    assert from_outside[0]["source"] == {"kind": "network"}
    assert from_outside[0]["records"] == 12
    # Both sides in scope: shown in full (the database replication).
    replica = _edge(owned, "shop-db-prod-1", "shop-db-prod-2")
    assert replica["destination"]["address"] == "198.18.10.32"


def test_bad_windows_are_refused(h: Harness) -> None:
    for params in (
        {"since": "2026-11-25T09:00:00"},  # no time zone
        {"since": "2026-11-25T10:00:00Z", "until": "2026-11-25T09:00:00Z"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"until": "9999-12-31T23:59:59-23:59"},
        {"limit": 0},
        {"limit": 10_001},
    ):
        r = h.call("auditor", "GET", "/api/v1/flows", params=params)
        assert r.status_code == 422, (params, r.text)


def test_provision_replays_ingested_flows(h: Harness) -> None:
    """Flows the active version allows and the draft would deny are in provision's
    report: here shop-api-prod-1 (par1) reaching the cache, which a draft policy limits
    to the api servers in fra1 (the asserted shop-api-prod-2 → cache still passes)."""
    cache = [
        _record("host-shop-cache-prod-1", "198.18.10.21", "198.18.10.41", 6379, start=start)
        for start in ("2026-11-25T10:00:00+00:00", "2026-11-25T10:05:00+00:00")
    ]
    for record in cache:
        record["end"] = record["start"].replace(":00+", ":30+")
    assert h.ok("security", "POST", "/api/v1/flows", json={"records": cache})["accepted"] == 2
    policy = h.ok("security", "GET", "/api/v1/policies/shop-cache", params={"state": "draft"})
    policy["spec"]["ingress"][0]["from"] = ['app == "shop" && role == "api" && loc == "fra1"']
    h.ok("security", "PUT", "/api/v1/policies/shop-cache", json=policy)
    report = h.ok("security", "POST", "/api/v1/provision", json={"note": "cache (CHG-11)"})
    replay = report["replay"]
    assert replay["baseline"] == "the active repository"
    assert replay["records"] == 2
    assert replay["newly_denied"] == {"records": 2, "flows": 1}
    assert "shop-cache-prod-1" in json.dumps(replay["by_owner"])


def test_allowed_records_without_provenance_get_the_active_versions(h: Harness) -> None:
    """Agents that follow the control plane cannot explain what they accepted (they hold
    rulesets, not the repository): the server fills the provenance of such records from the
    active version, as an agent holding the repository would; records that carry their own
    keep it, and denies (logged by the kernel with their rule) are left alone."""
    from septum.engine.explain import Evaluator, Flow
    from septum.model.resources import Protocol
    from septum.server.flows_api import active_inventory, read_records, with_provenance

    web_to_api = _record("host-shop-web-prod-1", "198.18.10.11", "198.18.10.21", 8080)
    own = _record(
        "host-shop-web-prod-1", "198.18.10.11", "198.18.10.21", 8080, provenance=["x/y/egress/0"]
    )
    denied = _record("host-shop-web-prod-1", "198.18.10.11", "198.18.10.31", 5432, verdict="denied")
    rows = read_records([web_to_api, own, denied], EXAMPLES_AT)
    active = active_inventory(h.db)
    filled = with_provenance(rows, active)
    expected = Evaluator(active.repository).explain(
        Flow(ip_address("198.18.10.11"), ip_address("198.18.10.21"), Protocol.TCP, 8080, rows[0][0])
    )
    assert filled[0][12] == ",".join(s.provenance for s in expected.sides)
    assert filled[0][12]  # the shop's rules allowed it: named
    assert filled[1][12] == "x/y/egress/0"
    assert filled[2][12] is None
    # Through the API: the stored record carries it.
    from septum.flows.store import FlowStore

    h.ok("agent", "POST", "/agent/v1/flows", json={"records": [web_to_api]})
    con = FlowStore(h.data / "flows-store", create=False).connect()
    try:
        stored = con.execute("SELECT rule FROM flows").fetchall()
    finally:
        con.close()
    assert stored == [(filled[0][12],)]
