"""Acceptance: the lab's hosts enforced by agents that follow the control plane (root).

::

    <prefix>br   br0 + 198.18.0.10/15 ◄── the server (real app, uvicorn, mutual TLS) :8443
      │ (lab bridge)
      ├── <prefix>h0  api  198.18.41.2   node + `septum agent run --server` (host-api)
      ├── <prefix>h1  db   198.18.41.3   node + agent (host-db)
      └── <prefix>h2  web  198.18.41.1   node + agent (host-web)

The lab is built with its own (repository-following) agents switched off; each host instead
enrols with the server through a join token and runs ``septum agent run --server`` in its
namespace, so the agents reach the server only through the lab's network and, once a table is
in, only through the repository's failsafe (egress tcp/8443 to 198.18.0.10).

Every change goes through the HTTPS API (draft, label patch, provision, revoke) and is
mirrored into the lab's repository directory, which is what ``probe_lab`` predicts from: so
each probe round compares real packets with ``explain`` of the state the server should hold,
and asserts the exact set of connections that got through.

1. push + provision; every host enrols (join token, CA pinned by fingerprint) and follows:
   every agent in sync; web→api tcp/8080 connects, nothing else does (not api→web, nor
   anyone→db, nor host→host on the failsafe port).
2. db labelled ``role: web`` via the API: api and db take it; db→api connects too.
3. the server stops: every agent says it keeps its table, and probes during the outage still
   see step 2; it restarts on the same address and port, db is relabelled ``role: api``, a
   change every host's table must follow: each agent reconnects and is in sync at a newer
   revision; web→api and web→db connect, db→api no longer does.
4. api's certificate is revoked: its agent logs the 403 and keeps running on its last state;
   db is made ``role: web`` again: web and db follow, api does not (the enforcer list shows
   it out of sync, without a valid certificate), so the one disagreement with the new
   desired state is db→api tcp/8080, which api still drops.
5. agents (which must exit 0 on SIGTERM), server and namespaces are removed in ``finally``,
   even when a step fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from septum.cli.server import repository_entries
from septum.lab.control import lab_down, lab_up
from septum.lab.probe import ProbeReport, probe_lab
from tests.agent.test_remote import ControlPlaneServer, Served, control_plane
from tests.conftest import NETNS_PREFIX, ROOT, require_root_nft

pytestmark = pytest.mark.root

#: The control plane's address on the lab bridge and its port: what the failsafe lets out.
CP_ADDRESS, CP_PORT = "198.18.0.10", 8443
FAILSAFE = f"egress:tcp/{CP_PORT}:{CP_ADDRESS}/32"
#: workload → (address, enforcer); every one a host with its own namespace and agent.
HOSTS = {
    "web": ("198.18.41.1", "host-web"),
    "api": ("198.18.41.2", "host-api"),
    "db": ("198.18.41.3", "host-db"),
}
ENFORCERS = tuple(enforcer for _, enforcer in HOSTS.values())
#: How long one agent's long-poll lasts: short, so that a refusal shows up soon.
AGENT_WAIT = "3"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: Callable[[], str], timeout: float = 25) -> T:
    """``probe()`` once it is truthy; else fail with ``what()`` as it is at the deadline (the
    agents' logs then, not when the wait began)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what()}")
        time.sleep(0.1)


def repository(roles: Mapping[str, str]) -> str:
    """The lab's repository with each workload's ``role`` label as given: api accepts
    tcp/8080 from ``role == "web"`` and web-labelled hosts may send it; all else is denied,
    except that every host may reach the control plane."""
    documents = [
        f"""\
        apiVersion: septum/v1
        kind: Settings
        metadata: {{name: settings}}
        spec:
          defaultAction: deny
          failsafe:
            - direction: egress
              ports: [tcp/{CP_PORT}]
              cidrs: [{CP_ADDRESS}/32]
        """,
        """\
        apiVersion: septum/v1
        kind: Tier
        metadata: {name: app}
        spec: {order: 10}
        """,
        """\
        apiVersion: septum/v1
        kind: Policy
        metadata: {name: api-in}
        spec:
          tier: app
          appliesTo: role == "api"
          ingress:
            - action: allow
              from: ['role == "web"']
              ports: [tcp/8080]
        """,
        """\
        apiVersion: septum/v1
        kind: Policy
        metadata: {name: web-out}
        spec:
          tier: app
          appliesTo: role == "web"
          egress:
            - action: allow
              to: ['role == "api"']
              ports: [tcp/8080]
        """,
    ]
    for name, (address, enforcer) in HOSTS.items():
        documents.append(f"""\
            apiVersion: septum/v1
            kind: Workload
            metadata: {{name: {name}, labels: {{role: {roles[name]}}}}}
            spec: {{kind: host, addresses: [{address}], enforcer: {enforcer}}}
            """)
    return "---\n".join(textwrap.dedent(d) for d in documents)


# ---------------------------------------------------------------------------- the API


def api(cp: ControlPlaneServer, role: str, method: str, path: str, body: Any = None) -> Any:
    """One HTTPS request to the served app. The connection is opened in the bridge namespace
    (where the server's address lives); a fresh client each time, because a pooled
    connection opened there would not be reusable from elsewhere."""
    with cp.in_namespace(), cp.people() as people:
        response = people.request(
            method, f"{cp.url}{path}", headers=cp.harness.headers(role), json=body
        )
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json() if response.content else None


def enforcer_rows(cp: ControlPlaneServer) -> dict[str, dict[str, Any]]:
    rows = api(cp, "admin", "GET", "/api/v1/enforcers")
    return {r["enforcer"]: r for r in rows if r["enforcer"] in ENFORCERS}


def wait_in_sync(
    cp: ControlPlaneServer, enforcers: tuple[str, ...], logs: Callable[[], str]
) -> dict[str, dict[str, Any]]:
    """Until each of ``enforcers`` reports the revision the server wants it to hold."""

    def rows_in_sync() -> dict[str, dict[str, Any]] | None:
        rows = enforcer_rows(cp)
        return rows if all(rows[e]["in_sync"] for e in enforcers) else None

    return eventually(
        rows_in_sync,
        lambda: f"{', '.join(enforcers)} in sync: {enforcer_rows(cp)}\n{logs()}",
    )


def relabel(cp: ControlPlaneServer, workload: str, role: str, note: str) -> None:
    api(cp, "security", "PATCH", f"/api/v1/workloads/{workload}/labels", {"set": {"role": role}})
    api(cp, "security", "POST", "/api/v1/provision", {"note": note})


# ---------------------------------------------------------------------------- agents


@dataclass
class RemoteAgent:
    """``septum agent run --server`` for one enforcer, in its host's namespace."""

    enforcer: str
    namespace: str
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def septum(self, *args: str) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-m",
            "septum.cli.main",
            *args,
        ]

    def enrol(self, cp: ControlPlaneServer) -> subprocess.Popen[str]:
        join = api(cp, "admin", "POST", f"/api/v1/enforcers/{self.enforcer}/join-tokens", {})
        return subprocess.Popen(
            self.septum(
                *("agent", "enrol", "--server", cp.url, "--enforcer", self.enforcer),
                *("--ca-fingerprint", join["ca_fingerprint"], "--state-dir", str(self.state)),
            ),
            # The token through the environment, as an operator would: not in the process list.
            env={**os.environ, "SEPTUM_JOIN_TOKEN": join["token"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )

    def start(self, url: str) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.septum(
                    *("agent", "run", "--server", url, "--enforcer", self.enforcer),
                    *("--state-dir", str(self.state), "--wait", AGENT_WAIT),
                    # Before the first state arrives the agent installs its fail-closed table;
                    # without this entry that table would cut it off from the server.
                    *("--failsafe", FAILSAFE),
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def all_logs(agents: Mapping[str, RemoteAgent]) -> str:
    return "\n".join(f"--- {a.enforcer}\n{a.output()}" for a in agents.values())


# ---------------------------------------------------------------------------- probes


def connected(report: ProbeReport) -> set[tuple[str, str, int]]:
    return {
        (r.probe.source, r.probe.destination, r.probe.port) for r in report.results if r.connected
    }


def disagreements(report: ProbeReport) -> set[tuple[str, str, str, int]]:
    return {
        (r.probe.source, r.probe.destination, r.probe.protocol.value, r.probe.port)
        for r in report.disagreements
    }


def described(report: ProbeReport) -> list[str]:
    return [r.describe() for r in report.disagreements]


# ---------------------------------------------------------------------------- the test


@dataclass
class Lab:
    repo: Path
    state: Path
    prefix: str

    def write(self, roles: Mapping[str, str]) -> None:
        """The state the server is told to hold, for ``probe_lab`` to predict from."""
        (self.repo / "repo.yaml").write_text(repository(roles))

    def probe(self) -> ProbeReport:
        return probe_lab(self.repo, state_dir=self.state)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root_nft()
    prefix = f"{NETNS_PREFIX}p{uuid.uuid4().hex[:6]}-"
    # Unix socket paths must stay under 108 bytes: a short state directory.
    state = Path(tempfile.mkdtemp(prefix="septum-lab-p", dir="/tmp"))
    repo = tmp_path / "repo"
    repo.mkdir()
    try:
        yield Lab(repo, state, prefix)
    finally:
        lab_down(repo, state_dir=state, prefix=prefix)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert prefix not in left.stdout
        assert not state.exists()


def test_agents_follow_the_control_plane_over_mutual_tls_in_the_lab(
    lab: Lab, tmp_path: Path
) -> None:
    roles = {"web": "web", "api": "api", "db": "db"}
    lab.write(roles)
    up = lab_up(lab.repo, state_dir=lab.state, prefix=lab.prefix, agents=False, timeout=30)
    bridge = up.plan.bridge_namespace
    # The control plane is an address on the lab bridge itself: every host reaches it on-link
    # through its eth0, and nothing outside the lab's namespaces is touched.
    subprocess.run(
        ["ip", "-n", bridge, "addr", "add", f"{CP_ADDRESS}/15", "dev", "br0"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "server").mkdir()
    agents = {
        enforcer: RemoteAgent(
            enforcer,
            up.plan.endpoint(name).namespace,
            tmp_path / "agents" / enforcer,
            tmp_path / f"{enforcer}.log",
        )
        for name, (_, enforcer) in HOSTS.items()
    }
    with ExitStack() as stack:
        cp, served = stack.enter_context(
            control_plane(tmp_path / "server", namespace=bridge, host=CP_ADDRESS, port=CP_PORT)
        )
        # Registered after the server: the agents stop first (cleanly, exit status 0).
        exits: dict[str, int | None] = {}
        stack.callback(lambda: exits.update({e: a.stop() for e, a in agents.items()}))
        _run(lab, cp, served, agents, roles)
    assert exits == dict.fromkeys(ENFORCERS, 0), all_logs(agents)


def _run(
    lab: Lab,
    cp: ControlPlaneServer,
    served: Served,
    agents: Mapping[str, RemoteAgent],
    roles: dict[str, str],
) -> None:
    # 1. The repository as the server's draft, provisioned; every host enrols and follows.
    api(cp, "security", "PUT", "/api/v1/draft", {"documents": repository_entries(lab.repo)})
    api(cp, "security", "POST", "/api/v1/provision", {"note": "lab estate (T-1)"})
    enrolments = {e: a.enrol(cp) for e, a in agents.items()}
    for enforcer, process in enrolments.items():
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
        assert f"enrolled as enforcer {enforcer}" in out
    for agent in agents.values():
        agent.start(cp.url)
    first = wait_in_sync(cp, ENFORCERS, lambda: all_logs(agents))
    assert all(first[e]["certificates"] == 1 for e in ENFORCERS)
    report = lab.probe()
    assert report.ok, described(report)
    assert connected(report) == {("web", "api", 8080)}  # and not api→web, nor anyone→db

    # 2. A label change through the API: db becomes a web host. api (ingress) and db (egress)
    # change; db→api is now allowed.
    roles["db"] = "web"
    relabel(cp, "db", "web", "db serves the web tier (T-2)")
    lab.write(roles)
    second = wait_in_sync(cp, ENFORCERS, lambda: all_logs(agents))
    for changed in ("host-api", "host-db"):
        assert second[changed]["applied_revision"] > first[changed]["applied_revision"]
    report = lab.probe()
    assert report.ok, described(report)
    assert connected(report) == {("web", "api", 8080), ("db", "api", 8080)}

    # 3. The server goes away: every agent notices, and the hosts keep enforcing step 2.
    served.stop()
    down_at = time.monotonic()
    eventually(
        lambda: all("keeping the table in force" in a.output() for a in agents.values()),
        lambda: f"every agent to notice the outage\n{all_logs(agents)}",
    )
    report = lab.probe()
    assert report.ok, described(report)
    assert connected(report) == {("web", "api", 8080), ("db", "api", 8080)}
    time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # down for a few seconds
    # Back on the same address and port, over the same database; then a change that every
    # host's table must follow, so that each agent proves it reconnected: db becomes an api
    # host (db takes ingress rules, web's egress set gains db, api's ingress set loses db).
    assert served.start() == cp.url
    roles["db"] = "api"
    relabel(cp, "db", "api", "db serves the api tier (T-3)")
    lab.write(roles)
    third = wait_in_sync(cp, ENFORCERS, lambda: all_logs(agents))
    for enforcer in ENFORCERS:
        assert third[enforcer]["applied_revision"] > second[enforcer]["applied_revision"]
    assert all("control plane reachable again" in a.output() for a in agents.values())
    report = lab.probe()
    assert report.ok, described(report)
    assert connected(report) == {("web", "api", 8080), ("web", "db", 8080)}

    # 4. api's certificate is revoked: its agent is refused and keeps what it holds.
    [certificate] = [
        c
        for c in api(cp, "admin", "GET", "/api/v1/agent-certificates")
        if c["enforcer"] == "host-api" and c["revoked_at"] is None
    ]
    api(cp, "admin", "POST", f"/api/v1/agent-certificates/{certificate['serial']}/revoke")
    revoked = agents["host-api"]
    # Wait for the refusal before changing anything: a long-poll that began before the
    # revocation may still be answered, and the change must not ride on it.
    eventually(
        lambda: "refused the request (403)" in revoked.output(),
        lambda: f"the refusal\n{revoked.output()}",
    )
    assert "revoked" in revoked.output()
    # db back in the web tier: db (egress to api) and web (egress set loses db) follow; api
    # should let db in, but cannot learn of it.
    roles["db"] = "web"
    relabel(cp, "db", "web", "db back in the web tier (T-4)")
    lab.write(roles)
    fourth = wait_in_sync(cp, ("host-web", "host-db"), lambda: all_logs(agents))
    for enforcer in ("host-web", "host-db"):
        assert fourth[enforcer]["applied_revision"] > third[enforcer]["applied_revision"]
    held = third["host-api"]["applied_revision"]
    assert fourth["host-api"]["certificates"] == 0
    assert fourth["host-api"]["revision"] > held  # wanted by the server, not held by api
    assert fourth["host-api"]["applied_revision"] == held
    assert not fourth["host-api"]["in_sync"]
    assert revoked.process is not None
    assert revoked.process.poll() is None  # still running, refused, enforcing
    report = lab.probe()
    # The one flow where the desired state and the kernel part: db may now send to api (db's
    # table says so) but api still drops it (step 3's table). web→api is still allowed on both
    # ends, web→db denied at db.
    assert disagreements(report) == {("db", "api", "tcp", 8080)}, described(report)
    assert connected(report) == {("web", "api", 8080)}
    assert enforcer_rows(cp)["host-api"]["applied_revision"] == held
