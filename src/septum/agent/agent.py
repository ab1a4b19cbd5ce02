"""The host agent: keep one enforcer's nftables table equal to the desired state.

Design goals, in order:

1. **Never open the host.** At start, before anything else, the last applied state is
   re-applied from disk (``StateStore``); with no usable state the agent installs the
   fail-closed table (failsafe allow-list only) unless ``fail_open`` is set. A corrupt state
   file is reported and never applied: a table already in the kernel (ours, from before the
   restart) is kept, otherwise the fail-closed table goes in.
2. **All or nothing.** Every change is one nft transaction (``NftBackend``); when nft rejects
   it, the kernel still holds the previous ruleset and the error is reported in the status.
3. **Cheap churn.** When only set or map elements changed (an address moved, a label changed
   membership), the transaction is the element delta, never a reload of rules.
4. **Revocation is immediate.** After a change, conntrack entries of flows the new policy
   denies are deleted, so established connections of revoked flows are cut instead of living
   on through the ``ct state established`` fast path.

The agent computes its own enforcer's ruleset with the pure core (``resolve_policy`` →
``build_host_ruleset`` → ``render_nft``); everything else is a port passed in.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from septum.agent.addresses import address_text
from septum.agent.backend import ApplyFailed, NftBackend
from septum.agent.conntrack import ConntrackEntry, ConntrackTable
from septum.agent.source import DesiredStateSource, SourceUnavailable
from septum.agent.state import AppliedMeta, CorruptState, StateStore
from septum.engine.explain import Evaluator, Explanation, Flow, Verdict
from septum.engine.resolve import resolve_policy
from septum.errors import SeptumError, ValidationError
from septum.model.resources import FailsafeEntry, Mode, Protocol, Repository
from septum.render.hostruleset import (
    ElementDelta,
    HostRuleset,
    NftSettings,
    apply_delta,
    build_fail_closed_ruleset,
    build_host_ruleset,
    diff_rulesets,
)
from septum.render.nft import RenderCache, render_nft, render_set_delta

__all__ = [
    "Agent",
    "AgentSettings",
    "StartOutcome",
    "SyncOutcome",
    "SyncResult",
]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How one agent runs (passed in; never read from globals or the environment)."""

    enforcer: str
    state_dir: Path
    fail_open: bool = False
    #: Failsafe entries for the fail-closed table (the repository's own are unknown then).
    failsafe: tuple[FailsafeEntry, ...] = ()
    nft: NftSettings = field(default_factory=NftSettings)
    poll_interval: float = 0.2
    #: Recompile even when the source is unchanged, so that expiring rules and address
    #: validity windows take effect.
    recompute_interval: float = 30.0
    cut_revoked: bool = True


class StartOutcome(StrEnum):
    RESTORED = "restored"  # the last applied state is back in the kernel
    FAIL_CLOSED = "fail-closed"  # nothing usable on disk: failsafe-only table installed
    KEPT = "kept"  # state unusable, but our table was already in the kernel: left in force
    OPEN = "open"  # nothing usable and fail_open set: nothing installed


class SyncOutcome(StrEnum):
    FULL = "full"
    DELTA = "delta"
    UNCHANGED = "unchanged"
    UNAVAILABLE = "unavailable"
    INVALID = "invalid"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SyncResult:
    outcome: SyncOutcome
    source_digest: str | None = None
    error: str | None = None
    revoked: int = 0
    elements_changed: int = 0
    seconds: float = 0.0


_CT_PROTOCOLS = {p.value: p for p in Protocol}


