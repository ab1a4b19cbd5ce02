"""The lab against the real kernel: namespaces, veths, bridges, nodes, agents and probes.

Every lab here is named ``NETNS_PREFIX + l<hex>-``, uses only 198.18.0.0/15, 2001:db8::/32
and link-local addresses, and is torn down in the fixture's finalizer even when the test
fails; the finalizer then asserts that no namespace or process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from septum.cli.main import app
from septum.lab.control import LabUpReport, lab_down, lab_up
from septum.lab.netns import SubprocessRunner, read_addresses
from septum.lab.plan import LabError
from septum.lab.probe import ProbeReport, probe_lab
from tests.conftest import NETNS_PREFIX, require_root_nft

pytestmark = pytest.mark.root


def workload(name: str, kind: str, addresses: str, enforcer: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: septum/v1
        kind: Workload
        metadata: {{name: {name}, labels: {{app: {name}}}}}
        spec: {{kind: {kind}, addresses: {addresses}, enforcer: {enforcer}}}
        """)


SERVICES = textwrap.dedent("""\
    apiVersion: septum/v1
    kind: Service
    metadata: {name: web}
    spec: {ports: [tcp/80, udp/53, tcp/8000-8010, icmp]}
    """)


def settings(default: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: septum/v1
        kind: Settings
        metadata: {{name: settings}}
        spec: {{defaultAction: {default}}}
        """)


CONTAINER_ESTATE = [
    workload("box", "host", "[198.18.30.10, 2001:db8:30::10]", "host-box"),
    workload("web", "container", "[198.18.30.11, 2001:db8:30::11]", "host-box"),
    workload("db", "container", "[198.18.30.12, 2001:db8:30::12]", "host-box"),
    workload("other", "vm", "[198.18.1.1, 2001:db8:1::1]", "vm-other"),
]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _our_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


@dataclass
class LabRun:
    repo: Path
    state: Path
    prefix: str

    def write(self, *documents: str) -> None:
        (self.repo / "repo.yaml").write_text("---\n".join(documents))

    def up(self, agents: bool = False, **kwargs: Any) -> LabUpReport:
        return lab_up(self.repo, state_dir=self.state, prefix=self.prefix, agents=agents, **kwargs)

    def probe(self, **kwargs: Any) -> ProbeReport:
        return probe_lab(self.repo, state_dir=self.state, **kwargs)

    def namespace(self, report: LabUpReport, workload: str) -> str:
        return report.plan.endpoint(workload).namespace

    def recorded_pids(self) -> list[int]:
        try:
            data = json.loads((self.state / "lab.json").read_text())
        except (OSError, ValueError):
            return []
        return [int(p["pid"]) for p in data.get("processes", {}).values()]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabRun]:
    require_root_nft()
    prefix = f"{NETNS_PREFIX}l{uuid.uuid4().hex[:6]}-"
    # Unix socket paths must stay under 108 bytes: a short state directory.
    state = Path(tempfile.mkdtemp(prefix="septum-lab-t", dir="/tmp"))
    repo = tmp_path / "repo"
    repo.mkdir()
    run = LabRun(repo, state, prefix)
    pids: list[int] = []
    try:
        yield run
    finally:
        pids = run.recorded_pids()
        lab_down(repo, state_dir=state, prefix=prefix)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        assert _our_namespaces(prefix) == []
        assert [p for p in pids if _alive(p)] == []
        assert not state.exists()


def _pairs(report: ProbeReport) -> set[tuple[str, str]]:
    return {(r.probe.source, r.probe.destination) for r in report.disagreements}


# ---------------------------------------------------------------------------- plumbing


def test_every_probe_connects_without_agents_and_matches_allow_all(lab: LabRun) -> None:
    lab.write(
        settings("allow"),
        SERVICES,
        workload("a", "host", "[198.18.1.1, 2001:db8:1::1]", "host-a"),
        workload("b", "vm", "[198.18.1.2, 2001:db8:1::2]", "vm-b"),
        workload("c", "host", "[198.18.2.3]", "host-c"),
    )
    up = lab.up()
    assert up.built
    assert up.agents == ()
    assert sorted(up.started) == ["node:h0", "node:h1", "node:h2"]
    report = lab.probe()
    assert report.ok, [r.describe() for r in report.disagreements]
    assert all(r.connected and r.responder == r.probe.destination for r in report.results)
    # 3 × 2 ordered pairs over IPv4, 2 × 1 over IPv6; tcp/80, udp/53, tcp/8000, tcp/8010
    assert len(report.results) == (6 + 2) * 4
    assert {r.probe.source_address.version for r in report.results} == {4, 6}
    assert report.skipped == {"icmp": 1}
    cells = report.cells()
    assert cells["a", "c"].connected == cells["a", "c"].total == 4


def test_containers_reach_everything_and_cross_their_hosts_forward_path(lab: LabRun) -> None:
    lab.write(settings("allow"), SERVICES, *CONTAINER_ESTATE)
    up = lab.up()
    report = lab.probe()
    assert report.ok, [r.describe() for r in report.disagreements]
    assert {(r.probe.source, r.probe.destination) for r in report.results} == {
        (s, d)
        for s in ("box", "web", "db", "other")
        for d in ("box", "web", "db", "other")
        if s != d
    }
    assert all(r.connected for r in report.results)
    assert {r.probe.source_address.version for r in report.results} == {4, 6}

    # A drop on the host's FORWARD hook cuts container → container and container → outside,
    # and nothing else: so that is the path the host's agent enforces.
    box = lab.namespace(up, "box")
    drop = textwrap.dedent("""\
        table inet labtest {
          chain forward {
            type filter hook forward priority 0;
            ct state new ip saddr 198.18.30.11 ip daddr { 198.18.30.12, 198.18.1.1 } drop
            ct state new ip6 saddr 2001:db8:30::11 ip6 daddr { 2001:db8:30::12, 2001:db8:1::1 } drop
          }
        }
        """)
    subprocess.run(
        ["ip", "netns", "exec", box, "nft", "-f", "-"], input=drop, text=True, check=True
    )
    cut = lab.probe(retry=False)
    assert _pairs(cut) == {("web", "db"), ("web", "other")}
    assert all(not r.connected for r in cut.disagreements)
    assert len(cut.disagreements) == 2 * 2 * 4  # two pairs, both families, every port
    subprocess.run(
        ["ip", "netns", "exec", box, "nft", "delete", "table", "inet", "labtest"], check=True
    )


def test_up_moves_changed_addresses_in_place(lab: LabRun) -> None:
    lab.write(settings("allow"), SERVICES, *CONTAINER_ESTATE)
    first = lab.up()
    changed = [
        CONTAINER_ESTATE[0],
        workload("web", "container", "[198.18.30.21, 2001:db8:30::21]", "host-box"),
        CONTAINER_ESTATE[2],
        workload("other", "vm", "[198.18.1.1, 2001:db8:1::1, 2001:db8:1::5]", "vm-other"),
    ]
    lab.write(settings("allow"), SERVICES, *changed)
    with pytest.raises(LabError, match="web changed"):
        lab.probe()
    web_node = f"node:{first.plan.endpoint('web').short}"
    os.kill(
        json.loads((lab.state / "lab.json").read_text())["processes"][web_node]["pid"],
        signal.SIGKILL,
    )
    second = lab.up()
    assert not second.built
    assert second.started == (web_node,)  # a missing process is restarted
    assert dict(second.address_changes) == {
        "web": (
            (ip_address("198.18.30.21"), ip_address("2001:db8:30::21")),
            (ip_address("198.18.30.11"), ip_address("2001:db8:30::11")),
        ),
        "other": ((ip_address("2001:db8:1::5"),), ()),
    }
    web = lab.namespace(first, "web")
    assert read_addresses(SubprocessRunner(), web) == {
        ip_address("198.18.30.21"),
        ip_address("2001:db8:30::21"),
    }
    report = lab.probe()
    assert report.ok, [r.describe() for r in report.disagreements]
    assert any(str(r.probe.destination_address) == "198.18.30.21" for r in report.results)


class _FailingRunner(SubprocessRunner):
    """Fails the first command that gives a container its addresses (mid-build)."""

    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
        if stdin is not None and "via fe80::1" in stdin:
            raise LabError("injected failure")
        return super().run(argv, stdin=stdin, check=check)


def test_down_removes_everything_after_failures(lab: LabRun) -> None:
    lab.write(settings("allow"), SERVICES, *CONTAINER_ESTATE)
    with pytest.raises(LabError, match="injected"):
        lab.up(runner=_FailingRunner())
    assert len(_our_namespaces(lab.prefix)) == 5  # created, half configured

    up = lab.up()  # a partial lab is rebuilt from nothing
    assert up.built
    assert lab.probe().ok

    # A namespace vanished: the next `up` rebuilds.
    subprocess.run(["ip", "netns", "delete", lab.namespace(up, "db")], check=True)
    assert lab.up().built

    # A node killed, a namespace deleted under a running node, the state file lost: `down`
    # still finds every namespace (by prefix) and every process (inside them, or by its
    # arguments naming the state directory).
    pids = lab.recorded_pids()
    os.kill(pids[0], signal.SIGKILL)
    up = lab.up()
    subprocess.run(["ip", "netns", "delete", lab.namespace(up, "web")], check=True)
    pids = lab.recorded_pids()
    (lab.state / "lab.json").write_text("garbage")
    down = lab_down(lab.repo, state_dir=lab.state, prefix=lab.prefix)
    assert len(down.namespaces) == 4
    assert _our_namespaces(lab.prefix) == []
    time.sleep(0.2)
    assert [p for p in pids if _alive(p)] == []
    again = lab_down(lab.repo, state_dir=lab.state, prefix=lab.prefix)  # idempotent
    assert again.namespaces == ()


def test_down_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    require_root_nft()
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "lab.json").write_text("{}")
    (state / "notes.txt").write_text("mine")
    down = lab_down(tmp_path, state_dir=state, prefix=f"{NETNS_PREFIX}none-")
    assert down.namespaces == ()
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt"]


def test_cli_up_probe_down(lab: LabRun) -> None:
    lab.write(
        settings("deny"),
        SERVICES,
        workload("a", "host", "[198.18.1.1]", "host-a"),
        workload("b", "host", "[198.18.1.2]", "host-b"),
    )
    common = [str(lab.repo), "--state", str(lab.state)]
    runner = CliRunner()
    result = runner.invoke(
        app, ["lab", "up", *common, "--prefix", lab.prefix, "--no-agents", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["built"] is True
    # No agents enforce the default deny: every probe connects, every prediction is deny.
    result = runner.invoke(app, ["lab", "probe", *common])
    assert result.exit_code == 1, result.output
    assert "disagreement a (198.18.1.1) -> b (198.18.1.2) tcp/80: predicted deny" in result.output
    result = runner.invoke(app, ["lab", "probe", *common, "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 1
    assert data["ok"] is False
    assert len(data["disagreements"]) == data["probes"] == 8
    result = runner.invoke(app, ["lab", "down", *common, "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["namespaces"]) == 3
    result = runner.invoke(app, ["lab", "probe", *common])
    assert result.exit_code == 2
    assert "no lab at" in result.output


def test_cli_refuses_addresses_outside_the_lab_ranges(lab: LabRun) -> None:
    lab.write(settings("allow"), workload("x", "host", "[192.0.2.1]", "host-x"))
    result = CliRunner().invoke(
        app, ["lab", "up", str(lab.repo), "--state", str(lab.state), "--prefix", lab.prefix]
    )
    assert result.exit_code == 2
    assert "192.0.2.1" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- agents


def _policy(name: str, applies: str, direction: str, peer: str, port: str) -> str:
    key = "from" if direction == "ingress" else "to"
    return textwrap.dedent(f"""\
        apiVersion: septum/v1
        kind: Policy
        metadata: {{name: {name}}}
        spec:
          tier: app
          appliesTo: app == "{applies}"
          {direction}:
            - action: allow
              {key}: ['app == "{peer}"']
              ports: [{port}]
        """)


TIER = textwrap.dedent("""\
    apiVersion: septum/v1
    kind: Tier
    metadata: {name: app}
    spec: {order: 10}
    """)


def test_agents_enforce_what_explain_predicts_and_follow_changes(lab: LabRun) -> None:
    base = [
        settings("deny"),
        SERVICES,
        TIER,
        workload("client", "host", "[198.18.1.1]", "host-client"),
        workload("server", "vm", "[198.18.1.2]", "vm-server"),
        workload("box", "host", "[198.18.30.10]", "host-box"),
        workload("web", "container", "[198.18.30.11]", "host-box"),
        workload("db", "container", "[198.18.30.12]", "host-box"),
        _policy("client-out", "client", "egress", "server", "tcp/80"),
        _policy("server-in", "server", "ingress", "client", "tcp/80"),
    ]
    web_db = [
        _policy("web-out", "web", "egress", "db", "tcp/8000"),
        _policy("db-in", "db", "ingress", "web", "tcp/8000"),
    ]
    lab.write(*base, *web_db)
    up = lab.up(agents=True, timeout=120)
    assert {a.enforcer for a in up.agents} == {"host-client", "vm-server", "host-box"}
    assert all(a.applied and a.error is None for a in up.agents)
    report = lab.probe()
    assert report.ok, [r.describe() for r in report.disagreements]
    connected = {
        (r.probe.source, r.probe.destination, r.probe.port) for r in report.results if r.connected
    }
    assert connected == {("client", "server", 80), ("web", "db", 8000)}

    lab.write(*base)  # the agents pick the change up; probe waits for them
    changed = lab.probe()
    assert changed.ok, [r.describe() for r in changed.disagreements]
    assert {(r.probe.source, r.probe.destination) for r in changed.results if r.connected} == {
        ("client", "server")
    }


def test_agents_enforce_ipv6(lab: LabRun) -> None:
    lab.write(
        settings("deny"),
        SERVICES,
        TIER,
        workload("client", "host", "[198.18.1.1, 2001:db8:1::1]", "host-client"),
        workload("server", "vm", "[198.18.1.2, 2001:db8:1::2]", "vm-server"),
        _policy("client-out", "client", "egress", "server", "tcp/80"),
        _policy("server-in", "server", "ingress", "client", "tcp/80"),
    )
    lab.up(agents=True, timeout=120)
    report = lab.probe()
    assert report.ok, [r.describe() for r in report.disagreements]
