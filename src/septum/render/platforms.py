"""One entry point for the platform renderers, and the equivalence check of ``septum render
--verify``.

::

    Repository ─► render_target(k8s | calico | cilium | aws) ─► Rendering
                                                                   │ verify_rendering
    k8s:  manifests ─► map_cluster (our importer) ─► analyze_cluster ─┐
    aws:  security groups ─► security-group evaluator ───────────────┼─► diff with
    source: analyze_connectivity(Repository, the target's universe) ─┘   the source

A difference is acceptable only in a direction the renderer announced: connections the
rendering adds need a WIDENED (or DROPPED) limitation, connections it loses a NARROWED (or
DROPPED) one. Anything else is a renderer bug, and ``--verify`` fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from septum.engine.connectivity import (
    KUBERNETES,
    ConnectivityDiff,
    analyze_connectivity,
    canonical,
    diff_connectivity,
    without_addresses,
)
from septum.engine.kubernetes import analyze_cluster
from septum.errors import SeptumError
from septum.model.documents import Position, SourceDocument
from septum.model.kubernetes import map_cluster
from septum.model.resources import Repository
from septum.render.manifests import Approximation, Limitation, Rendering

__all__ = ["TARGETS", "Verification", "render_target", "verify_rendering"]

TARGETS = ("k8s", "calico", "cilium", "aws")


def render_target(repo: Repository, target: str, at: datetime, *,
                  inventory: bool = False) -> Rendering:
    """Render ``repo`` for ``target`` (one of TARGETS). ``inventory``: for k8s, also render
    Namespaces and Pods (needed to analyse the rendering on its own)."""
    if target == "k8s":
        from septum.render.kubernetes import KubernetesRenderSettings, render_kubernetes

        return render_kubernetes(repo, at, KubernetesRenderSettings(include_inventory=inventory))
    if target == "calico":
        from septum.render.calico import render_calico

        return render_calico(repo, at)
    if target == "cilium":
        from septum.render.cilium import render_cilium

        return render_cilium(repo, at)
    if target == "aws":
        from septum.render.aws import render_aws

        return render_aws(repo, at)
    raise SeptumError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking a rendering against its source."""

    target: str
    diff: ConnectivityDiff
    limitations: tuple[Limitation, ...]

    @property
    def exact(self) -> bool:
        return all(x.approximation.value == "rewritten" for x in self.limitations)

    @property
    def widened(self) -> bool:
        """The rendering allows something the repository does not."""
        return any(c.added for c in self.diff.changes)

    @property
    def narrowed(self) -> bool:
        """The rendering misses something the repository allows."""
        return any(c.removed for c in self.diff.changes)

    def unexplained(self) -> list[str]:
        """Directions of difference no limitation announced: allowing more needs a WIDENED
        (or DROPPED) limitation, allowing less a NARROWED (or DROPPED) one."""
        said = {x.approximation for x in self.limitations}
        out = []
        if self.widened and not said & {Approximation.WIDENED, Approximation.DROPPED}:
            out.append("the rendering allows more, but no limitation says it widens")
        if self.narrowed and not said & {Approximation.NARROWED, Approximation.DROPPED}:
            out.append("the rendering allows less, but no limitation says it narrows")
        return out

    @property
    def passed(self) -> bool:
        """Equivalent, or different only in directions the renderer announced."""
        return self.diff.empty or not self.unexplained()

    def summary(self) -> str:
        if self.diff.empty:
            return (f"verified: the {self.target} rendering allows exactly what the "
                    "repository allows")
        n = len(self.diff.changes)
        if not self.passed:
            return (f"verification FAILED: {n} pair(s) differ; "
                    f"{'; '.join(self.unexplained())} (a renderer bug)")
        return (f"verified with approximations: {n} pair(s) differ, as the "
                f"{len(self.limitations)} limitation(s) listed say")


def verify_rendering(repo: Repository, rendering: Rendering, at: datetime) -> Verification:
    """Import the rendering back (k8s: our own importer; aws: the security-group evaluator)
    and compare its connectivity with the repository's. Pure."""
    if rendering.target == "aws":
        from septum.render.aws import verify_aws

        diff, limitations = verify_aws(repo, at, rendering)
        return Verification("aws", diff, tuple(limitations))
    if rendering.target not in ("k8s", "kubernetes"):
        raise SeptumError(f"--verify supports k8s and aws, not {rendering.target}")
    docs = [
        SourceDocument(file=f"<rendered k8s #{i + 1}>", value=m, start=Position(1, 1))
        for i, m in enumerate(rendering.manifests)
    ]
    cluster = map_cluster(docs)
    rendered = canonical(analyze_cluster(cluster, at))
    source = canonical(analyze_connectivity(repo, at, KUBERNETES))
    # A workload's own address is not external in Septum; as a pod it is, to ipBlocks.
    held = [b.address for w in repo.workloads for b in w.addresses if b.valid_at(at)]
    held += [b.address for u in repo.users for b in u.sessions if b.valid_at(at)]
    diff = diff_connectivity(without_addresses(source, held), without_addresses(rendered, held))
    return Verification("k8s", diff, rendering.limitations)