class Agent:
    """One enforcer's agent. Not thread-safe: one thread calls ``start``/``sync``; flow
    capture may call ``provenance_of`` from another (it reads an immutable snapshot)."""

    def __init__(
        self,
        settings: AgentSettings,
        source: DesiredStateSource,
        backend: NftBackend,
        *,
        conntrack: ConntrackTable | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.backend = backend
        self.conntrack = conntrack
        self.clock = clock
        self.report = report
        self.state = StateStore(settings.state_dir)
        self._ruleset: HostRuleset | None = None  # what the kernel holds, when known...
        self._pending: list[Sequence[ElementDelta]] = []  # ...with these deltas on top
        self._render_cache: RenderCache | None = None  # of the last whole table applied
        self._last_explained: tuple[tuple[object, ...], Explanation] | None = None
        self.source_digest: str | None = None  # of the desired state applied last
        self.evaluator: Evaluator | None = None
        self.local_workloads: frozenset[str] = frozenset()
        self.last_error: str | None = None
        self._compiled_at = -1e9  # monotonic time of the last compile
        self._rejected: SyncResult | None = None  # the last invalid or refused source

    @property
    def ruleset(self) -> HostRuleset | None:
        """What the kernel holds, when known. Deltas received as such are folded in here,
        on demand, so that applying one costs O(delta) and not a re-sort of its sets."""
        if self._pending and self._ruleset is not None:
            ruleset = self._ruleset
            for deltas in self._pending:
                ruleset = apply_delta(ruleset, deltas)
            self._ruleset, self._pending = ruleset, []
        return self._ruleset

    @ruleset.setter
    def ruleset(self, ruleset: HostRuleset | None) -> None:
        self._ruleset, self._pending = ruleset, []

    # ------------------------------------------------------------------ start

    def start(self) -> StartOutcome:
        """Put the last applied state back before anything else (see the module docstring)."""
        s = self.settings
        try:
            loaded = self.state.load()
        except CorruptState as exc:
            self._error(str(exc))
            return self._without_state()
        if loaded is None:
            return self._without_state()
        if loaded.torn_tail:
            self.report(f"{self.state.directory}: dropped a journal entry torn by a crash")
        if loaded.meta.enforcer != s.enforcer:
            self._error(
                f"{self.state.meta_path}: state of enforcer {loaded.meta.enforcer!r}, "
                f"not {s.enforcer!r}: not applied"
            )
            return self._without_state()
        try:
            self.backend.apply(loaded.script)
        except ApplyFailed as exc:
            self._error(f"restoring {self.state.directory}: {exc}")
            return self._without_state()
        # The kernel holds the restored script; its structure is unknown to us until the
        # first sync, which therefore applies the whole table once.
        self.source_digest = None if loaded.meta.fail_closed else loaded.meta.source_digest
        self.report(f"restored the ruleset applied at {loaded.meta.applied_at}")
        return StartOutcome.RESTORED

    def _without_state(self) -> StartOutcome:
        s = self.settings
        if s.fail_open:
            self.report("no usable state and fail-open is set: nothing installed")
            return StartOutcome.OPEN
        if self.backend.table_exists("inet", s.nft.table):
            self.report("no usable state: the table already in the kernel stays in force")
            return StartOutcome.KEPT
        ruleset = build_fail_closed_ruleset(s.enforcer, s.failsafe, self.clock(), s.nft)
        self.backend.apply(render_nft(ruleset))
        self.report("no usable state: fail-closed table installed (failsafe traffic only)")
        return StartOutcome.FAIL_CLOSED

    # ------------------------------------------------------------------ sync

    def sync(self, *, force: bool = False) -> SyncResult:
        """Bring the kernel to the current desired state. Never raises for a bad or missing
        source or a rejected transaction: the previous ruleset stays and the result (and
        the status file) says why."""
        began = time.perf_counter()
        try:
            digest = self.source.digest()
        except SourceUnavailable as exc:
            return self._done(SyncResult(SyncOutcome.UNAVAILABLE, error=str(exc)), began)
        due = time.monotonic() - self._compiled_at >= self.settings.recompute_interval
        if not force and not due:
            if digest == self.source_digest and self.ruleset is not None:
                return SyncResult(SyncOutcome.UNCHANGED, digest)
            if self._rejected is not None and self._rejected.source_digest == digest:
                return self._rejected  # reported already; wait for the source to change
        try:
            repo, digest = self.source.fetch()
        except SourceUnavailable as exc:
            return self._done(SyncResult(SyncOutcome.UNAVAILABLE, error=str(exc)), began)
        except ValidationError as exc:
            result = SyncResult(SyncOutcome.INVALID, digest, str(exc))
        else:
            result = self.apply_repository(repo, digest)
        if result.outcome in (SyncOutcome.INVALID, SyncOutcome.FAILED):
            self._rejected = result
            self._compiled_at = time.monotonic()
        else:
            self._rejected = None
        return self._done(result, began)

    def apply_repository(self, repo: Repository, digest: str | None) -> SyncResult:
        """Compile this enforcer's ruleset for ``repo`` now and apply it."""
        at = self.clock()
        ruleset = build_host_ruleset(
            resolve_policy(repo, at), self.settings.enforcer, self.settings.nft
        )
        self._compiled_at = time.monotonic()
        result = self.apply_ruleset(ruleset, digest, at)
        if result.outcome in (SyncOutcome.FULL, SyncOutcome.DELTA, SyncOutcome.UNCHANGED):
            self.evaluator = Evaluator(repo)
            self.local_workloads = frozenset(
                w.name for w in repo.workloads if w.enforcer == self.settings.enforcer
            )
            if result.outcome is not SyncOutcome.UNCHANGED and self.settings.cut_revoked:
                result = _with(result, revoked=self.cut_revoked(at))
        return result

    def apply_ruleset(
        self, ruleset: HostRuleset, digest: str | None, at: datetime | None = None
    ) -> SyncResult:
        """Apply ``ruleset``: its element delta from what the kernel holds when only elements
        changed, else the whole table. Records it on disk after the kernel accepted it."""
        at = at or self.clock()
        stamp = at.isoformat()
        previous = self.ruleset
        # The static parts are compared first (O(rules)): when they differ the whole table
        # goes anyway, and the element diff (O(elements)) is not needed.
        if previous is not None and previous.structure() == ruleset.structure():
            delta = diff_rulesets(previous, ruleset)
            if not delta:
                self.source_digest = digest
                return SyncResult(SyncOutcome.UNCHANGED, digest)
            if not delta.structure_changed:
                script = render_set_delta(previous, delta)
                changed = sum(len(d.added) + len(d.removed) for d in delta.elements)
                try:
                    self.backend.apply(script)
                except ApplyFailed as exc:
                    # The kernel may have drifted from what we believe it holds (someone
                    # flushed a set): fall through to a whole-table transaction.
                    self.report(f"element delta rejected, replacing the table: {exc}")
                else:
                    self.state.append_delta(script, digest, stamp)
                    self.ruleset, self.source_digest = ruleset, digest
                    return SyncResult(SyncOutcome.DELTA, digest, elements_changed=changed)
        # Each address's text is made once, and sets equal to those of the table applied
        # last reuse their text (a rule change leaves most sets as they were).
        cache = RenderCache(previous=self._render_cache, address_text=address_text)
        script = render_nft(ruleset, cache)
        cache.forget_previous()
        try:
            self.backend.apply(script)
        except ApplyFailed as exc:
            return SyncResult(SyncOutcome.FAILED, digest, str(exc))
        self._render_cache = cache
        self.state.save_full(script, AppliedMeta(self.settings.enforcer, digest, stamp))
        self.ruleset, self.source_digest = ruleset, digest
        return SyncResult(SyncOutcome.FULL, digest)

    def apply_element_delta(
        self, deltas: Sequence[ElementDelta], digest: str | None, at: datetime | None = None
    ) -> SyncResult:
        """Apply element deltas received as such (from ``IncrementalCompiler`` or a control
        plane that sends deltas): no diff of the whole table. Cost: O(delta) rendering and
        journaling, plus re-sorting the touched sets in the agent's copy of the ruleset.
        Raises ``SeptumError`` when no whole table was applied yet (deltas need a base)."""
        if self._ruleset is None:
            raise SeptumError("no ruleset applied yet: element deltas need a whole table first")
        at = at or self.clock()
        table = self.settings.nft.table
        # Deltas never change which sets and maps exist: the base table's names hold.
        base = self._ruleset
        names = [x.name for x in base.sets] + [m.name for m in base.maps]
        script = render_set_delta(names, deltas, table=table, family=base.family)
        if not script:
            return SyncResult(SyncOutcome.UNCHANGED, digest)
        try:
            self.backend.apply(script)
        except ApplyFailed as exc:
            return SyncResult(SyncOutcome.FAILED, digest, str(exc))
        self.state.append_delta(script, digest, at.isoformat())
        self._pending.append(tuple(deltas))
        self.source_digest = digest
        changed = sum(len(d.added) + len(d.removed) for d in deltas)
        return SyncResult(SyncOutcome.DELTA, digest, elements_changed=changed)

    # ------------------------------------------------------------------ revocation

    def cut_revoked(self, at: datetime) -> int:
        """Delete the conntrack entries of flows that the current policy denies. Cost: one
        conntrack listing plus one evaluation per distinct (src, dst, proto, port)."""
        if self.conntrack is None or self.evaluator is None:
            return 0
        evaluator = self.evaluator
        verdicts: dict[tuple[object, ...], bool] = {}
        doomed: list[ConntrackEntry] = []
        for entry in self.conntrack.entries():
            proto = _CT_PROTOCOLS.get(entry.protocol)
            if proto is None:
                continue
            port = entry.destination_port if proto.has_ports else 0
            key = (entry.source, entry.destination, proto, port)
            denied = verdicts.get(key)
            if denied is None:
                flow = Flow(entry.source, entry.destination, proto, port, at)
                denied = evaluator.verdict(flow) is Verdict.DENY
                verdicts[key] = denied
            if denied:
                doomed.append(entry)
        return self.conntrack.delete(doomed) if doomed else 0

    # ------------------------------------------------------------------ flows

    def explain(
        self,
        source: IPv4Address | IPv6Address,
        destination: IPv4Address | IPv6Address,
        protocol: str,
        port: int,
    ) -> Explanation | None:
        """The current policy's explanation of a flow (for flow records), or None before
        the first successful sync or for a protocol the model does not know."""
        evaluator = self.evaluator
        proto = _CT_PROTOCOLS.get(protocol)
        if evaluator is None or proto is None:
            return None
        # The flow recorder asks twice about each flow (what allowed it, what would deny
        # it), one right after the other: the last answer is kept for the second question.
        key = (evaluator, source, destination, proto, port)
        last = self._last_explained
        if last is not None and last[0] == key:
            return last[1]
        flow = Flow(source, destination, proto, port if proto.has_ports else 0, self.clock())
        explanation = evaluator.explain(flow)
        self._last_explained = (key, explanation)
        return explanation

    def provenance_of(
        self,
        source: IPv4Address | IPv6Address,
        destination: IPv4Address | IPv6Address,
        protocol: str,
        port: int,
    ) -> tuple[str, ...]:
        """What allowed an accepted flow: the deciding rule of each evaluated side."""
        explanation = self.explain(source, destination, protocol, port)
        if explanation is None:
            return ()
        return tuple(side.provenance for side in explanation.sides)

    def unlogged_would_deny(
        self,
        source: IPv4Address | IPv6Address,
        destination: IPv4Address | IPv6Address,
        protocol: str,
        port: int,
    ) -> tuple[str, ...]:
        """The denies of an accepted flow that no kernel rule here logged: sides of this
        enforcer's workloads in ``visibility`` mode (they install no rules)."""
        explanation = self.explain(source, destination, protocol, port)
        if explanation is None:
            return ()
        mine = self.local_workloads
        return tuple(
            side.provenance
            for side in explanation.sides
            if side.verdict is Verdict.DENY
            and side.mode is Mode.VISIBILITY
            and side.workload in mine
        )

    # ------------------------------------------------------------------ loop and status

    def run(self, stop: threading.Event) -> None:
        """``start``, then ``sync`` every ``poll_interval`` until ``stop`` is set."""
        self.start()
        self.write_status()
        while not stop.is_set():
            self.sync()
            stop.wait(self.settings.poll_interval)

    def _done(self, result: SyncResult, began: float) -> SyncResult:
        result = _with(result, seconds=time.perf_counter() - began)
        if result.error is not None:
            self._error(result.error)
        elif result.outcome is not SyncOutcome.UNCHANGED:
            self.last_error = None
            self.report(
                f"applied ({result.outcome.value}, {result.elements_changed} elements, "
                f"{result.revoked} connections cut) in {result.seconds * 1000:.1f} ms"
            )
        else:
            self.last_error = None
        self.write_status()
        return result

    def _error(self, message: str) -> None:
        if message != self.last_error:
            self.report(f"error: {message}")
        self.last_error = message

    def write_status(self) -> None:
        """``status.json`` in the state directory, replaced atomically: what is applied and
        the last error, for operators and the lab."""
        doc = {
            "enforcer": self.settings.enforcer,
            "pid": os.getpid(),
            "source_digest": self.source_digest,
            "applied": self.ruleset is not None,
            "error": self.last_error,
            "updated_at": self.clock().isoformat(),
        }
        path = self.settings.state_dir / "status.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".status.json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)


def _with(result: SyncResult, **changes: object) -> SyncResult:
    return replace(result, **changes)  # type: ignore[arg-type]
