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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from ipaddress import ip_address

from septum.engine.attribution import EndpointKind
from septum.engine.classes import (
    EndpointClass,
    PairBlock,
    Partition,
    PortInterval,
    Witness,
    build_partition,
    pair_blocks,
    peer_atom,
    port_intervals,
    protocols_for_version,
)
from septum.engine.explain import Evaluator, Explanation, Flow, Verdict
from septum.model.resources import (
    Assertion,
    Direction,
    Expect,
    FailsafeEntry,
    FlowAssertion,
    Invariant,
    InvariantKind,
    IPAddress,
    IPNetwork,
    Mode,
    Policy,
    PolicyMode,
    Protocol,
    Repository,
    ServicePort,
    Workload,
)
from septum.model.selector import Selector

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


# ---------------------------------------------------------------- invariants by side decomposition

# A set of (protocol, port) as sorted, merged, disjoint (protocol index, first, last) triples.
_PortSet = tuple[tuple[int, int, int], ...]
_PROTOCOLS: tuple[Protocol, ...] = tuple(Protocol)
_PROTOCOL_INDEX = {p: i for i, p in enumerate(_PROTOCOLS)}
_EMPTY: _PortSet = ()


def _port_set(pieces: Iterable[PortInterval]) -> _PortSet:
    """The union of ``pieces``, normalized (sorted, adjacent intervals merged)."""
    out: list[tuple[int, int, int]] = []
    for pr, a, b in sorted((_PROTOCOL_INDEX[p.protocol], p.first, p.last) for p in pieces):
        if out and out[-1][0] == pr and out[-1][2] + 1 >= a:
            out[-1] = (pr, out[-1][1], max(out[-1][2], b))
        else:
            out.append((pr, a, b))
    return tuple(out)


def _intersect(x: _PortSet, y: _PortSet) -> _PortSet:
    """Intersection of two normalized port sets, normalized. O(|x| + |y|)."""
    out: list[tuple[int, int, int]] = []
    i = j = 0
    while i < len(x) and j < len(y):
        (p, a, b), (q, c, d) = x[i], y[j]
        if p == q:
            lo, hi = max(a, c), min(b, d)
            if lo <= hi:
                out.append((p, lo, hi))
            if b < d:
                i += 1
            else:
                j += 1
        elif p < q:
            i += 1
        else:
            j += 1
    return tuple(out)


def _first_missing(universe: _PortSet, subset: _PortSet) -> tuple[Protocol, int] | None:
    """The first (protocol, port) of ``universe`` not in ``subset`` (a normalized subset of
    it), or None when they are equal."""
    for pr, a, b in universe:
        cur = a
        for q, c, d in subset:
            if q != pr or d < cur:
                continue
            if c > cur or cur > b:
                break
            cur = d + 1
        if cur <= b:
            return _PROTOCOLS[pr], cur
    return None


class _PortSets:
    """Interns port sets (equal sets, one id) and caches their intersections."""

    __slots__ = ("_ids", "_meets", "sets")

    def __init__(self) -> None:
        self.sets: list[_PortSet] = []
        self._ids: dict[_PortSet, int] = {}
        self._meets: dict[tuple[int, int], int] = {}
        self.intern(_EMPTY)  # id 0

    def intern(self, ports: _PortSet) -> int:
        found = self._ids.get(ports)
        if found is None:
            found = self._ids[ports] = len(self.sets)
            self.sets.append(ports)
        return found

    def meet(self, a: int, b: int) -> int:
        if a == b:
            return a
        key = (a, b) if a < b else (b, a)
        found = self._meets.get(key)
        if found is None:
            found = self._meets[key] = self.intern(_intersect(self.sets[a], self.sets[b]))
        return found


# What a side's rules can read of the remote: a selector, a CIDR or a network's name.
_Atom = Selector | IPNetwork | str


@dataclass(slots=True)
class _Group:
    """Local classes (one IP version) with one side plan: the same enforced policies applying
    for the direction, and one mode; or (``workload`` None) classes whose side is not
    evaluated (networks, idle workloads). ``atoms`` are what the group's live enforced rules
    and the failsafe read of the remote; ``mask`` their bits (plus the kind bit; 0 when not
    evaluated). ``view_of`` maps every remote index to its view id (-1: another IP version);
    ``allowed`` caches, per view, the id of the port set without an enforced deny."""

    version: int
    workload: Workload | None
    address: IPAddress
    atoms: frozenset[_Atom]
    ports: tuple[PortInterval, ...]
    mask: int = 0
    view_of: list[int] | None = None
    view_reps: list[int] | None = None
    allowed: dict[int, int] = field(default_factory=dict)


