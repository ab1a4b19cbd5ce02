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

Invariants are decided over equivalence classes (:mod:`septum.engine.classes`), by *side
decomposition*. The effective verdict of s → t is DENY iff the egress side at s (a managed,
non-idle workload) or the ingress side at t gives a deny enforced under its mode; a side
depends only on its own plan (the enforced policies applying to it per tier, and its mode),
on the remote's *view* (which atoms its live rules and the failsafe read — selectors, CIDRs,
networks — the remote's signature holds, and its kind), and on the port::

    Repository ─► build_partition(at, invariant selectors) ─► endpoint classes
                      │
    per invariant:    ├─ select(from) ─► source classes ─► egress groups g (plan, mode)
                      └─ select(to)   ─► target classes ─► ingress groups h (plan, mode)
                         E[g][view of t] = ports with no enforced deny at egress
                         I[h][view of s] = ports with no enforced deny at ingress
                         (one Evaluator side decision per (group, view, port interval),
                          lazily; views are bit masks, no selector matching)
                      ─► never fails iff some distinct pair has E ∩ I ≠ ∅;
                         always fails iff some distinct pair has E ∩ I ≠ every port
                      ─► candidate confirmed by Evaluator.explain on concrete endpoints

Pairs are enumerated per source super-class (classes equal for both sides), per target view
of its egress group — skipping at once every target of a view whose E is empty (``never``)
or short (``always``) — per ingress group of the targets. So the work depends on the
number of groups and views, never on pairs of addresses, and rarely on pairs of classes. The
verdicts are explain's own (the side decisions are the Evaluator's, and every reported
counter-example is a real ``explain`` with its causes). The previous block-based checker
(one explain per class pair and port interval of each pair block) is kept as the reference
``_run_invariant_blocks``; the property tests check that both agree with brute force.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from ipaddress import ip_address

