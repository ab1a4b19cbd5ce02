"""Documents as the server stores them, and the way back to the validated model.

A stored document is exactly what a YAML file holds after parsing (``apiVersion``, ``kind``,
``metadata``, ``spec``) as JSON, plus the file it belongs to and its order there, so that
``septum pull`` writes back the layout ``septum push`` read. The model is built by the same
parser as files (``parse_documents``). API callers get problems by document and field
(``Policy/web: spec.ingress[0].ports[0]: …``) instead of file positions: each value of a
document is given a synthetic position (its own line number), and a problem's line is
mapped back to the field path it stands for.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from septum.errors import Problem, SeptumError, ValidationError
from septum.model.documents import Position, SourceDocument
from septum.model.parse import UnresolvedReferences, parse_documents
from septum.model.resources import Repository, Workload

__all__ = [
    "INVENTORY_KINDS",
    "KINDS",
    "DocumentError",
    "FieldProblem",
    "StoredDocument",
    "build_repository",
    "check_document",
    "decode_documents",
    "default_path",
    "diff_documents",
    "documents_digest",
    "encode_documents",
    "encoded_documents",
    "parse_workload",
]

#: Kinds a repository may hold, and the collection name each has in the API.
KINDS: dict[str, str] = {
    "Workload": "workloads",
    "Network": "networks",
    "User": "users",
    "UserGroup": "usergroups",
    "Service": "services",
    "Segment": "segments",
    "Tier": "tiers",
    "Policy": "policies",
    "Assertion": "assertions",
    "Settings": "settings",
}
COLLECTIONS: dict[str, str] = {v: k for k, v in KINDS.items()}
INVENTORY_KINDS = frozenset({"Workload", "Network", "User", "UserGroup"})


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A problem in one document, at a field path (``spec.ingress[0].ports[0]``)."""

    document: str  # "Kind/name"
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.document}: {self.field}" if self.field else self.document
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"document": self.document, "field": self.field, "message": self.message}