class _Sides:
    """One direction's side decisions over classes (egress: locals are the source classes,
    remotes the target *super-classes*; ingress: the mirror image).

    Locals are grouped by their side plan (which enforced policies apply for the direction,
    and the mode). Every atom some group reads gets a bit, so a remote's signature becomes an
    integer mask and its *view* for a group is ``mask & group.mask`` (one AND, no selector
    matching). The side is evaluated by the Evaluator once per (group, view, port interval)
    on representative endpoints, lazily, and cached. Cost: O(locals · policies) to group,
    O(remote classes · atoms of their signature) for the masks, then per group used
    O(remotes) integer operations and one side evaluation per (view, port interval)."""

    def __init__(
        self,
        direction: Direction,
        ctx: _InvariantContext,
        local: Sequence[EndpointClass],
        remote: Sequence[EndpointClass],
        restrict: Sequence[ServicePort],
        at: datetime,
        ev: Evaluator,
        port_sets: _PortSets,
    ) -> None:
        self.direction = direction
        self.at = at
        self.ev = ev
        self.port_sets = port_sets
        self.evaluations = 0  # side evaluations given to the evaluator
        self.cells = 0  # (group, view) cells decided
        self._universe: dict[int, int] = {}
        self._restrict = restrict
        repo = ctx.repo
        policies = tuple(
            p
            for p in repo.policies
            if p.rules(direction) is not None and p.mode is not PolicyMode.STAGED
        )
        failsafe = tuple(
            e for e in repo.settings.failsafe if e.direction is None or e.direction is direction
        )
        # The policies applying to a class follow from which appliesTo selectors its
        # signature holds: one C-level set intersection per class (stored hashes).
        applies = frozenset(p.applies_to for p in policies)
        keys: dict[tuple[int, frozenset[Selector] | None, Mode | None], int] = {}
        self.groups: list[_Group] = []
        self.group_of: list[int] = []
        for c in local:
            sig = c.signature
            chosen: frozenset[Selector] | None = None
            if sig.kind is EndpointKind.WORKLOAD and sig.managed:
                chosen = sig.selectors & applies
            key = (sig.version, chosen, sig.mode if chosen is not None else None)
            g = keys.get(key)
            if g is None:
                g = keys[key] = len(self.groups)
                names = (
                    None
                    if chosen is None
                    else frozenset(p.name for p in policies if p.applies_to in chosen)
                )
                self.groups.append(self._group(c, names, policies, failsafe, ctx))
            self.group_of.append(g)
        # bit 0: the remote is a network address (not a workload); then one bit per atom
        bits: dict[_Atom, int] = {}
        for group in self.groups:
            if group.workload is None:
                continue
            mask = 1
            for atom in group.atoms:
                bit = bits.get(atom)
                if bit is None:
                    bit = bits[atom] = 1 << (len(bits) + 1)
                mask |= bit
            group.mask = mask
        self.remote_mask: list[int] = []
        for c in remote:
            sig = c.signature
            mask = 0 if sig.kind is EndpointKind.WORKLOAD else 1
            for atoms in (sig.selectors, sig.cidrs, sig.networks):
                for atom in atoms:
                    bit = bits.get(atom)
                    if bit is not None:
                        mask |= bit
            self.remote_mask.append(mask)
        # set by use_remotes: remote super-classes (indices into ``remote``), their versions
        # and masks, and the opposite side's group of each
        self.remote: Sequence[EndpointClass] = remote
        self.supers: list[list[int]] = []
        self._super_version: list[int] = []
        self._super_mask: list[int] = []
        self._super_group: list[int] = []
        self._by_view_then_group: dict[int, dict[int, dict[int, list[int]]]] = {}

    def _group(
        self,
        c: EndpointClass,
        names: frozenset[str] | None,
        policies: tuple[Policy, ...],
        failsafe: tuple[FailsafeEntry, ...],
        ctx: _InvariantContext,
    ) -> _Group:
        version = c.version
        address = c.representative.address
        if names is None:
            return _Group(version, None, address, frozenset(), ())
        atoms: set[_Atom] = set()
        services: set[ServicePort] = set()
        for p in policies:
            if p.name not in names:
                continue
            for r in p.rules(self.direction) or ():
                if not r.alive_at(self.at):
                    continue
                services.update(r.services)
                atoms.update(a for peer in r.peers if (a := peer_atom(peer)) is not None)
        for entry in failsafe:
            atoms.update(entry.cidrs)
            services.update(entry.services)
        ports = port_intervals(services, self._restrict, protocols_for_version(version))
        return _Group(
            version, ctx.workloads[c.representative.name], address, frozenset(atoms), ports
        )

    def use_remotes(self, supers: list[list[int]], other: _Sides) -> None:
        """Work on remote super-classes ``supers`` (remote classes with one IP version, one
        mask and one group in ``other``, the opposite side, whose locals are our remotes)."""
        self.supers = supers
        self._super_version = [self.remote[m[0]].version for m in supers]
        self._super_mask = [self.remote_mask[m[0]] for m in supers]
        self._super_group = [other.group_of[m[0]] for m in supers]

    def universe(self, version: int) -> int:
        """The id of the set of every (protocol, port) the invariant quantifies over."""
        found = self._universe.get(version)
        if found is None:
            ports = port_intervals((), self._restrict, protocols_for_version(version))
            found = self._universe[version] = self.port_sets.intern(_port_set(ports))
        return found

    def _views(self, group: _Group) -> tuple[list[int], list[int]]:
        if group.view_of is not None and group.view_reps is not None:
            return group.view_of, group.view_reps
        ids: dict[int, int] = {}
        view_of: list[int] = []
        reps: list[int] = []
        gmask = group.mask
        version = group.version
        for k, (v, mask) in enumerate(zip(self._super_version, self._super_mask, strict=True)):
            if v != version:
                view_of.append(-1)
                continue
            view = mask & gmask
            found = ids.get(view)
            if found is None:
                found = ids[view] = len(reps)
                reps.append(k)
            view_of.append(found)
        group.view_of, group.view_reps = view_of, reps
        return view_of, reps

    def view(self, g: int, k: int) -> int:
        """The view id of remote super-class ``k`` for group ``g`` (-1: another IP version)."""
        return self._views(self.groups[g])[0][k]

    def allowed(self, g: int, v: int) -> int:
        """The id of the port set on which group ``g``'s side gives no enforced deny to
        remotes with view ``v``: one side evaluation per port interval, on first use."""
        group = self.groups[g]
        found = group.allowed.get(v)
        if found is not None:
            return found
        _, reps = self._views(group)
        self.cells += 1
        workload = group.workload
        if workload is None:  # no side: nothing is denied here
            found = self.universe(group.version)
        else:
            remote_address = self.remote[self.supers[reps[v]][0]].representative.address
            endpoint = self.ev.attributor.attribute(remote_address, self.at)
            egress = self.direction is Direction.EGRESS
            pieces: list[PortInterval] = []
            for p in group.ports:
                flow = Flow(
                    group.address if egress else remote_address,
                    remote_address if egress else group.address,
                    p.protocol,
                    p.representative,
                    self.at,
                )
                # the side decision of explain itself (memoized there), without a pair
                decision, _ = self.ev._side(workload, self.direction, endpoint, flow)
                self.evaluations += 1
                if not (decision.verdict is Verdict.DENY and decision.enforced):
                    pieces.append(p)
            found = self.port_sets.intern(_port_set(pieces))
        group.allowed[v] = found
        return found

    def by_view_then_group(self, g: int) -> dict[int, dict[int, list[int]]]:
        """For group ``g``: its views -> the opposite side's groups -> remote super-classes."""
        found = self._by_view_then_group.get(g)
        if found is None:
            found = {}
            for k, v in enumerate(self._views(self.groups[g])[0]):
                if v >= 0:
                    found.setdefault(v, {}).setdefault(self._super_group[k], []).append(k)
            self._by_view_then_group[g] = found
        return found


def _supers(
    classes: Sequence[EndpointClass], mask: Sequence[int], group_of: Sequence[int]
) -> list[list[int]]:
    """Classes grouped by (IP version, mask seen by the opposite side, own group): members of
    one super-class get equal verdicts against everything (distinct endpoints assumed)."""
    found: dict[tuple[int, int, int], list[int]] = {}
    for i, c in enumerate(classes):
        found.setdefault((c.version, mask[i], group_of[i]), []).append(i)
    return list(found.values())


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
    port_sets = _PortSets()
    egress = _Sides(Direction.EGRESS, ctx, sources, targets, inv.services, at, ev, port_sets)
    ingress = _Sides(Direction.INGRESS, ctx, targets, sources, inv.services, at, ev, port_sets)
    source_supers = _supers(sources, ingress.remote_mask, egress.group_of)
    target_supers = _supers(targets, egress.remote_mask, ingress.group_of)
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
                protocol = _PROTOCOLS[pr]
            else:
                missing = _first_missing(
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
