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
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from septum.render.hostruleset import compose_deltas
from septum.render.wire import WIRE_VERSION, decode_deltas, encode_deltas
from septum.runtime import gc_paused
from septum.server.db import (
    STATE_CHANNEL,
    Control,
    Database,
    EnforcerChange,
    EnforcerState,
    StateFragment,
    notify,
)
from septum.server.desired import DesiredState, assemble, skeleton_parts

__all__ = [
    "CHANNEL",
    "KEEP_CHANGES",
    "StateAnswers",
    "current_revisions",
    "load_parts",
    "parts_loader",
    "publish",
    "stored_skeletons",
]

#: The PostgreSQL notification channel; the payload is the new revision.
CHANNEL = STATE_CHANNEL
#: Changes kept per enforcer: an agent further behind gets the whole table.
KEEP_CHANGES = 16


def _pack(body: bytes) -> bytes:
    return zlib.compress(body, 1)


def _unpack(blob: bytes) -> bytes:
    return zlib.decompress(blob)


def current_revisions(s: Session) -> dict[str, int]:
    return {e: r for e, r in s.execute(select(EnforcerState.enforcer, EnforcerState.revision))}


def load_parts(s: Session, digests: Iterable[str]) -> dict[str, bytes]:
    """Stored parts by digest (wire JSON bytes); raises KeyError when one is missing."""
    wanted = sorted(set(digests))
    found: dict[str, bytes] = {}
    for i in range(0, len(wanted), 500):  # bound the statement's parameters
        chunk = wanted[i : i + 500]
        rows = s.execute(
            select(StateFragment.digest, StateFragment.body).where(StateFragment.digest.in_(chunk))
        )
        found.update((d, _unpack(b)) for d, b in rows)
    missing = [d for d in wanted if d not in found]
    if missing:
        raise KeyError(f"{len(missing)} ruleset parts are missing, e.g. {missing[0]}")
    return found


def stored_skeletons(s: Session) -> dict[str, bytes]:
    """Every enforcer's skeleton (what the next provision plans against)."""
    rows = s.execute(select(EnforcerState.enforcer, EnforcerState.ruleset))
    return {e: _unpack(blob) for e, blob in rows}


def parts_loader(db: Database) -> Callable[[Iterable[str]], dict[str, bytes]]:
    def load(digests: Iterable[str]) -> dict[str, bytes]:
        with db.read() as s:
            return load_parts(s, digests)

    return load


def publish(
    s: Session, control: Control, desired: DesiredState, version: int, now: datetime
) -> int:
    """Store the changed enforcers' states and the parts they lack (inside the write
    transaction that made ``version``, after ``control.revision`` was bumped); returns the
    revision they got. On PostgreSQL every replica is notified when the transaction commits."""
    revision = control.revision
    plans = desired.plans
    wanted = sorted(desired.parts)
    stored: set[str] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        stored.update(
            s.execute(select(StateFragment.digest).where(StateFragment.digest.in_(chunk))).scalars()
        )
    # Core bulk statements (executemany): a first provision writes thousands of rows, and
    # the ORM's row-at-a-time unit of work would dominate its time.
    new_parts = [
        {"digest": d, "body": _pack(desired.parts[d]), "created_at": now}
        for d in wanted
        if d not in stored
    ]
    if new_parts:
        s.execute(insert(StateFragment), new_parts)
    previous = current_revisions(s)
    rows = [
        {
            "enforcer": p.enforcer,
            "revision": revision,
            "version": version,
            "digest": p.digest,
            "ruleset": _pack(p.skeleton),
            "updated_at": now,
        }
        for p in plans
    ]
    added = [r for r in rows if r["enforcer"] not in previous]
    if added:
        s.execute(insert(EnforcerState), added)
    changed = [r for r in rows if r["enforcer"] in previous]
    if changed:
        s.execute(update(EnforcerState), changed)  # by primary key
    if plans:
        s.execute(
            insert(EnforcerChange),
            [
                {
                    "enforcer": p.enforcer,
                    "revision": revision,
                    "previous": previous.get(p.enforcer, 0),
                    "version": version,
                    "full": p.full,
                    "deltas": None if p.deltas_json is None else _pack(p.deltas_json),
                    "created_at": now,
                }
                for p in plans
            ],
        )
    if plans:
        s.execute(delete(EnforcerChange).where(EnforcerChange.version <= version - KEEP_CHANGES))
        # Delivered at commit, to every replica listening (``septum.server.watch``).
        notify(s, CHANNEL, str(revision))
    return revision


