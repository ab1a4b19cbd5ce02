"""An agent that follows the control plane: enrolment, the long-poll of desired state, status
reports and flow upload, all over mutual TLS.

::

    septum agent enrol ──► enrol(): GET /agent/v1/ca (unverified, checked by fingerprint)
                                    POST /agent/v1/enrol (join token + CSR) ──► identity/
                                                                  ca.pem, agent.pem, agent.key

    septum agent run --server
        RemoteRunner ── watch(revision, wait) ──► ControlPlaneClient ──► GET /agent/v1/state
            │  full  ─► Agent.apply_ruleset        (its element delta when only elements moved)
            │  delta ─► Agent.apply_element_delta  (no base, or refused: ask for a full state)
            └─ report_status ──────────────────────────────────────────► POST /agent/v1/status
        FlowRecorder ──► flows.jsonl ──► FlowUploader (byte offset kept) ──► POST /agent/v1/flows

Design goals, in order:

1. **The kernel keeps what it holds.** A control plane that is down, slow, refusing us or
   sending garbage never changes the table: the agent retries with capped exponential backoff
   and applies only well-formed desired state. At start the agent restores its last applied
   state from disk before it talks to anyone (``Agent.start``).
2. **Trust on first use, made safe.** Enrolment fetches the CA certificate without verifying
   the server (there is nothing to verify it with yet) and accepts it only when its SHA-256
   fingerprint equals the one the operator copied from the join token; from then on every
   connection verifies the server against that CA and presents the agent's certificate.
3. **Cheap churn.** Element-only changes travel as deltas and are applied as such; a delta
   that does not fit what the kernel holds is never forced: the runner asks for a full state.
4. **Flows are sent once.** The uploader remembers how far into ``flows.jsonl`` the server
   acknowledged; a restart resumes there and a server that is down delays records, it does
   not lose them.

The revision the kernel holds is kept in the agent's state directory as the applied state's
digest (``revision:<n>``), so a restarted agent resumes its long-poll where it stopped.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import httpx

from septum.agent.agent import Agent, AgentSettings, SyncOutcome, SyncResult
from septum.agent.backend import NftBackend, default_backend
from septum.agent.capture import CaptureError, FlowRecord, FlowRecorder
from septum.agent.conntrack import ConntrackEntry, ConntrackTable
from septum.agent.runner import flow_recorder
from septum.agent.source import SourceUnavailable
from septum.errors import SeptumError
from septum.model.resources import Repository
from septum.render.hostruleset import ElementDelta, HostRuleset
from septum.render.wire import WIRE_VERSION, WireError, decode_deltas, decode_ruleset
from septum.runtime import gc_paused
from septum.server.ca import (
    CertificateError,
    enforcer_of,
    fingerprint_of,
    load_certificate,
    make_agent_key_and_csr,
)
from septum.server.tls import agent_ssl_context, enrolment_ssl_context

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "ControlPlane",
    "ControlPlaneClient",
    "ControlPlaneRefused",
    "ControlPlaneSource",
    "ControlPlaneUnavailable",
    "EnrolmentError",
    "FlowUploader",
    "Identity",
    "RemoteRunner",
    "RemoteSettings",
    "StateKind",
    "StateMessage",
    "StatusReport",
    "decode_state",
    "enrol",
    "identity_dir",
    "normalize_fingerprint",
    "revision_of_digest",
    "run_remote_agent",
    "stop_on_signals",
]

CA_FILE = "ca.pem"
CERT_FILE = "agent.pem"
KEY_FILE = "agent.key"

_API = "/agent/v1"
#: The longest long-poll asked for: the server refuses more than 55 s (proxies commonly cut
#: idle requests at 60).
MAX_WAIT = 55.0
#: Connections per verdicts request (the server takes up to 20,000).
VERDICT_BATCH = 5_000


class EnrolmentError(SeptumError):
    """Enrolment did not happen: the server is unreachable, is not the one the fingerprint
    names, or refused the join token. Nothing was written."""


class ControlPlaneUnavailable(SourceUnavailable):
    """The control plane cannot be reached or failed (transport error, timeout, 5xx): the
    agent keeps enforcing what the kernel holds and retries."""


class ControlPlaneRefused(SeptumError):
    """The control plane answered a request with a client error (a revoked certificate is
    403). ``status`` is the HTTP status; the message is the server's own text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the control plane refused the request ({status}): {message}")
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- identity


