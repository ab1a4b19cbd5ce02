"""What a change to a policy repository does, before it is applied (``septum plan``).

For every enforcer of either repository: the rules added and removed (by chain), and the set
and map elements added and removed; for every assertion of either repository: the flows whose
effective verdict changes, with the causes on both sides, and invariants that start or stop
holding. Full recomputation of both sides is the reference here: a plan is read by people,
so it favours being obviously right over being incremental.

Pure: both repositories and the time come in as arguments.
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from septum.engine.assertions import run_assertions
from septum.engine.explain import Evaluator, Explanation, Flow
from septum.engine.lookup import assertion_flow
from septum.engine.resolve import resolve_policy
from septum.errors import LookupFailed
from septum.model.resources import FlowAssertion, Repository
from septum.render.compile import build_all
from septum.render.hostruleset import HostRuleset
from septum.render.nft import rules_text

__all__ = ["EnforcerPlan", "InvariantChange", "Plan", "VerdictChange", "plan_change"]


@dataclass(frozen=True, slots=True)
class EnforcerPlan:
    """Changes of one enforcer's host ruleset. ``rules_*`` entries are ``chain: rule``."""

    enforcer: str
    status: str  # "added" | "removed" | "changed"
    rules_added: tuple[str, ...]
    rules_removed: tuple[str, ...]
    elements_added: dict[str, int]  # set or map name → elements added
    elements_removed: dict[str, int]

    @property
    def elements_changed(self) -> int:
        return sum(self.elements_added.values()) + sum(self.elements_removed.values())

    def to_json(self) -> dict[str, object]:
        return {
            "enforcer": self.enforcer,
            "status": self.status,
            "rules_added": list(self.rules_added),
            "rules_removed": list(self.rules_removed),
            "elements_added": self.elements_added,
            "elements_removed": self.elements_removed,
        }


@dataclass(frozen=True, slots=True)
class VerdictChange:
    """A flow assertion's flow whose effective verdict differs between old and new."""

    assertion: str
    flow: Flow
    old: Explanation | None  # None: the flow could not be formed in the old repository
    new: Explanation | None

    def _verdict(self, e: Explanation | None) -> str:
        return "n/a" if e is None else e.verdict.value

    def describe(self) -> str:
        why = self.new.summary() if self.new is not None else "flow not formed in new repository"
        return f"{self.assertion}: {self._verdict(self.old)} → {self._verdict(self.new)} ({why})"

    def to_json(self) -> dict[str, object]:
        return {
            "assertion": self.assertion,
            "flow": self.flow.to_json(),
            "old": None if self.old is None else self.old.to_json(),
            "new": None if self.new is None else self.new.to_json(),
        }


@dataclass(frozen=True, slots=True)
class InvariantChange:
    assertion: str
    old_passed: bool | None  # None: the assertion does not exist on that side
    new_passed: bool | None

    def to_json(self) -> dict[str, object]:
        return {"assertion": self.assertion, "old": self.old_passed, "new": self.new_passed}


@dataclass(frozen=True, slots=True)
class Plan:
    enforcers: tuple[EnforcerPlan, ...]  # only enforcers that change, sorted by name
    verdict_changes: tuple[VerdictChange, ...]
    assertion_changes: tuple[InvariantChange, ...]  # pass/fail changes of any assertion

    @property
    def empty(self) -> bool:
        return not (self.enforcers or self.verdict_changes or self.assertion_changes)

    def to_json(self) -> dict[str, object]:
        return {
            "enforcers": [e.to_json() for e in self.enforcers],
            "verdict_changes": [v.to_json() for v in self.verdict_changes],
            "assertion_changes": [a.to_json() for a in self.assertion_changes],
        }


def plan_change(old: Repository, new: Repository, at: datetime) -> Plan:
    """Compare ``old`` and ``new`` at time ``at``.

    Cost: two full compiles, two assertion runs, and two explains per flow assertion.
    """
    old_rulesets = build_all(resolve_policy(old, at), old.enforcers())
    new_rulesets = build_all(resolve_policy(new, at), new.enforcers())
    enforcers = [
        plan
        for name in sorted(old_rulesets.keys() | new_rulesets.keys())
        if (plan := _enforcer_plan(name, old_rulesets.get(name), new_rulesets.get(name)))
    ]
    return Plan(
        tuple(enforcers),
        _verdict_changes(old, new, at),
        _assertion_changes(old, new, at),
    )


def _rule_lines(ruleset: HostRuleset | None) -> Counter[str]:
    """``chain: rule`` for every rule line of the ruleset's static part (no elements)."""
    lines: Counter[str] = Counter()
    if ruleset is None:
        return lines
    chain: str | None = None
    for raw in rules_text(ruleset).splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line.removeprefix("chain ").removesuffix("{").strip()
        elif line == "}":
            chain = None
        elif chain is not None and line and not line.startswith(("type ", "policy ", "comment")):
            lines[f"{chain}: {line}"] += 1
    return lines


def _enforcer_plan(
    name: str, old: HostRuleset | None, new: HostRuleset | None
) -> EnforcerPlan | None:
    old_rules, new_rules = _rule_lines(old), _rule_lines(new)
    old_elements = old.elements() if old is not None else {}
    new_elements = new.elements() if new is not None else {}
    added: dict[str, int] = {}
    removed: dict[str, int] = {}
    for set_name in sorted(old_elements.keys() | new_elements.keys()):
        before = old_elements.get(set_name, frozenset())
        after = new_elements.get(set_name, frozenset())
        if after - before:
            added[set_name] = len(after - before)
        if before - after:
            removed[set_name] = len(before - after)
    rules_added = tuple(sorted((new_rules - old_rules).elements()))
    rules_removed = tuple(sorted((old_rules - new_rules).elements()))
    if not (rules_added or rules_removed or added or removed) and (old is None) == (new is None):
        return None
    status = "added" if old is None else "removed" if new is None else "changed"
    return EnforcerPlan(name, status, rules_added, rules_removed, added, removed)


def _verdict_changes(old: Repository, new: Repository, at: datetime) -> tuple[VerdictChange, ...]:
    old_eval, new_eval = Evaluator(old), Evaluator(new)
    changes: list[VerdictChange] = []
    flows: dict[str, Flow] = {}
    for repo in (new, old):  # the new repository's flow wins when both define the name
        for a in repo.assertions:
            if isinstance(a.check, FlowAssertion) and a.name not in flows:
                with suppress(LookupFailed):  # e.g. a workload the other side lacks
                    flows[a.name] = assertion_flow(repo, a.check, at)
    for name in sorted(flows):
        flow = flows[name]
        before, after = old_eval.explain(flow), new_eval.explain(flow)
        if before.verdict is not after.verdict:
            changes.append(VerdictChange(name, flow, before, after))
    return tuple(changes)


def _assertion_changes(
    old: Repository, new: Repository, at: datetime
) -> tuple[InvariantChange, ...]:
    before = {r.name: r.passed for r in run_assertions(old, at).results}
    after = {r.name: r.passed for r in run_assertions(new, at).results}
    return tuple(
        InvariantChange(name, before.get(name), after.get(name))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    )
