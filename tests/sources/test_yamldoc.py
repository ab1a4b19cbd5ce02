"""YAML text → values with positions (septum.sources.yamldoc)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.errors import Problem
from septum.sources.yamldoc import ParsedYaml, Position, SourceDocument, parse_yaml


def _one(text: str) -> SourceDocument:
    parsed = parse_yaml(text, "f.yaml")
    assert parsed.problems == []
    assert parsed.complete
    assert len(parsed.documents) == 1
    return parsed.documents[0]


TEXT = """\
# a comment
spec:
  ingress:
    - action: allow
      from:
        - app == "lb"
        - {segment: pci}
"""


def test_value_and_key_positions() -> None:
    doc = _one(TEXT)
    assert doc.value == {
        "spec": {"ingress": [{"action": "allow", "from": ['app == "lb"', {"segment": "pci"}]}]}
    }
    assert doc.start == Position(2, 1)
    assert doc.keys[("spec",)] == Position(2, 1)
    assert doc.keys[("spec", "ingress")] == Position(3, 3)
    assert doc.values[("spec", "ingress", 0)] == Position(4, 7)
    assert doc.keys[("spec", "ingress", 0, "action")] == Position(4, 7)
    assert doc.values[("spec", "ingress", 0, "action")] == Position(4, 15)
    assert doc.values[("spec", "ingress", 0, "from", 0)] == Position(6, 11)
    assert doc.values[("spec", "ingress", 0, "from", 1)] == Position(7, 11)
    assert doc.keys[("spec", "ingress", 0, "from", 1, "segment")] == Position(7, 12)
    assert doc.values[("spec", "ingress", 0, "from", 1, "segment")] == Position(7, 21)


def test_position_falls_back_to_nearest_parent() -> None:
    doc = _one(TEXT)
    assert doc.position(("spec", "ingress", 0, "nope", 3)) == Position(4, 7)
    assert doc.position(("other",)) == doc.start
    # key_position falls back to the value when there is no key (a list item)
    assert doc.key_position(("spec", "ingress", 0)) == Position(4, 7)


def test_problem_points_at_value_or_key() -> None:
    doc = _one(TEXT)
    path = ("spec", "ingress", 0, "action")
    assert doc.problem(path, "m") == Problem("f.yaml", 4, 15, "m")
    assert doc.problem(path, "m", key=True) == Problem("f.yaml", 4, 7, "m")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("v: 1", 1),
        ("v: '1'", "1"),
        ("v: 1.5", 1.5),
        ("v: true", True),
        ("v: yes", True),  # YAML 1.1, as PyYAML resolves it
        ("v: ~", None),
        ("v:", None),
        ("v: 0x10", 16),
        ("v: web", "web"),
        ("v: !!str 1", "1"),
        # timestamps stay text, so that parse.py can reject zone-less ones
        ("v: 2026-12-31T00:00:00", "2026-12-31T00:00:00"),
        ("v: 2026-12-31", "2026-12-31"),
        ("v: 198.18.1.10", "198.18.1.10"),
        ("v: 2001:db8::10", "2001:db8::10"),
        ("v: ::/0", "::/0"),
    ],
)
def test_scalars_resolve_like_pyyaml(yaml_text: str, expected: object) -> None:
    value = _one(yaml_text).value
    assert isinstance(value, dict)
    assert value["v"] == expected
    assert type(value["v"]) is type(expected)


def test_duplicate_key_is_reported_at_the_second() -> None:
    parsed = parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yaml")
    assert parsed.problems == [Problem("f.yaml", 4, 3, "duplicate key 'c' (first at line 3)")]
    assert parsed.documents[0].value == {"a": 1, "b": {"c": 1}}  # the first one is kept


def test_syntax_error_has_position_and_keeps_earlier_documents() -> None:
    parsed = parse_yaml("a: 1\n---\nb: [1, 2\n", "f.yaml")
    assert [d.value for d in parsed.documents] == [{"a": 1}]
    assert not parsed.complete
    [problem] = parsed.problems
    assert (problem.line, problem.column) == (4, 1)
    assert problem.message.startswith("YAML syntax error")


def test_tab_indentation_is_named() -> None:
    [problem] = parse_yaml("a:\n\tb: 1\n", "f.yaml").problems
    assert (problem.line, problem.column) == (2, 1)
    assert "tab character" in problem.message


def test_ipv6_in_flow_sequence_gets_a_hint() -> None:
    [problem] = parse_yaml("cidrs: [0.0.0.0/0, ::/0]\n", "f.yaml").problems
    assert (problem.line, problem.column) == (1, 20)
    assert "quote values that start with ':'" in problem.message


def test_empty_documents_and_comments_are_skipped() -> None:
    parsed = parse_yaml("# nothing\n---\n---\na: 1\n---\n", "f.yaml")
    assert [d.value for d in parsed.documents] == [{"a": 1}]
    assert parse_yaml("", "f.yaml") == ParsedYaml([], [], complete=True)


def test_several_documents_have_their_own_positions() -> None:
    parsed = parse_yaml("a: 1\n---\nb: 2\n", "f.yaml")
    second = parsed.documents[1]
    assert second.start == Position(3, 1)
    assert second.values[("b",)] == Position(3, 4)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("a: !custom 1\n", "unsupported YAML tag '!custom'"),
        ("base: &b {x: 1}\nc:\n  <<: *b\n", "merge keys"),
        ("? [1, 2]\n: x\n", "a mapping key must be a scalar"),
        ("a: &x [1, *x]\n", "recursive YAML alias"),
        ("a: !!int nope\n", "invalid int"),
    ],
)
def test_unsupported_constructs_are_problems(yaml_text: str, message: str) -> None:
    problems = parse_yaml(yaml_text, "f.yaml").problems
    assert len(problems) == 1
    assert message in problems[0].message


def test_deep_nesting_is_a_problem_not_a_recursion_error() -> None:
    parsed = parse_yaml("a: " + "[" * 900 + "]" * 900, "f.yaml")
    assert [p.message for p in parsed.problems] == ["nested deeper than 64 levels"]
    assert (parsed.problems[0].line, parsed.problems[0].column) == (1, 68)


def test_aliases_are_expanded() -> None:
    doc = _one("a: &x [1, 2]\nb: *x\n")
    assert doc.value == {"a": [1, 2], "b": [1, 2]}


def test_scalar_styles_are_kept_for_strings() -> None:
    doc = _one("a: 'x'\nb: \"y\"\nc: z\nd: |\n  w\n")
    assert doc.styles == {("a",): "'", ("b",): '"', ("d",): "|"}


@pytest.mark.parametrize(
    ("yaml_text", "offset", "expected"),
    [
        ("s: app == x\n", 7, Position(1, 11)),  # plain
        ("s: 'app == x'\n", 7, Position(1, 12)),  # after the opening quote
        ('s: "app == x"\n', 0, Position(1, 5)),
        ("s: 'it''s && x'\n", 6, Position(1, 12)),  # '' is one character of the value
        ('s: "a\\"b ( x"\n', 4, Position(1, 10)),  # \" is one character of the value
        ("s: |\n  has(a) &&\n  x ==\n", 10, Position(3, 3)),  # block scalar, second line
        ("s: abc\n", 3, Position(1, 7)),  # at the end: just after the last character
        ("s: abc\n", 99, Position(1, 7)),
    ],
)
def test_locate_inside_a_scalar(yaml_text: str, offset: int, expected: Position) -> None:
    assert _one(yaml_text).locate(("s",), offset) == expected


def test_locate_non_string_falls_back_to_position() -> None:
    doc = _one("s: 12\n")
    assert doc.locate(("s",), 1) == Position(1, 4)


def test_non_ascii_columns_count_characters() -> None:
    doc = _one("d: é\ns: 'é && x'\n")
    assert doc.values[("s",)] == Position(2, 4)
    assert doc.locate(("s",), 5) == Position(2, 10)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}'\"\n\t #&*!|>?,.1"))))
def test_arbitrary_text_never_raises(text: str) -> None:
    parsed = parse_yaml(text, "f.yaml")
    for problem in parsed.problems:
        assert problem.line >= 1
        assert problem.column >= 1
