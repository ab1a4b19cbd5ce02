"""Selector implication: does every label map that one selector selects also match another?

The API server uses this to check that an app owner's policy ``appliesTo`` is *provably* inside
the owner's scope, even when the selector is written differently from the scope (a rewritten
but equivalent selector, or one that selects less). The answer is exact, with no "unknown"
treated as yes: :func:`selector_implies` is True exactly when no label map matches ``inner``
and not ``outer``, and :func:`counterexample` returns such a label map, checked with the
selectors' own compiled matchers, when there is one.

Method. ``inner ⊆ outer`` iff ``inner ∧ ¬outer`` is unsatisfiable.

1. Both selectors become one formula in negation normal form: negations are pushed down to the
   atoms (``has``, ``==``, ``in``, ``starts with``, ``ends with``, ``contains``; ``k != v`` is
   ``¬(k == v)`` and ``k not in S`` is ``¬(k in S)``, which is how the matcher treats an
   absent key too).
2. A depth-first search (DPLL with unit propagation and one-step lookahead, no DNF expansion)
   looks for a set of literals that satisfies the formula: conjunctions add literals,
   disjunctions are simplified against the literals fixed so far (a disjunct already implied
   satisfies the disjunction, a refuted one is dropped, a single survivor is a unit), and the
   search branches on the disjunction with the fewest disjuncts that survive propagation. A
   later branch also assumes the negation of the earlier literal disjuncts, so that branches
   are disjoint.
3. Literals on different keys are independent, so a set of literals is satisfiable iff each
   key's literals are (:func:`_solve_key`). A key is either absent, and then every literal is
   evaluated by the real matcher on a map without the key (positive atoms are false, their
   negations true), or present with a string value. If a positive ``==``/``in`` constrains
   the value, the candidates are the finitely many members of their intersection. Otherwise
   the value must start with the longest required prefix ``p``, end with the longest
   required suffix ``q`` and contain the required substrings ``c₁…cₙ``, while avoiding the
   excluded values, prefixes, suffixes and substrings. The witness ``p·f·c₁·f·…·f·cₙ·f·q``,
   where ``f`` is a character in none of the key's constants, satisfies them all whenever any
   value does: it is no excluded constant (it holds ``f``); a forbidden non-empty substring,
   prefix or suffix (without ``f``) can only occur inside one piece, hence in every value
   meeting the positive constraints. A shorter, more readable candidate (the pieces glued with
   maximal overlap) is tried first. Every candidate is tested with the real matcher.
4. The label map found is checked against ``inner.matches`` and ``outer.matches`` before it
   is returned; a failure there would be a bug in this module and raises ``AssertionError``.

Cost. Implication between selectors is coNP-complete (``has(k)`` per key is a Boolean
variable, so CNF satisfiability reduces to it), so no exact method is polynomial in the worst
case. Here each search node costs polynomial time (propagation and lookahead are
O(disjunctions × disjuncts × formula size) key checks, each O(literals on the key × value
length) and cached per call), and the number of nodes is bounded by the product of the
disjunction sizes but is in practice small: scope checks compare a conjunction or a short
disjunction with another, which propagation alone usually settles. Memory is O(search depth ×
widest disjunction × formula size). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count

from septum.model.selector import (
    All,
    And,
    Compare,
    Expr,
    Has,
    Not,
    Op,
    Or,
    Selector,
    parse_selector,
)

__all__ = ["counterexample", "selector_implies"]


def selector_implies(inner: Selector, outer: Selector) -> bool:
    """True only when every label map that ``inner`` selects is also selected by ``outer``
    (inner ⊆ outer).

    Sound: never True when some label map matches ``inner`` but not ``outer``. Complete for
    the whole grammar (``==``, ``!=``, ``in``, ``not in``, ``has``, ``!has``, ``starts with``,
    ``ends with``, ``contains``, ``&&``, ``||``, ``!``, ``all()``): False only when such a
    label map exists, and :func:`counterexample` returns one. Cost: see the module docstring.
    """
    return counterexample(inner, outer) is None


def counterexample(inner: Selector, outer: Selector) -> dict[str, str] | None:
    """A label map selected by ``inner`` and not by ``outer``, or None when inner ⊆ outer.

    The map is checked with both selectors' compiled matchers before it is returned. Keys
    that do not matter are left out; a key that must be present and can hold any value
    gets a short value built from the selectors' constants.
    """
    if outer.is_all or inner == outer:
        return None
    goal = _Both((_nnf(inner.expr, True), _nnf(outer.expr, False)))
    found = _Search().run(goal)
    if found is not None and not (inner.matches(found) and not outer.matches(found)):
        raise AssertionError(f"containment: {found!r} does not separate {inner} from {outer}")
    return found


# ------------------------------------------------------------------- negation normal form

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Literal:
    """An atom or its negation. ``atom`` is ``Has`` or a ``Compare`` with ``==``, ``in``,
    ``starts with``, ``ends with`` or ``contains``; ``matches`` is its compiled matcher."""

    atom: Has | Compare
    positive: bool
    matches: Callable[[Labels], bool] = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> str:
        return self.atom.key

    def holds(self, value: str | None) -> bool:
        """Whether the literal is true when the key has ``value`` (None: the key is absent)."""
        labels: dict[str, str] = {} if value is None else {self.atom.key: value}
        return self.matches(labels) == self.positive

    def negated(self) -> _Literal:
        return _Literal(self.atom, not self.positive, self.matches)


@dataclass(frozen=True, slots=True)
class _Both:
    parts: tuple[_Formula, ...]


@dataclass(frozen=True, slots=True)
class _Either:
    parts: tuple[_Formula, ...]


_Formula = _Literal | _Both | _Either | bool


def _literal(atom: Has | Compare, positive: bool) -> _Literal:
    # the atom's own interned selector: its compiled matcher is the ground truth
    return _Literal(atom, positive, parse_selector(atom.text()).matches)


def _nnf(expr: Expr, positive: bool) -> _Formula:
    """``expr`` (``positive``) or ``¬expr`` (not ``positive``) in negation normal form."""
    match expr:
        case All():
            return positive
        case Has():
            return _literal(expr, positive)
        case Compare(key, Op.NE, values):
            return _literal(Compare(key, Op.EQ, values), not positive)
        case Compare(key, Op.NOT_IN, values):
            return _literal(Compare(key, Op.IN, values), not positive)
        case Compare():
            return _literal(expr, positive)
        case Not(operand):
            return _nnf(operand, not positive)
        case And(operands):
            parts = tuple(_nnf(o, positive) for o in operands)
            return _Both(parts) if positive else _Either(parts)
        case Or(operands):
            parts = tuple(_nnf(o, positive) for o in operands)
            return _Either(parts) if positive else _Both(parts)
    raise AssertionError(f"unknown selector node {expr!r}")  # pragma: no cover


# ------------------------------------------------------------------------------ one key

#: characters tried, in order, as the separator that no constant of the key contains
_READABLE = "-_.0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _solve_key(literals: frozenset[_Literal]) -> tuple[bool, str | None]:
    """Whether the literals on one key can hold together, and how: ``(True, None)`` with the
    key absent, ``(True, value)`` with the key present, ``(False, None)`` if they cannot."""
    if all(lit.holds(None) for lit in literals):
        return True, None
    for value in _candidates(literals):
        if all(lit.holds(value) for lit in literals):
            return True, value
    return False, None


def _candidates(literals: frozenset[_Literal]) -> Iterator[str]:
    """Values to try for a present key; one of them satisfies ``literals`` if any value does
    (see the module docstring, step 3)."""
    required: dict[str, list[str]] = {Op.STARTS_WITH: [], Op.ENDS_WITH: [], Op.CONTAINS: []}
    finite: list[frozenset[str]] = []
    constants: set[str] = set()
    for lit in literals:
        if not isinstance(lit.atom, Compare):
            continue
        constants.update(lit.atom.values)
        if lit.positive and lit.atom.op in (Op.EQ, Op.IN):
            finite.append(frozenset(lit.atom.values))
        elif lit.positive:
            required[lit.atom.op].append(lit.atom.values[0])
    if finite:
        yield from sorted(frozenset.intersection(*finite))
        return
    prefix = max(required[Op.STARTS_WITH], key=len, default="")
    suffix = max(required[Op.ENDS_WITH], key=len, default="")
    parts = sorted(set(required[Op.CONTAINS]))
    glued = prefix
    for part in parts:
        if part not in glued:
            glued = _glue(glued, part)
    yield glued if glued.endswith(suffix) else _glue(glued, suffix)
    yield _fresh({ch for c in constants for ch in c}).join((prefix, *parts, suffix))


def _glue(left: str, right: str) -> str:
    """``left`` followed by ``right``, overlapping them as much as possible."""
    for overlap in range(min(len(left), len(right)), 0, -1):
        if left.endswith(right[:overlap]):
            return left + right[overlap:]
    return left + right


def _fresh(used: set[str]) -> str:
    """A character not in ``used``, readable if possible."""
    for ch in _READABLE:
        if ch not in used:
            return ch
    return next(chr(i) for i in count(0xA1) if chr(i) not in used)  # pragma: no cover


# ------------------------------------------------------------------------------- search

_State = dict[str, frozenset[_Literal]]  # key -> the literals fixed on it
_Node = tuple[list[_Either], _State]  # disjunctions still open, literals fixed


class _Search:
    """One satisfiability question; caches the per-key answers for its duration."""

    def __init__(self) -> None:
        self._solved: dict[frozenset[_Literal], tuple[bool, str | None]] = {}

    def run(self, goal: _Formula) -> dict[str, str] | None:
        """A label map satisfying ``goal``, or None when there is none."""
        root = self._propagate([goal], {}, [])
        stack = [] if root is None else [root]
        while stack:
            ors, state = stack.pop()
            if not ors:
                return self._labels(state)
            stack.extend(reversed(self._branch(ors, state)))
        return None

    # -- per key

    def _solve(self, literals: frozenset[_Literal]) -> tuple[bool, str | None]:
        found = self._solved.get(literals)
        if found is None:
            found = self._solved[literals] = _solve_key(literals)
        return found

    def _labels(self, state: _State) -> dict[str, str]:
        labels: dict[str, str] = {}
        for key, literals in sorted(state.items()):
            ok, value = self._solve(literals)
            assert ok, literals
            if value is not None:
                labels[key] = value
        return labels

    def _status(self, formula: _Formula, state: _State) -> bool | None:
        """True if every model of ``state`` satisfies ``formula``, False if none does, None
        if undecided (sound, not complete: compound formulas are only partially evaluated)."""
        if isinstance(formula, bool):
            return formula
        if isinstance(formula, _Literal):
            fixed = state.get(formula.key, frozenset())
            if formula in fixed:
                return True
            if formula.negated() in fixed or not self._solve(fixed | {formula})[0]:
                return False
            if not self._solve(fixed | {formula.negated()})[0]:
                return True
            return None
        verdicts = [self._status(part, state) for part in formula.parts]
        decisive = isinstance(formula, _Either)  # a True decides an Either, a False a Both
        if decisive in verdicts:
            return decisive
        if all(v is not None for v in verdicts):
            return not decisive
        return None

    # -- propagation and branching

    def _propagate(self, todo: list[_Formula], state: _State, ors: list[_Either]) -> _Node | None:
        """Add ``todo`` to a copy of the node (``ors``, ``state``), simplify the disjunctions
        and follow units until none is left. None on a conflict."""
        state = dict(state)
        ors = list(ors)
        while True:
            while todo:
                formula = todo.pop()
                if formula is True:
                    continue
                if formula is False:
                    return None
                if isinstance(formula, _Literal):
                    fixed = state.get(formula.key, frozenset())
                    if formula not in fixed:
                        fixed = fixed | {formula}
                        if not self._solve(fixed)[0]:
                            return None
                        state[formula.key] = fixed
                elif isinstance(formula, _Both):
                    todo.extend(formula.parts)
                elif isinstance(formula, _Either):
                    ors.append(formula)
            open_ors: list[_Either] = []
            for disjunction in ors:
                verdicts = [self._status(part, state) for part in disjunction.parts]
                if True in verdicts:
                    continue
                alive = tuple(
                    p for p, v in zip(disjunction.parts, verdicts, strict=True) if v is None
                )
                if not alive:
                    return None
                if len(alive) == 1:
                    todo.append(alive[0])
                else:
                    open_ors.append(disjunction if len(alive) == len(verdicts) else _Either(alive))
            ors = open_ors
            if not todo:
                return ors, state

    def _branch(self, ors: list[_Either], state: _State) -> list[_Node]:
        """The children of the disjunction with the fewest children that survive
        propagation (one-step lookahead), in the order to explore them."""
        best: list[_Node] | None = None
        for i in sorted(range(len(ors)), key=lambda i: len(ors[i].parts)):
            rest = ors[:i] + ors[i + 1 :]
            children: list[_Node] = []
            earlier: list[_Formula] = []  # negations of the earlier literal disjuncts
            for part in ors[i].parts:
                child = self._propagate([part, *earlier], state, rest)
                if child is not None:
                    children.append(child)
                if isinstance(part, _Literal):
                    earlier.append(part.negated())
            if best is None or len(children) < len(best):
                best = children
            if len(best) <= 1:
                break
        assert best is not None
        return best
