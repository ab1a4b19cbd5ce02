"""The AWS security-group renderer: hand-made repositories with the groups and rules they must
give, quotas, limitations, Terraform that parses, and the round trip through the evaluator."""

from __future__ import annotations

import json
from ipaddress import ip_network
from typing import Any

import pytest

from septum.engine.security_groups import IpProtocol, SgRule, parse_security_groups, verify_aws
from septum.model.resources import Direction, Mode, PolicyMode
from septum.render.aws import AwsQuotas, AwsRenderSettings, render_aws
from septum.render.manifests import Approximation, Rendering
from septum.testing.builders import (
    T0,
    cidr,
    net,
    network,
    policy,
    repo,
    rule,
    settings,
    tier,
    user,
    users,
    workload,
)


def groups_of(r: Rendering) -> dict[str, Any]:
    return {g.name: g for g in parse_security_groups(r.files["security-groups.json"]).groups}


def rules(r: Rendering, group: str, direction: Direction) -> set[tuple[str, int, int, str]]:
    g = groups_of(r)[group]
    return {
        (x.protocol.value, x.from_port, x.to_port, x.group or str(x.cidr))
        for x in g.rules(direction)
    }


def assert_exact(repository: Any, r: Rendering) -> None:
    diff, _ = verify_aws(repository, T0, r)
    assert diff.empty, diff.lines()


WEB_DB = (
    tier("security", 10),
    tier("app", 20),
    workload("web-1", "198.18.0.1", app="web"),
    workload("web-2", "198.18.0.2", app="web"),
    workload("db-1", "198.18.0.3", app="db"),
)


