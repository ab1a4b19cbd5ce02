"""Selector implication: hand-written cases, then properties against brute force over a finite
universe of label maps (each key absent or any string over {x, y, z} up to length 4)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.containment import counterexample, selector_implies
from septum.model.selector import And, Compare, Expr, Has, Not, Or, Selector, parse_selector


def check(inner_text: str, outer_text: str) -> bool:
    """``inner ⊆ outer``, after checking that the two answers agree and that a returned
    counterexample really separates the selectors."""
    inner, outer = parse_selector(inner_text), parse_selector(outer_text)
    implied = selector_implies(inner, outer)
    found = counterexample(inner, outer)
    assert (found is None) == implied
    if found is not None:
        assert inner.matches(found), found
        assert not outer.matches(found), found
    return implied


# --------------------------------------------------------------------------- hand-written

IMPLIED = [
    ('app == "web"', 'app in {"web", "api"}'),
    ('app == "web" && env == "prod"', 'env == "prod"'),
    ('app == "web" && env == "prod"', 'app == "web"'),
    ("all()", "all()"),
    ('app == "x"', "all()"),
    ("!has(a)", 'a != "x"'),
    ("!has(a)", 'a not in {"x", "y"}'),
    ("!has(a)", '!(a starts with "x")'),
    ("!has(a)", '!(a contains "")'),
    ('app starts with "web-"', 'app starts with "we"'),
    ('app == "web-1"', 'app starts with "web"'),
    ('app starts with "web"', 'app contains "eb"'),
    ('app starts with "web" && app ends with "-1"', 'app contains "b" && app contains "-"'),
    ('app starts with "web"', "has(app)"),
    ('a starts with ""', "has(a)"),
    ("has(a)", 'a contains ""'),
    ('a ends with ""', 'a starts with ""'),
    ('!(app != "web")', 'app == "web"'),
    ('app == "web"', '!(app != "web")'),
    ('app in {"a"} || app in {"b"}', 'app in {"a", "b"}'),
    ('app in {"a", "b"}', 'app in {"a"} || app in {"b"}'),
    ('app in {"a", "b"}', 'app == "a" || app == "b"'),
    # De Morgan
    ('!(a == "x" && b == "y")', 'a != "x" || b != "y"'),
    ('a != "x" || b != "y"', '!(a == "x" && b == "y")'),
    ("!(has(a) || has(b))", "!has(a) && !has(b)"),
    ("!has(a) && !has(b)", "!(has(a) || has(b))"),
    ('!(a starts with "x" || a ends with "y")', '!(a starts with "x") && !(a ends with "y")'),
    # distribution, absorption
    ('a == "1" && (b == "1" || c == "1")', '(a == "1" && b == "1") || (a == "1" && c == "1")'),
    ('a == "1" || (a == "1" && b == "2")', 'a == "1"'),
    # contradictions select nothing, so they are inside anything
    ('a == "x" && a == "y"', 'b == "z"'),
    ("a in {}", 'b == "z"'),
    ("has(a) && !has(a)", 'b == "z"'),
    ('a starts with "x" && a starts with "y"', 'b == "z"'),
    ('a contains "xy" && !(a contains "x")', 'b == "z"'),
    ('a starts with "ab" && a ends with "b" && !(a contains "b")', 'b == "z"'),
    # negated string constraints
    ('a contains "xy" && !(a contains "yx")', 'a != "xyx"'),
    ('a == "web" || a == "api"', 'a not in {"db"} && has(a)'),
    ('a not in {"x"} && has(a)', 'a != "x"'),
    # a tautology on the outer side
    ("has(a) || !has(a)", "all()"),
    ("all()", 'has(a) || a != "x"'),
    ("all()", 'a starts with "x" || !(a starts with "x")'),
]

NOT_IMPLIED = [
    ('env == "prod"', 'app == "web" && env == "prod"'),
    ("all()", 'app == "x"'),
    ("has(app)", 'app != "x"'),  # app = "x"
    ('app != "x"', "has(app)"),  # app absent
    ("!has(a)", 'a == "x"'),
    ('a not in {"x"}', 'a != "y"'),
    ('app starts with "we"', 'app starts with "web-"'),
    ('app starts with "web"', 'app == "web-1"'),
    ('app contains "b-"', 'app starts with "web"'),
    ('app starts with "web"', 'app contains "b-"'),
    ('app starts with "web" && app ends with "-1"', 'app contains "eb-"'),  # "webz-1"
    ('app starts with "web"', 'app == "web" || app starts with "web-"'),
    ('a starts with "x"', 'a == "x" || a starts with "xx" || a starts with "xy"'),
    ('a ends with "x" && a starts with "y"', 'a contains "yx" || a contains "y-x"'),
    ("has(a)", 'a != ""'),  # a = ""
    ('a in {"a", "b"}', 'a in {"a"} || a in {"c"}'),
    ('a != "x" || b != "y"', 'a != "x" && b != "y"'),
    ('!(a == "x" && b == "y")', 'a != "x" && b != "y"'),
    ("has(a) || has(b)", "has(a) && has(b)"),
    ('a == "1" || (a == "2" && b == "2")', 'a == "1"'),
    ('a contains "xy" && !(a contains "yx")', 'a == "xy" || a == "xyy"'),
    # needs the second branch of the first disjunction: b = "1" with a absent
    ('(a == "1" || b == "1") && (a != "1" || c == "1")', 'a == "1" && c == "1"'),
    ('(a == "1" || b == "1") && (a != "1" || c == "1") && (a != "1" || c != "1")', 'b != "1"'),
    # several prefixes and suffixes on one key: the longest ones count
    ('a starts with "x" && a starts with "xy" && a ends with "y" && a ends with "xy"', 'a == "xy"'),
    ('a starts with "xy" && a starts with "x"', 'a ends with "y"'),
    ('a ends with "xy" && a ends with "y"', 'a starts with "x"'),
]


@pytest.mark.parametrize(("inner", "outer"), IMPLIED)
def test_implied(inner: str, outer: str) -> None:
    assert check(inner, outer)


@pytest.mark.parametrize(("inner", "outer"), NOT_IMPLIED)
def test_not_implied(inner: str, outer: str) -> None:
    assert not check(inner, outer)


def test_absent_key_semantics_follow_the_matcher() -> None:
    """``!=``, ``not in`` and negated string operators are true for an absent key; ``==``,
    ``in``, ``has`` and the string operators are false. The implication agrees."""
    absent: dict[str, str] = {}
    for text in ('a != "x"', 'a not in {"x"}', '!(a starts with "")', '!(a contains "x")'):
        assert parse_selector(text).matches(absent)
        assert check("!has(a)", text)
    for text in ('a == "x"', 'a in {"x"}', "has(a)", 'a ends with ""', 'a contains ""'):
        assert not parse_selector(text).matches(absent)
        assert check("!has(a)", f"!({text})")
        assert not check("!has(a)", text)


def test_counterexamples_are_small_and_readable() -> None:
    sel = parse_selector
    assert counterexample(sel("all()"), sel('app == "x"')) == {}
    assert counterexample(sel("has(app)"), sel('app != "x"')) == {"app": "x"}
    assert counterexample(sel('app starts with "web"'), sel('app == "web"')) == {"app": "web-"}
    assert counterexample(sel('app != "x"'), sel("has(app)")) == {}
    # the separator avoids the constants' characters: "-" occurs in "y-x"
    found = counterexample(
        sel('a ends with "x" && a starts with "y"'), sel('a contains "yx" || a contains "y-x"')
    )
    assert found == {"a": "y_x"}


def test_many_disjunctions() -> None:
    """Twenty two-way disjunctions (2^20 combinations) against a rewritten equal selector
    and against a slightly wider and a slightly narrower one: propagation and lookahead
    settle them without enumerating the combinations (this finishing at all shows it;
    timings belong in benchmarks, not in pass/fail tests)."""
    n = 20
    inner = " && ".join(f'(k{i} == "1" || j{i} == "1")' for i in range(n))
    same = " && ".join(f'!(k{i} != "1" && j{i} not in {{"1"}})' for i in range(n))
    wider = " && ".join(f'(k{i} in {{"1", "2"}} || has(j{i}))' for i in range(n))
    narrower = inner + ' && k0 == "1"'
    assert check(inner, same)
    assert check(same, inner)
    assert check(inner, wider)
    assert not check(wider, inner)
    assert not check(inner, narrower)
    assert check(narrower, inner)


# ------------------------------------------------------------------ properties vs brute force

KEYS = ("a", "b", "c")
VALUES = ("", "x", "xy", "yx", "y")
#: every string over {x, y, z} up to length 4 (the constants are among them; z is fresh)
UNIVERSE: tuple[str | None, ...] = (
    None,
    *("".join(p) for n in range(5) for p in product("xyz", repeat=n)),
)


def _quote(value: str) -> str:
    return f'"{value}"'


_value = st.sampled_from(VALUES)


def _leaves(key: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Atoms and all() as selector text, over the keys that ``key`` draws."""
    return st.one_of(
        st.just("all()"),
        key.map(lambda k: f"has({k})"),
        st.builds(
            lambda k, op, v: f"{k} {op} {_quote(v)}",
            key,
            st.sampled_from(["==", "!=", "starts with", "ends with", "contains"]),
            _value,
        ),
        st.builds(
            lambda k, op, vs: f"{k} {op} {{{', '.join(_quote(v) for v in vs)}}}",
            key,
            st.sampled_from(["in", "not in"]),
            st.lists(_value, max_size=3),
        ),
    )


