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

from septum.engine.depmap import DependencyMap, MapOptions, build_dependency_map
from septum.engine.explain import Evaluator
from septum.engine.observed import FlowGroup
from septum.engine.ownership import OwnershipInterval, resolve_ownership, with_ownership
from septum.engine.recommend import Recommendation, RecommendOptions, recommend
from septum.engine.replay import ReplayReport, change_points, replay
from septum.flows.store import FlowStore, repository_identities
from septum.model.resources import Repository

__all__ = [
    "load_groups",
    "map_store",
    "rebind",
    "recommend_store",
    "replay_store",
    "repository_identities",
]


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
    """The store's flow groups, split at every rule expiry of ``repos`` (ownership changes
    already split them: see ``engine.replay``), and the repositories rebound to the history,
    in the order given. Identities carry
    the first repository's labels where it knows them, else those the store recorded."""
    history = store.history()
    rebound = tuple(rebind(r, history) for r in repos)
    points = [
        t
        for t in change_points(*rebound, bindings=False)
        if (since is None or t > since) and (until is None or t < until)
    ]
    identities = store.identities()
    if repos:
        identities.update(repository_identities(repos[0]))
    groups = store.groups(since=since, until=until, change_points=points, identities=identities)
    return groups, rebound


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


def map_store(
    store: FlowStore,
    active: Repository | None,
    options: MapOptions,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DependencyMap:
    """The dependency map of the stored flows in [since, until), each edge marked under
    ``active`` (or by the recorded verdicts when None) (``septum.engine.depmap``)."""
    groups, rebound = load_groups(
        store, [active] if active is not None else [], since=since, until=until
    )
    evaluator = Evaluator(rebound[0]) if active is not None else None
    return build_dependency_map(groups, evaluator, options)


def recommend_store(
    store: FlowStore,
    repo: Repository,
    options: RecommendOptions,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Recommendation:
    """Least-privilege policies for ``options.scope`` from the stored flows in [since,
    until) (``septum.engine.recommend``). The repository is rebound to the store's ownership
    history, so flows of addresses that changed hands count for whoever held them."""
    groups, rebound = load_groups(store, [repo], since=since, until=until)
    return recommend(rebound[0], groups, options)
