"""The security-group evaluator: AWS's semantics, read back from the documents Septum writes.

Hand-written documents check each rule of the semantics; a property renders random
repositories with ``render_aws``, reads ``security-groups.json`` back and checks that the
groups allow exactly the repository's effective connectivity.
"""

from __future__ import annotations

import json
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from septum.engine.connectivity import ConnectivityMap, port_set_of
from septum.engine.security_groups import (
    SecurityGroupDocumentError,
    evaluate_security_groups,
    expected_connectivity,
    mask_addresses,
    parse_security_groups,
    verify_aws,
)
from septum.model.resources import Protocol
from septum.render.aws import render_aws
from septum.render.manifests import Approximation
from septum.testing.strategies import T0, repositories

TCP = Protocol.TCP
V4_ALL = port_set_of(
    [(Protocol.TCP, 1, 65535), (Protocol.UDP, 1, 65535), (Protocol.SCTP, 1, 65535),
     (Protocol.ICMP, 0, 0)]
)


def create(name: str) -> dict[str, Any]:
    return {"kind": "CreateSecurityGroup", "request": {"GroupName": name, "Description": name}}


def revoke_default(name: str) -> dict[str, Any]:
    return {
        "kind": "RevokeSecurityGroupEgress",
        "request": {
            "GroupId": f"${{sg:{name}}}",
            "IpPermissions": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                               "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}],
        },
    }


def allow(direction: str, name: str, protocol: str, first: int, last: int,
          group: str | None = None, cidr: str | None = None) -> dict[str, Any]:
    perm: dict[str, Any] = {"IpProtocol": protocol, "FromPort": first, "ToPort": last}
    if group is not None:
        perm["UserIdGroupPairs"] = [{"GroupId": f"${{sg:{group}}}"}]
    elif cidr is not None and ":" in cidr:
        perm["Ipv6Ranges"] = [{"CidrIpv6": cidr}]
    elif cidr is not None:
        perm["IpRanges"] = [{"CidrIp": cidr}]
    kind = "AuthorizeSecurityGroupIngress" if direction == "in" else "AuthorizeSecurityGroupEgress"
    return {"kind": kind, "request": {"GroupId": f"${{sg:{name}}}", "IpPermissions": [perm]}}


def assign(*entries: tuple[str, list[str], list[str]]) -> dict[str, Any]:
    return {
        "kind": "SecurityGroupAssignment",
        "assignments": [
            {
                "Workload": w,
                "Addresses": [{"Address": a, "Endpoint": w if len(addrs) == 1 else f"{w}@{a}"}
                              for a in addrs],
                "Request": {"Groups": [f"${{sg:{g}}}" for g in groups]},
            }
            for w, addrs, groups in entries
        ],
    }


def evaluate(docs: list[dict[str, Any]]) -> ConnectivityMap:
    return evaluate_security_groups(parse_security_groups(json.dumps(docs)))


def test_group_references_need_both_sides() -> None:
    docs = [
        create("a"), create("b"), revoke_default("a"), revoke_default("b"),
        allow("out", "a", "tcp", 80, 90, group="b"),
        allow("in", "b", "tcp", 85, 100, group="a"),
        assign(("x", ["10.0.0.1"], ["a"]), ("y", ["10.0.0.2"], ["b"])),
    ]
    m = evaluate(docs)
    assert m.pairs == {("x", "y"): port_set_of([(TCP, 85, 90)])}
    assert m.externals == {}


def test_default_egress_stays_until_revoked() -> None:
    docs = [create("a"), create("b"), allow("in", "b", "-1", -1, -1, group="a"),
            assign(("x", ["10.0.0.1"], ["a"]), ("y", ["10.0.0.2"], ["b"]))]
    m = evaluate(docs)
    assert m.pairs[("x", "y")] == V4_ALL
    # the default egress reaches every external IPv4 address except the held ones
    assert m.externals[("x", True)] == (
        (4, 0, int(ip_address("10.0.0.0")), V4_ALL),
        (4, int(ip_address("10.0.0.3")), 2**32 - 1, V4_ALL),
    )


