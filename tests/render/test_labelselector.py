"""Septum selectors → Kubernetes label selectors: exactness checked against an independent
evaluator of Kubernetes semantics (``septum.testing.k8s_selectors``)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.model.selector import Selector, parse_selector
from septum.render.labelselector import (
    Bias,
    ScopedSelector,
    SelectorTranslation,
    intersect_terms,
    label_key_problem,
    label_value_problem,
    negate_terms,
    subtract_terms,
    translate_selector,
)
from septum.testing.k8s_selectors import label_selector_matches, scoped_peer_matches
from septum.testing.strategies import selectors

_PREFIX = "namespace.septum.io/"


def _split(labels: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A workload's labels as (pod labels, its namespace's labels), per the convention."""
    pod = {k: v for k, v in labels.items() if not k.startswith(_PREFIX)}
    ns = {k[len(_PREFIX) :]: v for k, v in labels.items() if k.startswith(_PREFIX)}
    if "septum.io/namespace" in labels:
        ns["kubernetes.io/metadata.name"] = labels["septum.io/namespace"]
    return pod, ns


def _k8s_matches(t: SelectorTranslation, labels: Mapping[str, str]) -> bool:
    pod, ns = _split(labels)
    return any(
        scoped_peer_matches(
            {
                "namespaceSelector": term.namespaces.to_manifest(),
                "podSelector": term.pods.to_manifest(),
            },
            pod,
            ns,
        )
        for term in t.terms
    )


_plain_labels = st.dictionaries(
    st.sampled_from(("app", "env", "zone", "septum.io/kind", "septum.io/name")),
    st.sampled_from(("a", "b", "x", "y", "network", "w0", "host")),
    max_size=5,
)


@settings(max_examples=400)
@given(selectors(), _plain_labels, st.sampled_from(tuple(Bias)))
def test_translation_is_exact_when_it_says_so(
    selector: Selector, labels: dict[str, str], bias: Bias
) -> None:
    t = translate_selector(selector, bias=bias)
    assert t.exact  # the strategies' alphabet has no pattern operators
    assert _k8s_matches(t, labels) == selector.matches(labels)


_ATOMS = (
    'app == "a"',
    'app != "a"',
    'app in {"a", "b"}',
    'app not in {"a", "b"}',
    "has(app)",
    "!has(app)",
    'env == "b"',
    'app starts with "a"',
    'env ends with "b"',
    'app contains "bc"',
    'namespace.septum.io/team == "a"',
    'namespace.septum.io/team != "b"',
    "!has(namespace.septum.io/team)",
    'septum.io/namespace in {"x", "y"}',
    'septum.io/namespace == "x"',
    'namespace.septum.io/kubernetes.io/metadata.name == "y"',
    "all()",
)


@st.composite
def _rich_selectors(draw: st.DrawFn) -> Selector:
    atom = st.sampled_from(_ATOMS)
    leaf = st.one_of(atom, atom.map(lambda a: f"!({a})"))
    text = draw(
        st.recursive(
            leaf,
            lambda inner: st.one_of(
                st.builds(lambda a, b: f"({a}) && ({b})", inner, inner),
                st.builds(lambda a, b: f"({a}) || ({b})", inner, inner),
                inner.map(lambda a: f"!({a})"),
            ),
            max_leaves=6,
        )
    )
    return parse_selector(text)


_VALUES = ("a", "b", "ab", "abc", "xbcb")


@st.composite
def _workload_labels(draw: st.DrawFn) -> dict[str, str]:
    """Labels of a workload that has a namespace (every pod has one in Kubernetes)."""
    labels = draw(st.dictionaries(st.sampled_from(("app", "env")), st.sampled_from(_VALUES)))
    ns = draw(st.sampled_from(("x", "y", "z")))
    labels["septum.io/namespace"] = ns
    labels[_PREFIX + "kubernetes.io/metadata.name"] = ns  # as the importer gives every pod
    if draw(st.booleans()):
        labels[_PREFIX + "team"] = draw(st.sampled_from(("a", "b")))
    return labels


