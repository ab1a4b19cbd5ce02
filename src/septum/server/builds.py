"""Incremental provisioning: the active version kept built in memory, so that a provision
that only relabels a few workloads costs what the relabelling touches, not a whole build.

::

    full provision ──► publish ──► prime (background thread): IncrementalCompiler of the
                                   new version, with every enforcer's skeleton and layout
    next provision: only workloads' labels changed, and this process holds the build of the
    base version? ──► take it (one provision at a time owns it)
        changed documents parsed alone ──► the new repository (the base's, workloads swapped)
        assertions and replay run on it as always
        IncrementalCompiler.update_workload per workload ──► per enforcer: element deltas
           (of shared sets: each changed set encoded once) or, when its chains changed, the
           whole table from ``snapshot``
        skeletons updated in place (the changed sets' digests swapped) ──► publish
    anything else (policies, addresses, enforcer or mode changes, a time boundary crossed
    since the build, another replica's version, a failure) ──► the full path

The result is the full path's, byte for byte: same skeletons, digests and deltas (a test
runs both on the same changes). Rules that expire and addresses valid for a time make the
state depend on the clock; the build is valid while no such boundary lies between its
compile time and now, and the full path runs otherwise.

State per process: replicas each keep their own (or none); the database stays the truth.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from septum.model.resources import Repository, Workload
from septum.render.hostruleset import ElementDelta, compose_deltas
from septum.render.incremental import IncrementalCompiler
from septum.render.wire import encode_deltas
from septum.runtime import gc_paused
from septum.server.desired import (
    DesiredState,
    EnforcerPlan,
    SkeletonMaker,
    compact_json,
    digest_without_at,
    layout,
    skeleton_parts,
)

__all__ = ["ActiveBuild", "Builds", "next_change", "relabel", "time_boundaries"]

log = logging.getLogger("septum.server.builds")


def time_boundaries(repo: Repository) -> frozenset[datetime]:
    """Every instant at which the repository's meaning changes by itself: addresses that
    start or stop being held, rules that expire."""
    out: set[datetime] = set()
    bindings = [b for w in repo.workloads for b in w.addresses]
    bindings += [b for u in repo.users for b in u.sessions]
    for b in bindings:
        if b.valid_from is not None:
            out.add(b.valid_from)
        if b.valid_until is not None:
            out.add(b.valid_until)
    for policy in repo.policies:
        for rule in (*(policy.ingress or ()), *(policy.egress or ())):
            if rule.expires is not None:
                out.add(rule.expires)
    return frozenset(out)


def next_change(repo: Repository, after: datetime) -> datetime | None:
    """The first instant after ``after`` at which the repository's meaning changes."""
    return min((b for b in time_boundaries(repo) if b > after), default=None)


@dataclass
class ActiveBuild:
    """One version built: its repository, the incremental compiler at ``at``, and every
    enforcer's stored skeleton with the names of its sets and maps in skeleton order."""

    version: int
    at: datetime
    repo: Repository
    compiler: IncrementalCompiler
    skeletons: dict[str, bytes]
    layouts: dict[str, tuple[str, ...]]
    boundaries: frozenset[datetime]

    def valid_at(self, now: datetime) -> bool:
        return not any(self.at < b <= now for b in self.boundaries)