_leaf = _leaves(st.sampled_from(KEYS))
_text = st.recursive(
    _leaf,
    lambda sub: st.one_of(
        sub.map(lambda s: f"!({s})"),
        st.tuples(sub, sub).map(lambda t: f"({t[0]}) && ({t[1]})"),
        st.tuples(sub, sub).map(lambda t: f"({t[0]}) || ({t[1]})"),
    ),
    max_leaves=6,
)
selectors = _text.map(parse_selector)


def _atoms(expr: Expr) -> Iterator[Has | Compare]:
    match expr:
        case Has() | Compare():
            yield expr
        case Not(operand):
            yield from _atoms(operand)
        case And(operands) | Or(operands):
            for o in operands:
                yield from _atoms(o)


def brute_counterexample(inner: Selector, outer: Selector) -> dict[str, str] | None:
    """A counterexample from the universe, or None. Exhaustive over the universe: values of a
    key on which every atom of that key agrees are interchangeable, so one per class is
    tried."""
    keys = sorted(inner.keys | outer.keys)
    atoms = [parse_selector(a.text()) for a in {*_atoms(inner.expr), *_atoms(outer.expr)}]
    classes: list[list[str | None]] = []
    for key in keys:
        on_key = [a for a in atoms if key in a.keys]
        seen: dict[tuple[bool, ...], str | None] = {}
        for value in UNIVERSE:
            labels = {} if value is None else {key: value}
            seen.setdefault(tuple(a.matches(labels) for a in on_key), value)
        classes.append(list(seen.values()))
    for choice in product(*classes):
        labels = {k: v for k, v in zip(keys, choice, strict=True) if v is not None}
        if inner.matches(labels) and not outer.matches(labels):
            return labels
    return None