def _known(key: str) -> tuple[str, ...]:
    return _VALUES


@settings(max_examples=600)
@given(_rich_selectors(), _workload_labels(), st.sampled_from(tuple(Bias)))
def test_rich_selectors_with_namespaces_and_patterns(
    selector: Selector, labels: dict[str, str], bias: Bias
) -> None:
    t = translate_selector(selector, bias=bias)
    got = _k8s_matches(t, labels)
    want = selector.matches(labels)
    if t.exact:
        assert got == want
    elif bias is Bias.SUPERSET:
        assert got or not want  # a superset: never misses what Septum selects
    else:
        assert want or not got  # a subset: never selects what Septum does not
    # Over the known values, patterns are rewritten exactly (closed world).
    closed = translate_selector(selector, bias=bias, known_values=_known)
    assert closed.exact or len(closed.problems) > 0
    if closed.exact:
        assert _k8s_matches(closed, labels) == want


def test_not_equal_matches_absent_keys_like_not_in() -> None:
    t = translate_selector(parse_selector('app != "web"'))
    assert t.exact
    assert [term.pods.to_manifest() for term in t.terms] == [
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}
    ]
    sel = t.terms[0].pods.to_manifest()
    assert label_selector_matches(sel, {})  # absent key: true, as in Septum
    assert parse_selector('app != "web"').matches({})


def test_conjunction_goes_to_match_labels_and_expressions() -> None:
    t = translate_selector(
        parse_selector('app == "web" && env in {"prod", "staging"} && has(pci) && !has(q)')
    )
    assert t.terms == (t.terms[0],)
    assert t.terms[0].pods.to_manifest() == {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "pci", "operator": "Exists"},
            {"key": "q", "operator": "DoesNotExist"},
        ],
    }


def test_disjunction_gives_several_terms_and_namespace_parts() -> None:
    t = translate_selector(
        parse_selector(
            '(app == "web" && septum.io/namespace == "shop") || namespace.septum.io/team == "a"'
        )
    )
    assert t.exact
    got = [(x.namespaces.to_manifest(), x.pods.to_manifest()) for x in t.terms]
    assert got == [
        ({"matchLabels": {"kubernetes.io/metadata.name": "shop"}}, {"matchLabels": {"app": "web"}}),
        ({"matchLabels": {"team": "a"}}, {}),
    ]


def test_contradictions_select_nothing_and_all_selects_everything() -> None:
    assert translate_selector(parse_selector('app == "a" && app == "b"')).terms == ()
    assert translate_selector(parse_selector("app in {}")).terms == ()
    assert translate_selector(parse_selector("has(a) && !has(a)")).terms == ()
    everything = translate_selector(parse_selector('all() || app == "a"'))
    assert everything.terms == (ScopedSelector(),)
    assert everything.matches_all


def test_patterns_are_reported_with_their_bias() -> None:
    s = parse_selector('app starts with "we" && env == "prod"')
    wide = translate_selector(s, bias=Bias.SUPERSET)
    assert not wide.exact
    assert wide.terms[0].pods.to_manifest() == {"matchLabels": {"env": "prod"}}
    assert "starts with" in wide.problems[0]
    narrow = translate_selector(s, bias=Bias.SUBSET)
    assert not narrow.exact
    assert narrow.terms == ()
    closed = translate_selector(s, known_values=lambda k: ("web", "west", "db"))
    assert closed.exact
    assert closed.closed_world
    assert closed.terms[0].pods.to_manifest() == {
        "matchLabels": {"env": "prod"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "west"]}],
    }


def test_invalid_labels_are_reported() -> None:
    t = translate_selector(parse_selector('app == "has space"'), bias=Bias.SUBSET)
    assert not t.exact
    assert t.terms == ()
    assert "label value" in t.problems[0]
    assert label_key_problem("a/b/c") is not None
    assert label_key_problem("example.com/app") is None
    assert label_key_problem("-x") is not None
    assert label_value_problem("") is None
    assert label_value_problem("x" * 64) is not None


