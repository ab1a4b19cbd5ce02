"""What every platform renderer returns: manifests plus a report of what the target could not
express.

A renderer (``render_kubernetes``, ``render_calico``, ``render_cilium``, ``render_aws``) is a
pure function ``(Repository, at) -> Rendering``. Nothing it cannot express is dropped in
silence: each such thing becomes a :class:`Limitation` naming the policy/rule it came from, what
was lost and how it was approximated (or that it was left out), so ``septum render`` can print
it and ``--verify`` can tell an expected difference from a bug.

::

    Repository ──render_<target>──► Rendering ─┬─► manifests (dicts, ready for YAML/JSON)
                                               └─► limitations (what / where / approximation)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Approximation",
    "Limitation",
    "Manifest",
    "Rendering",
]

#: One rendered object (Kubernetes-style resource or cloud API document), JSON-compatible.
Manifest = dict[str, Any]


class Approximation(enum.Enum):
    """How a limitation was handled."""

    DROPPED = "dropped"  # left out: the target has no way to say it
    WIDENED = "widened"  # the rendering allows more than the source
    NARROWED = "narrowed"  # the rendering allows less than the source
    REWRITTEN = "rewritten"  # expressed differently, same meaning (e.g. deny compiled away)


@dataclass(frozen=True, slots=True)
class Limitation:
    """One thing the target could not express as written.

    ``source`` names where it comes from (``policy/<name>``, ``policy/<name>/ingress/<i>``,
    ``workload/<name>``, ``tier/<name>``, ``settings``); ``what`` says what could not be
    expressed; ``approximation`` how it was handled, explained in ``detail``.

    The scope says whose traffic it may change (``septum render --verify`` accepts a
    difference only where a limitation's scope reaches): the workloads ``source`` names (the
    subjects of a policy, in the rule's direction; the policies of a tier; one workload;
    ``settings`` reaches every workload), plus ``workloads`` named here (e.g. the peers a
    rule could not name exactly). ``external``: it changes only traffic with addresses
    outside every workload, never traffic between two workloads."""

    source: str
    what: str
    approximation: Approximation
    detail: str = ""
    workloads: tuple[str, ...] = ()
    external: bool = False

    def __str__(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.source}: {self.what} ({self.approximation.value}){tail}"

    def to_json(self) -> dict[str, str]:
        return {
            "source": self.source,
            "what": self.what,
            "approximation": self.approximation.value,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Rendering:
    """Manifests for one target, in apply order, and the limitations met on the way.

    ``files`` optionally groups manifests into named output files (relative paths such as
    ``policies.yaml`` or ``main.tf``) with already-rendered text, for targets whose natural
    output is not a list of resources (Terraform); when empty, ``septum render --out`` writes
    ``manifests`` as one multi-document YAML file."""

    target: str
    manifests: tuple[Manifest, ...]
    limitations: tuple[Limitation, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Whether the rendering means exactly what the source means (nothing approximated
        except ``REWRITTEN`` items, which keep the meaning)."""
        return all(x.approximation is Approximation.REWRITTEN for x in self.limitations)

    def kinds(self) -> Sequence[str]:
        return sorted({str(m.get("kind", "")) for m in self.manifests})
