"""Each enforcer's desired state, planned at provision: which enforcers changed, and how.

::

    repository of the new version ──► resolve_policy ──► build_all (every enforcer named by a
                                                          workload, and every one that had a
                                                          state before: it must lose its rules)
        per enforcer: skeleton (header + digests of its chains, sets, maps; each distinct
                      part encoded once) ──► digest ── equal to the stored? ──► no update
                                         └── differs: structure digest equal to the stored?
                                               yes ──► element deltas of the sets and maps
                                                       whose parts changed (each distinct
                                                       old → new pair diffed once)
                                               no / no previous ──► full

Only enforcers whose digest changed get a new revision ("only changed enforcers receive
updates"). The digest is over the skeleton without the compile time (``at``); parts are
named by the digest of their content, so a provision that changes nothing for an enforcer
leaves it alone.

Pure: the previous skeletons are given, and the previous parts come from a callback (the
caller reads them from the database).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from septum.engine.resolve import resolve_policy
from septum.model.resources import Repository
from septum.render.compile import build_all
from septum.render.hostruleset import (
    Chain,
    Element,
    ElementDelta,
    HostRuleset,
    NamedSet,
    NftSettings,
    VerdictMap,
    element_sort_key,
)
from septum.render.wire import (
    PartEncoder,
    assemble_ruleset,
    decode_set_part,
    encode_deltas,
    ruleset_header,
)

__all__ = [
    "DesiredState",
    "EnforcerPlan",
    "SkeletonMaker",
    "assemble",
    "compact_json",
    "digest_without_at",
    "layout",
    "plan_desired_state",
    "skeleton_parts",
]


@dataclass(frozen=True, slots=True)
class EnforcerPlan:
    """One enforcer's new desired state: its skeleton (wire header plus the digests of its
    chains, sets and maps, JSON bytes; always stored, so that a new or lagging agent gets
    the whole table), and the element deltas from the previous state (wire JSON bytes), or
    None when the agent must take the whole table."""

    enforcer: str
    skeleton: bytes
    digest: str
    deltas_json: bytes | None

    @property
    def full(self) -> bool:
        return self.deltas_json is None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """The plans of the enforcers that change, and the parts their skeletons name (by
    digest; the caller stores those it lacks)."""

    plans: list[EnforcerPlan]
    parts: dict[str, bytes]
    #: Every enforcer's skeleton and the names of its sets and maps in skeleton order,
    #: changed or not (what ``server.builds`` keeps to update them incrementally).
    skeletons: dict[str, bytes] = field(default_factory=dict)
    layouts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SkeletonMaker:
    """Skeletons of rulesets built together: each distinct part is encoded and hashed once
    (``PartEncoder``), so the cost follows the distinct parts (thousands), not the parts
    in all tables (a selector's set is in hundreds of tables)."""

    def __init__(self) -> None:
        self.encoder = PartEncoder()
        self.parts: dict[str, bytes] = {}
        self.objects: dict[str, NamedSet | VerdictMap] = {}  # sets and maps by digest
        self._digests: dict[int, str] = {}
        self._declarations: dict[int, list[object]] = {}

    def part_digest(self, part: Chain | NamedSet | VerdictMap) -> str:
        key = id(part)  # alive: the encoder keeps every part it saw
        digest = self._digests.get(key)
        if digest is None:
            body = self.encoder.part(part)
            digest = _digest(body)
            self.parts[digest] = body
            self._digests[key] = digest
            if not isinstance(part, Chain):
                self.objects[digest] = part
        return digest

    def _declaration(self, part: NamedSet | VerdictMap) -> list[object]:
        """What the table declares of a set or map: all but its elements."""
        hit = self._declarations.get(id(part))
        if hit is None:
            interval = part.interval if isinstance(part, NamedSet) else None
            hit = [part.name, part.type.value, interval, part.comment]
            self._declarations[id(part)] = hit
        return hit

    def skeleton(self, ruleset: HostRuleset) -> tuple[bytes, str]:
        """(skeleton JSON, digest of the ruleset without its compile time). The skeleton's
        ``structure`` digest covers everything but set and map elements: two tables with
        equal structures differ by element deltas only."""
        header = ruleset_header(ruleset)
        at = header.pop("at")
        chains = [self.part_digest(c) for c in ruleset.chains]
        structure = {
            **header,
            "chains": chains,
            "declarations": [
                *(self._declaration(x) for x in ruleset.sets),
                *(self._declaration(m) for m in ruleset.maps),
            ],
        }
        doc = {
            **header,
            "structure": _digest(compact_json(structure)),
            "chains": chains,
            "sets": [self.part_digest(x) for x in ruleset.sets],
            "maps": [self.part_digest(m) for m in ruleset.maps],
        }
        body = compact_json(doc)
        return compact_json({"at": at, **doc}), _digest(body)


def assemble(skeleton: bytes, part: Callable[[str], bytes]) -> bytes:
    """The whole ruleset message (wire JSON bytes) of a skeleton, parts given by digest."""
    doc = json.loads(skeleton)
    header = {k: v for k, v in doc.items() if k not in ("structure", "chains", "sets", "maps")}
    return assemble_ruleset(
        header,
        [part(d) for d in doc["chains"]],
        [part(d) for d in doc["sets"]],
        [part(d) for d in doc["maps"]],
    )


def skeleton_parts(skeleton: bytes) -> list[str]:
    doc = json.loads(skeleton)
    return [*doc["chains"], *doc["sets"], *doc["maps"]]


class _ElementDiffs:
    """Element deltas between an old and a new version of a set or map, by their parts'
    digests: a selector's set changes once and is in hundreds of tables, so each distinct
    (old, new) pair is diffed and encoded once."""

    def __init__(
        self,
        new: Mapping[str, NamedSet | VerdictMap],
        load_parts: Callable[[Iterable[str]], Mapping[str, bytes]],
    ) -> None:
        self.new = new
        self.load_parts = load_parts
        self.old: dict[str, frozenset[Element]] = {}
        self.memo: dict[tuple[str, str], bytes | None] = {}

    def prefetch(self, digests: Iterable[str]) -> None:
        wanted = {d for d in digests if d not in self.old}
        for digest, body in self.load_parts(wanted).items():
            self.old[digest] = frozenset(_elements(decode_set_part(json.loads(body))))

    def delta(self, old: str, new: str) -> bytes | None:
        """The encoded delta (None when the elements are equal)."""
        key = (old, new)
        if key in self.memo:
            return self.memo[key]
        part = self.new[new]
        before, after = self.old[old], frozenset(_elements(part))
        encoded: bytes | None = None
        if before != after:
            delta = ElementDelta(
                part.name,
                tuple(sorted(after - before, key=element_sort_key)),
                tuple(sorted(before - after, key=element_sort_key)),
            )
            encoded = compact_json(encode_deltas([delta])[0])
        self.memo[key] = encoded
        return encoded


def _elements(part: NamedSet | VerdictMap) -> tuple[Element, ...]:
    return part.elements


def plan_desired_state(
    repo: Repository,
    at: datetime,
    previous: Mapping[str, bytes],
    load_parts: Callable[[Iterable[str]], Mapping[str, bytes]],
    settings: NftSettings | None = None,
) -> DesiredState:
    """The enforcers whose state ``repo`` changes, sorted by name. ``previous`` maps each
    enforcer that has a state to its skeleton; ``load_parts`` gives stored parts (wire JSON
    bytes) by digest. When an enforcer's structure is unchanged, its deltas are those of
    the sets and maps whose parts changed, in name order (as ``diff_rulesets`` gives them)."""
    enforcers: Sequence[str] = sorted(set(repo.enforcers()) | set(previous))
    rulesets = build_all(resolve_policy(repo, at), tuple(enforcers), settings)
    maker = SkeletonMaker()
    made: list[tuple[str, HostRuleset, bytes, str]] = []
    for enforcer in enforcers:
        skeleton, digest = maker.skeleton(rulesets[enforcer])
        made.append((enforcer, rulesets[enforcer], skeleton, digest))
    diffs = _ElementDiffs(maker.objects, load_parts)
    pending: list[tuple[str, bytes, str, list[tuple[str, str]] | None]] = []
    for enforcer, _ruleset, skeleton, digest in made:
        old_skeleton = previous.get(enforcer)
        old = json.loads(old_skeleton) if old_skeleton is not None else None
        if old is not None and digest_without_at(old) == digest:
            continue
        new = json.loads(skeleton)
        pairs: list[tuple[str, str]] | None = None
        if old is not None and old.get("structure") == new["structure"]:
            olds = [*old["sets"], *old["maps"]]
            news = [*new["sets"], *new["maps"]]
            pairs = [(a, b) for a, b in zip(olds, news, strict=True) if a != b]
        pending.append((enforcer, skeleton, digest, pairs))
    diffs.prefetch(a for *_, pairs in pending if pairs for a, _ in pairs)
    plans: list[EnforcerPlan] = []
    used: set[str] = set()
    for enforcer, skeleton, digest, pairs in pending:
        used.update(skeleton_parts(skeleton))
        deltas: bytes | None = None
        if pairs is not None:
            encoded = [d for a, b in pairs if (d := diffs.delta(a, b)) is not None]
            deltas = b"[" + b",".join(encoded) + b"]"
        plans.append(EnforcerPlan(enforcer, skeleton, digest, deltas))
    return DesiredState(
        plans,
        {d: maker.parts[d] for d in used},
        {e: skeleton for e, _r, skeleton, _d in made},
        {e: layout(r) for e, r, _s, _d in made},
    )


def layout(ruleset: HostRuleset) -> tuple[str, ...]:
    """The names of a ruleset's sets, then its maps: the order of their skeleton digests."""
    return (*(x.name for x in ruleset.sets), *(m.name for m in ruleset.maps))


def digest_without_at(skeleton: dict[str, object]) -> str:
    """The digest of a parsed skeleton, as ``SkeletonMaker.skeleton`` gives it."""
    return _digest(compact_json({k: v for k, v in skeleton.items() if k != "at"}))
