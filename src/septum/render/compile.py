"""Public entry points of the nftables compiler: repository → nft script per enforcer.

::

    Repository ──resolve_policy──► ResolvedPolicy ──build_host_ruleset──► HostRuleset
                   (once, shared)                     (per enforcer)            │
                                                                     render_nft │ diff_rulesets
                                                                                ▼
                                                           nft script / element delta script

Pure: the caller gives the time; nothing is applied here (the agent does that).
"""

from __future__ import annotations

from datetime import datetime

from septum.engine.resolve import ResolvedPolicy, resolve_policy
from septum.model.resources import Repository
from septum.render.hostruleset import (
    HostRuleset,
    NftSettings,
    RuleCache,
    RulesetDelta,
    build_host_ruleset,
    diff_rulesets,
)
from septum.render.nft import render_all, render_nft, render_set_delta

__all__ = [
    "build_all",
    "compile_all",
    "compile_delta",
    "compile_enforcer",
]


def compile_enforcer(
    repo: Repository, enforcer: str, at: datetime, settings: NftSettings | None = None
) -> str:
    """The nft script of one enforcer at time ``at``."""
    return render_nft(build_host_ruleset(resolve_policy(repo, at), enforcer, settings))


def build_all(
    resolved: ResolvedPolicy, enforcers: tuple[str, ...], settings: NftSettings | None = None
) -> dict[str, HostRuleset]:
    """Host rulesets of several enforcers, sharing selector sets and expanded rules."""
    cache = RuleCache(resolved, settings or NftSettings())
    return {e: build_host_ruleset(resolved, e, settings, cache=cache) for e in enforcers}


def compile_all(
    repo: Repository, at: datetime, settings: NftSettings | None = None
) -> dict[str, str]:
    """The nft script of every enforcer named by some workload, keyed by enforcer (sorted).

    Selector memberships are computed once and shared by all enforcers.
    """
    rulesets = build_all(resolve_policy(repo, at), repo.enforcers(), settings)
    return render_all(rulesets.values())


def compile_delta(
    old: Repository,
    new: Repository,
    enforcer: str,
    at: datetime,
    settings: NftSettings | None = None,
) -> tuple[RulesetDelta, str]:
    """What turns ``enforcer``'s table for ``old`` into the one for ``new``.

    Returns the delta and the script to apply: element statements when only set/map elements
    changed, the whole table (``render_nft``) when rules or declarations changed too, and
    ``""`` when nothing changed.
    """
    before = build_host_ruleset(resolve_policy(old, at), enforcer, settings)
    after = build_host_ruleset(resolve_policy(new, at), enforcer, settings)
    delta = diff_rulesets(before, after)
    if delta.structure_changed:
        return delta, render_nft(after)
    return delta, render_set_delta(after, delta)
