"""Lowering stage 2 (``septum.engine.resolve``): memberships, address sets, order, views."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network

from septum.engine.resolve import AddressSet, minimal_ranges, resolve_policy
from septum.model.resources import Direction, Mode, PolicyMode
from septum.testing.builders import (
    T0,
    network,
    policy,
    repo,
    rule,
    tier,
    user,
    users,
    workload,
)


def _estate() -> object:
    return repo(
        tier("b", 10),
        tier("a", 10),  # same order: name breaks the tie
        tier("z", 1, "pass"),
        network("inet", "0.0.0.0/0", excepts=["10.0.0.0/8", "192.168.1.0/24"], zone="out"),
        network("lab", "10.1.0.0/16", zone="lab"),
        workload(
            "web-1",
            "10.0.0.1",
            ("10.0.0.9", T0 + timedelta(days=1), None),  # not yet valid
            ("10.0.0.8", None, T0),  # no longer valid
            app="web",
            enforcer="h1",
        ),
        workload("web-2", "2001:db8::2", app="web", enforcer="h1", mode=Mode.IDLE),
        workload("db-1", "10.0.0.3", app="db", enforcer="h2"),
        user("alice", ("10.9.0.1", None, None), app="web", role="dba"),
        policy("p2", "a", order=5, applies_to='app == "web"', ingress=[]),
        policy(
            "p1",
            "a",
            order=5,
            applies_to='app == "web"',
            ingress=[rule("allow", 'zone == "lab"'), rule("deny", expires=T0)],
        ),
        policy("p0", "b", order=1, egress=[rule("allow", users('role == "dba"'))]),
        policy("s", "z", mode=PolicyMode.STAGED, ingress=[rule("deny")]),
    )


def test_tiers_and_policies_in_evaluation_order() -> None:
    r = resolve_policy(_estate(), T0)  # type: ignore[arg-type]
    assert [t.tier.name for t in r.tiers] == ["z", "a", "b"]
    a = r.tiers[1]
    assert [p.name for p in a.policies] == ["p1", "p2"]
    p1 = a.policies[0]
    assert p1.ingress is not None
    assert [x.index for x in p1.ingress] == [0]  # the deny expired at T0 (expires <= at)
    assert p1.egress is None
    before = resolve_policy(_estate(), T0 - timedelta(seconds=1))  # type: ignore[arg-type]
    assert before.tiers[1].policies[0].ingress is not None
    assert len(before.tiers[1].policies[0].ingress) == 2
    assert r.tiers[0].policies[0].staged


def test_selector_members_and_addresses() -> None:
    r = resolve_policy(_estate(), T0)  # type: ignore[arg-type]
    web = r.selectors['app == "web"']
    assert web.workloads == {"web-1", "web-2"}  # users are not endpoints
    assert web.networks == frozenset()
    assert web.addresses.workloads.v4 == (ip_network("10.0.0.1/32"),)  # only valid at T0
    assert web.addresses.workloads.v6 == (ip_network("2001:db8::2/128"),)
    lab = r.selectors['zone == "lab"']
    assert lab.networks == {"lab"}
    assert lab.addresses.networks.v4 == (ip_network("10.1.0.0/16"),)
    dba = r.user_selectors['role == "dba"']
    assert dba.users == {"alice"}
    assert dba.addresses.v4 == (ip_network("10.9.0.1/32"),)
    assert 'role == "dba"' not in r.selectors


def test_exclusion_sets() -> None:
    r = resolve_policy(_estate(), T0)  # type: ignore[arg-type]
    assert set(map(str, r.workload_addresses.v4)) == {"10.0.0.1/32", "10.0.0.3/32"}
    assert set(map(str, r.attributed_addresses.v4)) == {
        "10.0.0.1/32",
        "10.0.0.3/32",
        "10.9.0.1/32",
    }


def test_network_ranges_are_minimal() -> None:
    r = resolve_policy(_estate(), T0)  # type: ignore[arg-type]
    inet = r.networks["inet"]
    total = sum(n.num_addresses for n in inet.v4)
    assert total == 2**32 - 2**24 - 256
    assert ip_network("10.0.0.0/8") not in inet.v4
    assert not any(n.overlaps(ip_network("192.168.1.0/24")) for n in inet.v4)


def test_minimal_ranges() -> None:
    got = minimal_ranges(
        [ip_network("10.0.0.0/24"), ip_network("10.0.1.0/24"), ip_network("10.0.0.0/25")],
        [ip_network("10.0.1.128/25"), ip_network("::/0")],
    )
    assert got == AddressSet((ip_network("10.0.0.0/24"), ip_network("10.0.1.0/25")), ())
    assert minimal_ranges([ip_network("10.0.0.0/24")], [ip_network("10.0.0.0/8")]) == AddressSet()


def test_enforcer_views() -> None:
    r = resolve_policy(_estate(), T0)  # type: ignore[arg-type]
    assert set(r.enforcers) == {"h1", "h2"}
    (web1,) = r.enforcer("h1").workloads  # web-2 is idle
    assert web1.name == "web-1"
    assert [(t.tier.name, [p.name for p in t.policies]) for t in web1.ingress] == [
        ("z", ["s"]),
        ("a", ["p1", "p2"]),
    ]
    assert [t.tier.name for t in web1.egress] == ["b"]
    assert web1.ingress[0].enforced() == ()
    rules = web1.rules(Direction.INGRESS)
    assert [(x.tier.name, x.policy.name, x.rule.index) for x in rules] == [("a", "p1", 0)]
    staged = web1.rules(Direction.INGRESS, staged=True)
    assert [(x.policy.name, x.rule.index) for x in staged] == [("s", 0), ("p1", 0)]
    (db,) = r.enforcer("h2").workloads
    assert [t.tier.name for t in db.ingress] == ["z"]  # only the staged policy applies
    assert r.enforcer("nobody").workloads == ()


def test_order_of_input_tuples_does_not_matter() -> None:
    r = _estate()
    from dataclasses import replace

    from septum.model.resources import Repository

    assert isinstance(r, Repository)
    shuffled = replace(
        r,
        workloads=tuple(reversed(r.workloads)),
        policies=tuple(reversed(r.policies)),
        tiers=tuple(reversed(r.tiers)),
        networks=tuple(reversed(r.networks)),
    )
    assert resolve_policy(shuffled, T0) == resolve_policy(r, T0)


def test_address_set_of_ranges_keeps_both_families_from_a_generator() -> None:
    # Regression: a generator was consumed by the IPv4 pass, so IPv6 failsafe CIDRs vanished.
    from ipaddress import ip_network

    from septum.engine.resolve import AddressSet

    nets = [ip_network("198.18.0.10/32"), ip_network("2001:db8::10/128")]
    got = AddressSet.of_ranges(n for n in nets)
    assert got.v4 == (nets[0],)
    assert got.v6 == (nets[1],)
