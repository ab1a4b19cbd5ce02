"""Acceptance (issue 6): visibility end to end, in the lab, through the real CLI.

A four-host estate (client, web, api, db; every host its own enforcer, every workload in
``visibility`` mode) is written to a temporary repository and built as a lab. Only the real
dependencies are exercised, several connections each:

    client ──tcp/80 (IPv4 and IPv6)──► web ──tcp/8080──► api ──tcp/5432──► db

The agents record them (``allowed``, and ``would-deny`` by evaluation, since no policy
allows anything yet); ``septum flows import --format agent`` stores and attributes them,
``septum flows query --group-by app`` shows app-to-app edges, and ``septum recommend`` drafts
policies. With every workload switched to ``enforced`` the lab is probed for every (source,
destination, service port, family): zero disagreements with ``explain``, and exactly the
observed dependencies connect (never ``db`` tcp/6379, a Service nobody used, nor web → db).

Then ``septum replay`` of a deliberately broken draft (db no longer admits the api) against
the recorded flows names the broken flows with the tier that now denies them and its owners,
and exits 1 with ``--fail-on newly-denied``; the unbroken repository exits 0.

The lab is removed when the module ends, even on failure, and no namespace may be left.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from septum.lab import node as lab_node
from septum.lab.control import LabPaths, lab_down, lab_up
from septum.lab.plan import LabPlan
from septum.lab.probe import ProbeReport, probe_lab, probe_targets
from septum.model.resources import Protocol
from septum.sources.files import load_repository
from tests.conftest import NETNS_PREFIX, require_root_nft

pytestmark = pytest.mark.root

CLIENT, WEB, API, DB = "client-1", "web-1", "api-1", "db-1"
ENFORCER = {w: f"host-{w}" for w in (CLIENT, WEB, API, DB)}

#: The dependencies traffic is generated for: (source, destination, TCP port, IP version).
OBSERVED: tuple[tuple[str, str, int, int], ...] = (
    (CLIENT, WEB, 80, 4),
    (CLIENT, WEB, 80, 6),
    (WEB, API, 8080, 4),
    (API, DB, 5432, 4),
)
CONNECTIONS = 3  # per dependency and round
ROUNDS = 2

WORKLOADS = """\
apiVersion: septum/v1
kind: Workload
metadata:
  name: client-1
  labels: {app: client, role: ops, env: lab}
spec:
  kind: host
  addresses: [198.18.60.10, "2001:db8:60::10"]
  enforcer: host-client-1
  mode: visibility
---
apiVersion: septum/v1
kind: Workload
metadata:
  name: web-1
  labels: {app: web, role: frontend, env: lab}
spec:
  kind: host
  addresses: [198.18.60.11, "2001:db8:60::11"]
  enforcer: host-web-1
  mode: visibility
---
apiVersion: septum/v1
kind: Workload
metadata:
  name: api-1
  labels: {app: api, role: backend, env: lab}
spec:
  kind: host
  addresses: [198.18.60.21]
  enforcer: host-api-1
  mode: visibility
---
apiVersion: septum/v1
kind: Workload
metadata:
  name: db-1
  labels: {app: db, role: database, env: lab}
spec:
  kind: vm
  addresses: [198.18.60.31]
  enforcer: host-db-1
  mode: visibility
"""

SERVICES = """\
apiVersion: septum/v1
kind: Service
metadata: {name: http}
spec: {ports: [tcp/80]}
---
apiVersion: septum/v1
kind: Service
metadata: {name: api}
spec: {ports: [tcp/8080]}
---
apiVersion: septum/v1
kind: Service
metadata: {name: postgres}
spec: {ports: [tcp/5432]}
---
apiVersion: septum/v1
kind: Service
metadata: {name: redis, description: listened on by every lab node; never used}
spec: {ports: [tcp/6379]}
"""

TIERS = """\
apiVersion: septum/v1
kind: Tier
metadata: {name: security, description: guardrails}
spec:
  order: 100
  defaultAction: pass
  owners: [security-team]
---
apiVersion: septum/v1
kind: Tier
metadata: {name: apps, description: least-privilege rules of the application owners}
spec:
  order: 200
  defaultAction: deny
  owners: [app-team]
---
apiVersion: septum/v1
kind: Settings
metadata: {name: settings}
spec:
  defaultAction: deny
"""

GUARDRAILS = """\
apiVersion: septum/v1
kind: Policy
metadata: {name: no-client-to-db, description: clients never reach the database directly}
spec:
  tier: security
  order: 10
  appliesTo: role == "database"
  ingress:
    - action: deny
      from: ['app == "client"']
