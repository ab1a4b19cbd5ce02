"""The ``septum test`` engine: flow assertions and ``never``/``always`` invariants.

A flow assertion is one flow evaluated by :class:`~septum.engine.explain.Evaluator`; its
effective verdict is compared with ``expect``. An invariant quantifies over every
(source endpoint, target endpoint, protocol, port) with the source selected by ``from``, the
target selected by ``to``, the two endpoints distinct (different workloads, or different
addresses), and the protocol/port in the invariant's services (absent: every protocol and
port): ``never`` holds when none of them gets an effective ALLOW, ``always`` when all do.

Endpoints are workload addresses valid at the run's time and the free addresses (held by no
workload or user session) of networks the selector selects; unknown addresses are not
endpoints. A flow joins addresses of one IP version; its protocols are tcp, udp, sctp and
icmp (IPv4) or icmpv6 (IPv6).

Invariants are decided over equivalence classes (:mod:`septum.engine.classes`)::

    Repository ─► build_partition(at, invariant selectors) ─► endpoint classes
                      │
    per invariant:    ├─ select(from) ─► source classes ─┐
                      └─ select(to)   ─► target classes ─┴─► pair_blocks: group sources by
                         their egress policies, targets by their ingress policies; per pair
                         of groups coarsen the classes and split the ports by what those
                         policies read ─► per block: class pairs × port intervals ─► ONE
                         representative Flow each ─► Evaluator.explain

so the verdicts agree with ``explain`` by construction, and the work depends on the number of
classes, never on the number of address pairs. The first violating flow is returned as a
counter-example with its explanation (its causes).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from ipaddress import ip_address

from septum.engine.classes import PairBlock, Partition, build_partition, pair_blocks
from septum.engine.explain import Evaluator, Explanation, Flow, Verdict
from septum.model.resources import (
    Assertion,
    Expect,
    FlowAssertion,
    Invariant,
    InvariantKind,
    IPAddress,
    Repository,
    Workload,
)

__all__ = [
    "AssertionKind",
    "AssertionReport",
    "AssertionResult",
    "CounterExample",
    "run_assertions",
]


class AssertionKind(enum.Enum):
    FLOW = "flow"
    NEVER = "never"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class CounterExample:
    """A concrete flow that violates an assertion, who its endpoints are, and why (causes).

    ``source_name``/``target_name`` are workload names, or for external addresses the names
    of the networks holding them (comma-separated); None for an unknown address."""

    flow: Flow
    source_name: str | None
    target_name: str | None
    explanation: Explanation

    def to_json(self) -> dict[str, object]:
        return {
            "flow": self.flow.to_json(),
            "source": self.source_name,
            "target": self.target_name,
            "verdict": self.explanation.verdict.value,
            "summary": self.explanation.summary(),
            "explanation": self.explanation.to_json(),
        }


@dataclass(frozen=True, slots=True)
class AssertionResult:
    """The outcome of one Assertion.

    ``flows_evaluated`` counts the flows given to the evaluator (1 for a resolved flow
    assertion; for an invariant, one per (source class, target class, port interval) of each
    pair block visited before the verdict was known). ``expected``/``actual`` are set for
    flow assertions.
    ``error`` says why a flow assertion could not be evaluated (an unknown workload, no address
    at that time): such a result has ``passed`` False and no counter-example.
    ``source_classes``/``target_classes`` count the endpoint classes the invariant's
    selectors select and ``blocks`` the pair blocks visited (see
    :func:`~septum.engine.classes.pair_blocks`); all 0 for flow assertions."""

    name: str
    kind: AssertionKind
    passed: bool
    flows_evaluated: int
    counterexample: CounterExample | None = None
    expected: Verdict | None = None
    actual: Verdict | None = None
    error: str | None = None
    description: str | None = None
    source_classes: int = 0
    target_classes: int = 0
    blocks: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "passed": self.passed,
            "flows_evaluated": self.flows_evaluated,
            "expected": self.expected.value if self.expected is not None else None,
            "actual": self.actual.value if self.actual is not None else None,
            "error": self.error,
            "description": self.description,
            "classes": {
                "source": self.source_classes,
                "target": self.target_classes,
                "blocks": self.blocks,
            },
            "counterexample": (
                self.counterexample.to_json() if self.counterexample is not None else None
            ),
        }


@dataclass(frozen=True, slots=True)
class AssertionReport:
    """Every assertion's result, in the repository's (name) order, at time ``at``."""

    at: datetime
    results: tuple[AssertionResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[AssertionResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def to_json(self) -> dict[str, object]:
        """``{"at", "passed", "total", "failed", "flows_evaluated", "results": [...]}``."""
        return {
            "at": self.at.isoformat(),
            "passed": self.passed,
            "total": len(self.results),
            "failed": len(self.failures),
            "flows_evaluated": sum(r.flows_evaluated for r in self.results),
            "results": [r.to_json() for r in self.results],
        }


def run_assertions(
    repo: Repository, at: datetime, evaluator: Evaluator | None = None
) -> AssertionReport:
    """Run every Assertion of ``repo`` at time ``at`` (a flow assertion's own ``at`` wins).

    ``evaluator`` must be built from ``repo``; pass one to share its caches. Cost: one
    explain per flow assertion; for invariants one partition (see
    :func:`~septum.engine.classes.build_partition`), then per invariant, over its pair blocks
    (:func:`~septum.engine.classes.pair_blocks`), one explain per (source class, target class,
    port interval) of each block, stopping at the first violation. Never a pair of addresses.
    Pure: no I/O, no clock.
    """
    ev = evaluator if evaluator is not None else Evaluator(repo)
    invariants = [a.check for a in repo.assertions if isinstance(a.check, Invariant)]
    context: _InvariantContext | None = None
    if invariants:
        selectors = [s for inv in invariants for s in (inv.source, inv.target)]
        context = _InvariantContext(repo, build_partition(repo, at, selectors, selectors))
    workloads = {w.name: w for w in repo.workloads}
    results: list[AssertionResult] = []
    for assertion in repo.assertions:
        check = assertion.check
        if isinstance(check, FlowAssertion):
            results.append(_run_flow(assertion, check, workloads, at, ev))
        else:
            assert context is not None
            results.append(_run_invariant(assertion, check, context, at, ev))
    return AssertionReport(at, tuple(results))


# --------------------------------------------------------------------------- flow assertions


def _resolve(
    text: str, workloads: dict[str, Workload], when: datetime
) -> tuple[IPAddress | None, str | None]:
    """A workload name (first, so names that look like addresses still work) to its first
    address valid at ``when`` in written order; else a literal address. Returns (address,
    error)."""
    w = workloads.get(text)
    if w is not None:
        for b in w.addresses:
            if b.valid_at(when):
                return b.address, None
        return None, f"workload {text} holds no address at {when.isoformat()}"
    try:
        return ip_address(text), None
    except ValueError:
        return None, f"{text!r} is neither a workload name nor an address"


def _run_flow(
    assertion: Assertion,
    check: FlowAssertion,
    workloads: dict[str, Workload],
    at: datetime,
    ev: Evaluator,
) -> AssertionResult:
    when = check.at if check.at is not None else at
    expected = Verdict.ALLOW if check.expect is Expect.ALLOW else Verdict.DENY
    base = AssertionResult(
        name=assertion.name,
        kind=AssertionKind.FLOW,
        passed=False,
        flows_evaluated=0,
        expected=expected,
        description=assertion.description,
    )
    source, error = _resolve(check.source, workloads, when)
    target, target_error = _resolve(check.target, workloads, when)
    error = error or target_error
    protocol = check.service.protocol
    if error is None and protocol is None:
        error = "a flow assertion needs one protocol, not 'any'"
    if (
        error is None
        and source is not None
        and target is not None
        and source.version != target.version
    ):
        error = f"{source} and {target} are not of one IP version"
    if error is not None or source is None or target is None or protocol is None:
        return replace(base, error=error)
    port = check.service.ports.first if protocol.has_ports else 0
    flow = Flow(source, target, protocol, port, when)
    explanation = ev.explain(flow)
    passed = explanation.verdict is expected
    return replace(
        base,
        passed=passed,
        flows_evaluated=1,
        actual=explanation.verdict,
        counterexample=(
            None
            if passed
            else CounterExample(
                flow, explanation.source.name, explanation.destination.name, explanation
            )
        ),
    )


# -------------------------------------------------------------------------------- invariants


@dataclass(frozen=True, slots=True)
class _InvariantContext:
    repo: Repository
    partition: Partition


def _run_invariant(
    assertion: Assertion,
    inv: Invariant,
    ctx: _InvariantContext,
    at: datetime,
    ev: Evaluator,
) -> AssertionResult:
    kind = AssertionKind.NEVER if inv.kind is InvariantKind.NEVER else AssertionKind.ALWAYS
    sources = ctx.partition.select(inv.source)
    targets = ctx.partition.select(inv.target)
    never = inv.kind is InvariantKind.NEVER
    evaluated = 0
    blocks = 0
    counterexample: CounterExample | None = None
    for block in pair_blocks(ctx.repo, sources, targets, inv.services):
        blocks += 1
        for flow, names in _representative_flows(block, at):
            explanation = ev.explain(flow)
            evaluated += 1
            if (explanation.verdict is Verdict.ALLOW) is never:
                counterexample = CounterExample(flow, names[0], names[1], explanation)
                break
        if counterexample is not None:
            break
    return AssertionResult(
        name=assertion.name,
        kind=kind,
        passed=counterexample is None,
        flows_evaluated=evaluated,
        counterexample=counterexample,
        description=assertion.description,
        source_classes=len(sources),
        target_classes=len(targets),
        blocks=blocks,
    )


def _representative_flows(
    block: PairBlock, at: datetime
) -> Iterator[tuple[Flow, tuple[str, str]]]:
    """One flow per (source class, target class, port interval) of the block, between two
    distinct endpoints; pairs of classes that are one single endpoint are skipped.
    Deterministic order: classes as sorted, then ports."""
    for s in block.sources:
        for t in block.targets:
            pair = s.pair_with(t)
            if pair is None:
                continue
            src, dst = pair
            for p in block.ports:
                flow = Flow(src.address, dst.address, p.protocol, p.representative, at)
                yield flow, (src.name, dst.name)
