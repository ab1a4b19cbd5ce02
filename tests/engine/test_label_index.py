"""The label index: set-algebra membership and incremental deltas equal full recomputation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.label_index import LabelIndex, SetDelta
from septum.model.selector import Selector, parse_selector

SELECTORS = [
    parse_selector(t)
    for t in [
        "all()",
        'app == "web"',
        'app != "web"',
        'env in {"prod", "staging"}',
        'env not in {"prod"}',
        "has(pci)",
        "!has(pci)",
        'app starts with "w"',
        'env ends with "d"',
        'app contains "e"',
        'app == "web" && env == "prod"',
        'app == "db" || has(pci)',
        '!(app == "web" && has(pci))',
    ]
]


def test_members_by_set_algebra() -> None:
    index = LabelIndex()
    index.upsert_endpoint("w1", {"app": "web", "env": "prod"})
    index.upsert_endpoint("w2", {"app": "web", "env": "dev", "pci": ""})
    index.upsert_endpoint("d1", {"app": "db", "env": "prod"})
    for s in SELECTORS:
        index.add_selector(s)
    assert index.members(parse_selector('app == "web" && env == "prod"')) == {"w1"}
    assert index.members(parse_selector('env not in {"prod"}')) == {"w2"}
    assert index.members(parse_selector('app == "db" || has(pci)')) == {"w2", "d1"}
    assert index.members(parse_selector('app contains "e"')) == {"w1", "w2"}
    assert {k: set(v) for k, v in index.recompute().items()} == {
        s: set(index.members(s)) for s in SELECTORS
    }


def test_label_change_emits_disjoint_deltas() -> None:
    index = LabelIndex()
    web, prod = parse_selector('app == "web"'), parse_selector('env == "prod"')
    index.add_selector(web)
    index.add_selector(prod)
    assert index.upsert_endpoint("x", {"app": "web"}) == {web: SetDelta(added=frozenset({"x"}))}
    deltas = index.upsert_endpoint("x", {"app": "api", "env": "prod"})
    assert deltas == {
        web: SetDelta(removed=frozenset({"x"})),
        prod: SetDelta(added=frozenset({"x"})),
    }
    assert index.upsert_endpoint("x", {"app": "api", "env": "prod"}) == {}  # no-op
    assert index.remove_endpoint("x") == {prod: SetDelta(removed=frozenset({"x"}))}


def test_selectors_are_reference_counted() -> None:
    index = LabelIndex()
    s = parse_selector("has(a)")
    index.upsert_endpoint("e", {"a": "1"})
    index.add_selector(s)
    index.add_selector(s)
    index.remove_selector(s)
    assert index.members(s) == {"e"}
    index.remove_selector(s)
    assert s not in index.selectors
    assert index.selectors_of("e") == frozenset()


ENDPOINTS = st.sampled_from([f"e{i}" for i in range(6)])
LABELS = st.dictionaries(
    st.sampled_from(["app", "env", "pci"]),
    st.sampled_from(["web", "db", "prod", "dev", "staging", ""]),
    max_size=3,
)
CHANGES = st.one_of(
    st.tuples(st.just("upsert"), ENDPOINTS, LABELS),
    st.tuples(st.just("remove"), ENDPOINTS, st.just({})),
    st.tuples(st.just("add_selector"), st.sampled_from(range(len(SELECTORS))), st.just({})),
    st.tuples(st.just("remove_selector"), st.sampled_from(range(len(SELECTORS))), st.just({})),
)


@settings(max_examples=300)
@given(st.lists(CHANGES, max_size=40))
def test_incremental_equals_recomputation(
    changes: list[tuple[str, object, dict[str, str]]],
) -> None:
    """Random sequences of changes: membership, reverse index and the emitted deltas all agree
    with recomputing from scratch, whatever the order of events."""
    index = LabelIndex()
    refs: dict[Selector, int] = {}
    # Mirror of the membership built only from the deltas the index emits.
    mirror: dict[Selector, set[str]] = {}
    for op, arg, labels in changes:
        if op == "upsert":
            deltas = index.upsert_endpoint(str(arg), labels)
        elif op == "remove":
            deltas = index.remove_endpoint(str(arg))
        elif op == "add_selector":
            s = SELECTORS[int(str(arg))]
            members = index.add_selector(s)
            refs[s] = refs.get(s, 0) + 1
            mirror[s] = set(members)
            deltas = {}
        else:
            s = SELECTORS[int(str(arg))]
            if not refs.get(s):
                continue
            index.remove_selector(s)
            refs[s] -= 1
            if not refs[s]:
                del mirror[s]
            deltas = {}
        for s, delta in deltas.items():
            assert not (delta.added & delta.removed)
            assert not (delta.added & mirror[s])  # added really is new
            assert delta.removed <= mirror[s]  # removed really was there
            mirror[s] |= delta.added
            mirror[s] -= delta.removed
        truth = index.recompute()
        assert {s: set(m) for s, m in truth.items()} == mirror
        assert {s: index.members(s) for s in truth} == truth
        for endpoint in index.endpoints:
            assert index.selectors_of(endpoint) == {s for s, m in truth.items() if endpoint in m}


@given(st.lists(st.tuples(ENDPOINTS, LABELS), max_size=12))
def test_evaluate_equals_registered_members(endpoints: list[tuple[str, dict[str, str]]]) -> None:
    """One-shot evaluation and a registered selector agree, and evaluate registers nothing."""
    index = LabelIndex()
    for name, labels in endpoints:
        index.upsert_endpoint(name, labels)
    for s in SELECTORS:
        once = index.evaluate(s)
        assert s not in index.selectors
        assert once == index.add_selector(s)
        assert once == frozenset(e for e in index.endpoints if s.matches(index.labels(e) or {}))
