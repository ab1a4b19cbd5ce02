"""The control plane's API on real SQLite and real PostgreSQL: draft, provision, versions,
diff, rollback, field errors, owner scope, tokens and the audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from septum.server.audit import entry_json, verify_entries
from septum.server.db import AuditEntry
from tests.server.harness import Harness, examples_entries, running_harness


@pytest.fixture
def h(database_url: str, tmp_path: Path) -> Any:
    with running_harness(database_url, tmp_path) as harness:
        yield harness


def _policy(name: str, tier: str, applies_to: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tier": tier,
        "ingress": [{"action": "allow", "from": ['app == "shop"'], "ports": ["tcp/9999"]}],
    }
    if applies_to is not None:
        spec["appliesTo"] = applies_to
    return {"apiVersion": "septum/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}


def test_push_provision_diff_and_rollback(h: Harness) -> None:
    versions = h.ok("auditor", "GET", "/api/v1/versions")
    assert versions["active"] == 1
    assert [v["version"] for v in versions["versions"]] == [1]
    v1 = h.ok("auditor", "GET", "/api/v1/versions/1")
    assert v1["note"] == "initial (TICKET-1)"
    assert v1["created_by"] == "security-user"
    assert v1["summary"]["assertions"] == {"total": 39, "failed": 0}
    assert len(v1["documents"]) == len(examples_entries())
    assert len(h.ok("auditor", "GET", "/api/v1/workloads")) == 26

    # A label change goes to the draft; the active version is untouched until provisioned.
    h.ok(
        "security",
        "PATCH",
        "/api/v1/workloads/shop-web-prod-1/labels",
        json={"set": {"canary": "yes"}, "remove": ["loc"]},
    )
    active = h.ok("auditor", "GET", "/api/v1/workloads/shop-web-prod-1")
    draft = h.ok("auditor", "GET", "/api/v1/workloads/shop-web-prod-1", params={"state": "draft"})
    assert "canary" not in active["metadata"]["labels"]
    assert draft["metadata"]["labels"]["canary"] == "yes"
    assert "loc" not in draft["metadata"]["labels"]
    diff = h.ok("auditor", "GET", "/api/v1/diff", params={"from": "active", "to": "draft"})
    assert [(c["kind"], c["name"], c["change"]) for c in diff["changes"]] == [
        ("Workload", "shop-web-prod-1", "changed")
    ]

    assert h.call("security", "POST", "/api/v1/provision", json={"note": ""}).status_code == 422
    v2 = h.ok("security", "POST", "/api/v1/provision", json={"note": "canary (CHG-7)"})
    assert v2["version"] == 2
    assert v2["changes"] == [{"kind": "Workload", "name": "shop-web-prod-1", "change": "changed"}]
    again = h.call("security", "POST", "/api/v1/provision", json={"note": "again"})
    assert again.status_code == 409  # nothing to provision

    diff12 = h.ok("auditor", "GET", "/api/v1/diff", params={"from": "1", "to": "2"})
    assert diff12["changes"][0]["before"]["metadata"]["labels"]["loc"] == "par1"
    assert len(
        h.ok("auditor", "GET", "/api/v1/diff", params={"from": "0", "to": "1"})["changes"]
    ) == len(examples_entries())

    v3 = h.ok("security", "POST", "/api/v1/versions/1/rollback", json={"note": "undo (CHG-8)"})
    assert v3["version"] == 3
    assert v3["rollback_of"] == 1
    listing = h.ok("auditor", "GET", "/api/v1/versions")
    digests = {v["version"]: v["digest"] for v in listing["versions"]}
    assert listing["active"] == 3
    assert digests[3] == digests[1] != digests[2]
    # The draft follows the rollback, so the next provision does not bring v2 back.
    assert (
        h.ok("auditor", "GET", "/api/v1/diff", params={"from": "active", "to": "draft"})["changes"]
        == []
    )
    # Versions are immutable: version 2 still holds its documents.
    v2_doc = h.ok("auditor", "GET", "/api/v1/workloads/shop-web-prod-1", params={"state": "2"})
    assert v2_doc["metadata"]["labels"]["canary"] == "yes"


def test_bad_documents_name_the_field_and_change_nothing(h: Harness) -> None:
    before = h.fingerprint()
    bad = _policy("broken", "shop", 'app == "shop')
    r = h.call("security", "PUT", "/api/v1/policies/broken", json=bad)
    assert r.status_code == 422
    assert r.json()["problems"][0]["document"] == "Policy/broken"
    assert r.json()["problems"][0]["field"] == "spec.appliesTo"
    bad = _policy("broken", "shop", None)
    bad["spec"]["ingress"][0]["ports"] = ["tcp/99999"]
    r = h.call("security", "PUT", "/api/v1/policies/broken", json=bad)
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "spec.ingress[0].ports[0]"
    # The body must be the resource the path names.
    r = h.call("security", "PUT", "/api/v1/policies/other", json=_policy("broken", "shop", None))
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "metadata.name"
    # A whole-draft push with a broken reference is refused whole.
    entries = [dict(e) for e in examples_entries()]
    entries.append({"path": "x.yaml", "body": _policy("dangling", "no-such-tier", None)})
    r = h.call("security", "PUT", "/api/v1/draft", json={"documents": entries})
    assert r.status_code == 422
    assert any(p["document"] == "Policy/dangling" for p in r.json()["problems"])
    assert h.fingerprint() == before


def test_provision_refused_when_an_assertion_fails(h: Harness) -> None:
    h.ok("security", "DELETE", "/api/v1/policies/shop-web")
    before = h.fingerprint()
    r = h.call("security", "POST", "/api/v1/provision", json={"note": "oops (CHG-9)"})
    assert r.status_code == 422
    failed = [x["name"] for x in r.json()["assertions"]["results"] if not x["passed"]]
    assert "internet-reaches-shop-web" in failed
    assert h.fingerprint() == before  # no version, no audit entry
    assert h.ok("auditor", "GET", "/api/v1/versions")["active"] == 1


def test_owner_writes_only_inside_scope_and_own_tiers(h: Harness) -> None:
    inside = [
        'app == "shop" && role == "web"',
        'app in {"shop"} && env == "prod"',
        '!(app != "shop")',  # written differently, selects the same
        'app == "shop" && (role == "web" || role == "api")',
    ]
    for i, sel in enumerate(inside):
        r = h.call(
            "owner", "PUT", f"/api/v1/policies/own-{i}", json=_policy(f"own-{i}", "shop", sel)
        )
        assert r.status_code == 200, (sel, r.text)
    wider = [
        None,  # no appliesTo: every workload
        "all()",
        'app in {"shop", "billing"}',
        'app != "billing"',  # selects workloads without an app label too
        'app starts with "sho"',
        'app == "shop" || role == "web"',
        '!(app != "shop") || has(pci)',
    ]
    for i, sel in enumerate(wider):
        before = h.fingerprint()
        r = h.call(
            "owner", "PUT", f"/api/v1/policies/wide-{i}", json=_policy(f"wide-{i}", "shop", sel)
        )
        assert r.status_code == 403, (sel, r.text)
        assert "not inside the scope" in r.json()["error"]
        assert h.fingerprint() == before
    # A tier the owner's teams do not own.
    before = h.fingerprint()
    r = h.call("owner", "PUT", "/api/v1/policies/t", json=_policy("t", "billing", 'app == "shop"'))
    assert r.status_code == 403
    assert h.fingerprint() == before
    # Widening an existing policy in place, or taking over someone else's, is refused too.
    existing = h.ok("auditor", "GET", "/api/v1/policies/shop-web", params={"state": "draft"})
    widened = {**existing, "spec": {**existing["spec"], "appliesTo": "all()"}}
    assert h.call("owner", "PUT", "/api/v1/policies/shop-web", json=widened).status_code == 403
    billing = h.ok("auditor", "GET", "/api/v1/policies", params={"state": "draft"})
    other = next(p for p in billing if p["spec"]["tier"] == "billing")
    moved = {**other, "spec": {**other["spec"], "tier": "shop", "appliesTo": 'app == "shop"'}}
    r = h.call("owner", "PUT", f"/api/v1/policies/{other['metadata']['name']}", json=moved)
    assert r.status_code == 403
    assert (
        h.call("owner", "DELETE", f"/api/v1/policies/{other['metadata']['name']}").status_code
        == 403
    )
    # Owners change no inventory and cannot provision.
    r = h.call(
        "owner", "PATCH", "/api/v1/workloads/shop-web-prod-1/labels", json={"set": {"a": "b"}}
    )
    assert r.status_code == 403
    assert h.call("owner", "POST", "/api/v1/provision", json={"note": "x"}).status_code == 403


def test_owner_sees_only_workloads_in_scope(h: Harness) -> None:
    names = {w["metadata"]["name"] for w in h.ok("owner", "GET", "/api/v1/workloads")}
    assert names
    assert all(n.startswith("shop-") or "shop" in n for n in names)
    everyone = {w["metadata"]["name"] for w in h.ok("auditor", "GET", "/api/v1/workloads")}
    assert names < everyone
    hidden = sorted(everyone - names)[0]
    assert h.call("owner", "GET", f"/api/v1/workloads/{hidden}").status_code == 404
    assert h.ok("owner", "GET", "/api/v1/users") == []
    exported = h.ok("owner", "GET", "/api/v1/repository")["documents"]
    kinds_names = {(d["body"]["kind"], d["body"]["metadata"]["name"]) for d in exported}
    assert ("Workload", hidden) not in kinds_names
    v1 = h.ok("owner", "GET", "/api/v1/versions/1")
    assert all(d["body"]["metadata"]["name"] != hidden for d in v1["documents"])


def test_tokens(h: Harness) -> None:
    assert h.call(None, "GET", "/api/v1/whoami").status_code == 401
    r = h.client.get("/api/v1/whoami", headers={"Authorization": "Bearer sep_0123456789abcdef_x"})
    assert r.status_code == 401
    made = h.ok("admin", "POST", "/api/v1/access/users/auditor-user/tokens", json={})
    token = made["token"]
    who = h.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.json()["role"] == "auditor"
    h.ok("admin", "DELETE", f"/api/v1/access/tokens/{made['id']}")
    again = h.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401
    # Tokens are stored hashed: the secret appears nowhere in the database.
    with h.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_tokens")).all()
    assert token.rsplit("_", 1)[1] not in repr(rows)


def _entries(h: Harness) -> list[dict[str, Any]]:
    from sqlalchemy import select

    with h.db.read() as s:
        return [
            entry_json(e) for e in s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
        ]


def test_audit_log_records_every_write_and_detects_tampering(h: Harness) -> None:
    h.ok("security", "PATCH", "/api/v1/workloads/shop-web-prod-1/labels", json={"set": {"x": "1"}})
    entries = _entries(h)
    actions = [e["action"] for e in entries]
    assert actions[-1] == "draft.put"
    assert "version.provision" in actions
    last = entries[-1]
    assert last["actor"] == "security-user"
    assert last["target"] == "Workload/shop-web-prod-1"
    assert "x" not in last["before"]["metadata"]["labels"]
    assert last["after"]["metadata"]["labels"]["x"] == "1"
    verified = h.ok("auditor", "GET", "/api/v1/audit/verify")
    assert verified == {"ok": True, "entries": len(entries), "problems": []}

    # The database itself refuses to change or delete entries.
    for statement in (
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
    ):
        with pytest.raises(DBAPIError), h.db.engine.begin() as conn:
            conn.execute(text(statement))
    assert _entries(h) == entries

    # Someone with the database's owner rights drops the guard and rewrites history.
    with h.db.engine.begin() as conn:
        if h.db.sqlite:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"))
    report = h.ok("auditor", "GET", "/api/v1/audit/verify")
    assert not report["ok"]
    assert report["problems"][0]["seq"] == 2
    # The same check over an export, independently of the server.
    count, problems = verify_entries(_entries(h))
    assert count == len(entries)
    assert problems[0].seq == 2
    # Cutting entries off the end is noticed against the recorded head.
    count, problems = verify_entries(entries[:-1], (entries[-1]["seq"], entries[-1]["hash"]))
    assert problems
    assert "recorded head" in problems[-1].message


def test_operations_endpoints(h: Harness) -> None:
    assert h.client.get("/healthz").json() == {"status": "ok"}
    ready = h.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    metrics = h.client.get("/metrics").text
    assert (
        'septum_http_requests_total{method="POST",route="/api/v1/provision",status="200"}'
        in metrics
    )
    spec = h.client.get("/openapi.json").json()
    assert "/api/v1/provision" in spec["paths"]
    assert "/api/v1/{collection}/{name}" in spec["paths"]