def identity_dir(state_dir: Path) -> Path:
    """Where an agent's certificate, key and CA live, inside its state directory (apart from
    the applied-state files, which ``StateStore`` manages)."""
    return state_dir / "identity"


@dataclass(frozen=True, slots=True)
class Identity:
    """An enrolled agent: the CA it trusts, its certificate and its private key (PEM)."""

    enforcer: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    directory: Path | None = None

    @classmethod
    def load(cls, directory: Path) -> Identity:
        """Read an identity written by :func:`enrol`. Raises ``SeptumError`` when the agent
        is not enrolled or a file is unreadable."""
        try:
            ca_pem = (directory / CA_FILE).read_bytes()
            cert_pem = (directory / CERT_FILE).read_bytes()
            key_pem = (directory / KEY_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise SeptumError(
                f"{exc.filename}: not enrolled (run `septum agent enrol` first)"
            ) from None
        except OSError as exc:
            raise SeptumError(f"{exc.filename}: {exc.strerror or exc}") from None
        try:
            enforcer = enforcer_of(cert_pem)
        except CertificateError as exc:
            raise SeptumError(f"{directory / CERT_FILE}: {exc}") from None
        return cls(enforcer, ca_pem, cert_pem, key_pem, directory)

    @property
    def serial(self) -> int:
        return int(load_certificate(self.cert_pem).serial_number)

    @property
    def not_after(self) -> datetime:
        return load_certificate(self.cert_pem).not_valid_after_utc

    def ssl_context(self) -> ssl.SSLContext:
        """Verify the server against our CA only and present our certificate."""
        return agent_ssl_context(self.ca_pem, self.cert_pem, self.key_pem)

    def save(self, directory: Path) -> Identity:
        """Write the three files (the key 0600; each replaced atomically, the key last so
        that a complete key never sits next to a stale certificate)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(directory / CA_FILE, self.ca_pem, 0o644)
        _write_atomically(directory / CERT_FILE, self.cert_pem, 0o644)
        _write_atomically(directory / KEY_FILE, self.key_pem, 0o600)
        _fsync_dir(directory)
        return replace(self, directory=directory)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL with the mode: a key file never exists with wider permissions, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def normalize_fingerprint(text: str) -> str:
    """``sha256:<hex>`` (colons between bytes and upper case allowed) → lowercase hex, as
    ``ca.fingerprint_of`` writes it. Raises ``EnrolmentError`` for anything else."""
    body = text.strip()
    if body.lower().startswith("sha256:"):
        body = body[len("sha256:") :]
    body = body.replace(":", "").lower()
    if len(body) != 64 or any(c not in "0123456789abcdef" for c in body):
        raise EnrolmentError(
            f"CA fingerprint {text!r}: expected sha256: and 64 hexadecimal digits "
            "(as the join token's ca_fingerprint says)"
        )
    return body


def _server_url(server: str) -> str:
    url = server.strip().rstrip("/")
    if not url.startswith("https://"):
        # Identity and desired state travel over TLS only: an http:// URL is a mistake.
        raise SeptumError(f"server {server!r}: expected an https:// URL")
    return url


def _error_text(response: httpx.Response) -> str:
    """The server's own words for a failed request ({"error": …} or FastAPI's "detail")."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "detail"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:500]


