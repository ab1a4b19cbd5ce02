"""Desired state per enforcer: published at provision, served by long-poll, on SQLite and
PostgreSQL. The reference is full recomputation: what an agent holds after applying what the
server sent equals ``build_host_ruleset`` of the active version, for every enforcer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from septum.engine.resolve import resolve_policy
from septum.render.hostruleset import HostRuleset, apply_delta, build_host_ruleset
from septum.render.wire import decode_deltas, decode_ruleset
from septum.server import service
from septum.server.documents import build_repository
from tests.server.harness import Harness, running_harness

AGENT_ENFORCER = "host-shop-web-prod-1"  # the harness's agent token


@pytest.fixture
def h(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    # Polling only every minute: a long-poll that returns quickly was woken by the poke.
    with running_harness(database_url, tmp_path, poll_interval=60.0) as harness:
        yield harness


def _agent(h: Harness, enforcer: str) -> dict[str, str]:
    """Headers of a new agent user bound to ``enforcer``."""
    name = f"agent-{enforcer}"
    h.ok(
        "admin",
        "POST",
        "/api/v1/access/users",
        json={"name": name, "role": "agent", "enforcer": enforcer},
    )
    token = h.ok("admin", "POST", f"/api/v1/access/users/{name}/tokens", json={})["token"]
    return {"Authorization": f"Bearer {token}"}


def _state(h: Harness, headers: dict[str, str], revision: int, wait: float = 0) -> dict[str, Any]:
    r = h.client.get(
        "/agent/v1/state", params={"revision": revision, "wait": wait}, headers=headers
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _reference(h: Harness, enforcer: str) -> HostRuleset:
    with h.db.read() as s:
        repo = build_repository(service.active_documents(s))
    return build_host_ruleset(resolve_policy(repo, _at(h)), enforcer)


def _at(h: Harness) -> datetime:
    from tests.conftest import EXAMPLES_AT

    return EXAMPLES_AT


def _same(a: HostRuleset, b: HostRuleset) -> bool:
    return replace(a, at=b.at) == b


QUARANTINED = "vm-billing-db-staging-1"  # the enforcer of billing-db-staging-1


def _quarantine(h: Harness, patch: dict[str, Any], note: str) -> dict[str, Any]:
    path = "/api/v1/workloads/billing-db-staging-1/labels"
    h.ok("security", "PATCH", path, json=patch)
    out: dict[str, Any] = h.ok("security", "POST", "/api/v1/provision", json={"note": note})
    return out


def _follow(
    h: Harness, headers: dict[str, str], held: HostRuleset | None, revision: int
) -> tuple[HostRuleset, int, str]:
    msg = _state(h, headers, revision)
    if msg["kind"] == "full":
        return decode_ruleset(msg["ruleset"]), msg["revision"], "full"
    assert msg["kind"] == "delta"
    assert held is not None
    assert msg["from"] == revision
    return apply_delta(held, decode_deltas(msg["deltas"])), msg["revision"], "delta"


def test_every_enforcer_gets_its_full_state_then_nothing(h: Harness) -> None:
    enforcers = [e["enforcer"] for e in h.ok("admin", "GET", "/api/v1/enforcers")]
    assert AGENT_ENFORCER in enforcers
    assert len(enforcers) >= 10
    for enforcer in [*enforcers[:6], AGENT_ENFORCER]:
        headers = h.headers("agent") if enforcer == AGENT_ENFORCER else _agent(h, enforcer)
        msg = _state(h, headers, 0)
        assert msg["kind"] == "full"
        assert msg["enforcer"] == enforcer
        assert msg["version"] == 1
        assert _same(decode_ruleset(msg["ruleset"]), _reference(h, enforcer))
        again = _state(h, headers, msg["revision"], wait=0)
        assert again["kind"] == "unchanged"
        assert again["revision"] == msg["revision"]


def test_a_label_change_reaches_only_the_enforcers_it_changes_as_deltas(h: Harness) -> None:
    enforcers = [e["enforcer"] for e in h.ok("admin", "GET", "/api/v1/enforcers")]
    agents = {e: (h.headers("agent") if e == AGENT_ENFORCER else _agent(h, e)) for e in enforcers}
    held: dict[str, tuple[HostRuleset, int]] = {}
    for e, headers in agents.items():
        ruleset, revision, _ = _follow(h, headers, None, 0)
        held[e] = (ruleset, revision)
    # billing-db-staging-1 is quarantined: the quarantine sets change wherever they are
    # used, and its own host's chains change.
    out = _quarantine(h, {"set": {"quarantine": "yes"}}, "CHG-2 quarantine")
    updated = out["enforcers"]
    assert updated["updated"] == len(updated["full"]) + len(updated["delta"]) > 0
    assert updated["delta"], "element-only changes travel as deltas"
    assert updated["full"] == [QUARANTINED]  # its own chains changed
    kinds: dict[str, str] = {}
    for e, headers in agents.items():
        old, revision = held[e]
        if e not in updated["full"] + updated["delta"]:
            assert _state(h, headers, revision)["kind"] == "unchanged"
            continue
        new, new_revision, kinds[e] = _follow(h, headers, old, revision)
        assert new_revision == updated["revision"] > revision
        assert _same(new, _reference(h, e)), e
        held[e] = (new, new_revision)
    assert {e for e, k in kinds.items() if k == "delta"} == set(updated["delta"])
    # Two more changes; an agent that slept through both gets ONE composed delta.
    sleeper = updated["delta"][0]
    old, revision = held[sleeper]
    _quarantine(h, {"remove": ["quarantine"]}, "CHG-3 release")
    _quarantine(h, {"set": {"quarantine": "again"}}, "CHG-4 quarantine again")
    new, _, kind = _follow(h, agents[sleeper], old, revision)
    assert kind == "delta"
    assert _same(new, _reference(h, sleeper))


def test_rollback_publishes_the_old_state(h: Harness) -> None:
    headers = h.headers("agent")
    v1, revision, _ = _follow(h, headers, None, 0)
    _quarantine(h, {"set": {"quarantine": "yes"}}, "CHG-5")
    v2, revision, _ = _follow(h, headers, v1, revision)
    assert not _same(v2, v1)
    h.ok("security", "POST", "/api/v1/versions/1/rollback", json={"note": "CHG-6 undo"})
    back, _, _ = _follow(h, headers, v2, revision)
    assert _same(back, v1)


def test_a_long_poll_is_woken_by_a_provision(h: Harness) -> None:
    headers = h.headers("agent")
    first = _state(h, headers, 0)
    result: dict[str, Any] = {}

    def watch() -> None:
        began = time.monotonic()
        result["msg"] = _state(h, headers, first["revision"], wait=50)
        result["seconds"] = time.monotonic() - began

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # let it start waiting (a later start would simply answer at once)
    _quarantine(h, {"set": {"quarantine": "yes"}}, "CHG-7")
    watcher.join(60)
    assert result["msg"]["kind"] in ("delta", "full")
    assert result["msg"]["revision"] > first["revision"]
    # Far below the 50 s wait and the 60 s poll: the provision's poke woke it (not a
    # latency figure; bench/server.py measures those).
    assert result["seconds"] < 40


def test_status_reports_show_in_the_enforcer_list(h: Harness) -> None:
    headers = h.headers("agent")
    msg = _state(h, headers, 0)
    r = h.client.post(
        "/agent/v1/status",
        json={"revision": msg["revision"], "outcome": "full", "counters": {"elements": 12}},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    row = next(
        e for e in h.ok("auditor", "GET", "/api/v1/enforcers") if e["enforcer"] == AGENT_ENFORCER
    )
    assert row["applied_revision"] == msg["revision"]
    assert row["in_sync"]
    assert row["counters"] == {"elements": 12}


def test_people_cannot_use_agent_routes(h: Harness) -> None:
    for role in ("admin", "security", "owner", "auditor"):
        r = h.client.get("/agent/v1/state", params={"wait": 0}, headers=h.headers(role))
        assert r.status_code == 403, (role, r.text)
    assert h.client.get("/agent/v1/state").status_code == 401


def test_an_agent_learns_which_of_its_connections_the_policy_denies(h: Harness) -> None:
    """``POST /agent/v1/verdicts``: what an agent following the control plane asks after a
    change, to cut revoked connections; only its own workloads' connections are answered."""
    flows = [
        # shop-web-prod-1 (this agent's workload) → shop-db-prod-1: the shop tier denies it.
        {"source": "198.18.10.11", "destination": "198.18.10.31", "protocol": "tcp", "port": 5432},
        # shop-web-prod-1 → shop-api-prod-1 on the api port: allowed.
        {"source": "198.18.10.11", "destination": "198.18.10.21", "protocol": "tcp", "port": 8080},
        # billing-api-prod-1 → billing-db-prod-1: not this agent's business.
        {"source": "198.18.11.21", "destination": "198.18.11.31", "protocol": "tcp", "port": 5432},
    ]
    r = h.client.post("/agent/v1/verdicts", json={"flows": flows}, headers=h.headers("agent"))
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 1, "denied": [0], "skipped": [2]}
    # People do not use agent routes; garbage is a 422, never a 5xx.
    assert (
        h.client.post(
            "/agent/v1/verdicts", json={"flows": flows}, headers=h.headers("security")
        ).status_code
        == 403
    )
    bad = [{"source": "not an address", "destination": "198.18.10.21", "protocol": "tcp"}]
    assert (
        h.client.post(
            "/agent/v1/verdicts", json={"flows": bad}, headers=h.headers("agent")
        ).status_code
        == 422
    )


