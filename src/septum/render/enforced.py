"""What platform renderers render: the enforced policies of each tier, in evaluation order.

Staged policies are never enforced (``semantics.md``): platforms whose own staged mode is not
used (Kubernetes, Cilium) leave them out, and say so.
"""

from __future__ import annotations

from septum.engine.resolve import ResolvedPolicy, ResolvedPolicyRules, ResolvedTier
from septum.render.manifests import Approximation, Limitation

__all__ = ["EnforcedTiers", "enforced_tiers"]

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
