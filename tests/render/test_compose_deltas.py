"""``compose_deltas``: applying the composition of a chain of revisions' deltas equals applying
them one by one (the reference), and it only ever removes what the base state holds, so the
kernel never sees a delete of a missing element."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from ipaddress import IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from septum.render.hostruleset import (
    HostRuleset,
    MapElement,
    NamedSet,
    SetType,
    VerdictMap,
    apply_delta,
    compose_deltas,
    diff_rulesets,
)

AT = datetime(2026, 12, 6, tzinfo=UTC)
NETS = [IPv4Network(f"198.18.0.{i}/32") for i in range(8)]
CHAINS = ["wl-a-in", "wl-b-in", "wl-c-in"]

# One revision of a table: two sets and one verdict map, each a subset of a small pool so
# that elements come and go and come back, and map keys move between chains.
set_elements = st.frozensets(st.sampled_from(NETS))
map_elements = st.dictionaries(st.sampled_from(NETS), st.sampled_from(CHAINS))


def _table(
    s1: frozenset[IPv4Network], s2: frozenset[IPv4Network], m: dict[IPv4Network, str]
) -> HostRuleset:
    return HostRuleset(
        enforcer="h1",
        at=AT,
        chains=(),
        sets=(
            NamedSet("s1", SetType.IPV4, False, tuple(sorted(s1))),
            NamedSet("s2", SetType.IPV4, False, tuple(sorted(s2))),
        ),
        maps=(
            VerdictMap(
                "m1",
                SetType.IPV4,
                tuple(
                    sorted(
                        (MapElement(k, c) for k, c in m.items()),
                        key=lambda e: (int(e.key.network_address), e.chain),
                    )
                ),
            ),
        ),
    )


revisions = st.lists(
    st.builds(_table, set_elements, set_elements, map_elements), min_size=2, max_size=6
)


@settings(max_examples=300, deadline=None)
@given(revisions)
def test_composition_equals_sequential_application(tables: list[HostRuleset]) -> None:
    steps = [diff_rulesets(a, b).elements for a, b in itertools.pairwise(tables)]
    composed = compose_deltas(steps)
    assert apply_delta(tables[0], composed) == tables[-1]
    # Proper: removals are present in the base, additions absent from it (per element for
    # sets; for maps an addition may reuse a key whose old element is removed).
    base = tables[0].elements()
    for d in composed:
        assert set(d.removed) <= base[d.name]
        assert not set(d.added) & base[d.name]
        assert not set(d.added) & set(d.removed)


def test_nothing_when_the_chain_returns_to_its_start() -> None:
    a = _table(frozenset(NETS[:2]), frozenset(), {NETS[0]: CHAINS[0]})
    b = _table(frozenset(NETS[1:3]), frozenset(NETS[:1]), {NETS[0]: CHAINS[1]})
    steps = [diff_rulesets(a, b).elements, diff_rulesets(b, a).elements]
    assert compose_deltas(steps) == ()