class Builds:
    """The build of the newest version this process provisioned (thread-safe). A provision
    ``take``s it (so two provisions never update one compiler) and ``put``s it back
    updated; a failure drops it, and the next full provision primes a new one."""

    def __init__(self, *, background: bool = True) -> None:
        self._lock = threading.Lock()
        self._active: ActiveBuild | None = None
        self._newest = 0  # the newest version primed or put: older builds are stale
        self.background = background  # prime in a thread (tests prime in place)
        self.incremental = 0  # provisions that took the incremental path

    def take(self, version: int | None) -> ActiveBuild | None:
        with self._lock:
            build = self._active
            if build is None or build.version != version:
                return None
            self._active = None
            return build

    def put(self, build: ActiveBuild) -> None:
        with self._lock:
            if build.version >= self._newest:
                self._active, self._newest = build, build.version

    def prime(
        self,
        version: int,
        repo: Repository,
        at: datetime,
        skeletons: Mapping[str, bytes],
        layouts: Mapping[str, tuple[str, ...]],
    ) -> None:
        """Build version ``version`` for incremental provisioning, in a background thread
        unless ``background`` is off."""
        with self._lock:
            self._newest = max(self._newest, version)
            self._active = None

        def build() -> None:
            try:
                with gc_paused():
                    compiler = IncrementalCompiler(repo, at)
                self.put(
                    ActiveBuild(
                        version,
                        at,
                        repo,
                        compiler,
                        dict(skeletons),
                        dict(layouts),
                        time_boundaries(repo),
                    )
                )
            except Exception:  # only an optimization: the full path still works
                log.warning("building version %s for incremental provisioning failed", version)

        if not self.background:
            build()
        else:
            threading.Thread(target=build, name=f"septum-build-{version}", daemon=True).start()


def relabelled(build: ActiveBuild, workloads: Sequence[Workload]) -> Repository | None:
    """The build's repository with ``workloads`` in place of their namesakes, when each
    differs from it by its labels only; else None (the full path)."""
    current = {w.name: w for w in build.repo.workloads}
    for w in workloads:
        old = current.get(w.name)
        if old is None or replace(old, labels=w.labels) != w:
            return None
    new = {w.name: w for w in workloads}
    return replace(build.repo, workloads=tuple(new.get(w.name, w) for w in build.repo.workloads))


def relabel(
    build: ActiveBuild, workloads: Sequence[Workload], now: datetime
) -> DesiredState | None:
    """Apply the relabelled ``workloads`` to the build's compiler and plan what changes;
    None when the compiler had to fall back to a rebuild (the build is then spent: the
    caller drops it). Updates ``build.skeletons`` and ``build.layouts``; the caller sets
    ``build.version`` and ``build.repo`` once the result is stored."""
    compiler = build.compiler
    structural: set[str] = set()
    steps: dict[str, list[tuple[ElementDelta, ...]]] = {}
    for w in workloads:
        update = compiler.update_workload(w)
        if update.fallback is not None:
            return None
        for enforcer, u in update.enforcers.items():
            if u.structural or u.full_table:
                structural.add(enforcer)
            steps.setdefault(enforcer, []).append(u.elements)
    maker = SkeletonMaker()
    set_digest: dict[str, str] = {}
    plans: list[EnforcerPlan] = []
    used: set[str] = set()
    stamp = now.isoformat()
    for enforcer in sorted(steps):
        deltas = compose_deltas(steps[enforcer])
        if not deltas and enforcer not in structural:
            continue
        stored = build.skeletons.get(enforcer)
        old: dict[str, Any] | None = json.loads(stored) if stored is not None else None
        positions = {n: i for i, n in enumerate(build.layouts.get(enforcer, ()))}
        n_sets = len(old["sets"]) if old is not None else 0
        if (
            old is not None
            and enforcer not in structural
            and all(positions.get(d.name, n_sets) < n_sets for d in deltas)
        ):
            # Only shared sets changed: swap their digests into the stored skeleton.
            for d in deltas:
                if d.name not in set_digest:
                    set_digest[d.name] = maker.part_digest(compiler.named_set(d.name))
                old["sets"][positions[d.name]] = set_digest[d.name]
            old["at"] = stamp
            skeleton = compact_json(old)
            deltas_json = compact_json(encode_deltas(deltas))
            plans.append(EnforcerPlan(enforcer, skeleton, digest_without_at(old), deltas_json))
            used.update(set_digest[d.name] for d in deltas)
        else:
            ruleset = replace(compiler.snapshot(enforcer), at=now)
            skeleton, digest = maker.skeleton(ruleset)
            if old is not None and digest == digest_without_at(old):
                continue
            build.layouts[enforcer] = layout(ruleset)
            plans.append(EnforcerPlan(enforcer, skeleton, digest, None))
            used.update(skeleton_parts(skeleton))
        build.skeletons[enforcer] = skeleton
    return DesiredState(plans, {d: maker.parts[d] for d in used})