def test_deny_in_a_tier_above_allows_is_subtracted() -> None:
    r = repo(
        *WEB_DB,
        policy("no-ssh", "security", applies_to='app == "db"',
               ingress=[rule("deny", 'app == "web"', ports=["tcp/22"]), rule("pass")]),
        policy("db", "app", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/1-100"])]),
        policy("web", "app", applies_to='app == "web"',
               egress=[rule("allow", 'app == "db"', ports=["tcp"])]),
    )
    out = render_aws(r, T0)
    assert set(groups_of(out)) == {"septum-app-web", "septum-db-1"}
    assert rules(out, "septum-db-1", Direction.INGRESS) == {
        ("tcp", 1, 21, "septum-app-web"), ("tcp", 23, 100, "septum-app-web"),
    }
    assert rules(out, "septum-app-web", Direction.EGRESS) == {
        ("tcp", 1, 21, "septum-db-1"), ("tcp", 23, 100, "septum-db-1"),
    }
    assert rules(out, "septum-app-web", Direction.INGRESS) == set()
    assert rules(out, "septum-db-1", Direction.EGRESS) == set()
    assert out.exact
    assert out.limitations == ()
    assert_exact(r, out)


def test_default_deny_gives_empty_groups_and_default_allow_gives_minus_one() -> None:
    deny = repo(*WEB_DB)
    out = render_aws(deny, T0)
    assert all(not g.ingress and not g.egress for g in groups_of(out).values())
    assert_exact(deny, out)
    allow = repo(*WEB_DB, settings("allow"))
    out = render_aws(allow, T0)
    # everyone is interchangeable: one group, everything within it and to the world
    assert set(groups_of(out)) == {"septum-segment"}
    assert ("-1", -1, -1, "septum-segment") in rules(out, "septum-segment", Direction.INGRESS)
    assert ("-1", -1, -1, "0.0.0.0/0") in rules(out, "septum-segment", Direction.EGRESS)
    # no workload holds an IPv6 address: there is no IPv6 connection to render
    assert all(":" not in c for *_, c in rules(out, "septum-segment", Direction.EGRESS))
    assert_exact(allow, out)


def test_segments_need_both_directions() -> None:
    r = repo(
        tier("t", 1),
        workload("a", "198.18.0.1", app="x"),
        workload("b", "198.18.0.2", app="x"),
        policy("p", "t", egress=[rule("allow", 'septum.io/name == "b"')],
               ingress=[rule("allow")]),
    )
    out = render_aws(r, T0)
    # a -> b allowed, b -> a not: a and b are not interchangeable
    assert len(groups_of(out)) == 2
    assert_exact(r, out)


def test_cidr_peers_networks_with_except_and_ipv6() -> None:
    r = repo(
        tier("t", 1),
        network("corp", "10.0.0.0/8", excepts=["10.1.0.0/16"]),
        workload("app-1", "198.18.0.1", "2001:db8::1", app="api"),
        policy("api", "t", applies_to='app == "api"',
               egress=[rule("allow", net("corp"), ports=["tcp/443"]),
                       rule("allow", cidr("2001:db8:ff::/48"), ports=["udp/53"])]),
    )
    out = render_aws(r, T0)
    egress = rules(out, "septum-app-1", Direction.EGRESS)
    corp = {str(n) for n in ip_network("10.0.0.0/8").address_exclude(ip_network("10.1.0.0/16"))}
    assert {c for p, _, _, c in egress if p == "tcp"} == corp
    assert ("udp", 53, 53, "2001:db8:ff::/48") in egress
    doc = json.loads(out.files["security-groups.json"])
    v6 = [perm for d in doc if d["kind"] == "AuthorizeSecurityGroupEgress"
          for perm in d["request"]["IpPermissions"] if "Ipv6Ranges" in perm]
    assert v6 == [{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
                   "Ipv6Ranges": [{"CidrIpv6": "2001:db8:ff::/48",
                                   "Description": "septum: addresses"}]}]
    assert_exact(r, out)


def test_two_cidr_rules_covering_each_other_are_carved() -> None:
    """s may reach the internet on 443, t accepts the internet on 443, but s -> t is denied:
    the two CIDR rules together would allow it, so t's address is cut out of s's."""
    r = repo(
        tier("t", 1),
        workload("s", "198.18.0.1", role="client"),
        workload("t", "198.18.0.2", role="server"),
        policy("client", "t", applies_to='role == "client"',
               egress=[rule("deny", 'role == "server"'),
                       rule("allow", cidr("0.0.0.0/0"), ports=["tcp/443"])]),
        policy("server", "t", applies_to='role == "server"',
               ingress=[rule("allow", cidr("0.0.0.0/0"), ports=["tcp/443"])]),
    )
    out = render_aws(r, T0)
    assert_exact(r, out)
    egress = rules(out, "septum-s", Direction.EGRESS)
    assert ("tcp", 443, 443, "198.18.0.2/32") not in egress
    assert ("tcp", 443, 443, "198.18.0.3/32") in egress  # the block around the hole
    assert not [x for x in out.limitations if "=>" in x.what]


def test_modes_log_staged_users_expiry_and_addressless_are_reported() -> None:
    r = repo(
        tier("t", 1),
        workload("idle", "198.18.0.1", mode=Mode.IDLE),
        workload("seen", "198.18.0.2", mode=Mode.VISIBILITY),
        workload("ghost"),
        user("u", "198.18.0.9"),
        policy("p", "t", ingress=[
            rule("log"),
            rule("allow", users("all()"), ports=["tcp/22"]),
            rule("allow", ports=["tcp/80"], expires="2099-01-01T00:00:00Z"),
            rule("deny", ports=["tcp/81"], expires="2000-01-01T00:00:00Z"),
        ]),
        policy("s", "t", mode=PolicyMode.STAGED, ingress=[rule("deny")]),
    )
    out = render_aws(r, T0)
    found = {(x.source, x.approximation) for x in out.limitations}
    assert ("workload/idle", Approximation.REWRITTEN) in found
    assert ("workload/seen", Approximation.REWRITTEN) in found
    assert ("workload/ghost", Approximation.DROPPED) in found
    assert ("policy/p/ingress/0", Approximation.REWRITTEN) in found  # log
    assert ("policy/p/ingress/1", Approximation.DROPPED) in found  # users
    assert ("policy/p/ingress/2", Approximation.WIDENED) in found  # expires later
    assert ("policy/p/ingress/3", Approximation.REWRITTEN) in found  # expired
    assert ("policy/s", Approximation.DROPPED) in found  # staged
    assert_exact(r, out)


def test_partial_sctp_is_narrowed_and_reported() -> None:
    r = repo(
        tier("t", 1),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        policy("p", "t", egress=[rule("allow", ports=["sctp/9000", "tcp/1"])],
               ingress=[rule("allow")]),
    )
    out = render_aws(r, T0)
    narrowed = [x for x in out.limitations if x.approximation is Approximation.NARROWED]
    assert narrowed
    assert all("sctp" in x.what or "SCTP" in x.what for x in narrowed)
    diff, _ = verify_aws(r, T0, out)
    assert not diff.empty
    assert all(not c.added for c in diff.changes)
    widened = render_aws(r, T0, AwsRenderSettings(sctp_widen=True))
    assert any(x.approximation is Approximation.WIDENED for x in widened.limitations)


def many_cidrs(n: int) -> Any:
    return repo(
        tier("t", 1),
        workload("a", "198.18.0.1"),
        policy("p", "t", egress=[rule("allow", cidr(f"10.0.{i * 2}.0/24"), ports=["tcp/443"])
                                 for i in range(n)]),
    )


def test_rule_quota_splits_groups_or_reports_them() -> None:
    r = many_cidrs(70)
    out = render_aws(r, T0)
    assert set(groups_of(out)) == {"septum-a", "septum-a-2"}
    assert len(groups_of(out)["septum-a"].egress) == 60
    assert len(groups_of(out)["septum-a-2"].egress) == 10
    assert_exact(r, out)
    unsplit = render_aws(r, T0, AwsRenderSettings(split_oversized_groups=False))
    quota = [x for x in unsplit.limitations if x.what.startswith("quota")]
    assert [(x.source, x.what) for x in quota] == [
        ("group/septum-a", "quota: 70 outbound rules > 60")
    ]
    tight = AwsRenderSettings(quotas=AwsQuotas(outbound_rules_per_group=10,
                                               groups_per_interface=5, groups_per_vpc=3))
    out = render_aws(r, T0, tight)
    whats = {x.what for x in out.limitations}
    assert "quota: 7 groups per network interface > 5" in whats
    assert "quota: 7 security groups per VPC > 3" in whats


def test_output_is_deterministic_and_terraform_parses() -> None:
    hcl2 = pytest.importorskip("hcl2")
    r = repo(
        *WEB_DB,
        policy("db", "app", applies_to='app == "db"',
               ingress=[rule("allow", 'app == "web"', ports=["tcp/5432", "icmp"]),
                        rule("allow", cidr("192.0.2.0/24"), ports=["udp/1000-2000"])]),
        policy("web", "app", applies_to='app == "web"',
               egress=[rule("allow")]),
    )
    first, second = render_aws(r, T0), render_aws(r, T0)
    assert first == second
    parsed = hcl2.loads(first.files["main.tf"])
    resources = [k.strip('"') for block in parsed["resource"] for k in block]
    assert resources.count("aws_security_group") == 2
    assert "aws_vpc_security_group_ingress_rule" in resources
    assert parsed["variable"]
    assert parsed["output"]
    assert "${vpc_id}" in first.files["security-groups.json"]
    assert first.kinds() == [
        "AuthorizeSecurityGroupEgress", "AuthorizeSecurityGroupIngress", "CreateSecurityGroup",
        "RevokeSecurityGroupEgress", "SecurityGroupAssignment",
    ]
    assert_exact(r, first)


def test_sg_rule_order_is_total() -> None:
    a = SgRule(Direction.INGRESS, IpProtocol.TCP, 1, 2, cidr=ip_network("10.0.0.0/8"))
    b = SgRule(Direction.INGRESS, IpProtocol.TCP, 1, 2, cidr=ip_network("::/0"))
    c = SgRule(Direction.INGRESS, IpProtocol.TCP, 1, 2, group="g")
    assert sorted([b, a, c], key=SgRule.sort_key) == [c, a, b]
