"""Enforcer states in the database: published at provision, served to watching agents.

Revisions: a provision that changes anything bumps ``control.revision`` (under the control
row's lock) and gives that number to every enforcer whose state changed. So an enforcer's
revisions only increase, no two changes share one, and every replica agrees on them: an
agent asking "newer than N?" can never miss a change or see one twice, whichever replica it
asks, however notifications are lost (they only make the answer come sooner).

An answer to an agent at revision N, for state R:

- R == N: nothing (the caller waits);
- N == 0, N > R (the database was restored), N older than the changes kept, or any change
  in (N, R] replaced the table: ``full``, the whole ruleset;
- else ``delta``: the composition of the kept element deltas from N to R.

The bytes of an answer are cached by (enforcer, N, R): when a change wakes a thousand agents
that hold the same revision, each distinct answer is read and composed once.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from septum.render.hostruleset import HostRuleset, compose_deltas
from septum.render.wire import WIRE_VERSION, decode_deltas, decode_ruleset, encode_deltas
from septum.runtime import gc_paused
from septum.server.db import Control, Database, EnforcerChange, EnforcerState
from septum.server.desired import EnforcerPlan

__all__ = [
    "CHANNEL",
    "KEEP_CHANGES",
    "RulesetCache",
    "StateAnswers",
    "current_revisions",
    "load_ruleset",
    "publish",
    "stored_digests",
]

#: The PostgreSQL notification channel; the payload is the new revision.
CHANNEL = "septum_state"
#: Changes kept per enforcer: an agent further behind gets the whole table.
KEEP_CHANGES = 16


def _pack(body: bytes) -> bytes:
    return zlib.compress(body, 1)


def _unpack(blob: bytes) -> bytes:
    return zlib.decompress(blob)


class RulesetCache:
    """The rulesets published last, by enforcer and digest, so that the next provision
    diffs against objects in memory instead of decoding them from the database (one
    replica; another replica, or a restart, decodes). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_enforcer: dict[str, tuple[str, HostRuleset]] = {}

    def get(self, enforcer: str, digest: str) -> HostRuleset | None:
        with self._lock:
            hit = self._by_enforcer.get(enforcer)
        return hit[1] if hit is not None and hit[0] == digest else None

    def put(self, plans: Sequence[EnforcerPlan]) -> None:
        with self._lock:
            for p in plans:
                self._by_enforcer[p.enforcer] = (p.digest, p.ruleset)


def stored_digests(s: Session) -> dict[str, str]:
    return {e: d for e, d in s.execute(select(EnforcerState.enforcer, EnforcerState.digest))}


def current_revisions(s: Session) -> dict[str, int]:
    return {e: r for e, r in s.execute(select(EnforcerState.enforcer, EnforcerState.revision))}


def load_ruleset(s: Session, enforcer: str) -> HostRuleset | None:
    row = s.get(EnforcerState, enforcer)
    if row is None:
        return None
    with gc_paused():
        return decode_ruleset(json.loads(_unpack(row.ruleset)))


def previous_loader(
    db: Database, digests: dict[str, str], cache: RulesetCache
) -> Callable[[str], HostRuleset | None]:
    def load(enforcer: str) -> HostRuleset | None:
        hit = cache.get(enforcer, digests[enforcer])
        if hit is not None:
            return hit
        with db.read() as s:
            return load_ruleset(s, enforcer)

    return load


def publish(
    s: Session, control: Control, plans: Sequence[EnforcerPlan], version: int, now: datetime
) -> int:
    """Store ``plans`` as the new states (inside the write transaction that made
    ``version``, after ``control.revision`` was bumped); returns the revision they got.
    On PostgreSQL every replica is notified when the transaction commits."""
    revision = control.revision
    for p in plans:
        state = s.get(EnforcerState, p.enforcer)
        previous = 0 if state is None else state.revision
        if state is None:
            state = EnforcerState(enforcer=p.enforcer)
            s.add(state)
        state.revision, state.version, state.digest = revision, version, p.digest
        state.ruleset, state.updated_at = _pack(p.ruleset_json), now
        s.add(
            EnforcerChange(
                enforcer=p.enforcer,
                revision=revision,
                previous=previous,
                version=version,
                full=p.full,
                deltas=None if p.deltas_json is None else _pack(p.deltas_json),
                created_at=now,
            )
        )
    if plans:
        s.execute(delete(EnforcerChange).where(EnforcerChange.version <= version - KEEP_CHANGES))
        if s.get_bind().dialect.name == "postgresql":
            # Delivered at commit, to every replica listening (``septum.server.watch``).
            s.execute(text("SELECT pg_notify(:c, :r)"), {"c": CHANNEL, "r": str(revision)})
    return revision


def _envelope(enforcer: str, revision: int, version: int | None, kind: str) -> bytes:
    head = {"wire": WIRE_VERSION, "enforcer": enforcer, "revision": revision}
    head |= {"version": version, "kind": kind}
    return json.dumps(head, separators=(",", ":")).encode()


def unchanged(enforcer: str, revision: int, version: int | None) -> bytes:
    return _envelope(enforcer, revision, version, "unchanged")


class StateAnswers:
    """Answers to agents, cached by (enforcer, from revision, to revision)."""

    def __init__(self, db: Database, size: int = 4096) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._size = size

    def answer(self, enforcer: str, revision: int) -> tuple[int, bytes] | None:
        """(the enforcer's revision, the answer's JSON bytes), or None when the agent is
        current (or the enforcer has no state yet and the agent holds none)."""
        with self.db.read() as s:
            state_rev = s.execute(
                select(EnforcerState.revision).where(EnforcerState.enforcer == enforcer)
            ).scalar()
            if state_rev is None or state_rev == revision:
                return None
            key = (enforcer, revision, state_rev)
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                return state_rev, hit
            body = self._build(s, enforcer, revision)
        with self._lock:
            self._cache[key] = body
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return state_rev, body

    def _build(self, s: Session, enforcer: str, revision: int) -> bytes:
        state = s.get(EnforcerState, enforcer)
        assert state is not None
        if 0 < revision < state.revision:
            changes = (
                s.execute(
                    select(EnforcerChange)
                    .where(EnforcerChange.enforcer == enforcer)
                    .where(EnforcerChange.revision > revision)
                    .order_by(EnforcerChange.revision)
                )
                .scalars()
                .all()
            )
            chained = (
                bool(changes)
                and changes[0].previous == revision
                and changes[-1].revision == state.revision
                and all(c.deltas is not None for c in changes)
            )
            if chained:
                head = _envelope(enforcer, state.revision, state.version, "delta")
                if len(changes) == 1:
                    deltas = _unpack(changes[0].deltas or b"")
                else:
                    with gc_paused():
                        steps = [
                            decode_deltas(json.loads(_unpack(c.deltas or b""))) for c in changes
                        ]
                        deltas = json.dumps(
                            encode_deltas(compose_deltas(steps)), separators=(",", ":")
                        ).encode()
                return (
                    head[:-1] + b',"from":' + str(revision).encode() + b',"deltas":' + deltas + b"}"
                )
        head = _envelope(enforcer, state.revision, state.version, "full")
        return head[:-1] + b',"ruleset":' + _unpack(state.ruleset) + b"}"