def test_the_clock_moves_the_desired_state_without_a_provision(h: Harness) -> None:
    """A rule that expires or an address whose validity ends changes what agents must
    enforce with no new version: the server plans the active version again at that
    instant (agents compute nothing) and the enforcers that change get a new revision."""
    from septum.server.db import Control

    with h.db.read() as s:
        control = s.get(Control, 1)
        assert control is not None
        due = control.next_change_at
    assert due is not None
    assert due > _at(h)
    assert service.replan(h.db, due - timedelta(seconds=1)) is None  # not yet
    out = service.replan(h.db, due)
    assert out is not None
    assert out["version"] == 1
    assert out["updated"] >= 1
    assert service.replan(h.db, due) is None  # done once
    for enforcer in (*out["full"], *out["delta"]):
        headers = h.headers("agent") if enforcer == AGENT_ENFORCER else _agent(h, enforcer)
        msg = _state(h, headers, 0)
        assert msg["revision"] == out["revision"]
        with h.db.read() as s:
            repo = build_repository(service.active_documents(s))
        reference = build_host_ruleset(resolve_policy(repo, due), enforcer)
        assert _same(decode_ruleset(msg["ruleset"]), reference)
    last = h.ok("auditor", "GET", "/api/v1/audit")
    entries = last["entries"] if isinstance(last, dict) else last
    assert any(e["action"] == "state.replan" for e in entries)


