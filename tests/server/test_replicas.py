"""Scale-out: two real server processes (``septum server run``) on one PostgreSQL. A change
provisioned through one reaches an agent long-polling the other, woken by LISTEN/NOTIFY (the
replicas' polling fallback is set to a minute, so a prompt answer can only come from the
notification), and a run of provisions through both replicas reaches the agent with no
revision lost, repeated or out of order."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from septum.cli.server import repository_entries
from septum.render.hostruleset import HostRuleset, apply_delta
from septum.render.wire import decode_deltas, decode_ruleset
from septum.server.db import Database, EnforcerChange, Version
from tests.conftest import EXAMPLES
from tests.server.test_cli_server import _free_port, wait_ready

SEPTUM = [sys.executable, "-m", "septum.cli.main"]
ENFORCER = "host-shop-web-prod-1"
#: Quarantining this workload changes the quarantine sets, which every host's table holds.
WORKLOAD = "billing-db-staging-1"


@contextmanager
def _replica(
    tmp_path: Path, name: str, database_url: str, *, bootstrap: bool = False
) -> Iterator[tuple[str, str | None]]:
    port = _free_port()
    log = (tmp_path / f"{name}.log").open("w")
    args = [
        *SEPTUM, "server", "run", "--data", str(tmp_path / name), "--port", str(port),
        "--database-url", database_url, "--poll-interval", "60",
    ]  # fmt: skip
    if bootstrap:
        args += ["--bootstrap-admin", "root"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        token = None
        if bootstrap:
            assert proc.stdout is not None
            token = json.loads(proc.stdout.readline())["token"]
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


def _state(url: str, token: str, revision: int, wait: float = 0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    params = {"revision": revision, "wait": wait}
    body: dict[str, Any] = _ok(
        httpx.get(f"{url}/agent/v1/state", params=params, headers=headers, timeout=wait + 30)
    )
    return body


def _quarantine(url: str, admin: str, on: bool, note: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {admin}"}
    patch = {"set": {"quarantine": "yes"}} if on else {"remove": ["quarantine"]}
    _ok(httpx.patch(f"{url}/api/v1/workloads/{WORKLOAD}/labels", json=patch, headers=headers))
    out: dict[str, Any] = _ok(
        httpx.post(f"{url}/api/v1/provision", json={"note": note}, headers=headers, timeout=60)
    )
    return out


def _apply(held: HostRuleset | None, msg: dict[str, Any]) -> HostRuleset:
    if msg["kind"] == "full":
        return decode_ruleset(msg["ruleset"])
    assert held is not None
    assert msg["kind"] == "delta"
    return apply_delta(held, decode_deltas(msg["deltas"]))


def _same(a: HostRuleset, b: HostRuleset) -> bool:
    """Equal but for the compile time (deltas do not carry one)."""
    return replace(a, at=b.at) == b


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    with (
        _replica(tmp_path, "a", postgres_url, bootstrap=True) as (a, admin),
        _replica(tmp_path, "b", postgres_url) as (b, _),
    ):
        assert admin is not None
        headers = {"Authorization": f"Bearer {admin}"}
        _ok(
            httpx.put(
                f"{a}/api/v1/draft",
                json={"documents": repository_entries(EXAMPLES)},
                headers=headers,
                timeout=60,
            )
        )
        _ok(
            httpx.post(
                f"{a}/api/v1/provision", json={"note": "initial"}, headers=headers, timeout=60
            )
        )
        _ok(
            httpx.post(
                f"{a}/api/v1/access/users",
                json={"name": "agent-1", "role": "agent", "enforcer": ENFORCER},
                headers=headers,
            )
        )
        agent = _ok(
            httpx.post(f"{a}/api/v1/access/users/agent-1/tokens", json={}, headers=headers)
        )["token"]
        yield a, b, admin, agent


def test_a_change_through_one_replica_wakes_an_agent_watching_the_other(
    replicas: tuple[str, str, str, str],
) -> None:
    a, b, admin, agent = replicas
    first = _state(b, agent, 0)
    held = _apply(None, first)
    result: dict[str, Any] = {}

    def watch() -> None:
        began = time.monotonic()
        result["msg"] = _state(b, agent, first["revision"], wait=50)
        result["seconds"] = time.monotonic() - began

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(1.0)  # the long-poll is waiting on replica b
    out = _quarantine(a, admin, True, "CHG-1 through replica a")
    watcher.join(70)
    msg = result["msg"]
    assert msg["kind"] == "delta"
    assert msg["revision"] == out["enforcers"]["revision"]
    # Woken by the notification: far sooner than the 50 s wait and b's 60 s polling.
    assert result["seconds"] < 30
    # What the agent holds after the delta is what replica a serves as a whole.
    assert _same(_apply(held, msg), decode_ruleset(_state(a, agent, 0)["ruleset"]))


def test_provisions_through_both_replicas_reach_the_agent_in_order(
    replicas: tuple[str, str, str, str], postgres_url: str
) -> None:
    a, b, admin, agent = replicas
    first = _state(b, agent, 0)
    held, revision = _apply(None, first), first["revision"]
    seen = [revision]
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        nonlocal held, revision
        try:
            while not stop.is_set():
                msg = _state(b, agent, revision, wait=2)
                if msg["kind"] == "unchanged":
                    continue
                assert msg["kind"] == "full" or msg["from"] == revision
                held, revision = _apply(held, msg), msg["revision"]
                seen.append(revision)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    last: dict[str, Any] = {}
    try:
        for i in range(6):
            via = a if i % 2 == 0 else b
            last = _quarantine(via, admin, i % 2 == 0, f"CHG-{i} through {'ab'[i % 2]}")
        final = last["enforcers"]["revision"]
        deadline = time.monotonic() + 60
        while revision != final and time.monotonic() < deadline and not errors:
            time.sleep(0.1)
    finally:
        stop.set()
        follower.join(30)
    assert not errors, errors
    assert revision == final
    assert seen == sorted(set(seen)), "revisions arrive increasing, none twice"
    assert _same(held, decode_ruleset(_state(a, agent, 0)["ruleset"]))
    # In the database: versions 1..7 without a gap, and the enforcer's changes chained (each
    # one's previous revision is the one before it: nothing lost, nothing duplicated).
    db = Database(postgres_url)
    try:
        with db.read() as s:
            numbers = list(s.execute(select(Version.number).order_by(Version.number)).scalars())
            chain = list(
                s.execute(
                    select(EnforcerChange.previous, EnforcerChange.revision)
                    .where(EnforcerChange.enforcer == ENFORCER)
                    .order_by(EnforcerChange.revision)
                )
            )
    finally:
        db.dispose()
    assert numbers == list(range(1, 8))
    assert [r for _, r in chain] == sorted({r for _, r in chain})
    assert all(prev == before for (prev, _), (_, before) in zip(chain[1:], chain, strict=False))


def test_a_revocation_through_one_replica_is_refused_at_once_by_the_other(
    replicas: tuple[str, str, str, str],
) -> None:
    """Replicas reuse a verified agent identity for up to a minute; a revocation through
    another replica reaches them by notification, so the very next request is refused."""
    a, b, admin, agent = replicas
    _state(b, agent, 0)  # b has verified the agent (and remembers it)
    token_id = agent.split("_")[1]
    headers = {"Authorization": f"Bearer {admin}"}
    _ok(httpx.delete(f"{a}/api/v1/access/tokens/{token_id}", headers=headers))
    deadline = time.monotonic() + 20  # the notification is asynchronous, not a minute
    while True:
        r = httpx.get(
            f"{b}/agent/v1/state",
            params={"wait": 0},
            headers={"Authorization": f"Bearer {agent}"},
        )
        if r.status_code == 401:
            break
        assert r.status_code == 200, r.text
        assert time.monotonic() < deadline, "replica b still accepts the revoked token"
        time.sleep(0.1)