def test_dnf_cap_is_reported() -> None:
    text = " && ".join(f'(k{i} == "a" || k{i} == "b")' for i in range(6))  # 64 conjunctions
    s = parse_selector(text)
    assert len(translate_selector(s, max_terms=64).terms) == 64
    capped = translate_selector(s, max_terms=32, bias=Bias.SUPERSET)
    assert not capped.exact
    assert capped.matches_all
    assert translate_selector(s, max_terms=32, bias=Bias.SUBSET).terms == ()


@pytest.mark.parametrize("text", ['!(app starts with "a")', '!(app == "a" && app contains "b")'])
def test_negated_patterns(text: str) -> None:
    s = parse_selector(text)
    closed = translate_selector(s, known_values=lambda k: _VALUES)
    assert closed.exact
    for v in (*_VALUES, None):
        labels = {} if v is None else {"app": v}
        assert _k8s_matches(closed, labels) == s.matches(labels)


_namespace_labels = st.dictionaries(
    st.sampled_from(("kubernetes.io/metadata.name", "team")),
    st.sampled_from(("a", "b")),
    max_size=2,
)
_namespaced = st.one_of(
    selectors(),
    st.sampled_from(
        (
            'septum.io/namespace == "a"',
            'namespace.septum.io/team != "b" && app == "a"',
            '!has(namespace.septum.io/team) || env in {"a", "b"}',
        )
    ).map(parse_selector),
)


def _union_matches(
    terms: tuple[ScopedSelector, ...], pod: Mapping[str, str], ns: Mapping[str, str]
) -> bool:
    return any(
        scoped_peer_matches(
            {"namespaceSelector": t.namespaces.to_manifest(), "podSelector": t.pods.to_manifest()},
            pod,
            ns,
        )
        for t in terms
    )


@settings(max_examples=400)
@given(_namespaced, _namespaced, _plain_labels, _namespace_labels)
def test_term_algebra_is_exact(
    a: Selector, b: Selector, pod: Mapping[str, str], ns: Mapping[str, str]
) -> None:
    """Intersection, complement and difference of unions of terms, against the independent
    Kubernetes evaluator (what the renderer uses to compile ``pass`` away)."""
    ta, tb = translate_selector(a).terms, translate_selector(b).terms
    in_a, in_b = _union_matches(ta, pod, ns), _union_matches(tb, pod, ns)
    both, not_a, a_not_b = intersect_terms(ta, tb), negate_terms(ta), subtract_terms(ta, tb)
    assert both is not None
    assert not_a is not None
    assert a_not_b is not None
    assert _union_matches(both, pod, ns) == (in_a and in_b)
    assert _union_matches(not_a, pod, ns) == (not in_a)
    assert _union_matches(a_not_b, pod, ns) == (in_a and not in_b)


def test_term_algebra_drops_contradictions_and_gives_up_past_the_cap() -> None:
    a = translate_selector(parse_selector('app == "a"')).terms
    b = translate_selector(parse_selector('app == "b"')).terms
    assert intersect_terms(a, b) == ()
    assert subtract_terms(a, a) == ()
    assert negate_terms(()) == (ScopedSelector(),)
    assert negate_terms((ScopedSelector(),)) == ()
    many = translate_selector(parse_selector(" || ".join(f'k{i} == "v"' for i in range(6)))).terms
    assert negate_terms(many, cap=4) is not None  # one term: every k_i absent or not "v"
    assert subtract_terms(a, [ScopedSelector(pods=t.pods) for t in many], cap=4) is not None
    pairs = translate_selector(
        parse_selector(" || ".join(f'(x{i} == "v" && y{i} == "v")' for i in range(6)))
    ).terms
    assert negate_terms(pairs, cap=4) is None  # 2^6 terms