def _unverified_context() -> ssl.SSLContext:
    """For the one call that fetches the CA certificate: nothing to verify the server with
    yet. What comes back is trusted only after its fingerprint matched."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def enrol(
    server: str,
    token: str,
    ca_fingerprint: str,
    identity_dir: Path,
    enforcer: str,
    *,
    timeout: float = 15.0,
) -> Identity:
    """Enrol this host as ``enforcer``: fetch and pin the CA by its fingerprint, send a CSR
    with the join token and write the identity into ``identity_dir``. Raises
    ``EnrolmentError`` (nothing written) when any step fails. Cost: two HTTPS requests and
    one P-256 key generation."""
    url = _server_url(server)
    expected = normalize_fingerprint(ca_fingerprint)
    ca_pem = _fetch_pinned_ca(url, expected, timeout)
    try:
        key_pem, csr_pem = make_agent_key_and_csr(enforcer)
    except CertificateError as exc:
        raise EnrolmentError(f"enforcer {enforcer!r}: {exc}") from None
    body = {"token": token, "csr": csr_pem.decode("ascii")}
    try:
        with httpx.Client(verify=enrolment_ssl_context(ca_pem), timeout=timeout) as http:
            response = http.post(f"{url}{_API}/enrol", json=body)
    except httpx.HTTPError as exc:
        raise EnrolmentError(_transport_problem(url, exc)) from None
    if response.status_code != 201:
        raise EnrolmentError(
            f"{url} refused the enrolment ({response.status_code}): {_error_text(response)}"
        )
    cert_pem = _enrolment_certificate(url, response, expected, enforcer)
    identity = Identity(enforcer, ca_pem, cert_pem, key_pem)
    try:
        identity.ssl_context()  # the certificate must be for our key
    except CertificateError as exc:
        raise EnrolmentError(f"{url} returned an unusable certificate: {exc}") from None
    return identity.save(identity_dir)


def _fetch_pinned_ca(url: str, expected: str, timeout: float) -> bytes:
    try:
        with httpx.Client(verify=_unverified_context(), timeout=timeout) as http:
            response = http.get(f"{url}{_API}/ca")
    except httpx.HTTPError as exc:
        raise EnrolmentError(_transport_problem(url, exc)) from None
    if response.status_code != 200:
        raise EnrolmentError(
            f"{url}{_API}/ca answered {response.status_code}: {_error_text(response)}"
        )
    try:
        doc = response.json()
        ca_pem = str(doc["certificate"]).encode("ascii")
        actual = fingerprint_of(ca_pem)
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, CertificateError) as exc:
        raise EnrolmentError(f"{url}{_API}/ca: not a CA certificate ({exc})") from None
    # Constant time out of habit: the fingerprint is not secret, but nothing is lost.
    if not hmac.compare_digest(actual, expected):
        raise EnrolmentError(
            f"{url} presents CA sha256:{actual}, not the expected sha256:{expected}: "
            "refusing to trust it (wrong server, or someone in between)"
        )
    return ca_pem


def _enrolment_certificate(
    url: str, response: httpx.Response, expected_ca: str, enforcer: str
) -> bytes:
    try:
        doc = response.json()
        cert_pem = str(doc["certificate"]).encode("ascii")
        issued_for = enforcer_of(cert_pem)
        ca = doc.get("ca")
        ca_fingerprint = fingerprint_of(str(ca).encode("ascii")) if ca else expected_ca
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError) as exc:
        raise EnrolmentError(f"{url}: not an enrolment answer ({exc})") from None
    except CertificateError as exc:
        raise EnrolmentError(f"{url}: the issued certificate is unusable: {exc}") from None
    if ca_fingerprint != expected_ca:
        raise EnrolmentError(f"{url}: the certificate comes with another CA (sha256:{ca})")
    if issued_for != enforcer:
        # The server decides the name (the join token is bound to an enforcer): a
        # different one means the operator mixed up tokens.
        raise EnrolmentError(
            f"the join token is for enforcer {issued_for!r}, not {enforcer!r}: nothing written"
        )
    return cert_pem


def _transport_problem(url: str, exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"{url}: the server's certificate does not verify against our CA ({text})"
    return f"cannot reach the control plane at {url}: {text}"


# ----------------------------------------------------------------------------- messages


class StateKind(StrEnum):
    FULL = "full"  # a whole HostRuleset
    DELTA = "delta"  # element deltas from revision ``base`` to ``revision``
    UNCHANGED = "unchanged"  # the wait ran out (or no desired state yet: revision 0)


@dataclass(frozen=True, slots=True)
class StateMessage:
    """One answer of ``GET /agent/v1/state``, decoded and validated."""

    kind: StateKind
    enforcer: str
    revision: int
    version: int | None
    ruleset: HostRuleset | None = None  # FULL
    deltas: tuple[ElementDelta, ...] = ()  # DELTA
    base: int | None = None  # DELTA: the revision the deltas apply to


_STATE_KEYS = {
    StateKind.FULL: frozenset({"wire", "enforcer", "revision", "version", "kind", "ruleset"}),
    StateKind.DELTA: frozenset(
        {"wire", "enforcer", "revision", "version", "kind", "from", "deltas"}
    ),
    StateKind.UNCHANGED: frozenset({"wire", "enforcer", "revision", "version", "kind"}),
}


def _revision(doc: Mapping[str, object], key: str, *, optional: bool = False) -> int | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or value < 0:
        raise WireError(key, f"expected a revision (an integer >= 0), got {value!r}")
    return value


def decode_state(data: object) -> StateMessage:
    """The state message that ``data`` (a decoded JSON value) is. Raises ``WireError`` (with
    ``ruleset.…`` or ``deltas[…]…`` locations inside the payload) and nothing else. Cost:
    O(payload); call it with the cyclic collector paused for a large ruleset."""
    if not isinstance(data, dict):
        raise WireError("", f"expected an object, got {type(data).__name__}")
    wire = data.get("wire")
    if type(wire) is not int or wire != WIRE_VERSION:
        raise WireError("wire", f"unsupported wire version {wire!r} (this reads {WIRE_VERSION})")
    kinds = {k.value: k for k in StateKind}
    kind_text = data.get("kind")
    if not isinstance(kind_text, str) or kind_text not in kinds:
        raise WireError("kind", f"unknown kind {kind_text!r} (one of {', '.join(kinds)})")
    kind = kinds[kind_text]
    unknown = sorted(set(data) - _STATE_KEYS[kind])
    if unknown:
        raise WireError(unknown[0], f"unexpected key in a {kind.value} message")
    enforcer = data.get("enforcer")
    if not isinstance(enforcer, str) or not enforcer:
        raise WireError("enforcer", f"expected an enforcer name, got {enforcer!r}")
    revision = _revision(data, "revision")
    version = _revision(data, "version", optional=True)
    assert revision is not None  # not optional
    if kind is StateKind.FULL:
        try:
            ruleset = decode_ruleset(data.get("ruleset"))
        except WireError as exc:
            raise WireError(_inside("ruleset", exc.location), exc.message) from None
        if ruleset.enforcer != enforcer:
            raise WireError(
                "ruleset.enforcer", f"{ruleset.enforcer!r} in a message for {enforcer!r}"
            )
        return StateMessage(kind, enforcer, revision, version, ruleset=ruleset)
    if kind is StateKind.DELTA:
        base = _revision(data, "from")
        try:
            deltas = decode_deltas(data.get("deltas"))
        except WireError as exc:
            raise WireError(_inside("deltas", exc.location), exc.message) from None
        return StateMessage(kind, enforcer, revision, version, deltas=deltas, base=base)
    return StateMessage(kind, enforcer, revision, version)


def _inside(key: str, location: str) -> str:
    if not location:
        return key
    return f"{key}{location}" if location.startswith("[") else f"{key}.{location}"


@dataclass(frozen=True, slots=True)
class StatusReport:
    """``POST /agent/v1/status``: what the kernel holds and how the last apply went."""

    revision: int | None  # the revision the kernel holds (None: nothing from the server yet)
    outcome: str
    error: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "outcome": self.outcome,
            "error": self.error,
            "counters": dict(self.counters),
        }


# ----------------------------------------------------------------------------- client


class ControlPlane(Protocol):
    """What the runner and the uploader need of the control plane (``ControlPlaneClient``).
    Each method raises ``ControlPlaneUnavailable`` or ``ControlPlaneRefused``; ``watch`` also
    ``WireError`` for a malformed answer."""

    def watch(self, revision: int, wait: float) -> StateMessage: ...

    def report_status(self, status: StatusReport) -> None: ...

    def post_flows(self, records: Sequence[Mapping[str, object]]) -> int: ...

    def denied(self, connections: Sequence[ConnectionKey]) -> set[int]: ...


#: (source, destination, protocol, destination port) of a tracked connection.
ConnectionKey = tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address, str, int]


class ControlPlaneClient:
    """The agent API over mutual TLS. Thread-safe: each thread gets its own connection pool
    (the watch thread's long-poll never holds up a flow upload)."""

    def __init__(
        self,
        server: str,
        identity: Identity,
        *,
        timeout: float = 15.0,
        transport_factory: Callable[[], httpx.BaseTransport] | None = None,
    ) -> None:
        self.url = _server_url(server)
        self.identity = identity
        self.timeout = timeout
        self._context = identity.ssl_context()  # loaded once; contexts are shareable
        self._transport_factory = transport_factory
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            transport = self._transport_factory() if self._transport_factory else None
            client = httpx.Client(
                base_url=self.url + _API,
                verify=self._context,
                timeout=self.timeout,
                transport=transport,
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlPlaneUnavailable(_transport_problem(self.url, exc)) from None
        if response.status_code >= 500:
            raise ControlPlaneUnavailable(
                f"{self.url}{_API}{path}: server error {response.status_code}: "
                f"{_error_text(response)}"
            )
        if response.status_code >= 400:
            raise ControlPlaneRefused(response.status_code, _error_text(response))
        return response

    def whoami(self) -> dict[str, Any]:
        """Who the server thinks we are ({"enforcer", "name", "via"})."""
        body = self._call("GET", "/whoami").json()
        return dict(body) if isinstance(body, dict) else {}

    def watch(self, revision: int, wait: float) -> StateMessage:
        """The desired state when it differs from ``revision``, else "unchanged" after up to
        ``wait`` seconds. The read timeout covers the wait."""
        wait = max(0.0, min(MAX_WAIT, wait))
        timeout = httpx.Timeout(self.timeout, read=wait + self.timeout)
        response = self._call(
            "GET", "/state", params={"revision": revision, "wait": wait}, timeout=timeout
        )
        with gc_paused():
            try:
                data = response.json()
            except ValueError as exc:
                raise WireError("", f"not JSON: {exc}") from None
            return decode_state(data)

    def report_status(self, status: StatusReport) -> None:
        self._call("POST", "/status", json=status.to_json())

    def denied(self, connections: Sequence[ConnectionKey]) -> set[int]:
        """Which of ``connections`` the active policy denies (indices), asked in batches;
        the server answers only for connections of this agent's own workloads."""
        out: set[int] = set()
        for start in range(0, len(connections), VERDICT_BATCH):
            chunk = connections[start : start + VERDICT_BATCH]
            flows = [
                {"source": str(s), "destination": str(d), "protocol": p, "port": port}
                for s, d, p, port in chunk
            ]
            body = self._call("POST", "/verdicts", json={"flows": flows}).json()
            out.update(start + int(i) for i in body.get("denied", ()))
        return out

    def post_flows(self, records: Sequence[Mapping[str, object]]) -> int:
        """Send flow records as ``flows.jsonl`` holds them; returns how many the server
        accepted."""
        response = self._call("POST", "/flows", json={"records": list(records)})
        try:
            accepted = response.json().get("accepted", len(records))
        except (ValueError, AttributeError):
            accepted = len(records)
        return int(accepted) if isinstance(accepted, int) else len(records)


# ----------------------------------------------------------------------------- runner

#: Protocols the control plane evaluates (``septum.model.resources.Protocol``).
_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "icmp", "icmpv6"})


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """How the runner talks to the control plane."""

    #: Seconds the server may hold a long-poll before answering "unchanged".
    wait: float = 25.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0


