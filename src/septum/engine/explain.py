"""The evaluation engine: the verdict of one flow, with its causes.

This module is the executable form of ``semantics.md`` ("Evaluating one flow", "Modes of a
workload"); every other part of Septum (analysis, compilers, agent, replay) must agree with it.

::

    Flow ──► Attributor ──► source / destination Endpoint
                 │
                 ├─ source is a managed, non-idle workload?       ──► egress side
                 └─ destination is a managed, non-idle workload?  ──► ingress side
                                                                       │
        per side: failsafe ─► tier 1 ─► tier 2 ─► … ─► repository default
                  (each tier: its applicable policies' rules, first match decides)
                                                                       │
        policy verdict = every side allows;  effective verdict = modes applied;
        second pass including staged policies ─► staged verdict / change
                                                                       ▼
                                                                  Explanation

Design goals: an ``Evaluator`` is built once per repository and called millions of times
(invariant checks, benchmarks). Everything that does not depend on the flow is precomputed:
tiers sorted by (order, name), per tier and direction its policies sorted by (order, name),
and, lazily per workload, the exact list of applicable policies per tier (the ``appliesTo``
matches are therefore computed once per workload). A call costs O(tiers + rules examined)
plus one attribution per address; it performs no I/O and reads no clock (time is in the Flow).
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from septum.engine.attribution import Attributor, Endpoint, EndpointKind
from septum.engine.label_index import LabelIndex
from septum.model.resources import (
    Action,
    Direction,
    FailsafeEntry,
    IPAddress,
    Mode,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    Tier,
    TierDefault,
    Workload,
)
from septum.model.selector import Selector

__all__ = [
    "DecidedBy",
    "Evaluator",
    "Explanation",
    "Flow",
    "RuleRef",
    "SideDecision",
    "StagedChange",
    "TierDecision",
    "TierOutcome",
    "Verdict",
    "explain",
]


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class DecidedBy(enum.Enum):
    """What decided a side's verdict."""

    RULE = "rule"  # an explicit allow or deny rule
    TIER_DEFAULT = "tier-default"  # a tier's defaultAction deny
    REPOSITORY_DEFAULT = "repository-default"  # Settings.default_action (no tier decided)
    FAILSAFE = "failsafe"  # a Settings.failsafe entry, before any tier


class TierOutcome(enum.Enum):
    """What happened in one tier visited while evaluating one side."""

    ALLOW = "allow"  # an allow rule matched: evaluation ended
    DENY = "deny"  # a deny rule matched: evaluation ended
    PASS = "pass"  # a pass rule matched: on to the next tier
    DEFAULT_DENY = "default deny"  # policies applied, no rule decided, tier default deny
    DEFAULT_PASS = "default pass"  # policies applied, no rule decided, tier default pass
    NO_POLICY = "no policy applied"  # no policy of the tier applied: on to the next tier


class StagedChange(enum.StrEnum):
    """How including staged policies would change the policy verdict."""

    WOULD_BE_DENIED = "would be denied"
    WOULD_BE_ALLOWED = "would be allowed"


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: source and destination address, protocol, destination port, time.

    ``port`` is ignored for protocols without ports (icmp, icmpv6); pass 0 for them.
    ``at`` must be timezone-aware, like every time in the model.
    """

    source: IPAddress
    destination: IPAddress
    protocol: Protocol
    port: int
    at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "protocol": self.protocol.value,
            "port": self.port,
            "at": self.at.isoformat(),
        }

    def __str__(self) -> str:
        service = (
            f"{self.protocol.value}/{self.port}" if self.protocol.has_ports else self.protocol.value
        )
        return f"{self.source} -> {self.destination} {service} at {self.at.isoformat()}"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Provenance of one rule: tier / policy / direction / index (0-based, written order)."""

    tier: str
    policy: str
    direction: Direction
    index: int
    action: Action
    description: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "policy": self.policy,
            "direction": self.direction.value,
            "rule_index": self.index,
            "action": self.action.value,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class TierDecision:
    """One tier visited for one side.

    ``policies`` are the policies of the tier that applied (in evaluation order); ``rule`` is
    the rule that decided (allow/deny/pass), None for defaults and NO_POLICY; ``logs`` are the
    log rules that matched in this tier before it decided.
    """

    tier: str
    owners: tuple[str, ...]
    outcome: TierOutcome
    policies: tuple[str, ...] = ()
    rule: RuleRef | None = None
    logs: tuple[RuleRef, ...] = ()

    @property
    def policy(self) -> str | None:
        return self.rule.policy if self.rule is not None else None

    @property
    def rule_index(self) -> int | None:
        return self.rule.index if self.rule is not None else None

    @property
    def rule_description(self) -> str | None:
        return self.rule.description if self.rule is not None else None

    def to_json(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "owners": list(self.owners),
            "outcome": self.outcome.value,
            "policies": list(self.policies),
            "policy": self.policy,
            "rule_index": self.rule_index,
            "rule_description": self.rule_description,
            "logs": [r.to_json() for r in self.logs],
        }


