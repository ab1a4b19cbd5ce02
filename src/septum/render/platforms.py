"""One entry point for the platform renderers, and the equivalence check of ``septum render
--verify``.

::

    Repository ─► render_target(k8s | calico | cilium | aws) ─► Rendering
                                                                   │ verify_rendering
    k8s:  manifests ─► map_cluster (our importer) ─► analyze_cluster ─┐
    aws:  security groups ─► security-group evaluator ───────────────┼─► diff with
    source: analyze_connectivity(Repository, the target's universe) ─┘   the source

A difference is acceptable only where a limitation announced it, in its direction:
connections the rendering adds need a WIDENED (or DROPPED) limitation, connections it loses a
NARROWED (or DROPPED) one. Between two workloads the limitation must also *reach* the pair:
its scope (:class:`~septum.render.manifests.Limitation`: the policy or rule it comes from, in
that rule's direction; a tier's policies; named workloads; ``settings`` reaches everyone)
must cover one of the two ends, and limitations marked ``external`` never reach a workload
pair. Between a workload and an external range the direction alone suffices. Anything else is
a renderer bug, and ``--verify`` fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from septum.engine.connectivity import (
    EXTERNAL_SUFFIX,
    KUBERNETES,
    ConnectivityDiff,
    analyze_connectivity,
    canonical,
    describe_ports,
    diff_connectivity,
    without_addresses,
)
from septum.engine.kubernetes import analyze_cluster
from septum.errors import SeptumError
from septum.model.documents import Position, SourceDocument
from septum.model.kubernetes import map_cluster
from septum.model.resources import Direction, Policy, Repository, Workload
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
class _Reach:
    """Whose traffic one limitation may change: everyone, named workloads, or the subjects of
    policies (on the side of ``direction``: egress the source, ingress the target)."""

    everyone: bool
    workloads: frozenset[str]
    policies: tuple[Policy, ...]
    direction: Direction | None

    @classmethod
    def of(cls, x: Limitation, repo: Repository) -> _Reach:
        kind, _, rest = x.source.partition("/")
        name, _, tail = rest.partition("/")
        direction = next((d for d in Direction if tail.startswith(d.value)), None)
        workloads = set(x.workloads)
        policies: tuple[Policy, ...] = ()
        everyone = False
        if kind == "policy":
            policies = tuple(p for p in repo.policies if p.name == name)
        elif kind == "tier":
            policies = tuple(p for p in repo.policies if p.tier == name)
        elif kind == "workload":
            workloads.add(name)
        else:  # settings (failsafe, defaults) and anything not named: every workload
            everyone = True
        return cls(everyone, frozenset(workloads), policies, direction)

    def covers(self, source: Workload | None, target: Workload | None) -> bool:
        if self.everyone:
            return True
        ends = ((source, Direction.EGRESS), (target, Direction.INGRESS))
        for w, side in ends:
            if w is None:
                continue
            if w.name in self.workloads:
                return True
            if self.direction in (None, side) and any(
                p.applies_to.matches(w.labels) for p in self.policies
            ):
                return True
        return False


def _is_external(end: str) -> bool:
    return end.endswith(EXTERNAL_SUFFIX)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking a rendering against its source. ``repo`` (the source) lets
    workload-pair differences be checked against the limitations' scopes; without it only
    their direction is."""

    target: str
    diff: ConnectivityDiff
    limitations: tuple[Limitation, ...]
    repo: Repository | None = field(default=None, compare=False, repr=False)

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

    def unexplained_changes(self) -> list[str]:
        """The differences (``+``/``-`` lines) no limitation accounts for: between two
        workloads, no limitation of that direction reaches either end; with an external
        range, no limitation of that direction at all."""
        widen = [x for x in self.limitations if x.approximation in _WIDENS]
        narrow = [x for x in self.limitations if x.approximation in _NARROWS]
        by_name = {w.name: w for w in self.repo.workloads} if self.repo is not None else {}
        reach: dict[Limitation, _Reach] = {}
        out: list[str] = []
        for c in self.diff.changes:
            pair = not _is_external(c.source) and not _is_external(c.target)
            ends = (
                by_name.get(c.source.partition("@")[0]),
                by_name.get(c.target.partition("@")[0]),
            )
            for ports, sign, said in ((c.added, "+", widen), (c.removed, "-", narrow)):
                if not ports:
                    continue
                if pair and self.repo is not None:
                    repo = self.repo
                    ok = any(
                        not x.external
                        and reach.setdefault(x, _Reach.of(x, repo)).covers(*ends)
                        for x in said
                    )
                else:
                    ok = bool(said)
                if not ok:
                    text = describe_ports(ports, self.diff.universe)
                    out.append(f"{sign} {c.source} => {c.target} : {text}")
        return out

    def unexplained(self) -> list[str]:
        """What no limitation announced, in words (empty when everything is accounted for)."""
        lines = self.unexplained_changes()
        out = []
        if any(line.startswith("+") for line in lines):
            out.append("the rendering allows more, but no limitation reaching it says it widens")
        if any(line.startswith("-") for line in lines):
            out.append("the rendering allows less, but no limitation reaching it says it narrows")
        return out

    @property
    def passed(self) -> bool:
        """Equivalent, or different only where and in directions the renderer announced."""
        return self.diff.empty or not self.unexplained_changes()

    def summary(self) -> str:
        if self.diff.empty:
            return (f"verified: the {self.target} rendering allows exactly what the "
                    "repository allows")
        n = len(self.diff.changes)
        if not self.passed:
            bad = self.unexplained_changes()
            shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
            return (f"verification FAILED: {n} pair(s) differ; "
                    f"{'; '.join(self.unexplained())}: {shown} (a renderer bug)")
        return (f"verified with approximations: {n} pair(s) differ, as the "
                f"{len(self.limitations)} limitation(s) listed say")


_WIDENS = frozenset({Approximation.WIDENED, Approximation.DROPPED})
_NARROWS = frozenset({Approximation.NARROWED, Approximation.DROPPED})


def verify_rendering(repo: Repository, rendering: Rendering, at: datetime) -> Verification:
    """Import the rendering back (k8s: our own importer; aws: the security-group evaluator)
    and compare its connectivity with the repository's. Pure."""
    if rendering.target == "aws":
        from septum.render.aws import verify_aws

        diff, limitations = verify_aws(repo, at, rendering)
        return Verification("aws", diff, tuple(limitations), repo)
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
    return Verification("k8s", diff, rendering.limitations, repo)
