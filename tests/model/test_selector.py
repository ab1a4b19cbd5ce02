"""The selector language: every operator, precedence, canonical form, interning, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from septum.errors import SelectorSyntaxError
from septum.model.selector import ALL, parse_selector

LABELS = {"app": "web", "env": "prod", "pci": "", "team": "shop-eu"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('app == "web"', True),
        ('app == "api"', False),
        ('app != "api"', True),
        ('missing != "x"', True),  # an absent label is != anything
        ('env in {"prod", "staging"}', True),
        ('env in {"dev"}', False),
        ('env not in {"dev"}', True),
        ('missing not in {"dev"}', True),
        ("missing in {}", False),
        ("has(pci)", True),
        ("!has(pci)", False),
        ("has(missing)", False),
        ('team starts with "shop"', True),
        ('team ends with "-eu"', True),
        ('team contains "p-e"', True),
        ('missing contains ""', False),  # string tests on an absent label are false
        ("all()", True),
        ('app == "api" || env == "prod"', True),
        ('app == "web" && env == "dev"', False),
        ('!(app == "web" && env == "dev")', True),
        ("app == 'web'", True),  # single quotes
        ('app == "web" || env == "dev" && has(nothing)', True),  # && binds tighter
        ('(app == "web" || env == "dev") && has(nothing)', False),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('env == "prod" && app == "web"', 'app=="web"&&env=="prod"'),
        ('a == "1" && a == "1"', 'a == "1"'),
        ('env in {"b", "a", "a"}', "env in {'a','b'}"),
        ('!(a == "b")', 'a != "b"'),
        ('!(a in {"b"})', 'a not in {"b"}'),
        ("!!has(x)", "has(x)"),
        ('all() && a == "1"', 'a == "1"'),
        ('all() || a == "1"', "all()"),
        ('(a == "1" && b == "2") && c == "3"', 'c == "3" && (b == "2" && a == "1")'),
    ],
)
def test_equal_selectors_are_one_object(a: str, b: str) -> None:
    assert parse_selector(a) is parse_selector(b)


def test_canonical_text_round_trips() -> None:
    s = parse_selector("!has(q) && app=='web' && (env == \"a\" || env == 'b\"c')")
    assert s.text == '!has(q) && app == "web" && (env == "a" || env == "b\\"c")'
    assert parse_selector(s.text) is s
    assert ALL.is_all
    assert not s.is_all
    assert s.keys == {"q", "app", "env"}


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "empty selector"),
        ("app ==", 7, "expected a quoted string"),
        ('app = "x"', 5, "unexpected character"),
        ('(a == "b"', 10, "expected ')'"),
        ('a == "b" b', 10, "after a complete expression"),
        ('a == "x', 6, "unterminated string"),
        ("has(", 5, "label key in has()"),
        ('a in {"x" "y"}', 11, "expected ',' or '}'"),
        ('a like "x"', 3, "expected an operator"),
        ('&& a == "b"', 1, "expected a label key"),
        ('a == "b" &&', 12, "expected a label key"),
        ("a in x", 6, "'{'"),
        ("all(x)", 5, "')' after all("),
    ],
)
def test_syntax_errors_point_at_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(SelectorSyntaxError) as caught:
        parse_selector(text)
    assert caught.value.column == column
    assert message in caught.value.message


# A tiny label alphabet keeps collisions (and so interesting matches) frequent.
keys = st.sampled_from(["a", "b", "c"])
values = st.sampled_from(["x", "y", "xy", ""])
label_sets = st.dictionaries(keys, values, max_size=3)


def _terms() -> st.SearchStrategy[str]:
    quoted = values.map(lambda v: f'"{v}"')
    atoms = st.one_of(
        st.just("all()"),
        keys.map(lambda k: f"has({k})"),
        st.tuples(keys, st.sampled_from(["==", "!=", "starts with", "ends with", "contains"]),
                  quoted).map(" ".join),
        st.tuples(keys, st.sampled_from(["in", "not in"]),
                  st.lists(quoted, max_size=3).map(lambda vs: "{" + ", ".join(vs) + "}")
                  ).map(" ".join),
    )
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            inner.map(lambda e: f"!({e})"),
            st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
                lambda t: f"({t[0]}) {t[1]} ({t[2]})"
            ),
        ),
        max_leaves=6,
    )


@given(_terms(), label_sets)
def test_canonical_form_keeps_meaning(text: str, labels: dict[str, str]) -> None:
    s = parse_selector(text)
    assert parse_selector(s.text) is s  # canonical text is a fixed point
    assert s.matches(labels) == _reference(text, labels)


def _reference(text: str, labels: dict[str, str]) -> bool:
    """An independent evaluator: translate the selector into a Python expression."""
    import re

    def term(m: re.Match[str]) -> str:
        key, op, val = m.group(1), m.group(2), m.group(3)
        v = labels.get(key)
        if op == "==":
            return str(v == val)
        if op == "!=":
            return str(v != val)
        if op == "starts with":
            return str(v is not None and v.startswith(val))
        if op == "ends with":
            return str(v is not None and v.endswith(val))
        return str(v is not None and val in v)

    def in_term(m: re.Match[str]) -> str:
        members = set(re.findall(r'"([^"]*)"', m.group(3)))
        inside = labels.get(m.group(1)) in members
        return str(inside if m.group(2) == "in" else not inside)

    expr = re.sub(r'(\w+) (not in|in) (\{[^}]*\})', in_term, text)
    expr = re.sub(r'(\w+) (==|!=|starts with|ends with|contains) "([^"]*)"', term, expr)
    expr = re.sub(r"has\((\w+)\)", lambda m: str(m.group(1) in labels), expr)
    expr = expr.replace("all()", "True").replace("&&", " and ").replace("||", " or ")
    expr = expr.replace("!", " not ")
    return bool(eval(expr))