def _envelope(enforcer: str, revision: int, version: int | None, kind: str) -> bytes:
    head = {"wire": WIRE_VERSION, "enforcer": enforcer, "revision": revision}
    head |= {"version": version, "kind": kind}
    return json.dumps(head, separators=(",", ":")).encode()


def _delta_answer(enforcer: str, revision: int, version: int, base: int, deltas: bytes) -> bytes:
    head = _envelope(enforcer, revision, version, "delta")
    return head[:-1] + b',"from":' + str(base).encode() + b',"deltas":' + deltas + b"}"


def unchanged(enforcer: str, revision: int, version: int | None) -> bytes:
    return _envelope(enforcer, revision, version, "unchanged")


class StateAnswers:
    """Answers to agents, cached by (enforcer, from revision, to revision)."""

    def __init__(self, db: Database, size: int = 4096) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._size = size
        #: Ruleset parts by digest, shared by the answers of every enforcer that uses them.
        self._parts: dict[str, bytes] = {}

    def cached(self, enforcer: str, revision: int, target: int) -> bytes | None:
        """The answer from ``revision`` to ``target`` when it was made already."""
        with self._lock:
            return self._cache.get((enforcer, revision, target))

    def _remember(self, key: tuple[str, int, int], body: bytes) -> None:
        with self._lock:
            self._cache[key] = body
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)

    def prefetch(self, before: Mapping[str, int], after: Mapping[str, int]) -> int:
        """Make, in one query, the one-step delta answers of every enforcer whose revision
        moved from ``before`` to ``after`` (a provision that touches a thousand enforcers
        wakes a thousand agents at once; each then finds its answer made). Returns how many
        were made; enforcers whose change was a whole table are left to ``answer``."""
        moved = {e: (before[e], r) for e, r in after.items() if e in before and before[e] != r}
        if not moved:
            return 0
        made = 0
        targets = sorted({r for _, r in moved.values()})
        with self.db.read() as s:
            rows = s.execute(
                select(
                    EnforcerChange.enforcer,
                    EnforcerChange.previous,
                    EnforcerChange.revision,
                    EnforcerChange.version,
                    EnforcerChange.deltas,
                ).where(EnforcerChange.revision.in_(targets))
            )
            for enforcer, previous, revision, version, deltas in rows:
                if deltas is None or moved.get(enforcer) != (previous, revision):
                    continue
                self._remember(
                    (enforcer, previous, revision),
                    _delta_answer(enforcer, revision, version, previous, _unpack(deltas)),
                )
                made += 1
        if len(self._cache) > self._size // 2:
            self._size = max(self._size, 4 * made)  # room for one wave of every agent
        return made

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
        self._remember(key, body)
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
                return _delta_answer(enforcer, state.revision, state.version, revision, deltas)
        head = _envelope(enforcer, state.revision, state.version, "full")
        skeleton = _unpack(state.ruleset)
        wanted = skeleton_parts(skeleton)
        with self._lock:
            parts = {d: self._parts[d] for d in wanted if d in self._parts}
        missing = [d for d in wanted if d not in parts]
        if missing:
            loaded = load_parts(s, missing)
            parts.update(loaded)
            with self._lock:
                if len(self._parts) > 200_000:  # parts are immutable: any may go
                    self._parts.clear()
                self._parts.update(loaded)
        return head[:-1] + b',"ruleset":' + assemble(skeleton, parts.__getitem__) + b"}"
