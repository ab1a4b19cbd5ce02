"""A tiny, independent evaluator of Kubernetes label selectors and policy peers, for tests.

It reads the JSON form of manifests (``matchLabels``/``matchExpressions`` dicts, as a renderer
emits them) and answers with Kubernetes' documented semantics, written from the API reference
and not from :mod:`septum.render.labelselector`, so that tests comparing the two check the
translation rather than restating it:

- ``matchLabels``: every key present with exactly that value;
- ``In``: key present and value in the list; ``NotIn``: key absent, or value not in the list;
- ``Exists`` / ``DoesNotExist``: key present / absent;
- all requirements must hold; the empty selector ``{}`` selects everything.

Cost: O(size of the selector) per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["label_selector_matches", "scoped_peer_matches"]


def _requirement_holds(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = req["key"]
    operator = req["operator"]
    values = list(req.get("values") or [])
    if operator == "In":
        if not values:
            raise ValueError("In needs values")
        return key in labels and labels[key] in values
    if operator == "NotIn":
        if not values:
            raise ValueError("NotIn needs values")
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        if values:
            raise ValueError("Exists takes no values")
        return key in labels
    if operator == "DoesNotExist":
        if values:
            raise ValueError("DoesNotExist takes no values")
        return key not in labels
    raise ValueError(f"unknown operator {operator!r}")


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes ``LabelSelector`` (JSON form) selects an object with ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_requirement_holds(r, labels) for r in selector.get("matchExpressions") or [])


def scoped_peer_matches(
    peer: Mapping[str, Any],
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
) -> bool:
    """Whether a NetworkPolicy-style peer ``{namespaceSelector?, podSelector?}`` (both given,
    as a cluster-wide peer; an absent part selects everything) selects a pod with
    ``pod_labels`` in a namespace with ``namespace_labels``."""
    ns = peer.get("namespaceSelector")
    pods = peer.get("podSelector")
    return (ns is None or label_selector_matches(ns, namespace_labels)) and (
        pods is None or label_selector_matches(pods, pod_labels)
    )
