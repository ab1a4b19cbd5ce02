"""YAML text → plain Python values, with a position for every node.

Pure (text in, values out): reading files is :mod:`septum.sources.files`' job.

PyYAML composes the node graph (the C composer when libyaml is available); this module then
builds plain values itself instead of using PyYAML's constructor, because it needs to

- record, for every path such as ``("spec", "ingress", 0, "from", 1)``, the 1-based line and
  column of the value and (for mapping entries) of the key;
- reject duplicate mapping keys (PyYAML silently keeps the last one, which could silently
  weaken a policy);
- keep timestamps as the text that was written, so that :mod:`septum.model.parse` can apply
  RFC 3339 rules (PyYAML would turn a zone-less time into a naive datetime without a word).

Scalars resolve as PyYAML's safe loader resolves them (``1`` is an int, ``yes`` a bool, ``~``
None), so that a label value written ``1`` is visibly not a string and can be rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

try:  # libyaml's composer is much faster; fall back to pure Python when it is missing.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

from septum.errors import Problem
from septum.model.documents import Path, Position, SourceDocument

__all__ = ["ParsedYaml", "Path", "Position", "SourceDocument", "parse_yaml"]

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT = _TAG + "null", _TAG + "bool", _TAG + "int", _TAG + "float"
_STR, _TIMESTAMP, _MERGE = _TAG + "str", _TAG + "timestamp", _TAG + "merge"
_SEQ, _MAP = _TAG + "seq", _TAG + "map"

#: Maximum nesting of collections in a document (policy documents need about 8).
MAX_DEPTH = 64


def _mark(mark: yaml.Mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


class _Builder:
    """Turns one composed node graph into plain values plus position maps."""

    def __init__(self, file: str, scalars: yaml.SafeLoader) -> None:
        self.file = file
        self.values: dict[Path, Position] = {}
        self.keys: dict[Path, Position] = {}
        self.styles: dict[Path, str] = {}
        self.problems: list[Problem] = []
        self._scalars = scalars
        self._active: set[int] = set()  # node ids being built: recursive aliases

    def _problem(self, pos: Position, message: str) -> None:
        self.problems.append(Problem(self.file, pos.line, pos.column, message))

    def build(self, node: yaml.Node, path: Path) -> object:
        pos = _mark(node.start_mark)
        self.values[path] = pos
        if id(node) in self._active:
            self._problem(pos, "recursive YAML alias")
            return None
        if len(path) > MAX_DEPTH:
            # Far beyond any real document; keeps this recursion and pydantic's bounded.
            self._problem(pos, f"nested deeper than {MAX_DEPTH} levels")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, pos)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    self._problem(pos, f"unsupported YAML tag {node.tag!r}")
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.tag != _MAP:
                    self._problem(pos, f"unsupported YAML tag {node.tag!r}")
                return self._mapping(node, path)
            self._problem(pos, f"unsupported YAML node {type(node).__name__}")
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path, pos: Position) -> object:
        tag = node.tag
        if tag in (_STR, _TIMESTAMP):
            # Timestamps stay text: parse.py applies RFC 3339 (and rejects naive times).
            if node.style:
                self.styles[path] = node.style
            return str(node.value)
        if tag in (_NULL, _BOOL, _INT, _FLOAT):
            try:
                # The constructor for the tag directly: construct_object would cache every node.
                return self._scalars.yaml_constructors[tag](self._scalars, node)
            except (yaml.YAMLError, ValueError) as exc:  # e.g. an explicit "!!int x"
                self._problem(pos, f"invalid {tag.removeprefix(_TAG)} {node.value!r}: {exc}")
                return None
        self._problem(pos, f"unsupported YAML tag {tag!r}")
        return None

    def _key(self, node: yaml.ScalarNode, pos: Position) -> object:
        if node.tag in (_STR, _TIMESTAMP):
            return str(node.value)
        return self._scalar(node, (), pos)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[object, object]:
        result: dict[object, object] = {}
        first_seen: dict[object, Position] = {}
        for key_node, value_node in node.value:
            key_pos = _mark(key_node.start_mark)
            if key_node.tag == _MERGE:
                # Merge keys hide where a value came from; policies should be explicit.
                self._problem(key_pos, "YAML merge keys ('<<') are not supported")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_pos, "a mapping key must be a scalar, not a collection")
                continue
            # Keys resolve like other scalars; their positions are recorded separately.
            key = self._key(key_node, key_pos)
            if key in first_seen:
                first = first_seen[key]
                self._problem(key_pos, f"duplicate key {key!r} (first at line {first.line})")
                continue
            first_seen[key] = key_pos
            self.keys[(*path, key)] = key_pos
            result[key] = self.build(value_node, (*path, key))
        return result


def _syntax_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    problem = str(getattr(exc, "problem", None) or exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}"
    if context:
        message += f" ({context})"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    lines = text.splitlines()
    found = lines[line - 1][column - 1 : column + 1] if line <= len(lines) else ""
    # libyaml's message does not name the character; a tab is by far the usual culprit.
    if "cannot start any token" in problem and found.startswith("\t"):
        message = "YAML syntax error: tab character; YAML indentation must use spaces"
    elif re.match(r":[:0-9A-Fa-f]", found) and "flow" in (context or ""):
        # "[::/0]" does not parse in YAML 1.1: a plain scalar cannot start with ':' there.
        message += "; quote values that start with ':' (e.g. \"::/0\")"
    return Problem(file, line, column, message)


@dataclass(frozen=True, slots=True)
class ParsedYaml:
    """The documents of one YAML text, the problems found, and whether the whole text was
    read (False after a syntax error: documents after it are missing)."""

    documents: list[SourceDocument]
    problems: list[Problem]
    complete: bool


def _documents(text: str) -> Iterator[yaml.Node]:
    yield from yaml.compose_all(text, Loader=_Loader)


def parse_yaml(text: str, file: str) -> ParsedYaml:
    """Parse every document of one YAML text.

    Returns the documents that could be read and the problems found (syntax errors, duplicate
    keys, unsupported tags). Empty documents (a stray ``---``) are skipped. After a syntax
    error the rest of the file is not read, but the documents before it are returned.
    Cost: linear in the size of the text.
    """
    documents: list[SourceDocument] = []
    problems: list[Problem] = []
    # PyYAML's constructor, only for the scalar types whose resolution must match exactly
    # (ints like 0o17 or 1_000, floats like .inf, bools like "yes"); one per text.
    scalars = yaml.SafeLoader("")
    try:
        for node in _documents(text):
            if node is None:
                continue
            if isinstance(node, yaml.ScalarNode) and node.tag == _NULL and node.value == "":
                continue  # an empty document
            builder = _Builder(file, scalars)
            value = builder.build(node, ())
            problems.extend(builder.problems)
            documents.append(
                SourceDocument(
                    file=file,
                    value=value,
                    start=_mark(node.start_mark),
                    values=builder.values,
                    keys=builder.keys,
                    styles=builder.styles,
                    text=text,
                )
            )
    except yaml.YAMLError as exc:
        problems.append(_syntax_problem(file, text, exc))
        return ParsedYaml(documents, problems, complete=False)
    return ParsedYaml(documents, problems, complete=True)
