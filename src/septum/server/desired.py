"""Each enforcer's desired state, planned at provision: which enforcers changed, and how.

::

    repository of the new version ──► resolve_policy ──► build_all (every enforcer named by a
                                                          workload, and every one that had a
                                                          state before: it must lose its rules)
        per enforcer: wire JSON ──► digest ── equal to the stored digest? ──► no update
                                         └── differs: diff against the previous ruleset
                                               structure equal ──► element deltas
                                               else / no previous ──► full

Only enforcers whose digest changed get a new revision ("only changed enforcers receive
updates"). The digest is over the wire JSON without the compile time (``at``), so a
provision that changes nothing for an enforcer leaves it alone.

Pure: the previous rulesets come from a callback (the caller reads them from the database or
a cache).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from septum.engine.resolve import resolve_policy
from septum.model.resources import Repository
from septum.render.compile import build_all
from septum.render.hostruleset import HostRuleset, NftSettings, diff_rulesets
from septum.render.wire import encode_deltas, encode_ruleset

__all__ = ["EnforcerPlan", "plan_desired_state", "ruleset_wire"]


@dataclass(frozen=True, slots=True)
class EnforcerPlan:
    """One enforcer's new desired state: the whole ruleset (wire JSON bytes, always stored,
    so that a new or lagging agent gets it), and the element deltas from the previous
    state (wire JSON bytes), or None when the agent must take the whole table."""

    enforcer: str
    ruleset: HostRuleset
    ruleset_json: bytes
    digest: str
    deltas_json: bytes | None

    @property
    def full(self) -> bool:
        return self.deltas_json is None


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def ruleset_wire(ruleset: HostRuleset) -> tuple[bytes, str]:
    """(wire JSON of ``ruleset``, digest of it without its compile time)."""
    doc = encode_ruleset(ruleset)
    at = doc.pop("at")
    body = _dumps(doc)
    digest = hashlib.sha256(body).hexdigest()
    # The compile time goes back in front without a second serialization of the tables.
    return b'{"at":' + _dumps(at) + b"," + body[1:], digest


def plan_desired_state(
    repo: Repository,
    at: datetime,
    previous: Mapping[str, str],
    load_previous: Callable[[str], HostRuleset | None],
    settings: NftSettings | None = None,
) -> list[EnforcerPlan]:
    """The enforcers whose state ``repo`` changes, sorted by name. ``previous`` maps each
    enforcer that has a state to its digest; ``load_previous`` gives its ruleset (None when
    it cannot: the enforcer then gets the whole table)."""
    enforcers: Sequence[str] = sorted(set(repo.enforcers()) | set(previous))
    rulesets = build_all(resolve_policy(repo, at), tuple(enforcers), settings)
    plans: list[EnforcerPlan] = []
    for enforcer in enforcers:
        ruleset = rulesets[enforcer]
        body, digest = ruleset_wire(ruleset)
        if previous.get(enforcer) == digest:
            continue
        deltas: bytes | None = None
        old = load_previous(enforcer) if enforcer in previous else None
        if old is not None:
            change = diff_rulesets(old, ruleset)
            if not change.structure_changed:
                deltas = _dumps(encode_deltas(change.elements))
        plans.append(EnforcerPlan(enforcer, ruleset, body, digest, deltas))
    return plans