"""


def write_repository(repo: Path) -> None:
    repo.mkdir(parents=True)
    (repo / "inventory").mkdir()
    (repo / "policies").mkdir()
    (repo / "inventory" / "workloads.yaml").write_text(WORKLOADS)
    (repo / "services.yaml").write_text(SERVICES)
    (repo / "tiers.yaml").write_text(TIERS)
    (repo / "policies" / "security.yaml").write_text(GUARDRAILS)


# ---------------------------------------------------------------------------- helpers


#: The installed entry point. (Not ``python -m septum.cli.main``: run that way, the module is
#: ``__main__`` and the visibility commands, which register on ``septum.cli.main.app``, land
#: on a second copy of the app, so ``flows``/``replay``/``map`` are "No such command".)
SEPTUM = Path(sys.executable).parent / "septum"


def septum(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a child process."""
    return subprocess.run(
        [str(SEPTUM), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ran(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (
        f"`{' '.join(result.args[1:])}` exited {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
    )
    return result.stdout


def _address(plan: LabPlan, workload: str, version: int) -> str:
    address = plan.endpoint(workload).address(version)
    assert address is not None, (workload, version)
    return str(address)


def generate(plan: LabPlan, paths: LabPaths, ports: list[int]) -> None:
    """Every node listens on ``ports``; then ``OBSERVED`` is exercised, ``CONNECTIONS``
    real TCP connections per dependency and round, from the sources' nodes."""

    async def run() -> list[dict[str, Any]]:
        await asyncio.gather(
            *(
                lab_node.call(paths.socket(e), {"op": "listen", "tcp": ports, "udp": []}, 30.0)
                for e in plan.endpoints
            )
        )
        batches: dict[str, list[dict[str, Any]]] = {}
        for i, (src, dst, port, version) in enumerate(OBSERVED):
            for j in range(CONNECTIONS):
                batches.setdefault(src, []).append(
                    {
                        "id": i * CONNECTIONS + j,
                        "source": _address(plan, src, version),
                        "destination": _address(plan, dst, version),
                        "protocol": "tcp",
                        "port": port,
                    }
                )
        answers = await asyncio.gather(
            *(
                lab_node.call(
                    paths.socket(plan.endpoint(src)),
                    {"op": "probe", "timeout": 3.0, "probes": probes},
                    30.0,
                )
                for src, probes in batches.items()
            )
        )
        return [r for a in answers for r in a["results"]]

    results = asyncio.run(run())
    assert len(results) == len(OBSERVED) * CONNECTIONS
    failed = [r for r in results if not r["connected"]]
    assert not failed, f"visibility mode must not block anything: {failed}"


def _flow_keys(paths: LabPaths) -> set[tuple[str, str, str, str, int, str]]:
    """(enforcer, source, destination, protocol, port, verdict) of every record so far."""
    keys: set[tuple[str, str, str, str, int, str]] = set()
    for f in (paths.root / "flows").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            keys.add(
                (
                    r["enforcer"],
                    r["source"],
                    r["destination"],
                    r["protocol"],
                    int(r["port"]),
                    r["verdict"],
                )
            )
    return keys


def record_traffic(
    plan: LabPlan, paths: LabPaths, ports: list[int], timeout: float = 40.0
) -> tuple[int, float]:
    """Generate ``ROUNDS`` rounds of traffic, then wait until every observed dependency is an
    ``allowed`` record at both its enforcers, and a ``would-deny`` one (nothing allows it yet;
    visibility only reports). An agent reports its repository applied *before* its flow
    recorder listens to conntrack, so a round sent right after ``lab up`` may go unrecorded:
    another round is sent whenever 5 s pass without the records complete (the agents flush
    every 2 s). Returns the rounds sent and the seconds waited after the first ``ROUNDS``."""
    wanted = set()
    for src, dst, port, version in OBSERVED:
        s, d = _address(plan, src, version), _address(plan, dst, version)
        for enforcer in (ENFORCER[src], ENFORCER[dst]):
            for verdict in ("allowed", "would-deny"):
                wanted.add((enforcer, s, d, "tcp", port, verdict))
    for _ in range(ROUNDS):
        generate(plan, paths, ports)
    rounds = ROUNDS
    started = last = time.monotonic()
    while True:
        missing = wanted - _flow_keys(paths)
        if not missing:
            return rounds, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"flow records missing {timeout:g} s after {rounds} rounds: {sorted(missing)}"
            )
        if time.monotonic() - last > 5.0:
            generate(plan, paths, ports)
            rounds, last = rounds + 1, time.monotonic()
        time.sleep(0.25)


def _key(r: Any) -> tuple[str, str, int, int]:
    return (r.probe.source, r.probe.destination, r.probe.port, r.probe.destination_address.version)


def _disagreements(report: ProbeReport) -> list[str]:
    return [r.describe() for r in report.disagreements]


def break_draft(recommended: Path) -> int:
    """Remove, from the recommended policies, every ingress rule of the db's policies that
    admits the api. The policies stay (an empty ``ingress`` still applies), so the apps tier's
    default deny decides. Returns the number of rules removed."""
    documents = list(yaml.safe_load_all(recommended.read_text()))
    removed = 0
    for doc in documents:
        if doc.get("kind") != "Policy" or '"db"' not in str(doc["spec"].get("appliesTo", "")):
            continue
        rules = doc["spec"].get("ingress")
        if rules is None:
            continue
        kept = [r for r in rules if '"api"' not in str(r.get("from", []))]
        removed += len(rules) - len(kept)
        doc["spec"]["ingress"] = kept
    recommended.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return removed


# ---------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Lab:
    repo: Path
    state: Path
    prefix: str
    data: Path
    work: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The estate as a lab (agents in visibility mode), torn down at the module's end."""
    require_root_nft()
    work = tmp_path_factory.mktemp("visibility")
    repo = work / "repo"
    write_repository(repo)
    prefix = f"{NETNS_PREFIX}v{uuid.uuid4().hex[:6]}-"
    state = Path(tempfile.mkdtemp(prefix="septum-lab-v", dir="/tmp"))
    try:
        yield Lab(repo, state, prefix, work / "data", work)
    finally:
        lab_down(repo, state_dir=state, prefix=prefix)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert prefix not in leftover.stdout
        assert not state.exists() or not any(state.iterdir())


@pytest.fixture(scope="module")
def recorded(lab: Lab) -> Lab:
    """Traffic generated, recorded by the agents and imported into ``lab.data``."""
    started = time.monotonic()
    up = lab_up(lab.repo, state_dir=lab.state, prefix=lab.prefix, agents=True, timeout=120)
    assert len(up.agents) == 4
    assert all(a.applied and a.error is None for a in up.agents), up.agents
    paths = LabPaths(up.state_dir)
    targets, _ = probe_targets(load_repository(lab.repo))
    ports = sorted(port for (proto, port) in targets if proto is Protocol.TCP)
    assert ports == [80, 5432, 6379, 8080]
    rounds, waited = record_traffic(up.plan, paths, ports)
    files = sorted((paths.root / "flows").glob("*.jsonl"))
    assert {f.stem for f in files} == set(ENFORCER.values())
    imported = json.loads(
        _ran(
            septum(
                "flows", "import", "--format", "agent", *files,
                "--repo", lab.repo, "--data", lab.data, "--json",
            )
        )
    )  # fmt: skip
    assert imported["ok"], imported
    stored = sum(f["stored"] for f in imported["files"])
    print(
        f"\nlab up {up.seconds:.1f} s; {rounds} rounds of traffic, flow records complete "
        f"{waited:.1f} s after the first {ROUNDS}; "
        f"{stored} records imported from {len(files)} files ({time.monotonic() - started:.1f} s)"
    )
    assert stored > 0
    return lab


@pytest.fixture(scope="module")
def recommended(recorded: Lab) -> Lab:
    """``septum recommend`` over the recorded flows, written into the repository, and every
    workload switched to ``enforced``. Also the report (``recommend.json`` in ``work``)."""
    lab = recorded
    if "recommend" not in septum("--help").stdout:
        pytest.fail("`septum recommend` is not available (septum --help does not list it)")
    out = lab.repo / "policies-recommended.yaml"
    common = (
        "recommend", lab.repo, "--flows", lab.data, "--scope", "all()",
        "--granularity", "app,role",
    )  # fmt: skip
    report = json.loads(_ran(septum(*common, "--json")))  # before the proposal is in the repo
    _ran(septum(*common, "--out", out))
    (lab.work / "recommend.json").write_text(json.dumps(report, indent=2))
    print(f"recommended policies:\n{out.read_text()}")
    assert report["tier"]["name"] == "apps", report["tier"]
    coverage = report["coverage"]
    assert coverage["groups"] == len(OBSERVED), coverage  # distinct flows, both families
    assert coverage["groups_allowed"] == coverage["groups"], coverage
    assert coverage["records_allowed"] == coverage["records"], coverage
    assert report["outliers"] == [], report["outliers"]
    assert report["policies"], report
    assert {p["tier"] for p in report["policies"]} == {"apps"}
    assert all(r["support"]["records"] > 0 for p in report["policies"] for r in p["rules"])
    workloads = lab.repo / "inventory" / "workloads.yaml"
    text = workloads.read_text()
    assert text.count("mode: visibility") == 4
    workloads.write_text(text.replace("mode: visibility", "mode: enforced"))
    _ran(septum("validate", lab.repo))
    return lab


# ---------------------------------------------------------------------------- tests


def test_recorded_traffic_is_attributed_and_recommended_policy_allows_exactly_it(
    recommended: Lab,
) -> None:
    lab = recommended
    # The stored flows, attributed: edges between apps, not addresses.
    query = json.loads(
        _ran(septum("flows", "query", "--data", lab.data, "--group-by", "app", "--format", "json"))
    )
    edges = {(row["source"], row["destination"]): row for row in query["rows"]}
    assert set(edges) == {
        ("app=client", "app=web"),
        ("app=web", "app=api"),
        ("app=api", "app=db"),
    }, sorted(edges)
    services = {edge: set(row["services"]) for edge, row in edges.items()}
    assert services == {
        ("app=client", "app=web"): {"tcp/80"},
        ("app=web", "app=api"): {"tcp/8080"},
        ("app=api", "app=db"): {"tcp/5432"},
    }, services
    for row in edges.values():
        assert row["allowed"] > 0, row
        assert row["would_deny"] > 0, row  # evaluated (default deny), reported, not enforced
        assert row["denied"] == 0, row
        assert row["connections"] >= 2 * CONNECTIONS, row  # both enforcers, a round at least

    # The recommended policy, enforced: probe every (source, destination, service port).
    lab_up(lab.repo, state_dir=lab.state, prefix=lab.prefix, agents=True, timeout=120)
    report = probe_lab(lab.repo, state_dir=lab.state)
    assert report.ok, _disagreements(report)
    connected = {_key(r) for r in report.results if r.connected}
    print(
        f"probed {len(report.results)} (source, destination, port, family) in "
        f"{report.seconds:.1f} s: {len(connected)} connected, "
        f"{len(report.disagreements)} disagreements"
    )
    assert connected == set(OBSERVED), sorted(connected)
    probed = {_key(r) for r in report.results}
    never = {(API, DB, 6379, 4), (WEB, DB, 5432, 4), (CLIENT, DB, 5432, 4), (CLIENT, API, 8080, 4)}
    assert never <= probed
    assert not never & connected


def test_replay_of_a_broken_draft_names_the_flows_it_breaks_and_their_owners(
    recommended: Lab,
) -> None:
    lab = recommended
    draft = lab.work / "draft"
    shutil.rmtree(draft, ignore_errors=True)
    shutil.copytree(lab.repo, draft)
    assert break_draft(draft / "policies-recommended.yaml") >= 1
    _ran(septum("validate", draft))

    def replay(*args: str | Path, code: int) -> dict[str, Any]:
        result = json.loads(
            _ran(
                septum("replay", *args, "--flows", lab.data, "--fail-on", "newly-denied", "--json"),
                code,
            )
        )
        assert isinstance(result, dict)
        return result

    for baseline in (("--against", lab.repo), ()):
        broken = replay(draft, *baseline, code=1)
        assert not broken["ok"]
        assert broken["newly_denied"]["records"] > 0, broken
        assert broken["newly_allowed"]["records"] == 0, broken
        owners = [o for o in broken["by_owner"] if o["change"] == "newly denied"]
        assert owners, broken
        assert {o["tier"] for o in owners} == {"apps"}, owners
        assert all("app-team" in o["owners"] for o in owners), owners
        examples = [e for o in owners for e in o["examples"]]
        assert examples, owners
        # Exactly the api -> db flows break, and the examples name them.
        for e in examples:
            assert (e["source"], e["destination"], e["service"]) == (
                "198.18.60.21",
                "198.18.60.31",
                "tcp/5432",
            ), e
            assert API in e["source_identity"], e
            assert DB in e["destination_identity"], e
        assert sum(o["records"] for o in owners) == broken["newly_denied"]["records"]
        print(
            f"replay of the broken draft against {broken['baseline']}: "
            f"{broken['newly_denied']['records']} of {broken['records']} records newly denied "
            f"({broken['newly_denied']['flows']} flows), tier {owners[0]['tier']} "
            f"owned by {owners[0]['owners']}, e.g. {examples[0]['source_identity']} -> "
            f"{examples[0]['destination_identity']} {examples[0]['service']}"
        )

    # The unbroken repository breaks nothing the agents recorded.
    fine = replay(lab.repo, code=0)
    assert fine["ok"], fine
    assert fine["newly_denied"]["records"] == 0, fine
    assert fine["records"] > 0
    same = replay(lab.repo, "--against", lab.repo, code=0)
    assert same["newly_denied"]["records"] == 0, same
    assert same["newly_allowed"]["records"] == 0, same