def revision_of_digest(digest: str | None) -> int:
    """The control-plane revision an applied state came from, or 0 (unknown: a fail-closed
    table, or a state applied from a repository)."""
    if digest is None or not digest.startswith("revision:"):
        return 0
    try:
        return max(0, int(digest.removeprefix("revision:")))
    except ValueError:
        return 0


def _digest(revision: int) -> str:
    return f"revision:{revision}"


class ControlPlaneSource:
    """The ``DesiredStateSource`` the ``Agent`` constructor wants. The remote runner pushes
    rulesets into the agent itself and never calls ``sync``, so this only says so."""

    def digest(self) -> str:
        raise SourceUnavailable("desired state comes from the control plane (no sync)")

    def fetch(self) -> tuple[Repository, str]:
        raise SourceUnavailable("desired state comes from the control plane (no sync)")


class RemoteRunner:
    """Keeps the agent's kernel table equal to the control plane's desired state.

    ``step`` is one long-poll and what follows from it; ``run`` repeats it until stopped.
    Preconditions: ``agent.start()`` was called. Only the runner's thread touches the agent;
    ``applying`` is held while the kernel changes, so whoever stops the process can wait for
    a transaction (and its record on disk) to finish.
    """

    def __init__(
        self,
        agent: Agent,
        control_plane: ControlPlane,
        settings: RemoteSettings | None = None,
        *,
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.agent = agent
        self.control_plane = control_plane
        self.settings = settings or RemoteSettings()
        self.report = report
        self.applying = threading.Lock()
        #: The revision the kernel holds (0: unknown, or nothing from the control plane).
        self.applied_revision = revision_of_digest(agent.source_digest)
        #: What to tell the server we hold: 0 asks for a full state at once.
        self.asking = self.applied_revision
        self.counters: dict[str, int] = {
            "applies_full": 0,
            "applies_delta": 0,
            "apply_failures": 0,
            "elements_changed": 0,
            "fallbacks_to_full": 0,
            "control_plane_errors": 0,
            "connections_cut": 0,
        }
        self._backoff = self.settings.backoff_initial
        self._unsent: StatusReport | None = None
        self._problem: str | None = None
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """``step`` until ``stop`` is set; nothing is applied once it is."""
        self._stop = stop
        while not stop.is_set():
            delay = self.step()
            if delay > 0:
                stop.wait(delay)

    def step(self) -> float:
        """One long-poll and its consequence. Returns how long to wait before the next one
        (0, or the backoff after an error). Never raises for the control plane's failures."""
        try:
            message = self.control_plane.watch(self.asking, self.settings.wait)
        except WireError as exc:
            # Garbage in an answer: the kernel keeps its table; a full state may read better.
            self.asking = 0
            self._unsent = self._status(SyncOutcome.INVALID.value, f"unreadable state: {exc}")
            self._send_unsent()  # the server answered, so it likely takes the report too
            return self._failed(f"unreadable desired state: {exc}")
        except (ControlPlaneUnavailable, ControlPlaneRefused) as exc:
            return self._failed(str(exc))
        if message.enforcer != self.agent.settings.enforcer:
            return self._failed(
                f"the control plane sent the state of {message.enforcer!r}, "
                f"not {self.agent.settings.enforcer!r}: ignored"
            )
        self._recovered()
        if message.kind is StateKind.UNCHANGED:
            self._send_unsent()
            return 0.0
        with self.applying:
            if self._stop.is_set():
                return 0.0
            began = time.perf_counter()
            result = self._apply(message)
        if result is None:  # a delta that does not fit: ask for a full state now
            self.counters["fallbacks_to_full"] += 1
            self.asking = 0
            return 0.0
        self._record(message, result, began)
        return 0.0

    def _apply(self, message: StateMessage) -> SyncResult | None:
        digest = _digest(message.revision)
        if message.kind is StateKind.FULL:
            assert message.ruleset is not None
            return self.agent.apply_ruleset(message.ruleset, digest)
        if message.base != self.applied_revision or self.applied_revision == 0:
            self.report(
                f"delta from revision {message.base}, but the kernel holds "
                f"{self.applied_revision or 'no known revision'}: asking for a full state"
            )
            return None
        try:
            result = self.agent.apply_element_delta(message.deltas, digest)
        except SeptumError as exc:  # no base table in memory (restored from disk)
            self.report(f"delta not applicable ({exc}): asking for a full state")
            return None
        if result.outcome is SyncOutcome.FAILED:
            self.report(f"delta refused by nft ({result.error}): asking for a full state")
            self.counters["apply_failures"] += 1
            return None
        return result

    def _record(self, message: StateMessage, result: SyncResult, began: float) -> None:
        agent = self.agent
        ok = result.outcome is not SyncOutcome.FAILED
        if ok:
            self.applied_revision = self.asking = message.revision
            kind = "applies_delta" if result.outcome is SyncOutcome.DELTA else "applies_full"
            if result.outcome is not SyncOutcome.UNCHANGED:
                self.counters[kind] += 1
            self.counters["elements_changed"] += result.elements_changed
            agent.last_error = None
            agent.report(
                f"revision {message.revision} applied ({result.outcome.value}, "
                f"{result.elements_changed} elements) in "
                f"{(time.perf_counter() - began) * 1000:.1f} ms"
            )
            if result.outcome is not SyncOutcome.UNCHANGED:
                self._cut_revoked()
        else:
            # Wait for the desired state to change rather than re-apply what nft refused;
            # the kernel still holds the previous table (all or nothing).
            self.asking = message.revision
            self.counters["apply_failures"] += 1
            if result.error != agent.last_error:
                agent.report(f"error: revision {message.revision}: {result.error}")
            agent.last_error = result.error
        agent.write_status()
        self._unsent = self._status(result.outcome.value, result.error)
        self._send_unsent()

    def _cut_revoked(self) -> None:
        """Delete the tracked connections the new policy denies, as ``Agent.cut_revoked``
        does for an agent that holds its repository: established connections would live
        on through the ``ct state established`` fast path. The control plane decides (this
        agent holds rulesets, not the policy that explains them); when it cannot be asked,
        the connections stay and the next change asks again."""
        agent = self.agent
        if agent.conntrack is None or not agent.settings.cut_revoked:
            return
        try:
            entries = agent.conntrack.entries()
        except (SeptumError, OSError) as exc:  # no conntrack tool or module: say so, go on
            self.report(f"revoked connections not cut: {exc}")
            return
        keys: dict[ConnectionKey, list[ConntrackEntry]] = {}
        for e in entries:
            port = e.destination_port if e.protocol in ("tcp", "udp", "sctp") else 0
            if e.protocol in _PROTOCOLS:
                keys.setdefault((e.source, e.destination, e.protocol, port), []).append(e)
        if not keys:
            return
        ordered = list(keys)
        try:
            denied = self.control_plane.denied(ordered)
        except (ControlPlaneUnavailable, ControlPlaneRefused) as exc:
            self.report(f"revoked connections not cut: {exc}")
            return
        doomed = [e for i in sorted(denied) if 0 <= i < len(ordered) for e in keys[ordered[i]]]
        if doomed:
            try:
                cut = agent.conntrack.delete(doomed)
            except (SeptumError, OSError) as exc:
                self.report(f"revoked connections not cut: {exc}")
                return
            self.counters["connections_cut"] += cut
            agent.report(f"{cut} connections the new policy denies were cut")

    def _status(self, outcome: str, error: str | None) -> StatusReport:
        return StatusReport(
            revision=self.applied_revision or None,
            outcome=outcome,
            error=error,
            counters=dict(self.counters),
        )

    def _send_unsent(self) -> None:
        if self._unsent is None:
            return
        try:
            self.control_plane.report_status(self._unsent)
        except (ControlPlaneUnavailable, ControlPlaneRefused) as exc:
            # Kept for the next successful long-poll: the server learns it late, not never.
            self.report(f"status not reported yet: {exc}")
            return
        self._unsent = None

    def _failed(self, problem: str) -> float:
        self.counters["control_plane_errors"] += 1
        if problem != self._problem:
            self.report(f"{problem}; keeping the table in force, retrying")
            self._problem = problem
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.settings.backoff_max)
        return delay

    def _recovered(self) -> None:
        if self._problem is not None:
            self.report("control plane reachable again")
            self._problem = None
        self._backoff = self.settings.backoff_initial


