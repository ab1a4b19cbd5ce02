"""The agent that follows the control plane (``septum.agent.remote``).

- State messages: full and delta messages built with the wire codec from real rulesets decode
  to what was sent; malformed ones are refused with the location of the fault.
- Enrolment against a real server over TLS on 127.0.0.1: the CA is pinned by fingerprint, a
  refused join token reports the server's words, nothing is written on failure.
- The runner against the real server (fake nft): a full state, then a label change
  provisioned through the API arriving as an element delta, status reports, a revoked
  certificate and a server that is down leaving the table alone, catching up after.
- The flow uploader: complete lines only, the acknowledged offset survives a restart, a server
  that is down loses nothing.
- End to end (root): ``septum agent enrol`` and ``septum agent run --server`` in a network
  namespace with the real nft backend; the server's listening socket lives in that namespace
  (on its 127.0.0.1), so nothing of the host's network or ruleset is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from septum.agent import remote as remote_module
from septum.agent.agent import Agent, AgentSettings
from septum.agent.capture import FlowRecord, FlowVerdict
from septum.agent.remote import (
    KEY_FILE,
    ControlPlaneClient,
    ControlPlaneRefused,
    ControlPlaneSource,
    ControlPlaneUnavailable,
    EnrolmentError,
    FlowUploader,
    Identity,
    RemoteRunner,
    RemoteSettings,
    StateKind,
    StateMessage,
    StatusReport,
    decode_state,
    enrol,
    identity_dir,
    normalize_fingerprint,
    revision_of_digest,
)
from septum.engine.resolve import resolve_policy
from septum.errors import SeptumError
from septum.model.resources import Repository
from septum.render.hostruleset import HostRuleset, NftSettings, build_host_ruleset, diff_rulesets
from septum.render.nft import render_nft
from septum.render.wire import WIRE_VERSION, WireError, encode_deltas, encode_ruleset
from septum.server import enrolment
from septum.server.app import AppContext, create_app
from septum.server.tls import enrolment_ssl_context, server_ssl_config
from septum.sources.files import load_repository
from septum.testing.fakes import FakeNft
from tests.conftest import EXAMPLES, EXAMPLES_AT, ROOT, netns_context
from tests.kernel import kernel_state, ns_nft
from tests.server.harness import Harness, running_harness

ENFORCER = "host-shop-web-prod-1"
QUARANTINE_SET = "s_has_quarantine_cde81099_v4"
HOST = "127.0.0.1"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], *, timeout: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or probe}")
        time.sleep(0.1)


# ---- the desired state of the examples, and a label change --------------------------------


_REPO: Repository | None = None


def _examples() -> Repository:
    global _REPO
    if _REPO is None:
        _REPO = load_repository(EXAMPLES)
    return _REPO


def _quarantined(repo: Repository, *names: str) -> Repository:
    workloads = tuple(
        dataclasses.replace(w, labels={**w.labels, "quarantine": "incident-1"})
        if w.name in names
        else w
        for w in repo.workloads
    )
    return dataclasses.replace(repo, workloads=workloads)


def _ruleset(repo: Repository) -> HostRuleset:
    return build_host_ruleset(resolve_policy(repo, EXAMPLES_AT), ENFORCER, NftSettings())


def _address(workload: str) -> str:
    [w] = [w for w in _examples().workloads if w.name == workload]
    return str(w.addresses[0].address)


def _full(ruleset: HostRuleset, revision: int = 3) -> dict[str, Any]:
    return {
        "wire": WIRE_VERSION,
        "enforcer": ruleset.enforcer,
        "revision": revision,
        "version": 1,
        "kind": "full",
        "ruleset": encode_ruleset(ruleset),
    }


def _delta_message() -> tuple[dict[str, Any], HostRuleset, HostRuleset]:
    before = _ruleset(_examples())
    after = _ruleset(_quarantined(_examples(), "billing-db-staging-1"))
    delta = diff_rulesets(before, after)
    assert delta.elements
    assert not delta.structure_changed
    message = {
        "wire": WIRE_VERSION,
        "enforcer": ENFORCER,
        "revision": 4,
        "version": 2,
        "kind": "delta",
        "from": 3,
        "deltas": encode_deltas(delta.elements),
    }
    return message, before, after


# ---- messages: pure ----------------------------------------------------------------------


def test_public_surface() -> None:
    assert set(remote_module.__all__) <= set(dir(remote_module))


def test_a_full_message_decodes_to_the_ruleset_sent() -> None:
    ruleset = _ruleset(_examples())
    # Through JSON text, as the server sends it.
    message = decode_state(json.loads(json.dumps(_full(ruleset))))
    assert message == StateMessage(StateKind.FULL, ENFORCER, 3, 1, ruleset=ruleset)


def test_a_delta_message_decodes_to_the_deltas_sent() -> None:
    data, before, after = _delta_message()
    message = decode_state(json.loads(json.dumps(data)))
    assert message.kind is StateKind.DELTA
    assert (message.revision, message.version, message.base) == (4, 2, 3)
    assert message.deltas == diff_rulesets(before, after).elements
    assert message.ruleset is None


def test_an_unchanged_message() -> None:
    data = {"wire": 1, "enforcer": ENFORCER, "revision": 0, "version": None, "kind": "unchanged"}
    assert decode_state(data) == StateMessage(StateKind.UNCHANGED, ENFORCER, 0, None)


def _bad_chain(m: dict[str, Any]) -> None:
    m["ruleset"]["chains"][1]["rules"][0]["verdict"] = "explode"


def _bad_element(m: dict[str, Any]) -> None:
    m["deltas"][0]["added"][0] = "198.18.10.300/32"


@pytest.mark.parametrize(
    ("kind", "mutate", "location"),
    [
        ("full", lambda m: m.update(wire=2), "wire"),
        ("full", lambda m: m.pop("wire"), "wire"),
        ("full", lambda m: m.update(kind="partial"), "kind"),
        ("full", lambda m: m.update(revision=-1), "revision"),
        ("full", lambda m: m.update(revision="3"), "revision"),
        ("full", lambda m: m.update(revision=True), "revision"),
        ("full", lambda m: m.update(version=1.5), "version"),
        ("full", lambda m: m.update(enforcer=""), "enforcer"),
        ("full", lambda m: m.update(enforcer="host-other"), "ruleset.enforcer"),
        ("full", lambda m: m.update(deltas=[]), "deltas"),
        ("full", lambda m: m.pop("ruleset"), "ruleset"),
        ("full", lambda m: m["ruleset"].update(version=7), "ruleset.version"),
        ("full", _bad_chain, "ruleset.chains[1].rules[0].verdict"),
        ("delta", lambda m: m.pop("from"), "from"),
        ("delta", lambda m: m.update(deltas={"name": "x"}), "deltas"),
        ("delta", _bad_element, "deltas[0].added[0]"),
        ("delta", lambda m: m["deltas"][0].update(name="no such; set"), "deltas[0].name"),
    ],
)
def test_bad_messages_are_refused_with_their_location(
    kind: str, mutate: Callable[[dict[str, Any]], object], location: str
) -> None:
    data = _full(_ruleset(_examples())) if kind == "full" else _delta_message()[0]
    data = json.loads(json.dumps(data))
    mutate(data)
    with pytest.raises(WireError) as caught:
        decode_state(data)
    assert caught.value.location == location, str(caught.value)


@pytest.mark.parametrize("data", [None, [], "full", 3])
def test_a_message_that_is_no_object_is_refused(data: object) -> None:
    with pytest.raises(WireError):
        decode_state(data)


def test_fingerprints_and_revisions() -> None:
    hexa = "ab" * 32
    assert normalize_fingerprint(f"sha256:{hexa}") == hexa
    assert normalize_fingerprint("SHA256:" + ":".join(["AB"] * 32)) == hexa
    for bad in ("", "sha256:", f"sha1:{hexa}", f"sha256:{hexa[:-1]}", f"sha256:{hexa[:-1]}g"):
        with pytest.raises(EnrolmentError):
            normalize_fingerprint(bad)
    assert revision_of_digest("revision:12") == 12
    for unknown in (None, "3f2a…", "revision:", "revision:x"):
        assert revision_of_digest(unknown) == 0


# ---- a real control plane on 127.0.0.1 -----------------------------------------------------


@dataclasses.dataclass
class ControlPlaneServer:
    harness: Harness
    url: str
    ca_pem: bytes
    fingerprint: str
    namespace: str | None  # where the listening socket lives (None: this process's)

    def people(self) -> httpx.Client:
        return httpx.Client(verify=enrolment_ssl_context(self.ca_pem), timeout=15)

    def in_namespace(self) -> Any:
        """Connections to the server must be opened in its namespace."""
        if self.namespace is None:
            return nullcontext()
        from tests.agent.netlab import in_netns

        return in_netns(self.namespace)

    def join_token(self, enforcer: str = ENFORCER) -> dict[str, Any]:
        with self.in_namespace(), self.people() as people:
            made = people.post(
                f"{self.url}/api/v1/enforcers/{enforcer}/join-tokens",
                headers=self.harness.headers("admin"),
                json={},
            )
        assert made.status_code == 201, made.text
        join: dict[str, Any] = made.json()
        assert join["ca_fingerprint"] == self.fingerprint
        return join

    def change_labels(self, workload: str, labels: Mapping[str, str], note: str) -> None:
        """Through the API (the harness's in-process client, so that this works while the
        served app is down): patch the draft, then provision."""
        h = self.harness
        h.ok("security", "PATCH", f"/api/v1/workloads/{workload}/labels", json={"set": labels})
        h.ok("security", "POST", "/api/v1/provision", json={"note": note})

    def enforcer_status(self, enforcer: str = ENFORCER) -> dict[str, Any]:
        rows = self.harness.ok("admin", "GET", "/api/v1/enforcers")
        [row] = [r for r in rows if r["enforcer"] == enforcer]
        return dict(row)


def _listening_socket(
    port: int = 0, namespace: str | None = None, host: str = HOST
) -> socket.socket:
    """Bound here (no free-port race); in ``namespace`` when given (a socket belongs to the
    namespace it was made in, whichever thread uses it later)."""
    if namespace is None:
        ctx: Any = nullcontext()
    else:
        from tests.agent.netlab import in_netns

        ctx = in_netns(namespace)
    with ctx:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The same port again after a restart, while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    return sock


class Served:
    """The real app over TLS in a uvicorn thread; ``stop`` and ``start`` again on one port."""

    def __init__(
        self,
        harness: Harness,
        options: dict[str, Any],
        namespace: str | None,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        self.harness = harness
        self.options = options
        self.namespace = namespace
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> str:
        sock = _listening_socket(self.port, self.namespace, self.host)
        self.port = sock.getsockname()[1]
        # A new app over the same database, as a restarted process would be; the real
        # clock, because the TLS handshake checks certificates against it.
        app = create_app(AppContext(self.harness.client.app.state.ctx.settings, self.harness.db))
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=1,
            **self.options,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.01)
        self._server, self._thread, self._sock = server, thread, sock
        return f"https://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is None or self._thread is None or self._sock is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._server = self._thread = self._sock = None


@contextmanager
def control_plane(
    tmp_path: Path, namespace: str | None = None, host: str = HOST, port: int = 0
) -> Iterator[tuple[ControlPlaneServer, Served]]:
    """The examples provisioned as version 1 on SQLite, served over TLS on ``host``
    (127.0.0.1 unless given; the server certificate names it) and ``port`` (0: any)."""
    with running_harness(f"sqlite+pysqlite:///{tmp_path / 'septum.db'}", tmp_path) as h:
        now = datetime.now(UTC)
        ca = enrolment.authority(h.db, now)
        issued = enrolment.server_certificate(h.db, [host], now)
        assert issued.key_pem is not None
        options = server_ssl_config(
            tmp_path / "tls", ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem
        )
        served = Served(h, dict(options), namespace, host, port)
        url = served.start()
        try:
            yield (
                ControlPlaneServer(h, url, ca.cert_pem, enrolment.ca_fingerprint(ca), namespace),
                served,
            )
        finally:
            served.stop()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneServer]:
    with control_plane(tmp_path) as (server, _):
        yield server


# ---- enrolment --------------------------------------------------------------------------


def test_enrolment_pins_the_ca_and_writes_the_identity(
    cp: ControlPlaneServer, tmp_path: Path
) -> None:
    join = cp.join_token()
    where = identity_dir(tmp_path / "agent")
    identity = enrol(cp.url, join["token"], join["ca_fingerprint"], where, ENFORCER)
    assert identity.enforcer == ENFORCER
    assert identity.ca_pem == cp.ca_pem
    assert identity.directory == where
    assert stat.S_IMODE((where / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert not [p for p in where.iterdir() if p.name.startswith(".")]  # no temporary left
    assert Identity.load(where) == identity
    with ControlPlaneClient(cp.url, identity) as client:
        assert client.whoami() == {
            "enforcer": ENFORCER,
            "name": f"agent:{ENFORCER}",
            "via": "certificate",
        }
    # The token is spent: a second enrolment with it is refused with the server's words.
    with pytest.raises(EnrolmentError, match=r"refused the enrolment \(401\).*was used at"):
        enrol(cp.url, join["token"], join["ca_fingerprint"], tmp_path / "again", ENFORCER)
    assert not (tmp_path / "again").exists()


def test_enrolment_refuses_a_ca_with_another_fingerprint(
    cp: ControlPlaneServer, tmp_path: Path
) -> None:
    join = cp.join_token()
    other = "sha256:" + "0" * 64
    with pytest.raises(EnrolmentError, match=r"presents CA sha256:[0-9a-f]{64}, not the expected"):
        enrol(cp.url, join["token"], other, tmp_path / "id", ENFORCER)
    assert not (tmp_path / "id").exists()
    # The token was not spent on a server we did not trust.
    enrol(cp.url, join["token"], join["ca_fingerprint"], tmp_path / "id", ENFORCER)


def test_enrolment_failures_say_what_went_wrong(cp: ControlPlaneServer, tmp_path: Path) -> None:
    fingerprint = cp.fingerprint
    with pytest.raises(EnrolmentError, match="unknown join token"):
        enrol(cp.url, "sepj_" + "0" * 16 + "_nope", fingerprint, tmp_path / "a", ENFORCER)
    with pytest.raises(EnrolmentError, match="malformed join token"):
        enrol(cp.url, "hello", fingerprint, tmp_path / "a", ENFORCER)
    join = cp.join_token("host-shop-web-prod-2")
    with pytest.raises(EnrolmentError, match="is for enforcer 'host-shop-web-prod-2', not"):
        enrol(cp.url, join["token"], fingerprint, tmp_path / "a", ENFORCER)
    with _listening_socket() as closed:  # bound, never listening: connection refused
        port = closed.getsockname()[1]
        with pytest.raises(EnrolmentError, match="cannot reach the control plane"):
            enrol(f"https://{HOST}:{port}", join["token"], fingerprint, tmp_path / "a", ENFORCER)
    with pytest.raises(SeptumError, match="expected an https:// URL"):
        enrol(cp.url.replace("https", "http"), join["token"], fingerprint, tmp_path / "a", ENFORCER)
    assert not (tmp_path / "a").exists()
    with pytest.raises(SeptumError, match="not enrolled"):
        Identity.load(tmp_path / "a")


# ---- the runner against the real server ------------------------------------------------


def _enrolled(cp: ControlPlaneServer, tmp_path: Path) -> Identity:
    join = cp.join_token()
    return enrol(cp.url, join["token"], join["ca_fingerprint"], tmp_path / "identity", ENFORCER)


def _runner(
    client: ControlPlaneClient | Any, state: Path, nft: FakeNft, **kw: Any
) -> tuple[Agent, RemoteRunner, list[str]]:
    said: list[str] = []
    agent = Agent(AgentSettings(ENFORCER, state), ControlPlaneSource(), nft, report=said.append)
    agent.start()
    settings = RemoteSettings(**{"wait": 3.0, **kw})
    return agent, RemoteRunner(agent, client, settings, report=said.append), said


def _step_until(runner: RemoteRunner, done: Callable[[], bool], steps: int = 10) -> None:
    for _ in range(steps):
        if done():
            return
        runner.step()
    assert done()


def test_the_runner_takes_the_full_state_then_a_label_change_as_a_delta(
    cp: ControlPlaneServer, tmp_path: Path
) -> None:
    nft = FakeNft()
    with ControlPlaneClient(cp.url, _enrolled(cp, tmp_path)) as client:
        agent, runner, _ = _runner(client, tmp_path / "state", nft)
        assert runner.asking == 0
        runner.step()
        first = runner.applied_revision
        assert first > 0
        assert "delete table inet septum" in nft.last
        assert agent.ruleset == _ruleset(_examples())  # exactly what the server compiled
        status = cp.enforcer_status()
        assert status["applied_revision"] == first
        assert status["in_sync"]
        assert status["outcome"] == "full"

        # Nothing changes: the long-poll answers "unchanged" after its wait.
        began = time.monotonic()
        assert runner.step() == 0
        assert time.monotonic() - began >= 2.5
        assert runner.applied_revision == first

        cp.change_labels("billing-db-staging-1", {"quarantine": "incident-1"}, "quarantine (T-2)")
        _step_until(runner, lambda: runner.applied_revision > first)
        script = nft.last
        assert "delete table" not in script
        assert f"add element inet septum {QUARANTINE_SET}" in script
        assert _address("billing-db-staging-1") in script
        assert agent.ruleset == _ruleset(_quarantined(_examples(), "billing-db-staging-1"))
        status = cp.enforcer_status()
        assert status["applied_revision"] == runner.applied_revision
        assert status["in_sync"]
        assert status["outcome"] == "delta"
        assert status["counters"]["applies_delta"] == 1
        assert status["counters"]["elements_changed"] == 1

        # A restarted agent restores the table from disk and resumes at its revision; the
        # next delta finds no base in memory, so it asks for (and gets) the whole table.
        nft2 = FakeNft()
        agent2, runner2, said = _runner(client, tmp_path / "state", nft2)
        assert runner2.asking == runner.applied_revision
        restored = len(nft2.applied)
        cp.change_labels("shop-db-staging-1", {"quarantine": "incident-1"}, "quarantine (T-3)")
        _step_until(runner2, lambda: runner2.applied_revision > runner.applied_revision)
        assert runner2.counters["fallbacks_to_full"] == 1
        assert any("asking for a full state" in s for s in said)
        assert "delete table inet septum" in nft2.last
        assert len(nft2.applied) == restored + 1
        assert agent2.ruleset == _ruleset(
            _quarantined(_examples(), "billing-db-staging-1", "shop-db-staging-1")
        )


def test_after_a_change_the_connections_the_policy_denies_are_cut(
    cp: ControlPlaneServer, tmp_path: Path
) -> None:
    """An agent that follows the control plane asks it which tracked connections the new
    policy denies (it holds rulesets, not the repository) and cuts those only."""
    from ipaddress import ip_address

    from septum.agent.conntrack import ConntrackEntry
    from septum.testing.fakes import FakeConntrackTable

    def entry(src: str, dst: str, port: int) -> ConntrackEntry:
        return ConntrackEntry(
            4, "tcp", ip_address(src), ip_address(dst), 40000, port, "ESTABLISHED"
        )

    denied = entry("198.18.10.11", "198.18.10.31", 5432)  # shop web → shop db: denied
    allowed = entry("198.18.10.11", "198.18.10.21", 8080)  # shop web → shop api: allowed
    elsewhere = entry("198.18.11.21", "198.18.11.31", 5432)  # not this host's: not asked
    table = FakeConntrackTable([denied, allowed, elsewhere])
    nft = FakeNft()
    said: list[str] = []
    with ControlPlaneClient(cp.url, _enrolled(cp, tmp_path)) as client:
        agent = Agent(
            AgentSettings(ENFORCER, tmp_path / "state"),
            ControlPlaneSource(),
            nft,
            conntrack=table,
            report=said.append,
        )
        agent.start()
        runner = RemoteRunner(agent, client, RemoteSettings(wait=3.0), report=said.append)
        runner.step()
        assert runner.applied_revision > 0
    assert table.deleted == [denied]
    assert runner.counters["connections_cut"] == 1
    assert {e.key for e in table.entries()} == {allowed.key, elsewhere.key}


def test_a_revoked_certificate_or_a_server_down_leave_the_table_alone(
    tmp_path: Path,
) -> None:
    with control_plane(tmp_path) as (cp, served):
        identity = _enrolled(cp, tmp_path)
        nft = FakeNft()
        with ControlPlaneClient(cp.url, identity) as client:
            _, runner, said = _runner(client, tmp_path / "state", nft, backoff_max=2.0)
            runner.step()
            applied = list(nft.applied)
            revision = runner.applied_revision

            served.stop()
            delays = [runner.step() for _ in range(4)]
            assert delays == [0.5, 1.0, 2.0, 2.0]  # capped exponential backoff
            assert nft.applied == applied
            assert sum("keeping the table in force" in s for s in said) == 1  # said once

            served.start()  # same port
            cp.change_labels(
                "billing-db-staging-1", {"quarantine": "incident-1"}, "while down (T-4)"
            )
            _step_until(runner, lambda: runner.applied_revision > revision)
            assert "control plane reachable again" in said
            assert runner.counters["control_plane_errors"] == 4

            with httpx.Client(verify=enrolment_ssl_context(cp.ca_pem)) as people:
                revoked = people.post(
                    f"{cp.url}/api/v1/agent-certificates/{identity.serial:x}/revoke",
                    headers=cp.harness.headers("admin"),
                )
            assert revoked.status_code == 200, revoked.text
            applied = list(nft.applied)
            assert runner.step() == 0.5
            assert nft.applied == applied
            assert any("refused the request (403)" in s and "revoked" in s for s in said)
            with pytest.raises(ControlPlaneRefused) as caught:
                client.watch(0, 0)
            assert caught.value.status == 403


class _Scripted:
    """A control plane that answers from a list (for what a real server does not send)."""

    def __init__(self, answers: Sequence[StateMessage | Exception]) -> None:
        self.answers = list(answers)
        self.asked: list[int] = []
        self.statuses: list[StatusReport] = []

    def watch(self, revision: int, wait: float) -> StateMessage:
        self.asked.append(revision)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def report_status(self, status: StatusReport) -> None:
        self.statuses.append(status)

    def post_flows(self, records: Sequence[Mapping[str, object]]) -> int:
        return len(records)


def test_deltas_that_do_not_fit_and_refused_states(tmp_path: Path) -> None:
    data, before, after = _delta_message()
    delta = decode_state(data)  # from 3 to 4
    full = StateMessage(StateKind.FULL, ENFORCER, 3, 1, ruleset=before)
    both = _ruleset(_quarantined(_examples(), "billing-db-staging-1", "shop-db-staging-1"))
    newer = StateMessage(StateKind.FULL, ENFORCER, 5, 3, ruleset=both)
    other = StateMessage(StateKind.FULL, "host-other", 5, 3, ruleset=both)
    stale_delta = dataclasses.replace(delta, base=2)
    script = _Scripted(
        [
            stale_delta,  # nothing applied yet: a full state is needed
            full,
            stale_delta,  # from a revision the kernel does not hold
            full,
            delta,
            other,  # someone else's state: ignored
            WireError("ruleset.chains", "broken"),
            newer,
        ]
    )
    nft = FakeNft()
    agent, runner, said = _runner(script, tmp_path / "state", nft)
    for _ in range(5):
        runner.step()
    assert script.asked == [0, 0, 3, 0, 3]
    assert runner.counters["fallbacks_to_full"] == 2
    assert runner.applied_revision == 4
    assert agent.ruleset == after
    assert [s.outcome for s in script.statuses] == ["full", "unchanged", "delta"]
    del said[:]

    runner.step()  # someone else's state
    assert any("'host-other'" in s for s in said)
    assert runner.asking == 4
    runner.step()  # garbage: reported as invalid; the next ask is for a full state
    assert runner.asking == 0
    nft.reject = 2  # nft refuses the element delta, then the whole table
    runner.step()
    # The kernel keeps revision 4; the runner waits for the desired state to change.
    assert (runner.applied_revision, runner.asking) == (4, 5)
    assert [s.outcome for s in script.statuses[-2:]] == ["invalid", "failed"]
    assert script.statuses[-1].revision == 4
    assert "fake" in (script.statuses[-1].error or "")
    assert json.loads((tmp_path / "state" / "status.json").read_text())["error"]
    assert agent.ruleset == after


# ---- flow upload ---------------------------------------------------------------------------


def _flow_lines(n: int, at: datetime) -> list[str]:
    out = []
    for i in range(n):
        record = FlowRecord(
            start=at,
            end=at + timedelta(seconds=1),
            enforcer=ENFORCER,
            source=ip_address(f"198.18.0.{i + 1}"),
            destination=ip_address("198.18.10.11"),
            protocol="tcp",
            port=443,
            verdict=FlowVerdict.ALLOWED,
            provenance=("shop/shop-web/ingress/0",),
            connections=1,
            packets=10,
            bytes=1000 + i,
        )
        out.append(json.dumps(record.to_json()) + "\n")
    return out


class _FlowSink:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, object]]] = []
        self.down = False

    def post_flows(self, records: Sequence[Mapping[str, object]]) -> int:
        if self.down:
            raise ControlPlaneUnavailable("down")
        self.batches.append([dict(r) for r in records])
        return len(records)

    def watch(self, revision: int, wait: float) -> StateMessage:
        raise AssertionError("not for flows")

    def report_status(self, status: StatusReport) -> None:
        raise AssertionError("not for flows")

    @property
    def records(self) -> list[dict[str, object]]:
        return [r for b in self.batches for r in b]


def test_flow_upload_sends_each_complete_line_once(tmp_path: Path) -> None:
    flows, offset = tmp_path / "flows.jsonl", tmp_path / "state" / "flows.offset.json"
    lines = _flow_lines(7, datetime.now(UTC))
    flows.write_text("".join(lines[:3]) + "not json\n" + lines[3][:20])  # the last line torn
    sink = _FlowSink()
    said: list[str] = []
    uploader = FlowUploader(sink, flows, offset, batch=2, report=said.append)
    assert uploader.upload_once() == 3
    assert [len(b) for b in sink.batches] == [2, 1]
    assert uploader.skipped == 1
    assert "not a flow record" in said[0]

    with flows.open("a") as f:  # the writer finishes the line and adds more
        f.write(lines[3][20:] + "".join(lines[4:6]))
    sink.down = True
    with pytest.raises(ControlPlaneUnavailable):
        uploader.upload_once()
    # A restart (a new uploader) while the server is down, then it comes back: nothing lost,
    # nothing twice.
    sink.down = False
    again = FlowUploader(sink, flows, offset, batch=2)
    assert again.upload_once() == 3
    assert again.upload_once() == 0
    sent = [json.dumps(r) + "\n" for r in sink.records]
    assert sent == lines[:6]

    # Rotation: a new file (another inode) is read from its start.
    flows.rename(tmp_path / "flows.jsonl.1")
    flows.write_text(lines[6])
    assert again.upload_once() == 1
    assert json.dumps(sink.records[-1]) + "\n" == lines[6]


def test_flow_upload_to_the_real_server(cp: ControlPlaneServer, tmp_path: Path) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_text("".join(_flow_lines(5, datetime.now(UTC) - timedelta(minutes=5))))
    with ControlPlaneClient(cp.url, _enrolled(cp, tmp_path)) as client:
        uploader = FlowUploader(client, flows, tmp_path / "offset.json", batch=3)
        assert uploader.upload_once() == 5
        assert uploader.refused == 0
        # Another enforcer's record is refused by the server (403), and retried later.
        other = json.loads(_flow_lines(1, datetime.now(UTC))[0])
        other["enforcer"] = "host-shop-web-prod-2"
        with flows.open("a") as f:
            f.write(json.dumps(other) + "\n")
        with pytest.raises(ControlPlaneRefused) as caught:
            uploader.upload_once()
        assert caught.value.status == 403


# ---- end to end: the CLI in a network namespace, real nft ---------------------------------


def _septum(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "septum.cli.main", *args]


def _set_elements(ns: str, name: str) -> set[str]:
    return kernel_state(ns)[0].get(name, set())


@pytest.mark.root
def test_an_agent_enrols_and_follows_the_control_plane_in_a_namespace(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    log = tmp_path / "agent.log"
    (tmp_path / "server").mkdir()
    with netns_context() as ns, netns_context() as scratch:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with control_plane(tmp_path / "server", namespace=ns) as (cp, served):
            join = cp.join_token()
            enrolled = subprocess.run(
                [
                    *_septum(ns, "agent", "enrol", "--server", cp.url),
                    *("--ca-fingerprint", join["ca_fingerprint"]),
                    *("--enforcer", ENFORCER, "--state-dir", str(state)),
                ],
                env={**os.environ, "SEPTUM_JOIN_TOKEN": join["token"]},
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
            )
            assert enrolled.returncode == 0, enrolled.stderr
            assert f"enrolled as enforcer {ENFORCER}" in enrolled.stdout

            with log.open("w") as out:
                agent = subprocess.Popen(
                    _septum(
                        ns,
                        *("agent", "run", "--server", cp.url, "--enforcer", ENFORCER),
                        *("--state-dir", str(state), "--wait", "3"),
                        *("--flows", str(tmp_path / "flows.jsonl"), "--flow-interval", "1"),
                    ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            try:
                _follow(ns, scratch, cp, served, log)
            finally:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            assert agent.returncode == 0, log.read_text()


def _follow(ns: str, scratch: str, cp: ControlPlaneServer, served: Served, log: Path) -> None:
    # The full state: the kernel holds what nft makes of the server's ruleset.
    first = eventually(
        lambda: cp.enforcer_status()["applied_revision"], what=f"the full state\n{log.read_text()}"
    )
    ns_nft(scratch, "-f", "-", stdin=render_nft(_ruleset(_examples())))
    assert kernel_state(ns)[1] == kernel_state(scratch)[1]
    assert kernel_state(ns)[0] == kernel_state(scratch)[0]
    assert _address("billing-db-staging-1") not in _set_elements(ns, QUARANTINE_SET)

    # A label change provisioned through the API arrives as an element delta.
    cp.change_labels("billing-db-staging-1", {"quarantine": "incident-1"}, "quarantine (T-5)")
    eventually(
        lambda: (
            f"{_address('billing-db-staging-1')}" in " ".join(_set_elements(ns, QUARANTINE_SET))
        ),
        what="the delta",
    )
    status = eventually(
        lambda: (s := cp.enforcer_status())["in_sync"] and s["applied_revision"] > first and s,
        what="the status report",
    )
    assert status["outcome"] == "delta"
    assert "(delta, 1 elements)" in log.read_text()

    # The server goes away: the agent keeps the table (and says so once).
    held = kernel_state(ns)  # counters aside
    served.stop()
    eventually(lambda: "keeping the table in force" in log.read_text(), what="the retry")
    time.sleep(2)
    assert kernel_state(ns) == held

    # A change made meanwhile (through the API of another replica: the harness's app)...
    cp.change_labels("shop-db-staging-1", {"quarantine": "incident-1"}, "quarantine (T-6)")
    served.start()
    # ...arrives once the server is back.
    eventually(
        lambda: _address("shop-db-staging-1") in " ".join(_set_elements(ns, QUARANTINE_SET)),
        timeout=30,
        what=f"the catch-up\n{log.read_text()}",
    )
    expected = _ruleset(_quarantined(_examples(), "billing-db-staging-1", "shop-db-staging-1"))
    ns_nft(scratch, "-f", "-", stdin=render_nft(expected))
    assert kernel_state(ns) == kernel_state(scratch)
    eventually(lambda: cp.enforcer_status()["in_sync"], what="in sync")
