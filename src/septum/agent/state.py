"""The agent's memory of what it last applied, on disk, so that a restart restores it.

Layout of the state directory::

    applied-<sha256>.nft      the last full script applied (a whole-table transaction)
    applied-<sha256>.journal  element deltas applied since, each framed by a checksummed header
    applied.json              {"format", "enforcer", "source_digest", "applied_at", "sha256"}

Each journal entry carries the source digest and time it brought; the newest intact one
overrides ``applied.json``'s, so recording a delta is one append, not a rewrite.

Design goals: (1) a crash at any moment leaves a state that restores either the previous or
the new ruleset, never a partial one: files are written to temporary names, fsynced, then
renamed; a script's name carries its checksum, so replacing ``applied.json`` (which names
that checksum) is the single commit point; (2) corruption is detected, never applied: every
piece is checked against a sha256; (3) deltas cost O(delta) to persist, not O(table): they
are appended to the current script's journal, and the next full apply starts a new one.

A journal entry torn by a crash while it was being appended is the newest delta; it is
dropped on load (``LoadedState.torn_tail``) and restoring yields the state before it, which
the agent then brings up to date from its source. Damage anywhere else is ``CorruptState``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from septum.errors import SeptumError

__all__ = ["AppliedMeta", "CorruptState", "LoadedState", "StateStore"]

_FORMAT = 1
_META = "applied.json"
_FRAME = b"#septum-delta "


class CorruptState(SeptumError):
    """The state directory holds something that fails its checksums or cannot be parsed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: corrupt agent state: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AppliedMeta:
    enforcer: str
    source_digest: str | None  # of the desired state the script came from (None: fail-closed)
    applied_at: str  # ISO 8601
    fail_closed: bool = False


@dataclass(frozen=True, slots=True)
class LoadedState:
    meta: AppliedMeta
    script: str  # the full script followed by every journaled delta: one transaction
    deltas: int
    torn_tail: bool


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_sha(stamp: dict[str, str | None], body: bytes) -> str:
    """A journal entry's checksum covers its stamp (digest, time) as well as its script."""
    return _sha(json.dumps(stamp, sort_keys=True).encode() + b"\0" + body)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """Reads and writes one agent's state directory (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._current: str | None = None  # checksum of the last full script, once known

    def script_path(self, sha256: str) -> Path:
        return self.directory / f"applied-{sha256}.nft"

    @property
    def meta_path(self) -> Path:
        return self.directory / _META

    def exists(self) -> bool:
        return self.meta_path.exists()

    def journal_path(self, sha256: str) -> Path:
        return self.directory / f"applied-{sha256}.journal"

    def save_full(self, script: str, meta: AppliedMeta) -> None:
        """Record a full script as applied. Cost: O(script) written and fsynced."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = script.encode()
        digest = _sha(data)
        # Crash safety: the new script and its (empty) journal are written under names that
        # carry the script's checksum, then the metadata naming that checksum replaces the old
        # one (the single commit point), then the old files go. A crash before the commit
        # restores the old script with its own journal; after it, the new one.
        _write_atomically(self.script_path(digest), data)
        _write_atomically(self.journal_path(digest), b"")
        doc = {
            "format": _FORMAT,
            "enforcer": meta.enforcer,
            "source_digest": meta.source_digest,
            "applied_at": meta.applied_at,
            "fail_closed": meta.fail_closed,
            "sha256": digest,
        }
        _write_atomically(self.meta_path, json.dumps(doc, indent=2).encode() + b"\n")
        _fsync_dir(self.directory)
        self._current = digest
        keep = {self.script_path(digest).name, self.journal_path(digest).name}
        for old in self.directory.glob("applied-*"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def append_delta(self, script: str, source_digest: str | None, applied_at: str) -> None:
        """Record an element delta applied on top of the last full script. Cost: O(delta):
        one append and fsync; the entry itself carries the digest and time it brings."""
        current = self._current or str(json.loads(self.meta_path.read_text())["sha256"])
        data = script.encode()
        stamp = {"source_digest": source_digest, "applied_at": applied_at}
        header = {**stamp, "length": len(data), "sha256": _entry_sha(stamp, data)}
        frame = _FRAME + json.dumps(header, sort_keys=True).encode() + b"\n" + data
        with open(self.journal_path(current), "ab") as f:
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> LoadedState | None:
        """The last applied state, or None when there is none. Raises ``CorruptState``."""
        if not self.meta_path.exists():
            return None
        try:
            doc = json.loads(self.meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptState(self.meta_path, f"unreadable metadata ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise CorruptState(self.meta_path, "unknown format")
        try:
            meta = AppliedMeta(
                enforcer=str(doc["enforcer"]),
                source_digest=doc["source_digest"],
                applied_at=str(doc["applied_at"]),
                fail_closed=bool(doc.get("fail_closed", False)),
            )
            expected = str(doc["sha256"])
        except KeyError as exc:
            raise CorruptState(self.meta_path, f"missing field {exc}") from exc
        path = self.script_path(expected)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptState(path, f"unreadable ({exc.strerror})") from exc
        if _sha(data) != expected:
            raise CorruptState(path, "checksum mismatch")
        try:
            script = data.decode()
        except UnicodeDecodeError as exc:
            raise CorruptState(path, "not UTF-8") from exc
        entries, torn = self._journal(self.journal_path(expected))
        if entries:  # the newest delta's digest and time are the state's
            stamp = entries[-1][0]
            meta = replace(
                meta, source_digest=stamp["source_digest"], applied_at=str(stamp["applied_at"])
            )
        self._current = expected
        return LoadedState(meta, script + "".join(b for _, b in entries), len(entries), torn)

    def _journal(self, journal: Path) -> tuple[list[tuple[dict[str, str | None], str]], bool]:
        """The journal's intact entries as (stamp, script), and whether a torn last entry
        was dropped."""
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return [], False
        out: list[tuple[dict[str, str | None], str]] = []
        pos = 0
        while pos < len(data):
            if not data.startswith(_FRAME, pos):
                raise CorruptState(journal, f"no entry header at byte {pos}")
            end = data.find(b"\n", pos)
            if end < 0:
                return out, True  # header torn by a crash
            try:
                header = json.loads(data[pos + len(_FRAME) : end])
                length, digest = int(header["length"]), str(header["sha256"])
                stamp = {k: header[k] for k in ("source_digest", "applied_at")}
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptState(journal, f"bad entry header at byte {pos}") from exc
            body = data[end + 1 : end + 1 + length]
            last = end + 1 + length >= len(data)
            if len(body) < length:
                if last:
                    return out, True  # body torn by a crash
                raise CorruptState(journal, f"short entry at byte {pos}")
            if _entry_sha(stamp, body) != digest:
                if last:
                    return out, True
                raise CorruptState(journal, f"checksum mismatch at byte {pos}")
            out.append((stamp, body.decode()))
            pos = end + 1 + length
        return out, False