# ----------------------------------------------------------------------------- flows


class FlowUploader:
    """Sends the complete lines of ``flows.jsonl`` to the control plane in batches, and keeps
    the byte offset the server acknowledged in ``offset_path`` (replaced atomically after
    each batch).

    At least once, never twice in practice: a batch is sent, then its end is recorded; only
    a crash between the two resends it. A server that is down, busy or refusing our
    certificate delays lines (they stay in the file); a line that is not a flow record, and a
    batch the server refuses for its content (400, 422), are skipped and reported: retrying
    cannot help them, and they would hold up every later record. A file that shrank or
    was replaced (rotation) is read from its start. Lines appended to a file after it was
    rotated away are not sent.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        flows: Path,
        offset_path: Path,
        *,
        batch: int = 1000,
        interval: float = 2.0,
        backoff_max: float = 30.0,
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.control_plane = control_plane
        self.flows = flows
        self.offset_path = offset_path
        self.batch = batch
        self.interval = interval
        self.backoff_max = backoff_max
        self.report = report
        #: Records the server took; lines that are not records; records the server refused.
        self.sent = 0
        self.skipped = 0
        self.refused = 0

    def _load_offset(self, st: os.stat_result) -> int:
        try:
            doc = json.loads(self.offset_path.read_text())
            offset, inode = int(doc["offset"]), int(doc["inode"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        if inode != st.st_ino or offset > st.st_size:
            return 0  # another file now, or truncated: start over
        return offset

    def _save_offset(self, offset: int, inode: int) -> None:
        self.offset_path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"path": str(self.flows), "inode": inode, "offset": offset})
        tmp = self.offset_path.with_name(f".{self.offset_path.name}.tmp")
        with tmp.open("w") as f:
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)

    def upload_once(self) -> int:
        """Send every complete line written since the last acknowledged offset. Returns the
        number of records sent; raises ``ControlPlaneUnavailable``/``ControlPlaneRefused``
        (what was acknowledged before stays acknowledged)."""
        try:
            st = self.flows.stat()
        except FileNotFoundError:
            return 0
        offset = self._load_offset(st)
        sent = 0
        with self.flows.open("rb") as f:
            f.seek(offset)
            for batch, end in self._batches(f, offset):
                if batch:
                    sent += self._post(batch)
                self._save_offset(end, st.st_ino)
        self.sent += sent
        return sent

    def _post(self, batch: list[dict[str, object]]) -> int:
        try:
            self.control_plane.post_flows(batch)
        except ControlPlaneRefused as exc:
            if exc.status == 413:  # too many for one request: smaller batches from now on
                self.batch = max(1, self.batch // 2)
            if exc.status not in (400, 422):
                raise  # revoked, busy (409), too large: the same lines go again later
            # Refused for what the records hold: sending them again cannot help, and
            # holding them would stop every later record. They stay in the file.
            self.refused += len(batch)
            self.report(f"{self.flows}: the server refused {len(batch)} records: {exc}")
            return 0
        return len(batch)

    def _batches(self, f: Any, offset: int) -> Iterator[tuple[list[dict[str, object]], int]]:
        """(records, offset after their lines), reading complete lines only."""
        records: list[dict[str, object]] = []
        position = yielded = offset
        for line in f:
            if not line.endswith(b"\n"):
                break  # being written: the next pass takes it whole
            position += len(line)
            record = self._record(line)
            if record is not None:
                records.append(record)
            if len(records) >= self.batch:
                yield records, position
                records, yielded = [], position
        if records or position != yielded:
            yield records, position

    def _record(self, line: bytes) -> dict[str, object] | None:
        if not line.strip():
            return None
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise CaptureError(f"not an object: {line[:80]!r}")
            FlowRecord.from_json(doc)  # refuse locally what the server would refuse
        except (ValueError, CaptureError) as exc:
            self.skipped += 1
            self.report(f"{self.flows}: skipping a line that is not a flow record ({exc})")
            return None
        return doc

    def run(self, stop: threading.Event) -> None:
        """Upload every ``interval`` seconds until ``stop``; back off while the server is
        down or refusing."""
        delay = self.interval
        problem: str | None = None
        while not stop.wait(delay):
            try:
                self.upload_once()
            except (ControlPlaneUnavailable, ControlPlaneRefused) as exc:
                if str(exc) != problem:
                    self.report(f"flow upload delayed: {exc}")
                    problem = str(exc)
                delay = min(max(delay * 2, self.interval), self.backoff_max)
                continue
            except OSError as exc:
                self.report(f"flow upload: {self.flows}: {exc.strerror or exc}")
                delay = self.backoff_max
                continue
            if problem is not None:
                self.report("flow upload resumed")
                problem = None
            delay = self.interval


# ----------------------------------------------------------------------------- process


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run_remote_agent(
    settings: AgentSettings,
    client: ControlPlane,
    stop: threading.Event,
    *,
    remote: RemoteSettings | None = None,
    flows: Path | None = None,
    flow_interval: float = 5.0,
    backend: NftBackend | None = None,
    conntrack: ConntrackTable | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """Run an agent that follows the control plane until ``stop`` is set. Exit status: 0, or
    1 when the watch thread died of a bug.

    The long-poll runs in a daemon thread so that a stop does not wait for it to return:
    this function waits only for a transaction in progress (and its record on disk), then
    stops flow capture and makes one last upload attempt."""
    if backend is None:
        backend = default_backend()
        report(f"nftables backend: {type(backend).__name__}")
    agent = Agent(settings, ControlPlaneSource(), backend, conntrack=conntrack, report=report)
    agent.start()
    recorder: FlowRecorder | None = None
    uploader: FlowUploader | None = None
    if flows is not None:
        # The agent holds rulesets, not the repository: accepted flows are recorded
        # without provenance, which the server adds at ingest (``flows_api``).
        recorder = flow_recorder(agent, flows, flow_interval)
        recorder.start()
        uploader = FlowUploader(
            client, flows, settings.state_dir / "flows.offset.json", report=report
        )
    # Only now say "applied" (as runner.py does): whoever waits for it may send traffic.
    agent.write_status()
    runner = RemoteRunner(agent, client, remote, report=report)
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            runner.run(stop)
        except BaseException as exc:  # a bug: reported, and the process exits 1
            failure.append(exc)
            report(f"error: the watch thread failed: {exc!r}")
            raise

    threads = [threading.Thread(target=watch, name="septum-agent-watch", daemon=True)]
    if uploader is not None:
        threads.append(
            threading.Thread(
                target=uploader.run, args=(stop,), name="septum-flow-upload", daemon=True
            )
        )
    for t in threads:
        t.start()
    try:
        while not stop.is_set() and threads[0].is_alive():
            stop.wait(0.5)
    finally:
        stop.set()
        with runner.applying:
            pass  # a transaction in progress finishes and is recorded
        if recorder is not None:
            recorder.stop()
        if uploader is not None:
            if len(threads) > 1:
                threads[1].join(timeout=5)
            with contextlib.suppress(ControlPlaneUnavailable, ControlPlaneRefused, OSError):
                uploader.upload_once()
    return 1 if failure else 0
