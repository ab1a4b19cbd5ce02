"""Probing a lab: real TCP and UDP connections compared with ``explain``'s prediction.

::

    repository ──► probe_targets ──► (protocol, port) points, with the services they test
    LabPlan ─────► probe_set ──────► every ordered pair of distinct endpoints × family × point
                        │
                        ├─► Evaluator.explain ──► predicted allow/deny (effective verdict)
                        └─► nodes (unix sockets) ──► connected / blocked, and who answered
                                       │
                                  ProbeReport: matrix, disagreements (retried once)

What is probed: every TCP/UDP port range of every Service, of every rule's inline ports and of
the failsafe entries, at its first port and (when different) its last; port 0 is not
connectable, so a range starting at 0 is probed at 1. ``any`` is probed as TCP port
``ANY_PORT``; ICMP, ICMPv6 and SCTP are skipped and counted. Each pair is probed in each
address family both endpoints have, from and to their first address of that family.

A probe agrees when the observation matches the prediction and, when it connected, the
intended workload answered (a reply from another namespace is a plumbing error). Probes that
disagree are run once more, gently (16 sockets per node, twice the timeout), before being
reported, so that a busy machine or a neighbour-discovery hiccup does not show up as a policy
bug.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from septum.engine.explain import Evaluator, Flow, Verdict
from septum.lab import node as lab_node
from septum.lab.control import LabPaths, load_lab, wait_for_agents
from septum.lab.plan import LabEndpoint, LabError, LabPlan, plan_lab
from septum.model.resources import IPAddress, Protocol, Repository, ServicePort

__all__ = [
    "ANY_PORT",
    "MatrixCell",
    "Probe",
    "ProbeReport",
    "ProbeResult",
    "probe_lab",
    "probe_set",
    "probe_targets",
]

#: The TCP port probed for a service entry ``any`` (every protocol and port).
ANY_PORT = 9
PROBE_TIMEOUT = 1.5  # seconds without an answer: blocked
#: The retry of disagreeing probes is gentle (few sockets per node, twice the timeout), so
#: that a result caused by load on the machine is not reported as a policy disagreement.
_RETRY_CONCURRENCY = 16

_Point = tuple[Protocol, int]


@dataclass(frozen=True, slots=True)
class Probe:
    """One connection to try: from ``source`` to ``destination`` (workload names) at these
    addresses, ``protocol``/``port``; ``services`` names what in the repository made us
    probe this point."""

    source: str
    destination: str
    source_address: IPAddress
    destination_address: IPAddress
    protocol: Protocol
    port: int
    services: tuple[str, ...] = ()

    def flow(self, at: datetime) -> Flow:
        return Flow(self.source_address, self.destination_address, self.protocol, self.port, at)

    def __str__(self) -> str:
        return (
            f"{self.source} ({self.source_address}) -> {self.destination} "
            f"({self.destination_address}) {self.protocol.value}/{self.port}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "destination": self.destination,
            "source_address": str(self.source_address),
            "destination_address": str(self.destination_address),
            "protocol": self.protocol.value,
            "port": self.port,
            "services": list(self.services),
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A probe with its prediction (``predicted``: explain's effective verdict is allow and
    ``summary`` its one-line explanation) and observation (``connected``: an echo came back;
    ``responder``: the workload that sent it; ``detail``: echo, timeout, refused, eperm …).
    ``retried``: the first attempt disagreed and this is the second."""

    probe: Probe
    predicted: bool
    summary: str
    connected: bool
    detail: str
    responder: str | None = None
    retried: bool = False

    @property
    def misdelivered(self) -> bool:
        return self.connected and self.responder != self.probe.destination

    @property
    def agrees(self) -> bool:
        return not self.misdelivered and self.predicted == self.connected

    def describe(self) -> str:
        expected = "allow" if self.predicted else "deny"
        if self.misdelivered:
            observed = f"answered by {self.responder}"
        else:
            observed = "connected" if self.connected else f"blocked ({self.detail})"
        return f"{self.probe}: predicted {expected}, observed {observed} — {self.summary}"

    def to_json(self) -> dict[str, object]:
        return {
            **self.probe.to_json(),
            "predicted": "allow" if self.predicted else "deny",
            "observed": "connected" if self.connected else "blocked",
            "detail": self.detail,
            "responder": self.responder,
            "agrees": self.agrees,
            "retried": self.retried,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class MatrixCell:
    """The probes of one (source, destination) pair: how many connected, of how many, and
    how many disagreed with the prediction."""

    connected: int = 0
    total: int = 0
    disagreements: int = 0


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """The outcome of ``probe_lab``: ``endpoints`` in matrix order (hosts, then containers),
    every result, the skipped service entries counted by reason, and how long it took."""

    endpoints: tuple[LabEndpoint, ...]
    results: tuple[ProbeResult, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)
    agents: bool = True
    seconds: float = 0.0

    @property
    def disagreements(self) -> tuple[ProbeResult, ...]:
        return tuple(r for r in self.results if not r.agrees)

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def cells(self) -> dict[tuple[str, str], MatrixCell]:
        """(source, destination) → MatrixCell, for pairs that were probed."""
        counts: dict[tuple[str, str], list[int]] = {}
        for r in self.results:
            c = counts.setdefault((r.probe.source, r.probe.destination), [0, 0, 0])
            c[0] += r.connected and not r.misdelivered
            c[1] += 1
            c[2] += not r.agrees
        return {k: MatrixCell(*v) for k, v in counts.items()}

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "probes": len(self.results),
            "connected": sum(r.connected for r in self.results),
            "disagreements": [r.to_json() for r in self.disagreements],
            "skipped": dict(self.skipped),
            "agents": self.agents,
            "seconds": round(self.seconds, 2),
            "endpoints": [e.to_json() for e in self.endpoints],
            "matrix": [
                {
                    "source": s,
                    "destination": d,
                    "connected": c.connected,
                    "total": c.total,
                    "disagreements": c.disagreements,
                }
                for (s, d), c in sorted(self.cells().items())
            ],
            "results": [r.to_json() for r in self.results],
        }


