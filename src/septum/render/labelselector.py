"""Septum selectors → Kubernetes label selectors (``matchLabels``/``matchExpressions``).

A Septum :class:`~septum.model.selector.Selector` is a boolean expression; a Kubernetes label
selector is a conjunction of requirements. The translation therefore goes through a
disjunctive normal form (DNF): each conjunction of the DNF becomes one
:class:`ScopedSelector` and the caller emits one peer (or one policy) per term, whose union
means the disjunction. ::

    Selector ──NNF──► DNF (≤ max_terms conjunctions) ──per key──► requirements
             ──scope──► ScopedSelector(namespaces=LabelSelector, pods=LabelSelector) × n

Atoms and their Kubernetes form (``v`` is the label's value, absent when the key is absent):

==========================  =====================================================
Septum                      Kubernetes (same truth table, absent keys included)
==========================  =====================================================
``k == "x"``                ``matchLabels: {k: x}`` (absent: false in both)
``k in {a, b}``             ``In [a, b]`` (absent: false in both)
``k != "x"``                ``NotIn [x]`` (absent: *true* in both: no ``Exists`` needed)
``k not in {a, b}``         ``NotIn [a, b]`` (absent: true in both)
``has(k)`` / ``!has(k)``    ``Exists`` / ``DoesNotExist``
``all()``                   the empty selector
==========================  =====================================================

Septum's ``!=``/``not in`` are true for an absent key (``labels.get(k) != v``), exactly as
Kubernetes ``NotIn``; the property test in ``tests/render/test_labelselector.py`` checks this.
``starts with``/``ends with``/``contains`` have no Kubernetes form: with ``known_values``
(the label values present in the inventory) they are rewritten to ``In``/``NotIn`` over the
values that match (exact for that inventory, flagged ``closed_world``); otherwise the atom is
replaced by true (``Bias.SUPERSET``) or its conjunction dropped (``Bias.SUBSET``) and the
translation is marked inexact. Keys or values that are not valid Kubernetes labels are
handled the same way (no object can carry them).

**Namespace convention.** ``namespace.septum.io/<key>`` names the label ``<key>`` of the
workload's namespace and ``septum.io/namespace == "x"`` means "in namespace x" (the
namespace label ``kubernetes.io/metadata.name``); both go to the ``namespaces`` part of a
term, every other key to the ``pods`` part. A caller that has a single selector (Cilium) maps
the scoped keys back into one selector with :meth:`ScopedSelector.merged`.

**Algebra of unions of terms.** :func:`intersect_terms`, :func:`negate_terms` and
:func:`subtract_terms` compute with unions of :class:`ScopedSelector` terms exactly (each
requirement is negated by its complement: ``In``/``NotIn``, ``Exists``/``DoesNotExist``), with
unsatisfiable terms dropped; the Kubernetes renderer uses them to compile Septum's ``pass``
away. They give up (return None) past a term cap instead of growing without bound.

Pure: no I/O. Cost: O(DNF size · terms' length); the DNF is capped at ``max_terms``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from septum.model.resources import NAMESPACE_LABEL
from septum.model.selector import All, And, Compare, Expr, Has, Not, Op, Or, Selector

__all__ = [
    "DEFAULT_MAX_TERMS",
    "NAMESPACE_LABEL_PREFIX",
    "NAMESPACE_NAME_LABEL",
    "Bias",
    "LabelSelector",
    "Operator",
    "Requirement",
    "Scope",
    "ScopedSelector",
    "SelectorTranslation",
    "Translations",
    "intersect_terms",
    "label_key_problem",
    "label_value_problem",
    "negate_terms",
    "scoped_key",
    "subtract_terms",
    "translate_selector",
]

#: Prefix of the keys that denote labels of the workload's namespace.
NAMESPACE_LABEL_PREFIX = "namespace.septum.io/"
#: The label every Kubernetes namespace carries with its own name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Default cap on the number of DNF conjunctions of one selector.
DEFAULT_MAX_TERMS = 32


class Operator(enum.Enum):
    """Operators of a Kubernetes ``matchExpressions`` requirement."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Scope(enum.Enum):
    """Whose labels a key denotes: the pod's or its namespace's."""

    POD = "pod"
    NAMESPACE = "namespace"


class Bias(enum.Enum):
    """What to do with a term Kubernetes cannot express: match more (replace it by true) or
    match less (drop the conjunction that holds it)."""

    SUPERSET = "superset"
    SUBSET = "subset"


