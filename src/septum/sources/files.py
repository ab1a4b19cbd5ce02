"""A policy repository on disk → the validated model. The only module here that reads files.

File order is the sorted path order of the README's policy language reference (directories walked in
sorted order; names starting with ``.`` skipped), so "the second definition" of a duplicate
name means the same thing on every machine. Paths in problems are the given path joined with
the file's path below it (``examples/policies/web.yaml`` when called with ``examples``), which
is what a user can click on in a terminal.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from septum.errors import Problem, ValidationError
from septum.model.documents import SourceDocument
from septum.model.parse import UnresolvedReferences, parse_documents
from septum.model.resources import Repository
from septum.sources.yamldoc import parse_yaml

__all__ = ["load_repository", "repository_digest", "repository_files"]

_SUFFIXES = (".yaml", ".yml")


def repository_files(path: Path) -> list[Path]:
    """The YAML files of a repository, in load order. A file path is its own repository."""
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found.extend(
            Path(root, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(_SUFFIXES)
        )
    return sorted(found, key=lambda p: p.relative_to(path).parts)


def repository_digest(path: Path) -> str:
    """A sha256 over the repository's files (relative paths and contents, in load order):
    equal digests mean an agent and the lab see the same desired state. Unreadable files
    count by name only. Cost: reads every file once."""
    h = hashlib.sha256()
    for file in repository_files(path):
        rel = file.relative_to(path) if path.is_dir() else Path(file.name)
        h.update(str(rel).encode() + b"\0")
        try:
            h.update(hashlib.sha256(file.read_bytes()).digest())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()


def _decode(data: bytes, file: str) -> tuple[str, Problem | None]:
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return "", Problem(file, line, column, "the file is not valid UTF-8")


def load_repository(path: Path, extra: Sequence[Path] = ()) -> Repository:
    """Read, validate and build the repository at ``path`` (a directory or one file), plus
    the ``extra`` files (those already in the repository are read once).

    Raises ValidationError with every problem of every file (never a partial repository).
    When some file could not be read at all, checks of references between documents are
    skipped: the missing definitions would only produce follow-on noise.
    """
    documents: list[SourceDocument] = []
    problems: list[Problem] = []
    complete = True  # every file read to its end
    for required in (path, *extra):
        if not required.exists():
            raise ValidationError([Problem(str(required), 1, 1, "no such file or directory")])
    files = repository_files(path)
    known = {f.resolve() for f in files}
    files += [f for f in extra if f.resolve() not in known]
    for file in files:
        name = str(file)
        try:
            data = file.read_bytes()
        except OSError as exc:
            problems.append(Problem(name, 1, 1, f"cannot read: {exc.strerror or exc}"))
            complete = False
            continue
        text, problem = _decode(data, name)
        if problem is not None:
            problems.append(problem)
            complete = False
            continue
        parsed = parse_yaml(text, name)
        documents.extend(parsed.documents)
        problems.extend(parsed.problems)
        complete = complete and parsed.complete
    try:
        repository = parse_documents(documents, check_references=complete)
    except UnresolvedReferences as exc:
        # Only when some file was not read: its problems are reported, these would be noise.
        raise ValidationError(problems or exc.problems) from None
    except ValidationError as exc:
        raise ValidationError(problems + exc.problems) from None
    if problems:
        raise ValidationError(problems)
    return repository
