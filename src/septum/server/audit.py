"""The audit log: every write, who made it, when, and the state before and after, in an
append-only chain of SHA-256 hashes.

Each entry's hash covers the previous entry's hash and the entry's canonical JSON, so
changing, removing or reordering any entry breaks every hash after it, and ``verify`` finds
the first broken one. Entries are appended in the same transaction as the change they
record (``Database.write``), so there is never a change without its entry or an entry
without its change; the control row's lock makes the chain linear across replicas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from septum.server.db import GENESIS_HASH, AuditEntry, Control

__all__ = ["AuditProblem", "append", "entry_hash", "entry_json", "verify_entries"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
) -> str:
    body = _canonical(
        {
            "seq": seq,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
        }
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(
    session: Session,
    control: Control,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
) -> AuditEntry:
    """Append one entry after the chain's head (``control`` must be locked: ``write()``)."""
    # Round-trip through JSON so that the stored values hash the same when read back.
    before = json.loads(_canonical(before))
    after = json.loads(_canonical(after))
    seq = control.audit_seq + 1
    digest = entry_hash(control.audit_hash, seq, at, actor, action, target, before, after)
    entry = AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        target=target,
        before=before,
        after=after,
        prev_hash=control.audit_hash,
        hash=digest,
    )
    session.add(entry)
    control.audit_seq, control.audit_hash = seq, digest
    return entry


def entry_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": e.at.isoformat(),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "before": e.before,
        "after": e.after,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int
    message: str

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "message": self.message}


def verify_entries(
    entries: Iterable[dict[str, Any]], head: tuple[int, str] | None = None
) -> tuple[int, list[AuditProblem]]:
    """Check a chain given as ``entry_json`` dicts in ``seq`` order (from the database or
    an export): numbering without gaps from 1, each ``prev_hash`` equal to the previous
    hash, each hash recomputed; and, when given, that the last entry is the recorded head
    (so that entries cut off the end are noticed too). Returns (entries checked, problems)."""
    problems: list[AuditProblem] = []
    prev, expected_seq, count = GENESIS_HASH, 1, 0
    for e in entries:
        count += 1
        seq = int(e["seq"])
        if seq != expected_seq:
            problems.append(AuditProblem(seq, f"expected entry {expected_seq}, found {seq}"))
        if e["prev_hash"] != prev:
            problems.append(AuditProblem(seq, "does not follow the previous entry's hash"))
        at = datetime.fromisoformat(str(e["at"]))
        digest = entry_hash(
            str(e["prev_hash"]),
            seq,
            at,
            str(e["actor"]),
            str(e["action"]),
            str(e["target"]),
            e["before"],
            e["after"],
        )
        if digest != e["hash"]:
            problems.append(AuditProblem(seq, "content does not match its hash (altered)"))
        prev, expected_seq = str(e["hash"]), seq + 1
    if head is not None and (expected_seq - 1, prev) != head:
        problems.append(
            AuditProblem(
                expected_seq - 1,
                f"the chain ends at entry {expected_seq - 1}, but the recorded head is "
                f"entry {head[0]}",
            )
        )
    return count, problems


def database_entries(session: Session, *, after: int = 0, limit: int | None = None) -> list[
    AuditEntry
]:
    query = select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq)
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query).scalars())
