"""Incremental compilation equals full recomputation.

The key test draws small random repositories (several enforcers, selector/segment/network/
CIDR/users peers, networks, user sessions) and random sequences of single-workload label and
address changes; after every step, every enforcer's incremental snapshot must equal the
ruleset built from scratch. A kernel test applies the emitted transactions in a fresh network
namespace and compares the table with the from-scratch one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from ipaddress import ip_address
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.kernel import kernel_state, ns_nft

from septum.engine.resolve import resolve_policy
from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    AddressBinding,
    Mode,
    Repository,
    Workload,
)
from septum.render.hostruleset import HostRuleset, build_host_ruleset
from septum.render.incremental import IncrementalCompiler, Update
from septum.render.nft import render_nft
from septum.testing.builders import (
    T0,
    cidr,
    net,
    network,
    policy,
    repo,
    rule,
    segment,
    tier,
    user,
    users,
    workload,
)
from septum.testing.builders import (
    settings as repo_settings,
)
from septum.testing.strategies import V4_POOL, V6_POOL, repositories

ENFORCERS = (None, "h1", "h2", "h3")

# ------------------------------------------------------------------------------- helpers


def _full(r: Repository, enforcer: str) -> HostRuleset:
    return build_host_ruleset(resolve_policy(r, T0), enforcer)


def _normalised(rs: HostRuleset) -> HostRuleset:
    return replace(rs, chains=tuple(sorted(rs.chains, key=lambda c: c.name)))


def _assert_equal_to_full(ic: IncrementalCompiler, r: Repository) -> None:
    resolved = resolve_policy(r, T0)
    for e in sorted(set(ic.enforcers) | set(r.enforcers())):
        got = ic.snapshot(e)
        want = build_host_ruleset(resolved, e)
        assert _normalised(got) == _normalised(want), e
        assert got.elements() == want.elements(), e


def _replace_workload(r: Repository, w: Workload) -> Repository:
    ws = {x.name: x for x in r.workloads}
    ws[w.name] = w
    return replace(r, workloads=tuple(ws[n] for n in sorted(ws)))


def _with_labels(w: Workload, labels: dict[str, str]) -> Workload:
    full = dict(labels)
    full[KIND_LABEL] = w.labels[KIND_LABEL]
    full[NAME_LABEL] = w.name
    return replace(w, labels=MappingProxyType(full))


# ------------------------------------------------------------------------------- strategies


@st.composite
def estates(draw: st.DrawFn) -> Repository:
    """``repositories()`` spread over several enforcers."""
    r = draw(repositories(min_workloads=3, max_workloads=8))
    ws = tuple(replace(w, enforcer=draw(st.sampled_from(ENFORCERS))) for w in r.workloads)
    return replace(r, workloads=ws)


_LABELS = st.dictionaries(
    st.sampled_from(("app", "env", "zone")), st.sampled_from(("a", "b", "x")), max_size=3
)


@st.composite
def change(draw: st.DrawFn, r: Repository) -> Workload:
    """A new version of one workload: new labels, new addresses, or both; rarely a new mode
    or enforcer (the fallback path)."""
    w = draw(st.sampled_from(r.workloads))
    what = draw(st.sampled_from(("labels", "labels", "addresses", "addresses", "both", "other")))
    if what in ("labels", "both"):
        w = _with_labels(w, draw(_LABELS))
    if what in ("addresses", "both"):
        taken = {b.address for x in r.workloads if x.name != w.name for b in x.addresses}
        taken |= {b.address for u in r.users for b in u.sessions}
        free = [a for a in (*V4_POOL, *V6_POOL) if ip_address(a) not in taken]
        chosen = draw(st.lists(st.sampled_from(free), max_size=3, unique=True)) if free else []
        bindings = [AddressBinding(ip_address(a)) for a in chosen]
        if bindings and draw(st.integers(0, 4)) == 0:  # one not valid at T0
            bindings[0] = replace(bindings[0], valid_from=T0 + timedelta(days=1))
        w = replace(w, addresses=tuple(bindings))
    if what == "other":
        if draw(st.booleans()):
            w = replace(w, mode=draw(st.sampled_from(tuple(Mode))))
        else:
            w = replace(w, enforcer=draw(st.sampled_from(ENFORCERS)))
    return w


# ------------------------------------------------------------------------------- properties


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(estates(), st.data())
def test_incremental_equals_full_after_every_step(r: Repository, data: st.DataObject) -> None:
    ic = IncrementalCompiler(r, T0)
    _assert_equal_to_full(ic, r)
    for step in range(data.draw(st.integers(1, 8), label="steps")):
        new = data.draw(change(r), label=f"change {step}")
        old = r.workload(new.name)
        assert old is not None
        update = ic.update_workload(new)
        r = _replace_workload(r, new)
        assert update.revision == step + 1
        if old.enforcer != new.enforcer or old.mode is not new.mode:
            assert update.fallback is not None
        else:
            assert update.fallback is None
            # never a reload of the whole table for a label or address change
            for u in update.enforcers.values():
                assert not u.full_table
                assert "delete table" not in u.script
            event("structural" if update.structural else "elements only")
        _assert_equal_to_full(ic, r)
        assert ic.repo == r


# ------------------------------------------------------------------------------- examples


def _objects() -> list[object]:
    return [
        tier("security", 10, "pass"),
        tier("app", 100),
        network("internet", "0.0.0.0/0", "::/0", excepts=["10.0.0.0/8"], zone="internet"),
        network("corp", "10.0.0.0/8", zone="corp"),
        workload("web-1", "10.0.1.1", "2001:db8::1", app="web", env="prod", enforcer="h1"),
        workload("web-2", "10.0.1.2", app="web", env="prod", enforcer="h1"),
        workload("db-1", "10.0.2.1", app="db", env="prod", enforcer="h2"),
        workload("db-2", "10.0.2.2", app="db", env="dev", enforcer="h2", mode=Mode.SELECTIVE),
        workload("cache-1", "10.0.3.1", app="cache", enforcer="h3", mode=Mode.TEST),
        workload("batch-1", "10.0.4.1", app="batch", enforcer="h2", mode=Mode.IDLE),
        workload("printer", "10.0.5.1", app="printer"),
        user("alice", ("10.9.0.5", None, None), role="dba"),
        repo_settings(cidr_matches_workloads=False),
        policy(
            "quarantine",
            "security",
            order=1,
            applies_to="has(quarantine)",
            ingress=[rule("deny")],
            egress=[rule("deny")],
        ),
        policy("corp", "security", order=5, ingress=[rule("pass", 'zone == "corp"')]),
        policy(
            "web",
            "app",
            applies_to='app == "web"',
            ingress=[rule("allow", 'zone == "internet"', ports=["tcp/443"])],
            egress=[
                rule("allow", 'app == "db"', ports=["tcp/5432"]),
                rule("allow", net("internet"), ports=["udp/123"]),
            ],
        ),
        policy(
            "db",
            "app",
            applies_to='app == "db"',
            ingress=[
                rule("allow", 'app == "web"', users('role == "dba"'), ports=["tcp/5432"]),
                rule("deny", cidr("10.0.0.0/8")),
            ],
            egress=[],
        ),
        policy(
            "cache",
            "app",
            applies_to='app == "cache"',
            ingress=[rule("allow", segment("prod", 'env == "prod"'), ports=["tcp/6379"])],
        ),
        policy(
            "printer",
            "app",
            applies_to='app == "printer"',
            ingress=[rule("allow", 'app == "office" || env == "dev"', ports=["tcp/631"])],
        ),
    ]


def _w(r: Repository, name: str) -> Workload:
    w = r.workload(name)
    assert w is not None
    return w


def _sequence(r: Repository) -> list[Workload]:
    """A fixed sequence exercising element deltas, new/deleted tier chains and sets."""
    out: list[Workload] = []

    def step(w: Workload) -> None:
        nonlocal r
        out.append(w)
        r = _replace_workload(r, w)

    def labels(name: str, **changes: str | None) -> Workload:
        w = _w(r, name)
        own = {k: v for k, v in w.labels.items() if k not in (KIND_LABEL, NAME_LABEL)}
        for k, v in changes.items():
            if v is None:
                own.pop(k, None)
            else:
                own[k] = v
        return _with_labels(w, own)

    def addresses(name: str, *addrs: str) -> Workload:
        return replace(_w(r, name), addresses=tuple(AddressBinding(ip_address(a)) for a in addrs))

    step(addresses("web-1", "10.0.1.7", "2001:db8::7"))  # dispatch + peer sets
    step(labels("printer", app="db"))  # printer joins app == "db" (unmanaged: sets only)
    step(labels("cache-1", app="printer"))  # new policy applies: new tier chain and set
    step(labels("web-2", quarantine="yes"))  # security tier chain added
    step(labels("db-1", env="dev"))  # leaves segment prod, joins printer's peer set
    step(addresses("cache-1", "10.0.3.9"))
    step(labels("web-2", quarantine=None))  # chain and its jump go again
    step(labels("cache-1", app="cache"))  # back: the printer chain and set are deleted
    step(addresses("db-2"))  # no address at all
    step(labels("web-1", app="db"))  # both directions change
    return out


def test_fixed_sequence_equals_full() -> None:
    r = repo(*_objects())  # type: ignore[arg-type]
    ic = IncrementalCompiler(r, T0)
    structural: list[tuple[str, ...]] = []
    for i, new in enumerate(_sequence(r), start=1):
        update = ic.update_workload(new)
        r = _replace_workload(r, new)
        assert update.revision == i
        assert update.fallback is None
        structural.append(update.structural)
        _assert_equal_to_full(ic, r)
    assert structural[0] == ()  # an address change never changes chains
    assert structural[2] == ("h3",)  # cache-1 got the printer policy
    assert structural[7] == ("h3",)
    assert structural[3] == ("h1",)


def test_structural_text_adds_flushes_and_deletes() -> None:
    r = repo(*_objects())  # type: ignore[arg-type]
    ic = IncrementalCompiler(r, T0)
    seq = _sequence(r)
    texts = [ic.update_workload(w).scripts for w in seq]
    added = texts[2]["h3"]
    assert "table inet septum {" in added
    assert "\tchain t_app_" in added
    assert "flush chain inet septum w_cache_1_" in added
    assert "add rule inet septum w_cache_1_" in added
    removed = texts[7]["h3"]
    assert "delete chain inet septum t_app_" in removed
    assert "delete set inet septum s_app_office_env_dev_" in removed
    assert "delete table" not in "".join(t for step in texts for t in step.values())


def test_address_change_touches_only_declaring_enforcers() -> None:
    r = repo(*_objects())  # type: ignore[arg-type]
    ic = IncrementalCompiler(r, T0)
    # cache-1 (app=cache, no env) is in no peer set; only attributed/workloads sets and its
    # own dispatch maps change.
    update = ic.update_workload(
        replace(_w(r, "cache-1"), addresses=(AddressBinding(ip_address("10.0.3.2")),))
    )
    assert set(update.enforcers) <= {"h1", "h2", "h3"}
    h3 = update.enforcers["h3"]
    names = {d.name for d in h3.elements}
    assert {"ingress_v4", "egress_v4"} <= names
    for e, u in update.enforcers.items():
        declared = {s.name for s in ic.snapshot(e).sets} | {m.name for m in ic.snapshot(e).maps}
        assert {d.name for d in u.elements} <= declared
        for d in u.elements:
            assert not set(d.added) & set(d.removed)


def test_no_change_is_an_empty_update() -> None:
    r = repo(*_objects())  # type: ignore[arg-type]
    ic = IncrementalCompiler(r, T0)
    update = ic.update_workload(_w(r, "web-1"))
    assert not update
    assert update.revision == 1
    assert update.structural == ()


@pytest.mark.parametrize(
    ("what", "changes"),
    [
        ("mode", {"mode": Mode.VISIBILITY}),
        ("enforcer", {"enforcer": "h9"}),
        ("unknown", {"name": "new-1"}),
    ],
)
def test_fallback_rebuilds_and_says_so(what: str, changes: dict[str, object]) -> None:
    r = repo(*_objects())  # type: ignore[arg-type]
    ic = IncrementalCompiler(r, T0)
    new = replace(_w(r, "web-2"), **changes)  # type: ignore[arg-type]
    if what == "unknown":
        new = replace(new, addresses=(AddressBinding(ip_address("10.0.1.99")),))
    update = ic.update_workload(new)
    assert update.fallback is not None
    r = _replace_workload(r, new)
    _assert_equal_to_full(ic, r)
    assert update.structural
    for u in update.enforcers.values():
        if u.full_table:
            assert u.script == render_nft(ic.snapshot(u.enforcer))


# ------------------------------------------------------------------------------- kernel


@pytest.mark.root
def test_kernel_applies_incremental_transactions(netns: str, tmp_path: Path) -> None:
    r0 = repo(*_objects())  # type: ignore[arg-type]
    seq = _sequence(r0)
    ic = IncrementalCompiler(r0, T0)
    initial = {e: ic.script(e) for e in ic.enforcers}
    updates: list[Update] = [ic.update_workload(w) for w in seq]
    final = r0
    for w in seq:
        final = _replace_workload(final, w)
    for e in sorted(initial):
        deltas = [u.enforcers[e].script for u in updates if e in u.enforcers]
        assert deltas, e
        # every delta is valid after the initial script and the deltas before it
        for i in range(len(deltas)):
            ns_nft(netns, "-c", "-f", "-", stdin=initial[e] + "".join(deltas[: i + 1]))
        # applied one transaction at a time, they leave the from-scratch table
        ns_nft(netns, "-f", "-", stdin=initial[e])
        for text in deltas:
            ns_nft(netns, "-f", "-", stdin=text)
        got = kernel_state(netns)
        ns_nft(netns, "-f", "-", stdin=render_nft(_full(final, e)))
        want = kernel_state(netns)
        assert got[0] == want[0], e
        assert got[1] == want[1], e
        (tmp_path / f"{e}.nft").write_text(initial[e] + "".join(deltas))