from septum.engine.classes import (
    PairBlock,
    Partition,
    Witness,
    build_partition,
    pair_blocks,
)
from septum.engine.explain import Evaluator, Explanation, Flow, Verdict
from septum.engine.sides import (
    PROTOCOLS,
    PortSets,
    Sides,
    first_missing,
    super_classes,
)
from septum.model.resources import (
    Assertion,
    Direction,
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
    assertion; for an invariant, the side decisions evaluated — one per (group, view, port
    interval) decided — plus the counter-example confirmed by ``explain``).
    ``expected``/``actual`` are set for flow assertions.
    ``error`` says why a flow assertion could not be evaluated (an unknown workload, no address
    at that time): such a result has ``passed`` False and no counter-example.
    ``source_classes``/``target_classes`` count the endpoint classes the invariant's
    selectors select and ``blocks`` the (side group, remote view) cells decided, egress and
    ingress together (the reference checker counts pair blocks there, see
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
    :func:`~septum.engine.classes.build_partition`), then per invariant one side decision per
    (side group, remote view, port interval) met while enumerating (see the module
    docstring), stopping at the first confirmed violation. Never a pair of addresses.
    Pure: no I/O, no clock.
    """
    ev = evaluator if evaluator is not None else Evaluator(repo)
    invariants = [a.check for a in repo.assertions if isinstance(a.check, Invariant)]
    context: _InvariantContext | None = None
    workloads = {w.name: w for w in repo.workloads}
    if invariants:
        selectors = [s for inv in invariants for s in (inv.source, inv.target)]
        context = _InvariantContext(
            repo, build_partition(repo, at, selectors, selectors), workloads
        )
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
    workloads: dict[str, Workload]


def _run_invariant_blocks(
    assertion: Assertion,
    inv: Invariant,
    ctx: _InvariantContext,
    at: datetime,
    ev: Evaluator,
) -> AssertionResult:
    """The block-based checker (the previous implementation), kept as a reference: one
    explain per (source class, target class, port interval) of every pair block. Correct but
    O(blocks · classes · ports); :func:`_run_invariant` is the fast one."""
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


def _run_invariant(
    assertion: Assertion,
    inv: Invariant,
    ctx: _InvariantContext,
    at: datetime,
    ev: Evaluator,
) -> AssertionResult:
    """Decide an invariant by side decomposition (module docstring): the effective verdict of
    s → t is DENY iff the egress side at s or the ingress side at t gives an enforced deny, and
    each side depends on the remote only through its view. ``E`` (egress, per source group
    and target view) and ``I`` (ingress, per target group and source view) are the port sets
    without an enforced deny; ``never`` fails iff some distinct pair has E ∩ I non-empty,
    ``always`` iff some has E ∩ I short of every port. Pairs are enumerated per source
    super-class, per target view of its group (skipping views whose E already decides), per
    target group. A candidate is confirmed by ``explain`` on concrete endpoints and reported
    with its causes; should ``explain`` ever disagree, the block-based reference decides."""
    kind = AssertionKind.NEVER if inv.kind is InvariantKind.NEVER else AssertionKind.ALWAYS
    never = inv.kind is InvariantKind.NEVER
    sources = ctx.partition.select(inv.source).classes
    targets = ctx.partition.select(inv.target).classes
    port_sets = PortSets()
    egress = Sides(Direction.EGRESS, ctx.repo, ctx.workloads, sources, targets, inv.services,
                   at, ev, port_sets)
    ingress = Sides(Direction.INGRESS, ctx.repo, ctx.workloads, targets, sources, inv.services,
                    at, ev, port_sets)
    source_supers = super_classes(sources, ingress.remote_mask, egress.group_of)
    target_supers = super_classes(targets, egress.remote_mask, ingress.group_of)
    egress.use_remotes(target_supers, ingress)
    ingress.use_remotes(source_supers, egress)
    confirmations = 0

    def result(counterexample: CounterExample | None) -> AssertionResult:
        return AssertionResult(
            name=assertion.name,
            kind=kind,
            passed=counterexample is None,
            flows_evaluated=egress.evaluations + ingress.evaluations + confirmations,
            counterexample=counterexample,
            description=assertion.description,
            source_classes=len(sources),
            target_classes=len(targets),
            blocks=egress.cells + ingress.cells,
        )

    def pairs(sk: int, tks: Iterable[int]) -> Iterator[tuple[Witness, Witness]]:
        """Pairs of distinct endpoints, source super-class ``sk`` × target super-classes."""
        for tk in tks:
            for si in source_supers[sk]:
                s = sources[si]
                for ti in target_supers[tk]:
                    pair = s.pair_with(targets[ti])
                    if pair is not None:
                        yield pair

    def violation(sk: int, tks: Iterable[int], ports: int) -> CounterExample | None:
        """A confirmed counter-example from source super-class ``sk`` to the first of the
        target super-classes ``tks`` with a pair of distinct endpoints, on the first port of
        ``ports`` (for ``never``) or the first port of the universe missing from it."""
        nonlocal confirmations
        for src, dst in pairs(sk, tks):
            if never:
                pr, port, _ = port_sets.sets[ports][0]
                protocol = PROTOCOLS[pr]
            else:
                missing = first_missing(
                    port_sets.sets[egress.universe(src.address.version)], port_sets.sets[ports]
                )
                assert missing is not None
                protocol, port = missing
            flow = Flow(src.address, dst.address, protocol, port, at)
            explanation = ev.explain(flow)
            confirmations += 1
            if (explanation.verdict is Verdict.ALLOW) is not never:
                raise _Disagreement
            return CounterExample(flow, src.name, dst.name, explanation)
        return None

    try:
        for sk, members in enumerate(source_supers):
            first = sources[members[0]]
            universe = egress.universe(first.version)
            if universe == 0:
                continue  # no protocol/port of the invariant for this IP version
            alone = len(members) == 1 and len(first.witnesses) == 1
            g = egress.group_of[members[0]]
            for v, by_group in egress.by_view_then_group(g).items():
                if alone and next(pairs(sk, (k for ks in by_group.values() for k in ks)),
                                  None) is None:
                    continue  # one single endpoint on both sides: no flow counts
                e = egress.allowed(g, v)
                if never and e == 0:
                    continue  # every port denied at egress, whatever the target's ingress
                if not never and e != universe:
                    found = violation(sk, (k for ks in by_group.values() for k in ks), e)
                    if found is not None:
                        return result(found)
                    continue
                for h, tks in by_group.items():
                    i = ingress.allowed(h, ingress.view(h, sk))
                    both = port_sets.meet(e, i)
                    if (both != 0) if never else (both != universe):
                        found = violation(sk, tks, both)
                        if found is not None:
                            return result(found)
    except _Disagreement:  # never expected: the reference decides, with explain's causes
        return _run_invariant_blocks(assertion, inv, ctx, at, ev)
    return result(None)


class _Disagreement(Exception):
    """``explain`` did not confirm a candidate counter-example (a bug, never expected)."""