@dataclass(frozen=True, slots=True)
class SideDecision:
    """The decision at one evaluated side: egress at the source or ingress at the destination.

    ``enforced`` says whether this side's verdict is applied to the packet under its mode:
    always in ``enforced``; in ``selective`` unless it is a deny that came from a tier or
    repository default; never in ``visibility`` or ``test``. ``tiers`` lists every tier visited
    in order (empty when a failsafe entry decided). ``rule`` is the deciding rule (for
    DecidedBy.RULE), ``failsafe_index`` the position of the deciding failsafe entry.
    """

    direction: Direction
    workload: str
    mode: Mode
    verdict: Verdict
    enforced: bool
    decided_by: DecidedBy
    tiers: tuple[TierDecision, ...] = ()
    rule: RuleRef | None = None
    failsafe_index: int | None = None

    @property
    def tier(self) -> str | None:
        """The tier that decided (rule or tier default), None for failsafe/repository default."""
        if self.decided_by in (DecidedBy.RULE, DecidedBy.TIER_DEFAULT) and self.tiers:
            return self.tiers[-1].tier
        return None

    @property
    def owners(self) -> tuple[str, ...]:
        """Owners of the deciding tier (empty when no tier decided)."""
        if self.decided_by in (DecidedBy.RULE, DecidedBy.TIER_DEFAULT) and self.tiers:
            return self.tiers[-1].owners
        return ()

    @property
    def logs(self) -> tuple[RuleRef, ...]:
        """Every log rule that matched on the way, across tiers."""
        return tuple(r for t in self.tiers for r in t.logs)

    def reason(self) -> str:
        """What decided, in words: ``tier security, policy p, rule 0`` and the like."""
        if self.decided_by is DecidedBy.RULE and self.rule is not None:
            return f"tier {self.rule.tier}, policy {self.rule.policy}, rule {self.rule.index}"
        if self.decided_by is DecidedBy.TIER_DEFAULT:
            return f"default of tier {self.tier}"
        if self.decided_by is DecidedBy.FAILSAFE:
            return f"failsafe entry {self.failsafe_index}"
        return "repository default"

    def describe(self) -> str:
        return f"{self.direction.value} at {self.workload} by {self.reason()}"

    @property
    def provenance(self) -> str:
        """What decided, in the form compiled rules carry in their comments and log
        prefixes: ``tier/policy/direction/index``, ``tier/*/direction/default``,
        ``*/*/direction/default`` or ``septum/failsafe/direction/index``."""
        d = self.direction.value
        if self.decided_by is DecidedBy.RULE and self.rule is not None:
            return f"{self.rule.tier}/{self.rule.policy}/{d}/{self.rule.index}"
        if self.decided_by is DecidedBy.TIER_DEFAULT:
            return f"{self.tier}/*/{d}/default"
        if self.decided_by is DecidedBy.FAILSAFE:
            return f"septum/failsafe/{d}/{self.failsafe_index}"
        return f"*/*/{d}/default"

    def to_json(self) -> dict[str, object]:
        return {
            "direction": self.direction.value,
            "workload": self.workload,
            "mode": self.mode.value,
            "verdict": self.verdict.value,
            "enforced": self.enforced,
            "decided_by": self.decided_by.value,
            "tier": self.tier,
            "owners": list(self.owners),
            "policy": self.rule.policy if self.rule is not None else None,
            "rule_index": self.rule.index if self.rule is not None else None,
            "rule_description": self.rule.description if self.rule is not None else None,
            "failsafe_index": self.failsafe_index,
            "tiers": [t.to_json() for t in self.tiers],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """The verdict of one flow and its causes.

    ``verdict`` is the effective verdict (what happens to the packet): DENY when some side's
    deny is enforced under its mode, else ALLOW. ``policy_verdict`` is ALLOW when every
    evaluated side allows (modes ignored). ``would_be_denied`` is True when the effective
    verdict is ALLOW although some side denied (an unenforced deny). ``staged_verdict`` is the
    policy verdict of the second pass that includes staged policies; ``staged_change`` reports
    how it differs from ``policy_verdict`` (never enforced). ``sides`` are the evaluated sides
    (egress at the source first); ``staged_sides`` the same sides in the staged pass.
    ``self_traffic`` is True when one workload holds both addresses (not evaluated: allowed).
    """

    flow: Flow
    source: Endpoint
    destination: Endpoint
    verdict: Verdict
    policy_verdict: Verdict
    would_be_denied: bool
    staged_verdict: Verdict
    staged_change: StagedChange | None
    sides: tuple[SideDecision, ...]
    staged_sides: tuple[SideDecision, ...]
    self_traffic: bool = False

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def summary(self) -> str:
        """One line for humans, e.g.
        ``deny: ingress at db-1 by tier security, policy dev-prod-isolation, rule 0``."""
        if self.self_traffic:
            text = f"allow: self traffic of {self.source.name}"
        elif not self.sides:
            text = "allow: no managed workload on either side"
        elif self.verdict is Verdict.DENY:
            side = next(s for s in self.sides if s.verdict is Verdict.DENY and s.enforced)
            text = f"deny: {side.describe()}"
        elif self.would_be_denied:
            unenforced = [s for s in self.sides if s.verdict is Verdict.DENY]
            text = (
                "allow (would be denied: "
                + "; ".join(f"{s.describe()} [{s.mode.value}]" for s in unenforced)
                + ")"
            )
        else:
            text = "allow: " + "; ".join(s.describe() for s in self.sides)
        if self.staged_change is not None:
            text += f" [staged: {self.staged_change.value}]"
        return text

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (only str, int, bool, None, lists and dicts)."""
        return {
            "verdict": self.verdict.value,
            "policy_verdict": self.policy_verdict.value,
            "would_be_denied": self.would_be_denied,
            "staged": {
                "verdict": self.staged_verdict.value,
                "change": self.staged_change.value if self.staged_change is not None else None,
                "causes": [s.to_json() for s in self.staged_sides],
            },
            "self_traffic": self.self_traffic,
            "summary": self.summary(),
            "causes": [s.to_json() for s in self.sides],
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
            "flow": self.flow.to_json(),
        }


# A tier with the policies of it that apply to one endpoint for one direction, each with its
# rules for that direction, in evaluation order; then the names of those policies.
_TierPlan = tuple[Tier, tuple[tuple[Policy, tuple[Rule, ...]], ...], tuple[str, ...]]
_Plan = tuple[_TierPlan, ...]
_ServiceKey = tuple[str, Direction, bool, Protocol, int]

_SideKey = tuple[str, Direction, IPAddress, EndpointKind, str | None, Protocol, int, int]

#: Beyond this many memoized side decisions the memo is cleared (bounds memory on scans).
_SIDE_MEMO_LIMIT = 1 << 18
#: plans computed by matching selectors directly before a label index pays for itself
_INDEX_AFTER = 64

#: Beyond this many cached per-service plans the cache is cleared (bounds memory on scans).
_SERVICE_PLAN_CACHE_LIMIT = 1 << 16


class Evaluator:
    """Evaluates flows against one repository (``semantics.md``, exactly).

    Construction costs O(policies · log policies + addresses). The per-workload plans (which
    policies of which tier apply to it, per direction, with and without staged policies) are
    built on first use, O(policies) each, then cached by workload name; so are the plans
    restricted to one (protocol, port), which leave only the rules whose services match.
    ``explain`` costs two attributions plus, per evaluated side, O(tiers + rules examined);
    the staged pass is skipped for sides to which no staged policy applies. Side decisions
    are memoized under an exact key (see ``_side``), so repeating a flow costs O(1) per side.
    Caches and memo are bounded (cleared when full).

    Precondition: ``repo`` is validated (policies name existing tiers; policies naming an
    unknown tier are ignored). The evaluator is not thread-safe only in the benign sense that
    two threads may both fill the same cache entry.
    """

    __slots__ = (
        "_attributor",
        "_cidr_matches_workloads",
        "_default",
        "_expiries",
        "_failsafe",
        "_index",
        "_plan_misses",
        "_plans",
        "_positions",
        "_service_plans",
        "_sides",
        "_tier_policies",
        "_tiers",
        "repo",
    )

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._attributor = Attributor(repo)
        settings = repo.settings
        self._default = (
            Verdict.ALLOW if settings.default_action is RepositoryDefault.ALLOW else Verdict.DENY
        )
        self._cidr_matches_workloads = settings.cidr_matches_workloads
        self._failsafe: dict[Direction, tuple[tuple[int, FailsafeEntry], ...]] = {
            d: tuple(
                (i, e)
                for i, e in enumerate(settings.failsafe)
                if e.direction is None or e.direction is d
            )
            for d in Direction
        }
        self._tiers: tuple[Tier, ...] = tuple(sorted(repo.tiers, key=lambda t: (t.order, t.name)))
        by_tier: dict[str, list[Policy]] = {t.name: [] for t in self._tiers}
        for p in repo.policies:
            if p.tier in by_tier:
                by_tier[p.tier].append(p)
        # tier name -> direction -> policies with rules for that direction, sorted
        self._tier_policies: dict[str, dict[Direction, tuple[Policy, ...]]] = {
            name: {
                d: tuple(
                    sorted(
                        (p for p in policies if p.rules(d) is not None),
                        key=lambda p: (p.order, p.name),
                    )
                )
                for d in Direction
            }
            for name, policies in by_tier.items()
        }
        # (workload name, direction) -> (enforced plan, staged plan or None when identical)
        self._plans: dict[tuple[str, Direction], tuple[_Plan, _Plan | None]] = {}
        # (workload, direction, staged pass, protocol, port) -> plan keeping only the rules
        # whose services match; policies stay (they still "apply" for the tier default).
        self._service_plans: dict[_ServiceKey, _Plan] = {}
        # every distinct rule expiry time, sorted: the rules alive at t depend only on
        # bisect_right(_expiries, t)
        self._expiries: tuple[datetime, ...] = tuple(
            sorted(
                {
                    r.expires
                    for p in repo.policies
                    for d in Direction
                    for r in p.rules(d) or ()
                    if r.expires is not None
                }
            )
        )
        self._sides: dict[_SideKey, tuple[SideDecision, SideDecision]] = {}
        self._index: LabelIndex | None = None
        self._plan_misses = 0
        # (tier, direction) -> appliesTo selector -> positions of its policies in the sorted
        # tier policies; built with the label index (see ``_candidates``)
        self._positions: dict[
            tuple[str, Direction], tuple[dict[Selector, tuple[int, ...]], tuple[int, ...]]
        ] = {}

    @property
    def attributor(self) -> Attributor:
        return self._attributor

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers in evaluation order: ascending (order, name)."""
        return self._tiers

    # ------------------------------------------------------------------ public entry points

    def explain(self, flow: Flow) -> Explanation:
        """The verdict of ``flow`` with its causes. Pure; see the class docstring for cost."""
        source = self._attributor.attribute(flow.source, flow.at)
        destination = self._attributor.attribute(flow.destination, flow.at)
        src_w = source.workload
        dst_w = destination.workload
        if src_w is not None and dst_w is not None and src_w.name == dst_w.name:
            return Explanation(
                flow=flow,
                source=source,
                destination=destination,
                verdict=Verdict.ALLOW,
                policy_verdict=Verdict.ALLOW,
                would_be_denied=False,
                staged_verdict=Verdict.ALLOW,
                staged_change=None,
                sides=(),
                staged_sides=(),
                self_traffic=True,
            )
        sides: list[SideDecision] = []
        staged_sides: list[SideDecision] = []
        for workload, direction, remote in (
            (src_w, Direction.EGRESS, destination),
            (dst_w, Direction.INGRESS, source),
        ):
            if workload is None or workload.mode is Mode.IDLE:
                continue
            decision, staged_decision = self._side(workload, direction, remote, flow)
            sides.append(decision)
            staged_sides.append(staged_decision)

        policy_verdict = _all_allow(sides)
        staged_verdict = _all_allow(staged_sides)
        denied = any(s.verdict is Verdict.DENY and s.enforced for s in sides)
        staged_change: StagedChange | None = None
        if staged_verdict is not policy_verdict:
            staged_change = (
                StagedChange.WOULD_BE_DENIED
                if staged_verdict is Verdict.DENY
                else StagedChange.WOULD_BE_ALLOWED
            )
        return Explanation(
            flow=flow,
            source=source,
            destination=destination,
            verdict=Verdict.DENY if denied else Verdict.ALLOW,
            policy_verdict=policy_verdict,
            would_be_denied=not denied and policy_verdict is Verdict.DENY,
            staged_verdict=staged_verdict,
            staged_change=staged_change,
            sides=tuple(sides),
            staged_sides=tuple(staged_sides),
        )

    def verdict(self, flow: Flow) -> Verdict:
        """The effective verdict of ``flow`` only (same cost as ``explain``)."""
        return self.explain(flow).verdict

    # ------------------------------------------------------------------ internals

    def side_decision(self, workload: Workload, direction: Direction, flow: Flow) -> SideDecision:
        """The enforced-pass decision of ``workload``'s side alone for ``flow`` (its egress
        when it is the source, its ingress when the target), whatever the other side says.
        Used where only one side is Septum's business (e.g. an ingress controller reaching
        an exposed workload). Cost: one attribution plus one memoized side evaluation."""
        remote = flow.source if direction is Direction.INGRESS else flow.destination
        decision, _ = self._side(
            workload, direction, self._attributor.attribute(remote, flow.at), flow
        )
        return decision

    def _side(
        self, workload: Workload, direction: Direction, remote: Endpoint, flow: Flow
    ) -> tuple[SideDecision, SideDecision]:
        """The decision of one side in the enforced pass and in the staged pass, memoized.

        A side's decision depends only on: the workload and direction; the remote address and
        who holds it (kind and name; its networks follow from the address); protocol and port;
        and the time only through which rules have expired (the "epoch": how many distinct
        rule expiry times are <= the flow's time). That tuple is the memo key, so the memo is
        exact. O(1) on a hit; the memo is cleared when it grows past a bound.
        """
        protocol = flow.protocol
        holder = (
            remote.workload.name
            if remote.workload is not None
            else remote.user.name
            if remote.user is not None
            else None
        )
        epoch = bisect_right(self._expiries, flow.at) if self._expiries else 0
        key: _SideKey = (
            workload.name,
            direction,
            remote.address,
            remote.kind,
            holder,
            protocol,
            flow.port if protocol.has_ports else 0,
            epoch,
        )
        hit = self._sides.get(key)
        if hit is not None:
            return hit
        plan, staged_plan = self._plan(workload, direction)
        enforced_plan = self._for_service(plan, workload, direction, False, flow)
        decision = self._evaluate_side(workload, direction, remote, flow, enforced_plan)
        if staged_plan is None:
            result = (decision, decision)
        else:
            staged = self._for_service(staged_plan, workload, direction, True, flow)
            result = (decision, self._evaluate_side(workload, direction, remote, flow, staged))
        if len(self._sides) >= _SIDE_MEMO_LIMIT:
            self._sides.clear()
        self._sides[key] = result
        return result

    def _plan(self, workload: Workload, direction: Direction) -> tuple[_Plan, _Plan | None]:
        """Per workload and direction: per tier, the applicable policies with their rules.

        First call per (workload, direction) costs O(policies); later calls O(1).
        """
        key = (workload.name, direction)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        applies = self._applies(workload)
        chosen = self._chosen(workload)
        enforced: list[_TierPlan] = []
        staged: list[_TierPlan] = []
        any_staged = False
        for tier in self._tiers:
            with_staged: list[tuple[Policy, tuple[Rule, ...]]] = []
            without: list[tuple[Policy, tuple[Rule, ...]]] = []
            candidates = (
                self._tier_policies[tier.name][direction]
                if chosen is None
                else self._candidates(tier.name, direction, chosen)
            )
            for p in candidates:
                # candidates from the index are applicable by construction
                if chosen is None and not applies(p.applies_to):
                    continue
                rules = p.rules(direction)
                assert rules is not None  # filtered in __init__
                with_staged.append((p, rules))
                if p.mode is PolicyMode.STAGED:
                    any_staged = True
                else:
                    without.append((p, rules))
            enforced.append((tier, tuple(without), tuple(p.name for p, _ in without)))
            staged.append((tier, tuple(with_staged), tuple(p.name for p, _ in with_staged)))
        result = (tuple(enforced), tuple(staged) if any_staged else None)
        self._plans[key] = result
        return result

    def _chosen(self, workload: Workload) -> frozenset[Selector] | set[Selector] | None:
        """The appliesTo selectors selecting ``workload``, when the label index answers for
        it (after ``_applies`` built it); None otherwise."""
        if self._index is None or self._index.labels(workload.name) != workload.labels:
            return None
        return self._index.selectors_of(workload.name)

    def _candidates(
        self, tier: str, direction: Direction, chosen: frozenset[Selector] | set[Selector]
    ) -> tuple[Policy, ...]:
        """The tier's policies for ``direction`` whose appliesTo is in ``chosen`` or is
        ``all()``, in evaluation order: O(matching policies · log) instead of O(policies),
        which is what a 10k-workload replay needs (every workload builds its plan)."""
        key = (tier, direction)
        cached = self._positions.get(key)
        policies = self._tier_policies[tier][direction]
        if cached is None:
            found: dict[Selector, list[int]] = {}
            for i, p in enumerate(policies):
                found.setdefault(p.applies_to, []).append(i)
            cached = self._positions[key] = (
                {k: tuple(v) for k, v in found.items()},
                tuple(i for i, p in enumerate(policies) if p.applies_to.is_all),
            )
        positions, for_all = cached
        picked = list(for_all)
        for selector in chosen:
            if not selector.is_all:
                picked.extend(positions.get(selector, ()))
        picked.sort()
        return tuple(policies[i] for i in picked)

    def _applies(self, workload: Workload) -> Callable[[Selector], bool]:
        """Which appliesTo selectors select ``workload``.

        The first plans test each selector against the labels (O(policies) per workload).
        Past ``_INDEX_AFTER`` plans — many distinct workloads, as in invariant checks — one
        label index over every workload answers instead (built once by set algebra, then
        O(1) per selector), which is what keeps a 10k-workload estate fast.
        """
        self._plan_misses += 1
        if self._index is None and self._plan_misses > _INDEX_AFTER:
            index = LabelIndex()
            for w in self.repo.workloads:
                index.upsert_endpoint(w.name, w.labels)
            for tier_policies in self._tier_policies.values():
                for policies in tier_policies.values():
                    for p in policies:
                        index.add_selector(p.applies_to)
            self._index = index
        if self._index is None or self._index.labels(workload.name) != workload.labels:
            labels = workload.labels
            return lambda selector: selector.matches(labels)
        chosen = self._index.selectors_of(workload.name)
        return lambda selector: selector.is_all or selector in chosen

    def _for_service(
        self, plan: _Plan, workload: Workload, direction: Direction, staged: bool, flow: Flow
    ) -> _Plan:
        """``plan`` restricted to the rules whose services match the flow's protocol and port.

        Cached per (workload, direction, pass, protocol, port): O(1) on a hit, O(rules of the
        plan) on a miss. The cache is cleared when it grows past a bound.
        """
        protocol = flow.protocol
        port = flow.port if protocol.has_ports else 0
        key = (workload.name, direction, staged, protocol, port)
        cached = self._service_plans.get(key)
        if cached is not None:
            return cached
        result = tuple(
            (
                tier,
                tuple(
                    (policy, tuple(r for r in rules if r.matches_service(protocol, port)))
                    for policy, rules in entries
                ),
                names,
            )
            for tier, entries, names in plan
        )
        if len(self._service_plans) >= _SERVICE_PLAN_CACHE_LIMIT:
            self._service_plans.clear()
        self._service_plans[key] = result
        return result

    def _evaluate_side(
        self,
        workload: Workload,
        direction: Direction,
        remote: Endpoint,
        flow: Flow,
        plan: _Plan,
    ) -> SideDecision:
        """Steps 1-4 of "Evaluating one flow" for one endpoint and direction (plus failsafe)."""
        at = flow.at
        for index, entry in self._failsafe[direction]:
            if _failsafe_matches(entry, remote.address, flow.protocol, flow.port):
                return _decided(
                    workload,
                    direction,
                    Verdict.ALLOW,
                    DecidedBy.FAILSAFE,
                    failsafe_index=index,
                )

        visited: list[TierDecision] = []
        for tier, entries, applied in plan:
            if not entries:
                visited.append(TierDecision(tier.name, tier.owners, TierOutcome.NO_POLICY))
                continue
            logs: list[RuleRef] = []
            deciding: tuple[Policy, Rule] | None = None
            for policy, rules in entries:
                for rule in rules:
                    if rule.expires is not None and at >= rule.expires:
                        continue
                    if rule.peers and not self._any_peer_matches(rule.peers, remote):
                        continue
                    if rule.action is Action.LOG:
                        logs.append(_ref(tier, policy, direction, rule))
                        continue
                    deciding = (policy, rule)
                    break
                if deciding is not None:
                    break
            if deciding is None:
                if tier.default_action is TierDefault.PASS:
                    visited.append(
                        TierDecision(
                            tier.name,
                            tier.owners,
                            TierOutcome.DEFAULT_PASS,
                            applied,
                            None,
                            tuple(logs),
                        )
                    )
                    continue
                visited.append(
                    TierDecision(
                        tier.name,
                        tier.owners,
                        TierOutcome.DEFAULT_DENY,
                        applied,
                        None,
                        tuple(logs),
                    )
                )
                return _decided(
                    workload,
                    direction,
                    Verdict.DENY,
                    DecidedBy.TIER_DEFAULT,
                    tiers=tuple(visited),
                )
            policy, rule = deciding
            ref = _ref(tier, policy, direction, rule)
            outcome = _RULE_OUTCOME[rule.action]
            visited.append(TierDecision(tier.name, tier.owners, outcome, applied, ref, tuple(logs)))
            if outcome is TierOutcome.PASS:
                continue
            verdict = Verdict.ALLOW if outcome is TierOutcome.ALLOW else Verdict.DENY
            return _decided(
                workload,
                direction,
                verdict,
                DecidedBy.RULE,
                tiers=tuple(visited),
                rule=ref,
            )

        return _decided(
            workload,
            direction,
            self._default,
            DecidedBy.REPOSITORY_DEFAULT,
            tiers=tuple(visited),
        )

    def _any_peer_matches(self, peers: tuple[Peer, ...], remote: Endpoint) -> bool:
        """Whether some peer of a rule matches the remote endpoint (peers are a union).

        Per ``semantics.md`` and the attribution of the remote: selector/segment peers select
        workloads and networks (``all()`` everything); ``users:`` selects session holders;
        ``network:`` matches addresses attributed to that network; a CIDR matches addresses in
        it (managed workloads' only when ``cidr_matches_workloads``). O(peers · selector size).
        """
        remote_kind = remote.kind
        for peer in peers:
            kind = peer.kind
            if kind is PeerKind.SELECTOR or kind is PeerKind.SEGMENT:
                selector = peer.selector
                assert selector is not None
                if selector.is_all:
                    return True
                if remote_kind is EndpointKind.WORKLOAD:
                    assert remote.workload is not None
                    if selector.matches(remote.workload.labels):
                        return True
                elif remote_kind is EndpointKind.NETWORK:
                    for n in remote.networks:
                        if selector.matches(n.labels):
                            return True
            elif kind is PeerKind.CIDR:
                assert peer.cidr is not None
                if (
                    remote_kind is not EndpointKind.WORKLOAD or self._cidr_matches_workloads
                ) and remote.address in peer.cidr:
                    return True
            elif kind is PeerKind.NETWORK:
                if remote_kind is EndpointKind.NETWORK:
                    for n in remote.networks:
                        if n.name == peer.ref:
                            return True
            elif remote_kind is EndpointKind.USER:  # PeerKind.USERS
                selector = peer.selector
                assert selector is not None
                assert remote.user is not None
                if selector.is_all or selector.matches(remote.user.labels):
                    return True
        return False


_RULE_OUTCOME = {
    Action.ALLOW: TierOutcome.ALLOW,
    Action.DENY: TierOutcome.DENY,
    Action.PASS: TierOutcome.PASS,
}


def _ref(tier: Tier, policy: Policy, direction: Direction, rule: Rule) -> RuleRef:
    return RuleRef(tier.name, policy.name, direction, rule.index, rule.action, rule.description)


def _decided(
    workload: Workload,
    direction: Direction,
    verdict: Verdict,
    decided_by: DecidedBy,
    *,
    tiers: tuple[TierDecision, ...] = (),
    rule: RuleRef | None = None,
    failsafe_index: int | None = None,
) -> SideDecision:
    """A side's decision; whether its mode enforces it is derived here, in one place."""
    return SideDecision(
        direction=direction,
        workload=workload.name,
        mode=workload.mode,
        verdict=verdict,
        enforced=_enforced(workload.mode, verdict, decided_by),
        decided_by=decided_by,
        tiers=tiers,
        rule=rule,
        failsafe_index=failsafe_index,
    )


def _all_allow(sides: list[SideDecision]) -> Verdict:
    return Verdict.DENY if any(s.verdict is Verdict.DENY for s in sides) else Verdict.ALLOW


def _enforced(mode: Mode, verdict: Verdict, decided_by: DecidedBy) -> bool:
    """Whether a side's verdict is applied to the packet under ``mode``."""
    if mode is Mode.ENFORCED:
        return True
    if mode is Mode.SELECTIVE:
        return verdict is Verdict.ALLOW or decided_by is DecidedBy.RULE
    return False  # visibility, test (idle sides are never evaluated)


def _failsafe_matches(
    entry: FailsafeEntry, remote: IPAddress, protocol: Protocol, port: int
) -> bool:
    """A failsafe entry matches when its services (empty: any) match and the remote address
    is in one of its cidrs (empty: any address). The direction was filtered by the caller."""
    if entry.services and not any(s.matches(protocol, port) for s in entry.services):
        return False
    return not entry.cidrs or any(remote in c for c in entry.cidrs)


def explain(repo: Repository, flow: Flow) -> Explanation:
    """Explain one flow. Builds an ``Evaluator`` each call (O(repository)): for many flows,
    build one ``Evaluator`` and call its ``explain``."""
    return Evaluator(repo).explain(flow)