# ---------------------------------------------------------------------------- pure part


def _points(entry: ServicePort) -> tuple[list[_Point], str | None]:
    """The points that probe one service entry, or the reason it is skipped."""
    if entry.protocol is None:
        return [(Protocol.TCP, ANY_PORT)], None
    if entry.protocol not in (Protocol.TCP, Protocol.UDP):
        return [], entry.protocol.value
    first, last = max(entry.ports.first, 1), entry.ports.last
    if last < first:
        return [], "port 0"
    return [(entry.protocol, p) for p in sorted({first, last})], None


def probe_targets(repo: Repository) -> tuple[dict[_Point, tuple[str, ...]], dict[str, int]]:
    """(protocol, port) → the names of what asks for it (Service names, ``policy P`` for
    inline rule ports, ``failsafe``), and skipped entries counted by reason. Pure; cost
    O(services + rules)."""
    wanted: dict[_Point, set[str]] = {}
    skipped: dict[str, int] = {}

    def add(entry: ServicePort, why: str) -> None:
        points, reason = _points(entry)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
        for point in points:
            wanted.setdefault(point, set()).add(why)

    named: set[ServicePort] = set()
    for service in repo.services:
        for entry in service.ports:
            add(entry, service.name)
            named.add(entry)
    for policy in repo.policies:
        for rules in (policy.ingress or (), policy.egress or ()):
            for rule in rules:
                refs = {p for s in repo.services if s.name in rule.service_refs for p in s.ports}
                for entry in rule.services:
                    if entry not in refs:
                        add(entry, f"policy {policy.name}")
    for entry in (e for f in repo.settings.failsafe for e in f.services):
        add(entry, "failsafe")
    order = sorted(wanted, key=lambda p: (p[0].value, p[1]))
    return {p: tuple(sorted(wanted[p])) for p in order}, skipped


def probe_set(plan: LabPlan, targets: Mapping[_Point, tuple[str, ...]]) -> list[Probe]:
    """Every ordered pair of distinct endpoints × every family both have × every target.
    Pure; cost O(endpoints² × targets)."""
    probes: list[Probe] = []
    for src in plan.endpoints:
        for dst in plan.endpoints:
            if src.name == dst.name:
                continue
            for version in (4, 6):
                sa, da = src.address(version), dst.address(version)
                if sa is None or da is None:
                    continue
                probes.extend(
                    Probe(src.name, dst.name, sa, da, protocol, port, why)
                    for (protocol, port), why in targets.items()
                )
    return probes


# ---------------------------------------------------------------------------- I/O part


async def _ask_all(
    requests: Mapping[Path, dict[str, Any]], timeout: float
) -> dict[Path, dict[str, Any]]:
    paths = list(requests)
    answers = await asyncio.gather(
        *(lab_node.call(p, requests[p], timeout) for p in paths), return_exceptions=True
    )
    result: dict[Path, dict[str, Any]] = {}
    for path, answer in zip(paths, answers, strict=True):
        if isinstance(answer, BaseException):
            raise LabError(f"lab node {path.name} did not answer: {answer!r} (run `lab up`)")
        if not answer.get("ok"):
            raise LabError(f"lab node {path.name}: {answer.get('error') or answer.get('errors')}")
        result[path] = answer
    return result


