"""Bringing a lab up and down: state directory, namespaces, processes and agents.

::

    lab_up(DIR) ── load_repository ──► plan_lab ──► same shape as lab.json?
                     │                               ├─ no:  tear down, build (netns phases)
                     │                               └─ yes: move addresses in place
                     ├─► start missing nodes (one per endpoint) and agents (one per enforcer)
                     └─► wait: every node answers, every agent applied the repository digest
    lab_down(DIR) ─► stop processes (recorded ones, and anything still inside our namespaces)
                     ─► delete every ``<prefix>br|h<n>|c<n>`` namespace ─► remove the state

The state directory (default ``/tmp/septum-lab-<sha256(abs DIR)[:8]>``) holds ``lab.json``
(prefix, plan, processes), the nodes' control sockets (``n/<h0|c0>.sock``), the agents'
state (``agents/<enforcer>/``, with ``status.json``), their flow logs (``flows/``) and every
process's output (``logs/``). ``lab.json`` is written *before* anything is created and after
every change, and ``down`` also finds what it never recorded (namespaces by prefix, processes
inside them with ``ip netns pids``, and nodes or agents naming the state directory in their
arguments), so ``down`` works after any partial failure and is idempotent. It removes only the
files a lab writes, so a ``--state`` pointing at a directory with other files keeps them.

Processes are started with ``start_new_session=True`` (each leads its own process group, so
an agent's helpers stop with it) and only ever signalled when they run inside this lab's
namespaces or their arguments show a node or agent of this lab's state directory (a recorded
pid that was reused by another process is left alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from septum.lab import node as lab_node
from septum.lab.netns import (
    CommandRunner,
    SubprocessRunner,
    address_sync_phases,
    apply_phases,
    delete_namespaces,
    lab_namespaces,
    namespace_pids,
    read_addresses,
    topology_phases,
)
from septum.lab.plan import LabEndpoint, LabError, LabPlan, plan_lab, validate_prefix
from septum.model.resources import IPAddress

__all__ = [
    "AgentStatus",
    "LabDownReport",
    "LabPaths",
    "LabState",
    "LabUpReport",
    "ProcessRecord",
    "default_prefix",
    "default_state_dir",
    "lab_down",
    "lab_up",
    "load_lab",
    "wait_for_agents",
]

STATE_VERSION = 1
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
_NODE_START_TIMEOUT = 20.0
_STOP_GRACE = 5.0

#: Popen objects of the processes this Python process started, so that they are reaped
#: (no zombies in a long-lived caller such as a test run) and not warned about when collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# ---------------------------------------------------------------------------- state


def default_state_dir(repo_dir: Path) -> Path:
    """``/tmp/septum-lab-<first 8 hex of sha256(absolute repository path)>``."""
    digest = hashlib.sha256(str(repo_dir.resolve()).encode()).hexdigest()[:8]
    return Path("/tmp") / f"septum-lab-{digest}"


def default_prefix(state_dir: Path) -> str:
    """``septum-l<8 hex>-``, from the absolute state directory: one lab per state dir."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"septum-l{digest}-"


@dataclass(frozen=True, slots=True)
class LabPaths:
    """Where a lab keeps its files (all below ``root``)."""

    root: Path

    @property
    def lab_json(self) -> Path:
        return self.root / "lab.json"

    def socket(self, endpoint: LabEndpoint) -> Path:
        return self.root / "n" / f"{endpoint.short}.sock"

    def agent_state(self, enforcer: str) -> Path:
        return self.root / "agents" / enforcer

    def agent_status(self, enforcer: str) -> Path:
        return self.agent_state(enforcer) / "status.json"

    def flows(self, enforcer: str) -> Path:
        return self.root / "flows" / f"{enforcer}.jsonl"

    def log(self, key: str) -> Path:
        return self.root / "logs" / f"{key.replace(':', '-')}.log"


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process the lab started: ``key`` is ``node:<h0|c0>`` or ``agent:<enforcer>``."""

    key: str
    pid: int
    namespace: str
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "pid": self.pid,
            "namespace": self.namespace,
            "argv": list(self.argv),
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        argv = data["argv"]
        if not isinstance(argv, list):
            raise ValueError("lab state: argv must be a list")
        return cls(
            str(data["key"]),
            int(str(data["pid"])),
            str(data["namespace"]),
            tuple(str(a) for a in argv),
            str(data["log"]),
        )


@dataclass(frozen=True, slots=True)
class LabState:
    """What ``lab.json`` records. ``built`` is False until the whole topology exists."""

    repo: str
    prefix: str
    plan: LabPlan
    agents: bool
    built: bool = False
    processes: Mapping[str, ProcessRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "version": STATE_VERSION,
            "repo": self.repo,
            "prefix": self.prefix,
            "agents": self.agents,
            "built": self.built,
            "namespaces": list(self.plan.namespaces),
            "processes": {k: p.to_json() for k, p in sorted(self.processes.items())},
            "plan": self.plan.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LabState:
        plan = data["plan"]
        processes = data.get("processes", {})
        if not isinstance(plan, dict) or not isinstance(processes, dict):
            raise ValueError("lab.json: plan and processes must be objects")
        return cls(
            repo=str(data["repo"]),
            prefix=str(data["prefix"]),
            plan=LabPlan.from_json(plan),
            agents=bool(data["agents"]),
            built=bool(data.get("built", False)),
            processes={str(k): ProcessRecord.from_json(v) for k, v in processes.items()},
        )


def _read_state(paths: LabPaths) -> LabState | None:
    """The recorded state, or None when there is none (or it is unreadable: ``down`` must
    still work, and finds what it needs by prefix)."""
    try:
        data = json.loads(paths.lab_json.read_text())
        if data.get("version") != STATE_VERSION:
            return None
        return LabState.from_json(data)
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        return None


def _write_state(paths: LabPaths, state: LabState) -> None:
    """Atomically (write, then rename)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.lab_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    tmp.replace(paths.lab_json)


