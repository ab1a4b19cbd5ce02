"""Analyses over the flow store: the wiring between ``FlowStore`` and the pure engines.

::

    FlowStore ─ history ─► resolve_ownership ─► with_ownership(repo) ─► Evaluator
        └──── groups(change points of the repositories and the history) ─┘
                                            │
                  engine.replay / engine.depmap / engine.recommend

Each function here reads the store, rebinds the repositories to the store's ownership
history (so that ``explain`` attributes addresses exactly as the store did) and calls one
pure engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from septum.engine.observed import FlowGroup
from septum.engine.ownership import OwnershipInterval, resolve_ownership, with_ownership
from septum.engine.replay import ReplayReport, change_points, replay
from septum.flows.store import FlowStore
from septum.model.resources import Repository

__all__ = ["load_groups", "rebind", "replay_store"]


def rebind(repo: Repository, history: Sequence[OwnershipInterval]) -> Repository:
    """``repo`` with addresses as the store attributes them (repository plus history)."""
    if not history:
        return repo
    return with_ownership(repo, resolve_ownership(repo, history))


def load_groups(
    store: FlowStore,
    repos: Sequence[Repository],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[FlowGroup], tuple[Repository, ...]]:
    """The store's flow groups, split wherever any of ``repos`` (rebound to the history)
    can change meaning, and the rebound repositories, in the order given."""
    history = store.history()
    rebound = tuple(rebind(r, history) for r in repos)
    points = [
        t
        for t in change_points(*rebound)
        if (since is None or t > since) and (until is None or t < until)
    ]
    return store.groups(since=since, until=until, change_points=points), rebound


def replay_store(
    store: FlowStore,
    draft: Repository,
    against: Repository | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    examples: int = 3,
) -> ReplayReport:
    """Replay the stored flows in [since, until) under ``draft``, against ``against`` or the
    recorded verdicts (``septum.engine.replay``)."""
    repos = [draft] if against is None else [draft, against]
    groups, rebound = load_groups(store, repos, since=since, until=until)
    return replay(
        rebound[0], groups, rebound[1] if against is not None else None, examples=examples
    )