class DocumentError(SeptumError):
    """Documents that do not validate; ``problems`` name each document and field."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class StoredDocument:
    kind: str
    name: str
    path: str
    position: int
    body: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "position": self.position, "body": self.body}


def default_path(kind: str, name: str) -> str:
    """Where ``pull`` writes a document created through the API."""
    return f"{KINDS.get(kind, kind.lower())}/{name}.yaml"


def envelope(body: object, where: str = "document") -> tuple[str, str]:
    """(kind, name) of a document body, or DocumentError naming the missing field."""
    if not isinstance(body, dict):
        raise DocumentError([FieldProblem(where, "", "a document must be a JSON object")])
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise DocumentError(
            [FieldProblem(where, "kind", f"must be one of {', '.join(sorted(KINDS))}")]
        )
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise DocumentError([FieldProblem(where, "metadata.name", "a name is required")])
    return kind, name


# ------------------------------------------------------------------ field positions


def _field(path: tuple[object, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _walk(value: object, path: tuple[object, ...]) -> Iterator[tuple[tuple[object, ...], object]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


class _Lines(Mapping[tuple[object, ...], Position]):
    """Positions of a stored document's values: each value on its own line, in walk order,
    at ``column``. Made on first use: only problems ask for positions, and most builds have
    none (a 10k-document draft would otherwise pay for 400k of them)."""

    def __init__(self, body: object, column: int) -> None:
        self._body = body
        self._column = column
        self._table: dict[tuple[object, ...], Position] | None = None

    def _positions(self) -> dict[tuple[object, ...], Position]:
        if self._table is None:
            self._table = {
                path: Position(line, self._column)
                for line, (path, _value) in enumerate(_walk(self._body, ()), start=1)
            }
        return self._table

    def __getitem__(self, path: tuple[object, ...]) -> Position:
        return self._positions()[path]

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return iter(self._positions())

    def __len__(self) -> int:
        return len(self._positions())


def _fields(body: object) -> dict[int, str]:
    """Line → field path, for the lines ``_Lines`` gives."""
    return {line: _field(path) for line, (path, _v) in enumerate(_walk(body, ()), start=1)}


def _source_document(doc: StoredDocument) -> SourceDocument:
    """A SourceDocument whose every value sits on its own line (see ``_fields``)."""
    return SourceDocument(
        file=f"{doc.kind}/{doc.name}",
        value=json.loads(json.dumps(doc.body)),  # plain dicts and lists, never shared
        start=Position(1, 2),
        values=_Lines(doc.body, 2),
        keys=_Lines(doc.body, 1),
    )


def _field_problems(
    problems: Iterable[Problem], bodies: Mapping[str, object]
) -> list[FieldProblem]:
    fields: dict[str, dict[int, str]] = {}
    out: list[FieldProblem] = []
    for p in problems:
        if p.file not in fields:
            fields[p.file] = _fields(bodies[p.file]) if p.file in bodies else {}
        out.append(FieldProblem(p.file, fields[p.file].get(p.line, ""), p.message))
    return out


def build_repository(docs: Sequence[StoredDocument]) -> Repository:
    """Validate and build the repository the documents describe (in ``path``, ``position``
    order, as files load). Raises DocumentError naming each document and field."""
    sources: list[SourceDocument] = []
    bodies: dict[str, object] = {}
    for doc in sorted(docs, key=lambda d: (d.path, d.position, d.kind, d.name)):
        src = _source_document(doc)
        sources.append(src)
        bodies[src.file] = doc.body
    try:
        return parse_documents(sources)
    except ValidationError as exc:
        raise DocumentError(_field_problems(exc.problems, bodies)) from None


def parse_workload(doc: StoredDocument) -> Workload:
    """One Workload document on its own, as the whole repository's parse makes it
    (implicit labels included). Raises DocumentError."""
    src = _source_document(doc)
    try:
        repo = parse_documents([src], check_references=False)
    except ValidationError as exc:
        raise DocumentError(_field_problems(exc.problems, {src.file: doc.body})) from None
    if len(repo.workloads) != 1:
        raise DocumentError([FieldProblem(src.file, "kind", "not one Workload")])
    return repo.workloads[0]


def check_document(doc: StoredDocument) -> None:
    """Validate one document on its own (shape, types, selectors, ports; not references
    to other documents). Raises DocumentError."""
    src = _source_document(doc)
    try:
        parse_documents([src], check_references=False)
    except UnresolvedReferences:
        return  # references are checked with the whole draft (validate, provision)
    except ValidationError as exc:
        raise DocumentError(_field_problems(exc.problems, {src.file: doc.body})) from None


# ------------------------------------------------------------------ versions


def _sorted(docs: Iterable[StoredDocument]) -> list[StoredDocument]:
    return sorted(docs, key=lambda d: (d.path, d.position, d.kind, d.name))


def canonical_json(docs: Iterable[StoredDocument]) -> bytes:
    return json.dumps(
        [{"kind": d.kind, "name": d.name, **d.to_json()} for d in _sorted(docs)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def documents_digest(docs: Iterable[StoredDocument]) -> str:
    """SHA-256 of the documents' canonical JSON: equal digests, equal repositories."""
    return hashlib.sha256(canonical_json(docs)).hexdigest()


def encode_documents(docs: Iterable[StoredDocument]) -> bytes:
    return encoded_documents(docs)[1]


def encoded_documents(docs: Iterable[StoredDocument]) -> tuple[str, bytes]:
    """(``documents_digest``, ``encode_documents``) from one serialization."""
    body = canonical_json(docs)
    return hashlib.sha256(body).hexdigest(), zlib.compress(body, 6)


def decode_documents(blob: bytes) -> list[StoredDocument]:
    return [
        StoredDocument(e["kind"], e["name"], e["path"], e["position"], e["body"])
        for e in orjson.loads(zlib.decompress(blob))
    ]


@dataclass(frozen=True, slots=True)
class DocumentChange:
    kind: str
    name: str
    change: str  # "added" | "removed" | "changed"
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "change": self.change,
            "before": self.before,
            "after": self.after,
        }


def diff_documents(
    before: Iterable[StoredDocument], after: Iterable[StoredDocument]
) -> list[DocumentChange]:
    """Documents added, removed and changed (by content; a move between files is not a
    change of meaning and is not listed), sorted by kind and name."""
    old = {d.key: d for d in before}
    new = {d.key: d for d in after}
    changes: list[DocumentChange] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None and b is not None:
            changes.append(DocumentChange(*key, "added", None, b.body))
        elif b is None and a is not None:
            changes.append(DocumentChange(*key, "removed", a.body, None))
        elif a is not None and b is not None and a.body != b.body:
            changes.append(DocumentChange(*key, "changed", a.body, b.body))
    return changes
