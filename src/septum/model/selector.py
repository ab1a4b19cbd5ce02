"""The label selector language (Calico style), with one canonical text form and interning.

Design goals:
- Equal selectors are one object: ``parse_selector`` returns the interned ``Selector`` for the
  canonical text, so the engine can key caches, IP sets and label-index entries by identity.
- Matching is a compiled closure (no AST walk per call): it runs millions of times in the
  invariant checker and the label index.
- The AST is public so that the label index can answer membership by set algebra over its
  posting lists instead of scanning every endpoint.

Grammar (``||`` binds loosest)::

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | primary
    primary := "(" expr ")" | "all" "(" ")" | "has" "(" KEY ")"
             | KEY ( "==" STR | "!=" STR | "in" SET | "not" "in" SET
                   | "starts" "with" STR | "ends" "with" STR | "contains" STR )
    SET     := "{" [ STR ( "," STR )* ] "}"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Final

from septum.errors import SelectorSyntaxError

__all__ = [
    "ALL",
    "All",
    "And",
    "Compare",
    "Expr",
    "Has",
    "Not",
    "Op",
    "Or",
    "Selector",
    "parse_selector",
]

Labels = Mapping[str, str]


# --------------------------------------------------------------------------------------- AST


class Op:
    """Comparison operators of a ``KEY op value`` term (string constants, canonical spelling)."""

    EQ: Final = "=="
    NE: Final = "!="
    IN: Final = "in"
    NOT_IN: Final = "not in"
    STARTS_WITH: Final = "starts with"
    ENDS_WITH: Final = "ends with"
    CONTAINS: Final = "contains"


@dataclass(frozen=True, slots=True)
class All:
    def text(self) -> str:
        return "all()"


@dataclass(frozen=True, slots=True)
class Has:
    key: str

    def text(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True, slots=True)
class Compare:
    """``key op values``; ``values`` has one element except for ``in``/``not in`` (sorted)."""

    key: str
    op: str
    values: tuple[str, ...]

    def text(self) -> str:
        if self.op in (Op.IN, Op.NOT_IN):
            inner = ", ".join(_quote(v) for v in self.values)
            return f"{self.key} {self.op} {{{inner}}}"
        return f"{self.key} {self.op} {_quote(self.values[0])}"


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr

    def text(self) -> str:
        inner = self.operand.text()
        if isinstance(self.operand, And | Or | Compare):
            inner = f"({inner})"
        return f"!{inner}"


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]  # flattened, de-duplicated, sorted by text; len >= 2

    def text(self) -> str:
        parts = (f"({o.text()})" if isinstance(o, Or) else o.text() for o in self.operands)
        return " && ".join(parts)


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]  # flattened, de-duplicated, sorted by text; len >= 2

    def text(self) -> str:
        return " || ".join(o.text() for o in self.operands)


Expr = All | Has | Compare | Not | And | Or


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _make_and(operands: list[Expr]) -> Expr:
    flat: dict[str, Expr] = {}
    for o in operands:
        for part in o.operands if isinstance(o, And) else (o,):
            if not isinstance(part, All):  # all() && x == x
                flat.setdefault(part.text(), part)
    if not flat:
        return All()
    if len(flat) == 1:
        return next(iter(flat.values()))
    return And(tuple(flat[k] for k in sorted(flat)))


def _make_or(operands: list[Expr]) -> Expr:
    flat: dict[str, Expr] = {}
    for o in operands:
        for part in o.operands if isinstance(o, Or) else (o,):
            if isinstance(part, All):  # all() || x == all()
                return All()
            flat.setdefault(part.text(), part)
    if len(flat) == 1:
        return next(iter(flat.values()))
    return Or(tuple(flat[k] for k in sorted(flat)))


_COMPLEMENT = {Op.EQ: Op.NE, Op.NE: Op.EQ, Op.IN: Op.NOT_IN, Op.NOT_IN: Op.IN}


def _negate(expr: Expr) -> Expr:
    """``!e`` with the cheap canonical rewrites: ``!!e == e``, ``!(k == v) == k != v`` (both
    are true for an absent key), likewise ``in``/``not in``."""
    if isinstance(expr, Not):
        return expr.operand
    if isinstance(expr, Compare) and expr.op in _COMPLEMENT:
        return Compare(expr.key, _COMPLEMENT[expr.op], expr.values)
    return Not(expr)


# ---------------------------------------------------------------------------------- compiling


def _compile(expr: Expr) -> Callable[[Labels], bool]:
    match expr:
        case All():
            return lambda labels: True
        case Has(key):
            return lambda labels: key in labels
        case Compare(key, Op.EQ, (value,)):
            return lambda labels: labels.get(key) == value
        case Compare(key, Op.NE, (value,)):
            return lambda labels: labels.get(key) != value
        case Compare(key, Op.IN, values):
            members = frozenset(values)
            return lambda labels: labels.get(key) in members
        case Compare(key, Op.NOT_IN, values):
            members = frozenset(values)
            return lambda labels: labels.get(key) not in members
        case Compare(key, Op.STARTS_WITH, (prefix,)):
            return lambda labels: (v := labels.get(key)) is not None and v.startswith(prefix)
        case Compare(key, Op.ENDS_WITH, (suffix,)):
            return lambda labels: (v := labels.get(key)) is not None and v.endswith(suffix)
        case Compare(key, Op.CONTAINS, (part,)):
            return lambda labels: (v := labels.get(key)) is not None and part in v
        case Not(operand):
            inner = _compile(operand)
            return lambda labels: not inner(labels)
        case And(operands):
            return reduce(_both, (_compile(o) for o in operands))
        case Or(operands):
            return reduce(_either, (_compile(o) for o in operands))
    raise AssertionError(f"unknown selector node {expr!r}")  # pragma: no cover


# Nested closures instead of all()/any() over a generator: no generator per call, which
# halves the cost of a typical two- or three-term selector.
def _both(a: Callable[[Labels], bool], b: Callable[[Labels], bool]) -> Callable[[Labels], bool]:
    return lambda labels: a(labels) and b(labels)


def _either(a: Callable[[Labels], bool], b: Callable[[Labels], bool]) -> Callable[[Labels], bool]:
    return lambda labels: a(labels) or b(labels)


def _keys(expr: Expr) -> frozenset[str]:
    match expr:
        case Has(key) | Compare(key, _, _):
            return frozenset((key,))
        case Not(operand):
            return _keys(operand)
        case And(operands) | Or(operands):
            return frozenset().union(*(_keys(o) for o in operands))
    return frozenset()


# --------------------------------------------------------------------------------- Selector


class Selector:
    """An interned selector. Build with :func:`parse_selector`; never construct directly.

    Equality and hashing are by canonical text (identity in practice, thanks to interning).
    """

    __slots__ = ("expr", "is_all", "keys", "matches", "text")

    text: str
    expr: Expr
    is_all: bool
    keys: frozenset[str]
    #: Whether an endpoint with these labels is selected. Cost: O(size of the selector).
    #: The compiled closure itself, not a method wrapping it: it runs millions of times.
    matches: Callable[[Labels], bool]

    def __init__(self, expr: Expr) -> None:
        self.expr = expr
        self.text = expr.text()
        self.is_all = isinstance(expr, All)
        self.keys = _keys(expr)
        self.matches = _compile(expr)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def __str__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[Callable[[str], Selector], tuple[str]]:
        return (parse_selector, (self.text,))


_interned: dict[str, Selector] = {}  # canonical text -> Selector
_parsed: dict[str, Selector] = {}  # source text -> Selector (parse cache)


def _intern(expr: Expr) -> Selector:
    text = expr.text()
    found = _interned.get(text)
    if found is None:
        found = _interned[text] = Selector(expr)
    return found


def parse_selector(text: str) -> Selector:
    """Parse ``text`` into the interned Selector for its canonical form.

    Raises :class:`SelectorSyntaxError` with the 1-based column where parsing failed.
    Cost: O(len(text)) on first sight of a text, O(1) after (cached).
    """
    found = _parsed.get(text)
    if found is None:
        found = _parsed[text] = _intern(_Parser(text).parse())
    return found


# ----------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|&&|\|\||[!(){},])
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[A-Za-z0-9_][A-Za-z0-9_./\-]*)
    """,
    re.VERBOSE,
)
_UNTERMINATED = re.compile(r"""["']""")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "op", "str", "word", "end"
    value: str  # for "str": the unquoted value
    column: int  # 1-based


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _error(self, message: str, column: int) -> SelectorSyntaxError:
        return SelectorSyntaxError(message, column, self.text)

    def _tokenize(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        i = 0
        while i < len(text):
            m = _TOKEN.match(text, i)
            if m is None:
                if _UNTERMINATED.match(text, i):
                    raise self._error("unterminated string", i + 1)
                raise self._error(f"unexpected character {text[i]!r}", i + 1)
            kind = m.lastgroup
            assert kind is not None
            if kind == "str":
                raw = m.group()[1:-1]
                tokens.append(_Token("str", re.sub(r"\\(.)", r"\1", raw), i + 1))
            elif kind != "ws":
                tokens.append(_Token(kind, m.group(), i + 1))
            i = m.end()
        tokens.append(_Token("end", "", len(text) + 1))
        return tokens

    # helpers
    def _peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def _next(self) -> _Token:
        tok = self._peek()
        self.pos += 1
        return tok

    def _expect_op(self, op: str, what: str) -> _Token:
        tok = self._next()
        if tok.kind != "op" or tok.value != op:
            raise self._error(f"expected {what}, found {self._describe(tok)}", tok.column)
        return tok

    def _expect_string(self) -> str:
        tok = self._next()
        if tok.kind != "str":
            raise self._error(f"expected a quoted string, found {self._describe(tok)}", tok.column)
        return tok.value

    @staticmethod
    def _describe(tok: _Token) -> str:
        if tok.kind == "end":
            return "end of selector"
        if tok.kind == "str":
            return f"string {_quote(tok.value)}"
        return repr(tok.value)

    # grammar
    def parse(self) -> Expr:
        if self._peek().kind == "end":
            raise self._error("empty selector (use all() to select everything)", 1)
        expr = self._or()
        tok = self._peek()
        if tok.kind != "end":
            raise self._error(
                f"unexpected {self._describe(tok)} after a complete expression", tok.column
            )
        return expr

    def _or(self) -> Expr:
        parts = [self._and()]
        while self._peek().kind == "op" and self._peek().value == "||":
            self._next()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _make_or(parts)

    def _and(self) -> Expr:
        parts = [self._unary()]
        while self._peek().kind == "op" and self._peek().value == "&&":
            self._next()
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else _make_and(parts)

    def _unary(self) -> Expr:
        tok = self._peek()
        if tok.kind == "op" and tok.value == "!":
            self._next()
            return _negate(self._unary())
        return self._primary()

    def _primary(self) -> Expr:
        tok = self._next()
        if tok.kind == "op" and tok.value == "(":
            expr = self._or()
            self._expect_op(")", "')'")
            return expr
        if tok.kind != "word":
            raise self._error(
                f"expected a label key, has(), all() or '(', found {self._describe(tok)}",
                tok.column,
            )
        follow = self._peek()
        if tok.value in ("all", "has") and follow.kind == "op" and follow.value == "(":
            self._next()
            if tok.value == "all":
                self._expect_op(")", "')' after all(")
                return All()
            key = self._next()
            if key.kind != "word":
                raise self._error(
                    f"expected a label key in has(), found {self._describe(key)}", key.column
                )
            self._expect_op(")", "')' after has(key")
            return Has(key.value)
        return self._comparison(tok.value)

    def _comparison(self, key: str) -> Expr:
        tok = self._next()
        if tok.kind == "op" and tok.value in ("==", "!="):
            return Compare(key, tok.value, (self._expect_string(),))
        if tok.kind == "word":
            if tok.value == "in":
                return Compare(key, Op.IN, self._set())
            if tok.value == "contains":
                return Compare(key, Op.CONTAINS, (self._expect_string(),))
            second = self._peek()
            pairs = {"not": "in", "starts": "with", "ends": "with"}
            if tok.value in pairs and second.kind == "word" and second.value == pairs[tok.value]:
                self._next()
                op = f"{tok.value} {second.value}"
                if op == Op.NOT_IN:
                    return Compare(key, Op.NOT_IN, self._set())
                return Compare(key, op, (self._expect_string(),))
        raise self._error(
            f"expected an operator (==, !=, in, not in, starts with, ends with, contains) after "
            f"label key {key!r}, found {self._describe(tok)}",
            tok.column,
        )

    def _set(self) -> tuple[str, ...]:
        self._expect_op("{", "'{' to open a set")
        values: set[str] = set()
        if self._peek().kind == "op" and self._peek().value == "}":
            self._next()
            return ()
        while True:
            values.add(self._expect_string())
            tok = self._next()
            if tok.kind == "op" and tok.value == "}":
                return tuple(sorted(values))
            if not (tok.kind == "op" and tok.value == ","):
                raise self._error(
                    f"expected ',' or '}}' in a set, found {self._describe(tok)}", tok.column
                )


ALL: Final[Selector] = parse_selector("all()")