@contextlib.contextmanager
def _locked(paths: LabPaths) -> Iterator[None]:
    """One ``up`` or ``down`` at a time per state directory."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with (paths.root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def load_lab(repo_dir: Path, state_dir: Path | None = None) -> tuple[LabState, LabPaths]:
    """The lab built for ``repo_dir`` (LabError when there is none)."""
    paths = LabPaths((state_dir or default_state_dir(repo_dir)).resolve())
    state = _read_state(paths)
    if state is None or not state.built:
        raise LabError(f"no lab at {paths.root}: run `septum lab up {repo_dir}` first")
    if state.repo != str(repo_dir.resolve()):
        raise LabError(f"the lab at {paths.root} was built for {state.repo}, not {repo_dir}")
    return state, paths


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("septum lab needs root: it creates network namespaces")
    if shutil.which("ip") is None:
        raise LabError("septum lab needs iproute2 (the `ip` command)")


# ---------------------------------------------------------------------------- processes


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping our own children first)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_lab_process(argv: list[str], root: Path) -> bool:
    """A node or agent of the lab whose state directory is ``root``: the module it runs and
    a path below ``root`` are separate arguments (a shell that merely mentions the path in
    one ``-c`` string never matches)."""
    below = str(root) + "/"
    runs_lab_code = "septum.lab.node" in argv or ("septum.cli.main" in argv and "agent" in argv)
    return runs_lab_code and any(a.startswith(below) for a in argv)


def _ours(record: ProcessRecord, paths: LabPaths) -> bool:
    """Whether ``record.pid`` is still the process we started, not a reused pid."""
    return _is_lab_process(_argv(record.pid), paths.root)


def _lab_processes(paths: LabPaths) -> set[int]:
    """Every process on the machine that is a node or agent of this lab, recorded or not
    (e.g. one left in a namespace someone deleted). Cost: reads /proc/*/cmdline."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return {pid for pid in pids if pid != os.getpid() and _is_lab_process(_argv(pid), paths.root)}


def _start(key: str, namespace: str, argv: list[str], paths: LabPaths) -> ProcessRecord:
    log = paths.log(key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[child.pid] = child
    return ProcessRecord(key, child.pid, namespace, tuple(argv), str(log))


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _stop(groups: set[int], pids: set[int]) -> list[int]:
    """SIGTERM the process groups ``groups`` and processes ``pids``, wait up to a few
    seconds, then SIGKILL what is left. Returns every pid signalled."""
    everyone = groups | pids
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, 2.0)):
        living = [p for p in everyone if _alive(p)]
        if not living:
            break
        for pid in groups:
            _signal(pid, sig, group=True)
        for pid in living:
            _signal(pid, sig, group=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in everyone):
            time.sleep(0.05)
    for pid in everyone:
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)
    return sorted(everyone)


def _tail(path: str, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# ---------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """An agent's last ``status.json`` (None fields: not reported yet)."""

    enforcer: str
    pid: int | None = None
    source_digest: str | None = None
    applied: bool = False
    error: str | None = None
    updated_at: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "enforcer": self.enforcer,
            "pid": self.pid,
            "source_digest": self.source_digest,
            "applied": self.applied,
            "error": self.error,
            "updated_at": self.updated_at,
        }


def _agent_status(paths: LabPaths, enforcer: str) -> AgentStatus:
    try:
        data = json.loads(paths.agent_status(enforcer).read_text())
    except (OSError, ValueError):
        return AgentStatus(enforcer)
    if not isinstance(data, dict):
        return AgentStatus(enforcer)
    pid, digest, error = data.get("pid"), data.get("source_digest"), data.get("error")
    updated = data.get("updated_at")
    return AgentStatus(
        enforcer=enforcer,
        pid=pid if isinstance(pid, int) else None,
        source_digest=digest if isinstance(digest, str) else None,
        applied=data.get("applied") is True,
        error=None if error is None else str(error),
        updated_at=None if updated is None else str(updated),
    )


def wait_for_agents(
    state: LabState, paths: LabPaths, repo_dir: Path, timeout: float
) -> tuple[AgentStatus, ...]:
    """Wait until every agent of the lab reports the repository's current digest applied.
    Raises LabError naming the agents that did not (with their ``error``) after ``timeout``
    seconds, or at once when an agent process has exited. Cost: polls every 0.2 s."""
    from septum.sources.files import repository_digest

    if not state.agents:
        return ()
    digest = repository_digest(repo_dir.resolve())
    deadline = time.monotonic() + timeout
    while True:
        statuses = [_agent_status(paths, e) for e, _ in state.plan.agents]
        pending = [s for s in statuses if not (s.applied and s.source_digest == digest)]
        if not pending:
            return tuple(statuses)
        for s in pending:
            record = state.processes.get(f"agent:{s.enforcer}")
            if record is not None and not _alive(record.pid):
                raise LabError(
                    f"agent {s.enforcer} exited (last error: {s.error}); its log "
                    f"{record.log}: {_tail(record.log)}"
                )
        if time.monotonic() >= deadline:
            described = "; ".join(
                f"{s.enforcer}: "
                + (
                    "no status yet"
                    if s.updated_at is None
                    else f"applied={s.applied}, digest "
                    f"{'current' if s.source_digest == digest else 'stale'}, error={s.error}"
                )
                for s in pending
            )
            raise LabError(
                f"{len(pending)} agent(s) did not apply the repository within {timeout:g} s: "
                + described
            )
        time.sleep(0.2)


def _agent_argv(paths: LabPaths, repo_dir: Path, enforcer: str) -> list[str]:
    paths.agent_state(enforcer).mkdir(parents=True, exist_ok=True)
    paths.flows(enforcer).parent.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "septum.cli.main",
        "agent",
        "--enforcer",
        enforcer,
        "--repo",
        str(repo_dir),
        "--state-dir",
        str(paths.agent_state(enforcer)),
        "--flows",
        str(paths.flows(enforcer)),
        "--flow-interval",
        "2",  # short, so that a lab shows its flows soon
    ]


def _node_argv(paths: LabPaths, endpoint: LabEndpoint) -> list[str]:
    return [
        sys.executable,
        "-m",
        "septum.lab.node",
        "--name",
        endpoint.name,
        "--control",
        str(paths.socket(endpoint)),
    ]


async def _ping_nodes(plan: LabPlan, paths: LabPaths, timeout: float) -> list[str]:
    """Wait until every node answers a ping; returns the endpoints that never did."""

    async def ping(e: LabEndpoint) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = await lab_node.call(paths.socket(e), {"op": "ping"}, 2.0)
                if answer.get("name") == e.name:
                    return None
            except (OSError, TimeoutError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return e.name
            await asyncio.sleep(0.1)

    missing = await asyncio.gather(*(ping(e) for e in plan.endpoints))
    return [m for m in missing if m is not None]


# ---------------------------------------------------------------------------- up / down


@dataclass(frozen=True, slots=True)
class LabUpReport:
    """What ``up`` did. ``built``: the topology was made from nothing (else re-synced in
    place); ``address_changes``: workload → (added, removed) addresses of a re-sync."""

    state_dir: Path
    plan: LabPlan
    built: bool
    address_changes: Mapping[str, tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]]
    started: tuple[str, ...]
    stopped: tuple[str, ...]
    agents: tuple[AgentStatus, ...]
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "state_dir": str(self.state_dir),
            "prefix": self.plan.prefix,
            "built": self.built,
            "endpoints": [e.to_json() for e in self.plan.endpoints],
            "skipped": [{"workload": w, "reason": r} for w, r in self.plan.skipped],
            "address_changes": {
                name: {"added": [str(a) for a in added], "removed": [str(a) for a in removed]}
                for name, (added, removed) in self.address_changes.items()
            },
            "started": list(self.started),
            "stopped": list(self.stopped),
            "agents": [a.to_json() for a in self.agents],
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True, slots=True)
class LabDownReport:
    state_dir: Path
    namespaces: tuple[str, ...]  # deleted
    processes: tuple[int, ...]  # signalled
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "state_dir": str(self.state_dir),
            "namespaces": list(self.namespaces),
            "processes": list(self.processes),
            "seconds": round(self.seconds, 2),
        }


def _resolve_prefix(state: LabState | None, prefix: str | None, paths: LabPaths) -> str:
    if state is not None:
        if prefix is not None and prefix != state.prefix:
            raise LabError(f"the lab at {paths.root} uses prefix {state.prefix!r}, not {prefix!r}")
        return state.prefix
    return validate_prefix(prefix or default_prefix(paths.root))


def _check_socket_paths(plan: LabPlan, paths: LabPaths) -> None:
    for e in plan.endpoints:
        path = paths.socket(e)
        if len(str(path).encode()) > _UNIX_PATH_MAX:
            raise LabError(
                f"state directory {paths.root} is too long for unix socket paths "
                f"({path}): use a shorter --state"
            )


def _teardown(
    paths: LabPaths, prefixes: set[str], state: LabState | None, runner: CommandRunner
) -> tuple[list[str], list[int]]:
    """Stop every lab process and delete every namespace of the lab's prefixes; the state
    files stay. Raises LabError when a namespace survives."""
    namespaces = {ns for p in prefixes for ns in lab_namespaces(runner, p)}
    groups = {r.pid for r in (state.processes.values() if state else ()) if _ours(r, paths)}
    inside = {pid for ns in namespaces for pid in namespace_pids(runner, ns)}
    signalled = _stop(groups, (inside | _lab_processes(paths)) - {os.getpid()})
    ordered = sorted(namespaces, key=lambda n: (not n.endswith("br"), n))
    delete_namespaces(runner, ordered)
    left = {ns for p in prefixes for ns in lab_namespaces(runner, p)}
    if left:
        raise LabError(
            f"could not delete namespaces {', '.join(sorted(left))}"
            + ("" if os.geteuid() == 0 else " (this needs root)")
        )
    return ordered, signalled


def lab_up(
    repo_dir: Path,
    *,
    state_dir: Path | None = None,
    prefix: str | None = None,
    agents: bool = True,
    timeout: float = 120.0,
    runner: CommandRunner | None = None,
    now: datetime | None = None,
) -> LabUpReport:
    """Build (or re-sync) the lab for the repository at ``repo_dir`` and wait until it is
    ready: every node answers and, with ``agents``, every agent applied the repository.

    A lab that exists with the same shape (endpoints, namespaces, enforcers) is kept: only
    addresses that changed in the repository are moved, missing processes restarted, and
    agents started or stopped to match ``agents``. Any other lab under the same state
    directory or prefix is torn down first. Cost: about four ``ip`` processes per namespace
    to build (1–2 s for 30 namespaces), one Python process per endpoint and per agent, then
    the agents' own start-up. Raises LabError (and ValidationError for a bad repository).
    """
    from septum.sources.files import load_repository

    started_at = time.monotonic()
    _require_root()
    runner = runner or SubprocessRunner()
    repo_dir = repo_dir.resolve()
    paths = LabPaths((state_dir or default_state_dir(repo_dir)).resolve())
    repo = load_repository(repo_dir)
    with _locked(paths):
        state = _read_state(paths)
        prefix = _resolve_prefix(state, prefix, paths)
        plan = plan_lab(repo, now or datetime.now(UTC), prefix)
        _check_socket_paths(plan, paths)
        existing = set(lab_namespaces(runner, prefix))
        reusable = (
            state is not None
            and state.built
            and state.repo == str(repo_dir)
            and state.plan.shape() == plan.shape()
            and existing == set(plan.namespaces)
        )
        changes: dict[str, tuple[list[IPAddress], list[IPAddress]]] = {}
        if reusable:
            assert state is not None
            current = {e.name: read_addresses(runner, e.namespace) for e in plan.endpoints}
            phases, changes = address_sync_phases(plan, current)
            apply_phases(runner, phases)
            state = replace(state, plan=plan, agents=agents)
        else:
            if state is not None or existing:
                _teardown(paths, {prefix} | ({state.prefix} if state else set()), state, runner)
            for stale in ("n", "agents", "flows"):
                shutil.rmtree(paths.root / stale, ignore_errors=True)
            (paths.root / "n").mkdir(parents=True)
            state = LabState(repo=str(repo_dir), prefix=prefix, plan=plan, agents=agents)
            _write_state(paths, state)  # before creating anything: `down` finds it all
            apply_phases(runner, topology_phases(plan))
            state = replace(state, built=True)
        _write_state(paths, state)
        state, started, stopped = _sync_processes(state, paths, repo_dir, runner)
        missing = asyncio.run(_ping_nodes(plan, paths, _NODE_START_TIMEOUT))
        if missing:
            logs = "; ".join(
                f"{m}: {_tail(state.processes[f'node:{plan.endpoint(m).short}'].log, 3)}"
                for m in missing
            )
            raise LabError(f"lab nodes did not start: {logs}")
        statuses = wait_for_agents(state, paths, repo_dir, timeout)
    return LabUpReport(
        state_dir=paths.root,
        plan=plan,
        built=not reusable,
        address_changes={k: (tuple(a), tuple(r)) for k, (a, r) in changes.items()},
        started=tuple(started),
        stopped=tuple(stopped),
        agents=statuses,
        seconds=time.monotonic() - started_at,
    )


def _sync_processes(
    state: LabState, paths: LabPaths, repo_dir: Path, runner: CommandRunner
) -> tuple[LabState, list[str], list[str]]:
    """Start the nodes and agents the lab should have and does not; stop agents it should not
    have (``--no-agents``), flushing the ruleset they left. Records every change."""
    wanted: dict[str, tuple[str, list[str]]] = {
        f"node:{e.short}": (e.namespace, _node_argv(paths, e)) for e in state.plan.endpoints
    }
    if state.agents:
        for enforcer, host in state.plan.agents:
            wanted[f"agent:{enforcer}"] = (host.namespace, _agent_argv(paths, repo_dir, enforcer))
    processes = dict(state.processes)
    started: list[str] = []
    stopped: list[str] = []
    for key, record in sorted(processes.items()):
        keep = key in wanted and tuple(wanted[key][1]) == record.argv
        if keep and _alive(record.pid) and _ours(record, paths):
            continue
        if _alive(record.pid) and _ours(record, paths):
            _stop({record.pid}, set())
            stopped.append(key)
            if key.startswith("agent:") and key not in wanted and shutil.which("nft"):
                runner.run(
                    ["ip", "netns", "exec", record.namespace, "nft", "flush", "ruleset"],
                    check=False,
                )
        del processes[key]
    for key, (namespace, argv) in sorted(wanted.items()):
        if key not in processes:
            processes[key] = _start(key, namespace, argv, paths)
            started.append(key)
            state = replace(state, processes=dict(processes))
            _write_state(paths, state)
    return replace(state, processes=processes), started, stopped


#: What a lab writes in its state directory; ``down`` removes these and nothing else.
_STATE_ENTRIES = ("n", "agents", "flows", "logs", "lab.json", "lab.json.tmp", ".lock")


def _remove_state(paths: LabPaths) -> None:
    """Remove the lab's own files, then the directory if that left it empty (a ``--state``
    pointing at a directory with other files in it keeps them)."""
    for name in _STATE_ENTRIES:
        entry = paths.root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        paths.root.rmdir()


def lab_down(
    repo_dir: Path,
    *,
    state_dir: Path | None = None,
    prefix: str | None = None,
    runner: CommandRunner | None = None,
) -> LabDownReport:
    """Stop every process of the lab, delete its namespaces and remove its state directory.

    Works from whatever is left: the recorded state if readable, else the prefix (given, or
    derived from the state directory). Idempotent: a second call finds nothing and succeeds.
    Cost: about a second per process that ignores SIGTERM, plus one ``ip`` per namespace.
    """
    started_at = time.monotonic()
    runner = runner or SubprocessRunner()
    paths = LabPaths((state_dir or default_state_dir(repo_dir)).resolve())
    state = _read_state(paths)
    prefixes = {state.prefix} if state is not None else set()
    if prefix is not None:
        prefixes.add(validate_prefix(prefix))
    if not prefixes:
        prefixes.add(default_prefix(paths.root))
    deleted, signalled = _teardown(paths, prefixes, state, runner)
    _remove_state(paths)
    return LabDownReport(
        state_dir=paths.root,
        namespaces=tuple(deleted),
        processes=tuple(signalled),
        seconds=time.monotonic() - started_at,
    )