@settings(max_examples=400, deadline=None)
@given(selectors, selectors)
def test_against_brute_force(inner: Selector, outer: Selector) -> None:
    found = counterexample(inner, outer)
    implied = selector_implies(inner, outer)
    assert (found is None) == implied
    if found is not None:  # every answer "no" comes with a real counterexample
        assert inner.matches(found), found
        assert not outer.matches(found), found
    if brute_counterexample(inner, outer) is not None:  # sound: never "yes" wrongly
        assert not implied


_literal_on_a = st.tuples(_leaves(st.just("a")), st.booleans()).map(
    lambda t: t[0] if t[1] else f"!({t[0]})"
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_literal_on_a, min_size=1, max_size=5))
def test_conjunctions_on_one_key(literals: list[str]) -> None:
    """The per-key decision: a conjunction of (negated) atoms on one key is empty exactly
    when the brute force finds no member (checked in the direction the universe allows)."""
    inner = parse_selector(" && ".join(f"({t})" for t in literals))
    nothing = parse_selector("a in {}")
    empty = check(inner.text, nothing.text)
    if brute_counterexample(inner, nothing) is not None:
        assert not empty


@settings(max_examples=150, deadline=None)
@given(selectors, selectors)
def test_implications_that_must_hold(s: Selector, t: Selector) -> None:
    """Complete on true implications written differently: s && t ⊆ s ⊆ s || t, De Morgan."""
    a, b = f"({s.text})", f"({t.text})"
    assert check(f"{a} && {b}", s.text)
    assert check(s.text, f"{a} || {b}")
    assert check(f"!({a} && {b})", f"!{a} || !{b}")
    assert check(f"!{a} || !{b}", f"!({a} && {b})")
    assert check(f"!({a} || {b})", f"!{a} && !{b}")
    assert check(f"!!{a}", s.text)


@settings(max_examples=150, deadline=None)
@given(selectors)
def test_a_selector_and_its_negation(s: Selector) -> None:
    """s ⊆ !s only when s selects nothing; then the brute force finds no member either."""
    if check(s.text, f"!({s.text})"):
        assert brute_counterexample(s, parse_selector(f"!({s.text})")) is None