def _run(
    plan: LabPlan,
    paths: LabPaths,
    probes: Sequence[Probe],
    timeout: float,
    concurrency: int = lab_node.CONCURRENCY,
) -> list[dict[str, Any]]:
    """Run ``probes`` from their sources' nodes, all nodes at once, at most ``concurrency``
    sockets in flight per node; one answer per probe."""
    sockets = {e.name: paths.socket(e) for e in plan.endpoints}
    batches: dict[Path, list[dict[str, Any]]] = {}
    for i, p in enumerate(probes):
        batches.setdefault(sockets[p.source], []).append(
            {
                "id": i,
                "source": str(p.source_address),
                "destination": str(p.destination_address),
                "protocol": p.protocol.value,
                "port": p.port,
            }
        )
    rounds = math.ceil(max((len(b) for b in batches.values()), default=0) / concurrency) + 1
    requests = {
        path: {"op": "probe", "timeout": timeout, "concurrency": concurrency, "probes": batch}
        for path, batch in batches.items()
    }
    answers = asyncio.run(_ask_all(requests, (timeout + lab_node.ECHO_GRACE) * rounds + 30.0))
    by_id: dict[int, dict[str, Any]] = {}
    for answer in answers.values():
        for r in answer["results"]:
            by_id[int(r["id"])] = r
    return [by_id[i] for i in range(len(probes))]


def probe_lab(
    repo_dir: Path,
    *,
    state_dir: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
    wait: float = 120.0,
    retry: bool = True,
) -> ProbeReport:
    """Probe the lab built for ``repo_dir`` and compare with ``explain``.

    First waits (up to ``wait`` seconds) until every agent applied the repository as it is
    now, so an edited repository is probed as edited. Raises LabError when the lab is missing
    or its endpoints or addresses no longer match the repository (run ``lab up`` to re-sync).
    Cost: one prediction per probe, then all probes at once (bounded per node), so about
    ``timeout`` seconds per 512 blocked probes of the busiest node, plus a retry round.
    """
    from septum.sources.files import load_repository

    started_at = time.monotonic()
    state, paths = load_lab(repo_dir, state_dir)
    repo = load_repository(repo_dir.resolve())
    at = datetime.now(UTC)
    plan = plan_lab(repo, at, state.prefix)
    if plan.endpoints != state.plan.endpoints:
        raise LabError(
            "the repository changed since the lab was built or synced "
            f"({_difference(state.plan, plan)}): run `septum lab up {repo_dir}` first"
        )
    wait_for_agents(state, paths, repo_dir, wait)
    targets, skipped = probe_targets(repo)
    probes = probe_set(plan, targets)
    evaluator = Evaluator(repo)
    explained = [evaluator.explain(p.flow(at)) for p in probes]
    tcp = sorted({port for (proto, port) in targets if proto is Protocol.TCP})
    udp = sorted({port for (proto, port) in targets if proto is Protocol.UDP})
    asyncio.run(
        _ask_all(
            {paths.socket(e): {"op": "listen", "tcp": tcp, "udp": udp} for e in plan.endpoints},
            30.0,
        )
    )
    observed = _run(plan, paths, probes, timeout)
    results = [
        ProbeResult(
            probe=p,
            predicted=e.verdict is Verdict.ALLOW,
            summary=e.summary(),
            connected=bool(o["connected"]),
            detail=str(o["detail"]),
            responder=o.get("responder"),
        )
        for p, e, o in zip(probes, explained, observed, strict=True)
    ]
    if retry:
        again = [i for i, r in enumerate(results) if not r.agrees]
        if again:
            second = _run(plan, paths, [probes[i] for i in again], timeout * 2, _RETRY_CONCURRENCY)
            for i, o in zip(again, second, strict=True):
                r = results[i]
                results[i] = ProbeResult(
                    r.probe,
                    r.predicted,
                    r.summary,
                    bool(o["connected"]),
                    str(o["detail"]),
                    o.get("responder"),
                    retried=True,
                )
    return ProbeReport(
        endpoints=plan.endpoints,
        results=tuple(results),
        skipped=skipped,
        agents=state.agents,
        seconds=time.monotonic() - started_at,
    )


def _difference(old: LabPlan, new: LabPlan) -> str:
    before = {e.name: e for e in old.endpoints}
    after = {e.name: e for e in new.endpoints}
    parts = [f"{n} added" for n in sorted(after.keys() - before.keys())]
    parts += [f"{n} removed" for n in sorted(before.keys() - after.keys())]
    parts += [f"{n} changed" for n in sorted(before.keys() & after.keys()) if before[n] != after[n]]
    return ", ".join(parts[:5]) + (", …" if len(parts) > 5 else "")
