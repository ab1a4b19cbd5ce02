"""Connectivity of a Kubernetes cluster: :func:`~septum.engine.connectivity.
analyze_connectivity` over the mapped repository (tcp/udp/sctp, IPv4, pods and external
ranges), plus the ingress controller's reach to exposed workloads.

``{ingress-controller}`` stands for the cluster's ingress controller (netpol-analyzer's
convention). Its stand-in workloads (one per recognised controller namespace, see
:mod:`septum.model.kubernetes`) are left out of the pod-to-pod report; for each exposure the
exposed workload's *ingress side* alone decides (the controller is not ours to police), on
the exposed ports only, and the controllers' results are united.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from septum.engine.connectivity import (
    KUBERNETES,
    Connection,
    Connectivity,
    ConnectivityDiff,
    ConnectivityMap,
    ConnectivityOptions,
    Endpoint,
    analyze_connectivity,
    canonical,
    diff_connectivity,
    port_set_of,
)
from septum.engine.explain import Evaluator, Flow, Verdict
from septum.model.kubernetes import INGRESS_CONTROLLER, KubernetesCluster
from septum.model.resources import Direction, Protocol, Repository

__all__ = ["analyze_cluster"]


def _shown(e: Endpoint, shown: Callable[[str], str]) -> Endpoint:
    return e if e.external else Endpoint.workload(shown(e.name))


def analyze_cluster(
    cluster: KubernetesCluster, at: datetime, evaluator: Evaluator | None = None
) -> Connectivity:
    """Every allowed connection of the cluster (module docstring). Pure."""
    repo = cluster.repository
    ev = evaluator if evaluator is not None else Evaluator(repo)
    conn = analyze_connectivity(repo, at, KUBERNETES, ev)
    controllers = set(cluster.controllers)
    shown = cluster.shown
    kept = [
        Connection(_shown(c.source, shown), _shown(c.target, shown), c.ports, c.everything)
        for c in conn.connections
        if c.source.name not in controllers and c.target.name not in controllers
    ]
    universe = conn.universe.get(4, ())
    by_name = {w.name: w for w in repo.workloads}
    for exposure in cluster.exposures:
        target = by_name.get(exposure.workload)
        if target is None or not target.addresses:
            continue
        pieces: list[tuple[Protocol, int, int]] = []
        for name in sorted(controllers):
            source = by_name[name].addresses[0].address
            for sp in exposure.ports:
                assert sp.protocol is not None
                for port in range(sp.ports.first, sp.ports.last + 1):
                    flow = Flow(source, target.addresses[0].address, sp.protocol, port, at)
                    d = ev.side_decision(target, Direction.INGRESS, flow)
                    if not (d.verdict is Verdict.DENY and d.enforced):
                        pieces.append((sp.protocol, port, port))
        if pieces:
            ports = port_set_of(pieces)
            kept.append(Connection(Endpoint.workload(INGRESS_CONTROLLER),
                                   Endpoint.workload(shown(exposure.workload)), ports,
                                   ports == universe))
    kept.sort(key=lambda c: (str(c.source), str(c.target)))
    return Connectivity(tuple(kept), conn.options, conn.classes, conn.evaluations,
                        conn.universe)


def semantic_diff(
    before: Repository | KubernetesCluster, after: Repository | KubernetesCluster, at: datetime
) -> ConnectivityDiff:
    """Connections added and removed between two repositories or clusters (or one of each:
    then both are analysed in Kubernetes' universe, tcp/udp/sctp over IPv4). Pure."""
    mixed = isinstance(before, KubernetesCluster) or isinstance(after, KubernetesCluster)
    options = KUBERNETES if mixed else ConnectivityOptions()

    def report(x: Repository | KubernetesCluster) -> ConnectivityMap:
        if isinstance(x, KubernetesCluster):
            return canonical(analyze_cluster(x, at))
        return canonical(analyze_connectivity(x, at, options))

    return diff_connectivity(report(before), report(after))


__all__ += ["semantic_diff"]
