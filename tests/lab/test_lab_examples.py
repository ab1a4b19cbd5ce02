"""Acceptance: the examples' estate in the lab, real traffic against ``explain``.

One lab (26 namespaces, 20 agents) is built from a copy of ``examples/``; then, live:
a long-lived TCP connection is revoked by a policy change and must be cut within 2 s; every
(source, destination, service) is probed again; an address moves (element deltas in the
agents, the address moved in its namespace) and everything is probed once more. Zero
disagreements each time. The lab is removed in ``finally`` even when the test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from septum.lab.control import lab_down, lab_up
from septum.lab.probe import ProbeReport, probe_lab
from tests.conftest import EXAMPLES, NETNS_PREFIX, require_root_nft

pytestmark = pytest.mark.root

WEB, API = "shop-web-prod-1", "shop-api-prod-1"
WEB4, API4 = "198.18.10.11", "198.18.10.21"


def _disagreements(report: ProbeReport) -> list[str]:
    return [
        f"{r.probe.source}->{r.probe.destination} {r.probe.protocol.value}/{r.probe.port} "
        f"predicted={r.predicted} connected={r.connected} ({r.detail}): {r.summary}"
        for r in report.disagreements
    ]


@pytest.fixture
def examples_lab(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    require_root_nft()
    repo = tmp_path / "examples"
    shutil.copytree(EXAMPLES, repo)
    prefix = f"{NETNS_PREFIX}x{uuid.uuid4().hex[:6]}-"
    state = Path(tempfile.mkdtemp(prefix="septum-lab-x", dir="/tmp"))
    try:
        yield repo, state, prefix
    finally:
        lab_down(repo, state_dir=state, prefix=prefix)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert prefix not in leftover.stdout


_CLIENT = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((sys.argv[1], 0))
    s.settimeout(5)
    s.connect((sys.argv[2], int(sys.argv[3])))
    s.settimeout(0.1)
    print("connected", flush=True)
    while True:
        try:
            s.sendall(b"hold ping\\n")
            if s.recv(64):
                print(f"echo {time.monotonic()}", flush=True)
        except socket.timeout:
            pass
        except OSError as e:
            print(f"error {e}", flush=True)
            break
        time.sleep(0.05)
""")


def _namespace(state: Path, workload: str) -> str:
    lab = json.loads((state / "lab.json").read_text())
    for e in lab["plan"]["endpoints"]:
        if e["name"] == workload:
            return str(e["namespace"])
    raise AssertionError(workload)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_examples_in_the_lab_agree_with_explain_before_and_after_live_changes(
    examples_lab: tuple[Path, Path, str],
) -> None:
    repo, state, prefix = examples_lab
    up = lab_up(repo, state_dir=state, prefix=prefix, agents=True, timeout=240)
    assert len(up.agents) == 20
    assert all(a.applied and a.error is None for a in up.agents)

    first = probe_lab(repo, state_dir=state)
    assert first.ok, _disagreements(first)
    assert len(first.results) > 5000
    assert sum(r.connected for r in first.results) > 100
    assert any(r.probe.destination_address.version == 6 and r.connected for r in first.results)
    containers = {"shop-web-dev-1", "shop-api-dev-1", "shop-db-dev-1"}
    assert any(
        r.probe.source in containers and r.probe.destination in containers and r.connected
        for r in first.results
    )  # across the host's forward path
    assert any(
        r.probe.source in containers and r.probe.destination in containers and not r.connected
        for r in first.results
    )

    # A long-lived connection web -> api (tcp/8080), echoing through the api's node.
    client = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            _namespace(state, WEB),
            sys.executable,
            "-c",
            _CLIENT,
            WEB4,
            API4,
            "8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        assert client.stdout.readline().startswith("echo")
        # Revoke it: the api now only accepts the load generator, not web.
        changed_at = time.monotonic()
        _edit(
            repo / "policies" / "apps" / "shop.yaml",
            """  ingress:
    - action: allow
      from: ['app == "shop" && role == "web"']
      services: [shop-api]""",
            """  ingress:
    - action: allow
      from: ['app == "shop" && role == "loadgen"']
      services: [shop-api]""",
        )
        time.sleep(4.0)
    finally:
        client.kill()
        out, _ = client.communicate(timeout=10)
    echoes = [float(line.split()[1]) for line in out.splitlines() if line.startswith("echo")]
    last = max(echoes, default=changed_at)
    cut_after = last - changed_at
    print(
        f"revoked connection cut {cut_after:.2f} s after the change; "
        f"{len(echoes)} echoes, {sum(e < changed_at for e in echoes)} before it"
    )
    assert echoes, out  # the connection was alive after the change, until the agent cut it
    assert cut_after < 2.0, f"connection still echoing {cut_after:.2f} s after the change"

    second = probe_lab(repo, state_dir=state)
    assert second.ok, _disagreements(second)
    before = {
        (r.probe.source, r.probe.destination, r.probe.port) for r in first.results if r.connected
    }
    after = {
        (r.probe.source, r.probe.destination, r.probe.port) for r in second.results if r.connected
    }
    assert (WEB, API, 8080) in before
    assert (WEB, API, 8080) not in after

    # An address change: shop-web-staging-1 moves; the lab moves it in its namespace, the
    # agents apply element deltas (no table reload for a pure address change).
    _edit(repo / "inventory" / "workloads" / "shop.yaml", "198.18.20.11", "198.18.20.13")
    lab_up(repo, state_dir=state, prefix=prefix, agents=True, timeout=240)
    third = probe_lab(repo, state_dir=state)
    assert third.ok, _disagreements(third)
    moved = [r for r in third.results if r.probe.source == "shop-web-staging-1"]
    assert moved
    assert all(str(r.probe.source_address) == "198.18.20.13" for r in moved)
    assert any(r.connected for r in moved)
    logs = "".join(p.read_text() for p in (state / "logs").glob("agent*.log"))
    assert "applied (delta" in logs

    # Flow records: accepted connections with the rules that allowed them, denies with the
    # rule from the kernel's log prefix.
    deadline = time.monotonic() + 15
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        records = [
            json.loads(line)
            for f in (state / "flows").glob("*.jsonl")
            for line in f.read_text().splitlines()
            if line.strip()
        ]
        by_enforcer = {(r["enforcer"], r["verdict"]) for r in records}
        if {
            ("vm-billing-api-staging-1", "would-deny"),  # visibility: by evaluation
            ("host-dev-docker-1", "would-deny"),  # shop-cache-dev-1 in test mode: by nflog
            ("host-dev-docker-1", "denied"),
            ("host-dev-docker-1", "allowed"),
        } <= by_enforcer:
            break
        time.sleep(0.5)
    by_enforcer = {(r["enforcer"], r["verdict"]) for r in records}
    assert ("vm-billing-api-staging-1", "would-deny") in by_enforcer, by_enforcer
    assert ("host-dev-docker-1", "would-deny") in by_enforcer, by_enforcer
    assert ("vm-billing-api-staging-1", "denied") not in by_enforcer  # visibility drops nothing
    assert any(r["verdict"] == "allowed" and r["provenance"] for r in records)
    assert any(r["verdict"] == "denied" and "/" in str(r["provenance"]) for r in records)