# ------------------------------------------------------------------------- label validity

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key (``[prefix/]name``), or None. O(len)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r}: prefix must be a DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _NAME.match(name):
        return (
            f"label key {key!r}: name must be 1-63 characters, alphanumeric at both ends, "
            "with '-', '_', '.' inside"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or None. O(len)."""
    if value == "":
        return None
    if len(value) > 63 or not _NAME.match(value):
        return (
            f"label value {value!r}: at most 63 characters, alphanumeric at both ends, "
            "with '-', '_', '.' inside"
        )
    return None


def scoped_key(key: str) -> tuple[Scope, str]:
    """The scope and the Kubernetes key a Septum label key denotes (namespace convention)."""
    if key == NAMESPACE_LABEL:
        return Scope.NAMESPACE, NAMESPACE_NAME_LABEL
    if key.startswith(NAMESPACE_LABEL_PREFIX):
        return Scope.NAMESPACE, key[len(NAMESPACE_LABEL_PREFIX) :]
    return Scope.POD, key


# ------------------------------------------------------------------------- output types


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions`` entry; ``values`` sorted (empty for Exists/DoesNotExist)."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    @property
    def sort_key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.key, self.operator.value, self.values)

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator.value}
        if self.operator in (Operator.IN, Operator.NOT_IN):
            out["values"] = list(self.values)
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator is Operator.IN:
            return value is not None and value in self.values
        if self.operator is Operator.NOT_IN:
            return value is None or value not in self.values
        if self.operator is Operator.EXISTS:
            return value is not None
        return value is None


def _sorted_requirements(reqs: Iterable[Requirement]) -> tuple[Requirement, ...]:
    return tuple(sorted(set(reqs), key=lambda r: r.sort_key))


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector; empty (no requirement) selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    match_expressions: tuple[Requirement, ...] = ()  # sorted

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_manifest(self) -> dict[str, Any]:
        """The JSON form (``{}`` for the empty selector). O(size)."""
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_manifest() for r in self.match_expressions]
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: every requirement holds. O(size)."""
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def with_requirements(self, extra: Iterable[Requirement]) -> LabelSelector:
        """This selector and ``extra`` (a conjunction)."""
        return LabelSelector(
            self.match_labels, _sorted_requirements({*self.match_expressions, *extra})
        )

    def renamed(self, rename: Callable[[str], str]) -> LabelSelector:
        """The same selector with every key mapped through ``rename`` (Cilium's keys)."""
        return LabelSelector(
            tuple(sorted((rename(k), v) for k, v in self.match_labels)),
            _sorted_requirements(
                Requirement(rename(r.key), r.operator, r.values) for r in self.match_expressions
            ),
        )


@dataclass(frozen=True, slots=True)
class ScopedSelector:
    """One conjunction: pods matching ``pods`` in namespaces matching ``namespaces``."""

    namespaces: LabelSelector = LabelSelector()
    pods: LabelSelector = LabelSelector()

    def matches(self, pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
        return self.namespaces.matches(namespace_labels) and self.pods.matches(pod_labels)

    def merged(
        self, pod_key: Callable[[str], str], namespace_key: Callable[[str], str]
    ) -> LabelSelector:
        """Both parts as one selector over endpoint labels (Cilium), keys renamed per scope."""
        ns = self.namespaces.renamed(namespace_key)
        pods = self.pods.renamed(pod_key)
        return LabelSelector(
            tuple(sorted({*ns.match_labels, *pods.match_labels})),
            _sorted_requirements({*ns.match_expressions, *pods.match_expressions}),
        )


@dataclass(frozen=True, slots=True)
class SelectorTranslation:
    """The result of :func:`translate_selector`.

    ``terms`` is a union: an object is selected when some term selects it; no terms means
    nothing is selected. ``exact`` says the union means exactly the Septum selector (under the
    namespace convention); otherwise ``problems`` says what was approximated and ``bias``
    which way. ``closed_world`` says some pattern was rewritten over ``known_values`` (exact
    for that inventory only).
    """

    selector: Selector
    terms: tuple[ScopedSelector, ...]
    exact: bool
    bias: Bias
    problems: tuple[str, ...] = ()
    closed_world: bool = False

    @property
    def matches_all(self) -> bool:
        """Whether the translation selects every pod in every namespace."""
        return any(t.namespaces.empty and t.pods.empty for t in self.terms)


# ------------------------------------------------------------------------------- DNF


@dataclass(frozen=True, slots=True)
class _Lit:
    """A literal of the DNF: ``has(key)`` (``compare`` None) or a comparison, maybe negated."""

    key: str
    compare: Compare | None
    negated: bool


_Conj = frozenset[_Lit]
_COMPLEMENT = {Op.EQ: Op.NE, Op.NE: Op.EQ, Op.IN: Op.NOT_IN, Op.NOT_IN: Op.IN}


class _TooBig(Exception):
    pass


def _dnf(expr: Expr, negated: bool, cap: int) -> list[_Conj]:
    """DNF of ``expr`` (of ``!expr`` when ``negated``): a list of conjunctions, [] = false,
    [frozenset()] = true. Raises _TooBig past ``cap`` conjunctions."""
    match expr:
        case All():
            return [] if negated else [frozenset()]
        case Has(key):
            return [frozenset((_Lit(key, None, negated),))]
        case Compare(key, op, values):
            if negated and op in _COMPLEMENT:
                return [frozenset((_Lit(key, Compare(key, _COMPLEMENT[op], values), False),))]
            return [frozenset((_Lit(key, expr, negated),))]
        case Not(operand):
            return _dnf(operand, not negated, cap)
        case And(operands) | Or(operands):
            conjunctive = isinstance(expr, And) != negated
            parts = [_dnf(o, negated, cap) for o in operands]
            if not conjunctive:
                out = list(dict.fromkeys(c for p in parts for c in p))
                if len(out) > cap:
                    raise _TooBig
                return out
            acc: list[_Conj] = [frozenset()]
            for p in parts:
                acc = list(dict.fromkeys(a | b for a in acc for b in p))
                if len(acc) > cap:
                    raise _TooBig
            return acc
    raise AssertionError(f"unknown selector node {expr!r}")  # pragma: no cover


_PATTERN_TEST: dict[str, Callable[[str, str], bool]] = {
    Op.STARTS_WITH: str.startswith,
    Op.ENDS_WITH: str.endswith,
    Op.CONTAINS: lambda value, part: part in value,
}


@dataclass(slots=True)
class _KeyConstraint:
    present: bool | None = None
    allowed: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()


class _Unsat(Exception):
    pass


def _constrain(c: _KeyConstraint, op: str, values: Iterable[str]) -> None:
    vals = frozenset(values)
    if op in (Op.EQ, Op.IN):
        c.allowed = vals if c.allowed is None else c.allowed & vals
    elif op in (Op.NE, Op.NOT_IN):
        c.excluded |= vals
    else:  # pragma: no cover - callers only pass the four
        raise AssertionError(op)


def _requirements(key: str, c: _KeyConstraint) -> tuple[list[tuple[str, str]], list[Requirement]]:
    labels: list[tuple[str, str]] = []
    reqs: list[Requirement] = []
    if c.present is False:
        if c.allowed is not None:
            raise _Unsat
        reqs.append(Requirement(key, Operator.DOES_NOT_EXIST))
        return labels, reqs
    if c.allowed is not None:
        allowed = c.allowed - c.excluded
        if not allowed:
            raise _Unsat
        if len(allowed) == 1:
            labels.append((key, next(iter(allowed))))
        else:
            reqs.append(Requirement(key, Operator.IN, tuple(sorted(allowed))))
        return labels, reqs
    if c.present:
        reqs.append(Requirement(key, Operator.EXISTS))
    if c.excluded:
        reqs.append(Requirement(key, Operator.NOT_IN, tuple(sorted(c.excluded))))
    return labels, reqs


def _literal_problem(lit: _Lit, scope_key: str) -> str | None:
    problem = label_key_problem(scope_key)
    if problem is not None:
        return problem
    if lit.compare is not None:
        for v in lit.compare.values:
            problem = label_value_problem(v)
            if problem is not None:
                return problem
    return None


def translate_selector(
    selector: Selector,
    *,
    bias: Bias = Bias.SUBSET,
    known_values: Callable[[str], Iterable[str]] | None = None,
    max_terms: int = DEFAULT_MAX_TERMS,
) -> SelectorTranslation:
    """Translate ``selector`` into a union of Kubernetes (namespace, pod) selectors.

    ``bias`` decides what an inexpressible term becomes (see :class:`Bias`); ``known_values``
    (label key → the values present in the inventory) lets pattern operators be rewritten
    exactly for that inventory. Beyond ``max_terms`` DNF conjunctions the translation gives up:
    every pod (``SUPERSET``) or nothing (``SUBSET``), reported.

    Pure; cost O(max_terms · |selector|) at worst.
    """
    try:
        conjunctions = _dnf(selector.expr, False, max_terms)
    except _TooBig:
        everything = (ScopedSelector(),) if bias is Bias.SUPERSET else ()
        return SelectorTranslation(
            selector,
            everything,
            exact=False,
            bias=bias,
            problems=(
                f"selector {selector.text!r} needs more than {max_terms} label selectors "
                "(its disjunctive normal form is too large)",
            ),
        )
    problems: list[str] = []
    closed_world = False
    terms: dict[ScopedSelector, None] = {}
    for conj in conjunctions:
        per_key: dict[tuple[Scope, str], _KeyConstraint] = {}
        dropped = False
        try:
            for lit in sorted(conj, key=lambda x: (x.key, x.compare.text() if x.compare else "")):
                scope, key = scoped_key(lit.key)
                problem = _literal_problem(lit, key)
                c = per_key.setdefault((scope, key), _KeyConstraint())
                op = lit.compare.op if lit.compare is not None else None
                if problem is None and op in _PATTERN_TEST and known_values is not None:
                    assert lit.compare is not None
                    test = _PATTERN_TEST[op]
                    part = lit.compare.values[0]
                    hits = sorted({v for v in known_values(lit.key) if test(v, part)})
                    bad = next((p for v in hits if (p := label_value_problem(v))), None)
                    if bad is None:
                        closed_world = True
                        _constrain(c, Op.NOT_IN if lit.negated else Op.IN, hits)
                        continue
                    problem = bad
                if problem is None and op in _PATTERN_TEST:
                    assert lit.compare is not None
                    neg = "!" if lit.negated else ""
                    problem = f"{neg}({lit.compare.text()}) has no Kubernetes label selector form"
                if problem is not None:
                    problems.append(problem)
                    if bias is Bias.SUBSET:
                        dropped = True
                        break
                    continue  # SUPERSET: the literal becomes true
                if lit.compare is None:
                    want = not lit.negated
                    if c.present is not None and c.present is not want:
                        raise _Unsat
                    c.present = want
                else:
                    assert not lit.negated  # only pattern literals stay negated
                    _constrain(c, lit.compare.op, lit.compare.values)
            if dropped:
                continue
            parts: dict[Scope, tuple[list[tuple[str, str]], list[Requirement]]] = {
                Scope.POD: ([], []),
                Scope.NAMESPACE: ([], []),
            }
            for (scope, key), c in per_key.items():
                labels, reqs = _requirements(key, c)
                parts[scope][0].extend(labels)
                parts[scope][1].extend(reqs)
        except _Unsat:
            continue
        term = ScopedSelector(
            namespaces=LabelSelector(
                tuple(sorted(parts[Scope.NAMESPACE][0])),
                _sorted_requirements(parts[Scope.NAMESPACE][1]),
            ),
            pods=LabelSelector(
                tuple(sorted(parts[Scope.POD][0])), _sorted_requirements(parts[Scope.POD][1])
            ),
        )
        terms[term] = None
    ordered = tuple(sorted(terms, key=_term_key))
    if any(t.namespaces.empty and t.pods.empty for t in ordered):
        ordered = (ScopedSelector(),)  # one term selects everything: the union is everything
    return SelectorTranslation(
        selector,
        ordered,
        exact=not problems,
        bias=bias,
        problems=tuple(dict.fromkeys(problems)),
        closed_world=closed_world,
    )


def _term_key(t: ScopedSelector) -> str:
    return repr((t.namespaces.to_manifest(), t.pods.to_manifest()))


# ------------------------------------------------------------------- algebra of term unions


def _selector_constraints(sel: LabelSelector, into: dict[str, _KeyConstraint]) -> None:
    """Add ``sel``'s requirements to per-key constraints. Raises _Unsat."""
    for k, v in sel.match_labels:
        _constrain(into.setdefault(k, _KeyConstraint()), Op.IN, (v,))
    for r in sel.match_expressions:
        c = into.setdefault(r.key, _KeyConstraint())
        if r.operator is Operator.IN:
            _constrain(c, Op.IN, r.values)
        elif r.operator is Operator.NOT_IN:
            _constrain(c, Op.NOT_IN, r.values)
        else:
            want = r.operator is Operator.EXISTS
            if c.present is not None and c.present is not want:
                raise _Unsat
            c.present = want


def _conjunction(*selectors: LabelSelector) -> LabelSelector | None:
    """The conjunction of ``selectors`` in normal form, or None when it selects nothing."""
    per_key: dict[str, _KeyConstraint] = {}
    labels: list[tuple[str, str]] = []
    reqs: list[Requirement] = []
    try:
        for sel in selectors:
            _selector_constraints(sel, per_key)
        for key in sorted(per_key):
            found_labels, found_reqs = _requirements(key, per_key[key])
            labels.extend(found_labels)
            reqs.extend(found_reqs)
    except _Unsat:
        return None
    return LabelSelector(tuple(sorted(labels)), _sorted_requirements(reqs))


def _intersect_term(a: ScopedSelector, b: ScopedSelector) -> ScopedSelector | None:
    ns = _conjunction(a.namespaces, b.namespaces)
    pods = _conjunction(a.pods, b.pods)
    if ns is None or pods is None:
        return None
    return ScopedSelector(ns, pods)


def _union(terms: Iterable[ScopedSelector]) -> tuple[ScopedSelector, ...]:
    unique = tuple(sorted(dict.fromkeys(terms), key=_term_key))
    if any(t.namespaces.empty and t.pods.empty for t in unique):
        return (ScopedSelector(),)
    return unique


def intersect_terms(
    a: Iterable[ScopedSelector], b: Iterable[ScopedSelector], cap: int = DEFAULT_MAX_TERMS
) -> tuple[ScopedSelector, ...] | None:
    """The union of terms selecting what both unions select (None past ``cap`` terms).
    O(|a| · |b| · term size)."""
    bs = tuple(b)
    out: list[ScopedSelector] = []
    for x in a:
        for y in bs:
            t = _intersect_term(x, y)
            if t is not None:
                out.append(t)
                if len(out) > cap * cap:
                    return None
    found = _union(out)
    return None if len(found) > cap else found


def _negated(r: Requirement) -> Requirement:
    flip = {
        Operator.IN: Operator.NOT_IN,
        Operator.NOT_IN: Operator.IN,
        Operator.EXISTS: Operator.DOES_NOT_EXIST,
        Operator.DOES_NOT_EXIST: Operator.EXISTS,
    }
    return Requirement(r.key, flip[r.operator], r.values)


def _negate_term(t: ScopedSelector) -> tuple[ScopedSelector, ...]:
    """What ``t`` does not select, as a union of one-requirement terms (``()`` for the term
    that selects everything)."""
    out: list[ScopedSelector] = []
    for part, sel in (("ns", t.namespaces), ("pods", t.pods)):
        reqs = [
            *(Requirement(k, Operator.IN, (v,)) for k, v in sel.match_labels),
            *sel.match_expressions,
        ]
        for r in reqs:
            one = LabelSelector().with_requirements((_negated(r),))
            normal = _conjunction(one)
            assert normal is not None
            out.append(ScopedSelector(normal, LabelSelector()) if part == "ns"
                       else ScopedSelector(LabelSelector(), normal))
    return tuple(out)


def negate_terms(
    terms: Iterable[ScopedSelector], cap: int = DEFAULT_MAX_TERMS
) -> tuple[ScopedSelector, ...] | None:
    """The complement of a union of terms, as a union of terms (None past ``cap`` terms).
    Exact: each requirement's complement is a requirement. O(product of the terms' sizes)."""
    acc: tuple[ScopedSelector, ...] = (ScopedSelector(),)
    for t in terms:
        found = intersect_terms(acc, _negate_term(t), cap)
        if found is None:
            return None
        acc = found
        if not acc:
            break
    return acc


def subtract_terms(
    a: Iterable[ScopedSelector], b: Iterable[ScopedSelector], cap: int = DEFAULT_MAX_TERMS
) -> tuple[ScopedSelector, ...] | None:
    """What ``a`` selects and ``b`` does not, as a union of terms (None past ``cap``)."""
    a_terms = tuple(a)
    if not a_terms:
        return ()
    negated = negate_terms(b, cap)
    if negated is None:
        return None
    return intersect_terms(a_terms, negated, cap)


class Translations:
    """Translations of one renderer's selectors, each made once per (selector, bias): a
    renderer asks for the same appliesTo and peer selectors many times."""

    def __init__(
        self,
        known_values: Callable[[str], Iterable[str]] | None,
        max_terms: int = DEFAULT_MAX_TERMS,
    ) -> None:
        self._known_values = known_values
        self._max_terms = max_terms
        self._memo: dict[tuple[str, Bias], SelectorTranslation] = {}

    def __call__(self, selector: Selector, bias: Bias) -> SelectorTranslation:
        key = (selector.text, bias)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = translate_selector(
                selector, bias=bias, known_values=self._known_values, max_terms=self._max_terms
            )
        return found