def test_the_server_replans_when_its_clock_passes_a_boundary(tmp_path: Path) -> None:
    """The same, driven by the server's own poll loop as the clock passes the instant."""
    from fastapi.testclient import TestClient

    from septum.server.app import AppContext, create_app
    from septum.server.db import Control, Database
    from septum.server.settings import ServerSettings
    from tests.conftest import EXAMPLES_AT
    from tests.server.harness import examples_entries

    now = [EXAMPLES_AT]
    settings = ServerSettings(data_dir=tmp_path, poll_interval=0.1)
    db = Database(settings.url)
    db.migrate()
    admin = service.bootstrap_admin(db, "root", EXAMPLES_AT)
    assert admin is not None
    root = service.principal_of_name(db, "root")
    service.replace_draft(db, root, examples_entries(), EXAMPLES_AT)
    service.provision(db, root, "v1", EXAMPLES_AT, service.ReplaySource(None))
    with db.read() as s:
        control = s.get(Control, 1)
        assert control is not None
        due = control.next_change_at
        revision = control.revision
    assert due is not None
    service.create_user(db, root, "a", "agent", EXAMPLES_AT, enforcer=AGENT_ENFORCER)
    token = service.create_token(db, root, "a", EXAMPLES_AT)["token"]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(create_app(AppContext(settings, db, clock=lambda: now[0]))) as client:
            first = client.get("/agent/v1/state", params={"wait": 0}, headers=headers).json()
            now[0] = due  # the clock reaches the boundary
            with db.read() as s:
                replanned = False
                for _ in range(100):
                    time.sleep(0.1)
                    s.expire_all()
                    control = s.get(Control, 1)
                    assert control is not None
                    if control.revision > revision:
                        replanned = True
                        break
            assert replanned, "the poll loop did not plan again"
            assert first["revision"] <= revision
    finally:
        db.dispose()
