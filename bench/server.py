"""Benchmark of the control plane: provisioning a large estate, and a label change reaching
a thousand watching agents.

    python bench/server.py [--seed N] [--workloads 10000 --enforcers 1000 --policies 1000]
                           [--changes 20] [--database-url URL] [--json]

A real server process (``septum server run``, one uvicorn worker, plain HTTP on 127.0.0.1;
SQLite in a temporary data directory unless ``--database-url``) and, in this process, one
simulated agent per enforcer: an asyncio task that long-polls ``/agent/v1/state`` with the
revision it holds, as ``septum agent run --server`` does (over its own keep-alive
connection, with a minimal hand-written HTTP/1.1 client so that the load generator costs
little next to the server), parses each answer and records when it arrived. Simulated
agents apply nothing to a kernel (``bench/agent.py`` measures that); "holding its delta"
means the answer is received and parsed.

The estate: ``generate_estate(seed, workloads, policies, enforcers // 4)`` with each
generated host's workloads spread over four enforcers (the address plan has room for 320
/24 blocks, one per generated host; four enforcers share one), so 10,000 workloads sit on
1,000 enforcers, ten each.

Figures:

1. Setup: users and tokens for the agents (in the database directly), draft upload through
   the API (``PUT /api/v1/draft``).
2. Provision of the whole estate through the API (the first version: every enforcer's
   ruleset built and stored). Target: <= 5 s.
3. Initial sync: from the agents' first request to all of them holding their full table.
4. ``--changes`` label changes (``testing.estate.label_changes``: role, env, app, location,
   quarantine, PCI), one after the other, each ``PATCH …/labels`` + ``POST /api/v1/provision``
   through the API. For every (change, affected agent): the time from the change's request
   to the agent holding the new revision (end to end, the provision included) and from the
   provision's response to the agent holding it (propagation). p50 / p99 / max over all
   pairs, and the provision time per change. Target: p99 <= 1 s (end to end).

No peer runs in the same process: there is no open-source control plane for nftables agents
to compare with on this machine, so no ratio is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from septum.model.dump import repository_documents
from septum.model.resources import Repository
from septum.render.wire import decode_deltas
from septum.server import service
from septum.server.db import Database
from septum.server.settings import ServerSettings
from septum.testing.estate import generate_estate, label_changes

TARGET_PROVISION_S = 5.0
TARGET_P99_S = 1.0
AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SEPTUM = [sys.executable, "-m", "septum.cli.main"]


def _estate(seed: int, workloads: int, policies: int, enforcers: int) -> Repository:
    hosts = max(1, enforcers // 4)
    repo = generate_estate(seed, workloads, policies, hosts)
    by_host: dict[str, int] = {}
    moved = []
    for w in repo.workloads:
        i = by_host.get(w.enforcer or "", 0)
        by_host[w.enforcer or ""] = i + 1
        moved.append(replace(w, enforcer=f"{w.enforcer}-{i % 4}"))
    return replace(repo, workloads=tuple(moved))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class SimulatedAgent:
    enforcer: str
    token: str
    revision: int = 0
    arrivals: dict[int, float] = field(default_factory=dict)  # revision -> perf_counter
    answers: int = 0
    fulls: int = 0
    bytes: int = 0


async def _follow(agent: SimulatedAgent, host: str, port: int, stop: asyncio.Event) -> None:
    """One agent's long-poll loop over one keep-alive HTTP/1.1 connection, written out by
    hand: the load generator must cost far less per answer than the server does, or the
    bench measures itself. (httpx takes about a millisecond per response; a change that
    wakes 1,000 agents at once would queue a second of that here, on the cores the server
    uses, where real agents each answer on their own host.)"""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            while not stop.is_set():
                writer.write(
                    f"GET /agent/v1/state?revision={agent.revision}&wait=25 HTTP/1.1\r\n"
                    f"Host: {host}\r\nAuthorization: Bearer {agent.token}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in lines[1:]
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                if status != 200:
                    raise RuntimeError(f"{agent.enforcer}: {status} {body[:200]!r}")
                msg = json.loads(body)
                if msg["kind"] == "unchanged":
                    continue
                if msg["kind"] == "delta":
                    decode_deltas(msg["deltas"])  # what a real agent would apply
                else:
                    agent.fulls += 1
                agent.answers += 1
                agent.bytes += len(body)
                agent.revision = msg["revision"]
                agent.arrivals[agent.revision] = time.perf_counter()
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.5)
        finally:
            writer.close()


async def _until(agents: list[SimulatedAgent], done: Any, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(done(a) for a in agents):
            return True
        await asyncio.sleep(0.01)
    return False


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"workloads": args.workloads, "enforcers": args.enforcers}
    t = time.perf_counter()
    repo = _estate(args.seed, args.workloads, args.policies, args.enforcers)
    enforcers = sorted(repo.enforcers())
    out["estate_s"] = time.perf_counter() - t
    out["enforcers"] = len(enforcers)
    changes = label_changes(repo, args.seed, args.changes)

    data = Path(tempfile.mkdtemp(prefix="septum-bench-server-"))
    settings = ServerSettings(data_dir=data, database_url=args.database_url)
    db = Database(settings.url)
    db.migrate()
    t = time.perf_counter()
    admin = service.bootstrap_admin(db, "root", AT)
    assert admin is not None
    root = service.principal_of_name(db, "root")
    agents: list[SimulatedAgent] = []
    for e in enforcers:
        name = f"agent-{e}"
        service.create_user(db, root, name, "agent", AT, enforcer=e)
        agents.append(SimulatedAgent(e, service.create_token(db, root, name, AT)["token"]))
    out["setup_users_s"] = time.perf_counter() - t
    db.dispose()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data / "server.log").open("w")
    cmd = [*SEPTUM, "server", "run", "--data", str(data), "--port", str(port)]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    server = subprocess.Popen([*cmd, "--log-level", "warning"], stderr=log, env=os.environ.copy())
    admin_headers = {"Authorization": f"Bearer {admin['token']}"}
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for _ in range(600):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            documents = [{"path": "estate.yaml", "body": d} for d in repository_documents(repo)]
            t = time.perf_counter()
            r = await client.put(
                "/api/v1/draft", json={"documents": documents}, headers=admin_headers
            )
            r.raise_for_status()
            out["push_s"] = time.perf_counter() - t
            t = time.perf_counter()
            r = await client.post(
                "/api/v1/provision", json={"note": "bench: initial"}, headers=admin_headers
            )
            r.raise_for_status()
            out["provision_initial_s"] = time.perf_counter() - t

            t = time.perf_counter()
            tasks = [asyncio.create_task(_follow(a, "127.0.0.1", port, stop)) for a in agents]
            if not await _until(agents, lambda a: a.revision > 0, 600):
                raise RuntimeError("the agents did not all get their first state")
            out["initial_sync_s"] = time.perf_counter() - t
            out["initial_sync_mb"] = sum(a.bytes for a in agents) / 1e6
            by_enforcer = {a.enforcer: a for a in agents}

            end_to_end: list[float] = []
            propagation: list[float] = []
            provision_s: list[float] = []
            patch_s: list[float] = []
            affected: list[int] = []
            fulls = 0
            for i, change in enumerate(changes):
                began = time.perf_counter()
                patch: dict[str, Any] = (
                    {"set": {change.key: change.new}}
                    if change.new is not None
                    else {"remove": [change.key]}
                )
                r = await client.patch(
                    f"/api/v1/workloads/{change.workload}/labels", json=patch, headers=admin_headers
                )
                r.raise_for_status()
                p0 = time.perf_counter()
                patch_s.append(p0 - began)
                r = await client.post(
                    "/api/v1/provision", json={"note": f"bench: change {i}"}, headers=admin_headers
                )
                r.raise_for_status()
                committed = time.perf_counter()
                provision_s.append(committed - p0)
                result = r.json()["enforcers"]
                revision = result["revision"]
                touched = [by_enforcer[e] for e in (*result["full"], *result["delta"])]
                fulls += len(result["full"])
                affected.append(len(touched))
                if not await _until(touched, lambda a, rev=revision: a.revision >= rev, 120):
                    raise RuntimeError(
                        f"change {i}: not every affected agent got revision {revision}"
                    )
                for a in touched:
                    arrived = a.arrivals[revision]
                    end_to_end.append(arrived - began)
                    propagation.append(arrived - committed)
            out.update(
                changes=len(changes),
                affected_mean=statistics.fmean(affected) if affected else 0.0,
                affected_max=max(affected, default=0),
                full_updates=fulls,
                provision_change_p50_s=statistics.median(provision_s) if provision_s else 0.0,
                provision_change_max_s=max(provision_s, default=0.0),
                patch_p50_s=statistics.median(patch_s) if patch_s else 0.0,
            )
            for name, values in (("end_to_end", end_to_end), ("propagation", propagation)):
                if values:
                    out[f"{name}_p50_s"] = _quantile(values, 0.5)
                    out[f"{name}_p99_s"] = _quantile(values, 0.99)
                    out[f"{name}_max_s"] = max(values)
            out["pairs"] = len(end_to_end)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.terminate()
        server.wait(timeout=60)
        log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workloads", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--enforcers", type=int, default=1_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return

    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    print(f"estate: {args.workloads} workloads on {out['enforcers']} enforcers (seed {args.seed})")
    print(
        f"setup: {out['setup_users_s']:.1f} s for agent users and tokens; "
        f"draft upload {out['push_s']:.2f} s"
    )
    print(
        f"provision of the whole estate: {out['provision_initial_s']:.2f} s "
        f"(target <= {TARGET_PROVISION_S:.0f} s: "
        f"{ok(out['provision_initial_s'] <= TARGET_PROVISION_S)})"
    )
    print(
        f"initial sync of {out['enforcers']} agents: {out['initial_sync_s']:.2f} s, "
        f"{out['initial_sync_mb']:.0f} MB of full tables"
    )
    print(
        f"{out['changes']} label changes: {out['affected_mean']:.0f} affected agents on average "
        f"(max {out['affected_max']}), {out['full_updates']} whole-table updates; provision p50 "
        f"{out['provision_change_p50_s']:.2f} s (max {out['provision_change_max_s']:.2f} s), "
        f"label PATCH p50 {out['patch_p50_s']:.3f} s"
    )
    if out.get("pairs"):
        p99 = out["end_to_end_p99_s"]
        print(
            f"label change -> affected agent holds its delta ({out['pairs']} pairs): "
            f"p50 {out['end_to_end_p50_s']:.3f} s, p99 {p99:.3f} s, "
            f"max {out['end_to_end_max_s']:.3f} s "
            f"(target p99 <= {TARGET_P99_S:.0f} s: {ok(p99 <= TARGET_P99_S)})"
        )
        print(
            f"  of which after the provision returned: p50 {out['propagation_p50_s']:.3f} s, "
            f"p99 {out['propagation_p99_s']:.3f} s, max {out['propagation_max_s']:.3f} s"
        )


if __name__ == "__main__":
    main()
