"""What platform renderers render: the enforced policies of each tier, in evaluation order.

Staged policies are never enforced (``semantics.md``): platforms whose own staged mode is not
used (Kubernetes, Cilium) leave them out, and say so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from septum.engine.resolve import ResolvedPolicy, ResolvedPolicyRules, ResolvedTier
from septum.model.resources import Mode, Repository
from septum.render.labelselector import label_value_problem
from septum.render.manifests import Approximation, Limitation

__all__ = ["EnforcedTiers", "ModeExclusions", "enforced_tiers", "mode_exclusions"]

EnforcedTiers = list[tuple[ResolvedTier, list[ResolvedPolicyRules]]]


def enforced_tiers(resolved: ResolvedPolicy) -> tuple[EnforcedTiers, list[Limitation]]:
    """Every tier with its policies minus the staged ones, and one REWRITTEN limitation per
    staged policy left out. O(policies)."""
    tiers: EnforcedTiers = []
    limits: list[Limitation] = []
    for rt in resolved.tiers:
        kept: list[ResolvedPolicyRules] = []
        for rp in rt.policies:
            if rp.staged:
                limits.append(
                    Limitation(
                        f"policy/{rp.name}",
                        "staged policy",
                        Approximation.REWRITTEN,
                        "not rendered: staged policies are never enforced",
                    )
                )
            else:
                kept.append(rp)
        tiers.append((rt, kept))
    return tiers, limits


@dataclass(frozen=True, slots=True)
class ModeExclusions:
    """Workloads whose mode a label-selector platform renders by leaving them out of policy
    subjects (``unenforced``) or out of default denies (``selective``), and what was said."""

    unenforced: list[str]
    selective: list[str]
    limitations: list[Limitation]


def mode_exclusions(
    repo: Repository, unenforced_modes: Collection[Mode], audit_note: str
) -> ModeExclusions:
    """Names (sorted) of the workloads in ``unenforced_modes`` and in selective mode, with a
    REWRITTEN limitation per visibility/test workload left out (``audit_note`` says why the
    platform cannot audit it) and a NARROWED one per workload whose name cannot be a label
    value (it cannot be left out by name, so it is dropped from both lists). O(workloads)."""
    limits = [
        Limitation(
            f"workload/{w.name}",
            f"mode {w.mode.value}: would-be denies are not reported",
            Approximation.REWRITTEN,
            audit_note,
        )
        for w in repo.workloads
        if w.mode in (Mode.TEST, Mode.VISIBILITY) and w.mode in unenforced_modes
    ]
    modes = {w.name: w.mode for w in repo.workloads}
    unenforced = sorted(n for n, m in modes.items() if m in unenforced_modes)
    selective = sorted(n for n, m in modes.items() if m is Mode.SELECTIVE)
    unnameable = {n for n in (*unenforced, *selective) if label_value_problem(n)}
    limits += [
        Limitation(
            f"workload/{n}",
            f"mode {modes[n].value} not rendered",
            Approximation.NARROWED,
            "its name is not a valid label value, so subjects cannot leave it out",
        )
        for n in sorted(unnameable)
    ]
    return ModeExclusions(
        [n for n in unenforced if n not in unnameable],
        [n for n in selective if n not in unnameable],
        limits,
    )
