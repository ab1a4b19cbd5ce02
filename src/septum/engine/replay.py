"""Replay: re-evaluate recorded traffic under a draft repository and report what changes.

::

    FlowGroups (recorded, attributed) ──► Evaluator(draft).explain ──► after
                                      └─► Evaluator(active).explain ─► before   (--against)
                                          or the recorded verdicts ──► before   (otherwise)
    before allow, after deny ──► newly denied   ┐ grouped by the tier that decides after,
    before deny, after allow ──► newly allowed  ┘ with its owners, plus example flows

Verdicts are effective verdicts (what happens to the packet, modes applied), so a draft that
only changes a workload in visibility mode breaks nothing. Without ``against``, "before" is
what the reporter saw: records seen ``denied`` were denied, every other record (allowed,
would-deny, logged, unknown: the flow happened) was allowed.

Time matters twice: addresses change hands and rules expire. The store's groups are per
attributed identity (so they split where ownership changed) and split again at every rule
expiry (:func:`change_points`), so one evaluation at a group's ``first_seen`` holds for all
its records — provided the draft's inventory attributes as the store did; a draft that moves
addresses is evaluated at each group's ``first_seen``.

Cost: one ``explain`` per group and repository (memoized per side by the Evaluator),
O(groups) otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from septum.engine.explain import Evaluator, Explanation, Flow, SideDecision, Verdict
from septum.engine.observed import FlowGroup, RecordedVerdict
from septum.model.resources import Direction, Repository

__all__ = [
    "Change",
    "OwnerChanges",
    "ReplayReport",
    "ReplayedFlow",
    "change_points",
    "replay",
]


class Change(enum.Enum):
    NEWLY_DENIED = "newly denied"
    NEWLY_ALLOWED = "newly allowed"


@dataclass(frozen=True, slots=True)
class ReplayedFlow:
    """One flow group whose verdict changes: ``records`` of it change (for a recorded
    baseline, only the records whose recorded verdict differs from ``after``)."""

    group: FlowGroup
    change: Change
    records: int
    after: Explanation
    before: Explanation | None  # None: the baseline is the recorded verdict

    def to_json(self) -> dict[str, object]:
        g = self.group
        return {
            "source": str(g.source),
            "source_identity": str(g.source_identity),
            "destination": str(g.destination),
            "destination_identity": str(g.destination_identity),
            "service": f"{g.protocol.value}/{g.port}" if g.protocol.has_ports else g.protocol.value,
            "records": self.records,
            "first_seen": g.first_seen.isoformat(),
            "last_seen": g.last_seen.isoformat(),
            "after": self.after.summary(),
            "before": self.before.summary() if self.before is not None else "recorded",
        }


@dataclass(slots=True)
class OwnerChanges:
    """The changes one tier is answerable for (``tier`` None: the repository default)."""

    change: Change
    tier: str | None
    owners: tuple[str, ...]
    records: int = 0
    groups: int = 0
    examples: list[ReplayedFlow] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "change": self.change.value,
            "tier": self.tier,
            "owners": list(self.owners),
            "records": self.records,
            "flows": self.groups,
            "examples": [e.to_json() for e in self.examples],
        }


@dataclass(slots=True)
class ReplayReport:
    baseline: str  # "recorded verdicts" or "the active repository"
    records: int = 0
    groups: int = 0
    newly_denied: int = 0  # records
    newly_allowed: int = 0  # records
    newly_denied_groups: int = 0
    newly_allowed_groups: int = 0
    by_owner: list[OwnerChanges] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "baseline": self.baseline,
            "records": self.records,
            "flows": self.groups,
            "newly_denied": {"records": self.newly_denied, "flows": self.newly_denied_groups},
            "newly_allowed": {"records": self.newly_allowed, "flows": self.newly_allowed_groups},
            "by_owner": [o.to_json() for o in self.by_owner],
        }


def change_points(*repos: Repository, bindings: bool = True) -> tuple[datetime, ...]:
    """Every instant at which the meaning of a flow can change under any of ``repos``: a
    rule expiring and, with ``bindings``, an address binding or user session starting or
    ending. Sorted, distinct.

    The flow store groups by attributed identity as well, so a store's groups already change
    where ownership changes; replay over a store needs only the rule expiries
    (``bindings=False``)."""
    points: set[datetime] = set()
    for repo in repos:
        held = [w.addresses for w in repo.workloads] + [u.sessions for u in repo.users]
        for binding in (b for group in held for b in group) if bindings else ():
            if binding.valid_from is not None:
                points.add(binding.valid_from)
            if binding.valid_until is not None:
                points.add(binding.valid_until)
        for p in repo.policies:
            for d in Direction:
                for r in p.rules(d) or ():
                    if r.expires is not None:
                        points.add(r.expires)
    return tuple(sorted(points))


def _deciding_side(explanation: Explanation, verdict: Verdict) -> SideDecision | None:
    """The side that makes ``explanation`` end in ``verdict``: the enforced deny for DENY,
    else the first side (egress first), which allowed."""
    if verdict is Verdict.DENY:
        return next(
            (s for s in explanation.sides if s.verdict is Verdict.DENY and s.enforced), None
        )
    return explanation.sides[0] if explanation.sides else None


def _flow(g: FlowGroup) -> Flow:
    return Flow(g.source, g.destination, g.protocol, g.port, g.first_seen)


def replay(
    draft: Repository,
    groups: Iterable[FlowGroup],
    against: Repository | None = None,
    *,
    examples: int = 3,
) -> ReplayReport:
    """Compare ``draft``'s verdicts on ``groups`` with ``against``'s, or with the recorded
    verdicts when ``against`` is None (module docstring). Changes are grouped by the tier
    deciding under the draft (newly denied: the tier whose deny is enforced; newly allowed:
    the tier that now allows), each with up to ``examples`` flows, largest first."""
    after_eval = Evaluator(draft)
    before_eval = Evaluator(against) if against is not None else None
    report = ReplayReport(
        baseline="the active repository" if against is not None else "recorded verdicts"
    )
    owners: dict[tuple[Change, str | None], OwnerChanges] = {}
    for g in groups:
        report.records += g.records
        report.groups += 1
        flow = _flow(g)
        after = after_eval.explain(flow)
        before: Explanation | None = None
        if before_eval is not None:
            before = before_eval.explain(flow)
            if before.verdict is after.verdict:
                continue
            change = Change.NEWLY_DENIED if after.verdict is Verdict.DENY else Change.NEWLY_ALLOWED
            changed = g.records
        else:
            denied = g.verdicts.get(RecordedVerdict.DENIED, 0)
            if after.verdict is Verdict.DENY:
                change, changed = Change.NEWLY_DENIED, g.records - denied
            else:
                change, changed = Change.NEWLY_ALLOWED, denied
            if changed == 0:
                continue
        side = _deciding_side(after, after.verdict)
        tier = side.tier if side is not None else None
        key = (change, tier)
        entry = owners.get(key)
        if entry is None:
            entry = owners[key] = OwnerChanges(
                change, tier, side.owners if side is not None else ()
            )
        entry.records += changed
        entry.groups += 1
        entry.examples.append(ReplayedFlow(g, change, changed, after, before))
        if len(entry.examples) > 4 * examples:
            entry.examples.sort(key=_example_order)
            del entry.examples[examples:]
        if change is Change.NEWLY_DENIED:
            report.newly_denied += changed
            report.newly_denied_groups += 1
        else:
            report.newly_allowed += changed
            report.newly_allowed_groups += 1
    for entry in owners.values():
        entry.examples.sort(key=_example_order)
        del entry.examples[examples:]
    report.by_owner = sorted(
        owners.values(), key=lambda o: (o.change.value, -o.records, o.tier or "")
    )
    return report


def _example_order(e: ReplayedFlow) -> tuple[int, str, str, int]:
    g = e.group
    return (-e.records, str(g.source_identity), str(g.destination_identity), g.port)