def test_cidr_rules_match_workload_addresses_and_externals() -> None:
    docs = [
        create("a"), create("b"), revoke_default("a"), revoke_default("b"),
        allow("out", "a", "udp", 53, 53, cidr="10.0.0.0/30"),
        allow("in", "b", "udp", 0, 65535, cidr="10.0.0.0/24"),
        assign(("x", ["10.0.0.1"], ["a"]), ("y", ["10.0.0.2"], ["b"])),
    ]
    m = evaluate(docs)
    assert m.pairs == {("x", "y"): port_set_of([(Protocol.UDP, 53, 53)])}
    udp53 = port_set_of([(Protocol.UDP, 53, 53)])
    base = int(ip_address("10.0.0.0"))
    assert m.externals[("x", True)] == ((4, base, base, udp53), (4, base + 3, base + 3, udp53))
    assert m.externals[("y", False)] == (
        (4, base, base, port_set_of([(Protocol.UDP, 1, 65535)])),
        (4, base + 3, base + 255, port_set_of([(Protocol.UDP, 1, 65535)])),
    )


def test_group_reference_covers_ipv6_and_protocols_follow_versions() -> None:
    docs = [
        create("a"), create("b"), revoke_default("a"), revoke_default("b"),
        allow("out", "a", "-1", -1, -1, group="b"),
        allow("in", "b", "icmpv6", -1, -1, group="a"),
        allow("in", "b", "icmp", 8, 0, group="a"),  # one ICMP type: narrower than Septum says
        allow("in", "b", "132", -1, -1, group="a"),
        assign(("x", ["10.0.0.1", "2001:db8::1"], ["a"]),
               ("y", ["10.0.0.2", "2001:db8::2"], ["b"])),
    ]
    m = evaluate(docs)
    sctp = port_set_of([(Protocol.SCTP, 1, 65535)])
    assert m.pairs[("x@10.0.0.1", "y@10.0.0.2")] == sctp
    assert m.pairs[("x@2001:db8::1", "y@2001:db8::2")] == port_set_of(
        [(Protocol.SCTP, 1, 65535), (Protocol.ICMPV6, 0, 0)]
    )
    assert ("x@10.0.0.1", "y@2001:db8::2") not in m.pairs  # no flow across versions
    # a workload's own addresses are not filtered
    assert ("x@10.0.0.1", "x@2001:db8::1") not in m.pairs


def test_unknown_documents_are_refused() -> None:
    with pytest.raises(SecurityGroupDocumentError, match="Nope"):
        parse_security_groups([{"kind": "Nope"}])


def test_mask_addresses_cuts_held_addresses_out() -> None:
    base = int(ip_address("10.0.0.0"))
    m = ConnectivityMap({}, {("x", True): ((4, base, base + 9, V4_ALL),)}, V4_ALL)
    masked = mask_addresses(m, [ip_address("10.0.0.0"), ip_address("10.0.0.4")])
    assert masked.externals[("x", True)] == (
        (4, base + 1, base + 3, V4_ALL), (4, base + 5, base + 9, V4_ALL),
    )


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(repositories())
def test_random_repositories_round_trip(repo: Any) -> None:
    """render → security-groups.json → evaluator equals the effective connectivity, unless
    the rendering reported a non-REWRITTEN limitation that names a workload of every
    differing pair (the random repositories never need one)."""
    rendering = render_aws(repo, T0)
    diff, limitations = verify_aws(repo, T0, rendering)
    named = " ".join(f"{x.source} {x.what} {x.detail}" for x in limitations
                     if x.approximation is not Approximation.REWRITTEN)
    for change in diff.changes:
        ends = [e.split("@")[0] for e in (change.source, change.target) if "External" not in e]
        assert any(f"workload/{w}" in named for w in ends), change
    # the random repositories are all expressible: no residual difference at all
    assert diff.empty, diff.lines()
    assert not [x for x in limitations if "=>" in x.what]
    # the evaluator agrees with itself on the parsed documents and on the manifests
    again = evaluate_security_groups(parse_security_groups(list(rendering.manifests)))
    held = [b.address for u in repo.users for b in u.sessions if b.valid_at(T0)]
    assert mask_addresses(again, held).pairs == expected_connectivity(repo, T0).pairs
