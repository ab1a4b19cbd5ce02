"""Attribution of addresses (semantics.md, "Rules": who holds an address at a time)."""

from __future__ import annotations

from datetime import datetime, timedelta
from ipaddress import ip_address

import pytest

from septum.engine.attribution import Attributor, EndpointKind
from septum.testing.builders import T0, network, repo, user, workload

HOUR = timedelta(hours=1)


def _repo() -> Attributor:
    return Attributor(
        repo(
            workload("web-1", "198.18.0.1", "2001:db8::1", app="web"),
            workload(
                "temp-1",
                ("198.18.0.9", T0 - HOUR, T0 + HOUR),  # valid only around T0
            ),
            user("alice", ("198.19.5.10", T0 - HOUR, T0 + HOUR), role="dba"),
            # a user session on an address a workload also holds: the workload wins
            user("mallory", ("198.18.0.1", None, None)),
            network("internet", "0.0.0.0/0", "::/0", excepts=["198.18.0.0/15"], zone="internet"),
            network("lab", "198.18.0.0/16", "10.0.0.0/8", zone="lab"),
            network("lab-dmz", "198.18.7.0/24", zone="dmz"),
        )
    )


def test_workload_holds_its_address() -> None:
    e = _repo().attribute(ip_address("198.18.0.1"), T0)
    assert e.kind is EndpointKind.WORKLOAD
    assert e.workload is not None
    assert e.workload.name == "web-1"
    assert e.name == "web-1"
    assert e.labels["app"] == "web"


def test_ipv6_address_attributed_to_workload() -> None:
    e = _repo().attribute(ip_address("2001:db8::1"), T0)
    assert e.kind is EndpointKind.WORKLOAD


def test_workload_beats_user_session_on_same_address() -> None:
    e = _repo().attribute(ip_address("198.18.0.1"), T0)
    assert e.kind is EndpointKind.WORKLOAD


def test_user_session_during_its_time() -> None:
    e = _repo().attribute(ip_address("198.19.5.10"), T0)
    assert e.kind is EndpointKind.USER
    assert e.user is not None
    assert e.user.name == "alice"


@pytest.mark.parametrize("when", [T0 - 2 * HOUR, T0 + HOUR, T0 + 2 * HOUR])
def test_user_session_outside_its_time_is_not_the_user(when: datetime) -> None:
    # 198.19.5.10 is in internet's except (198.18.0.0/15) and in no other network
    e = _repo().attribute(ip_address("198.19.5.10"), when)
    assert e.kind is EndpointKind.UNKNOWN
    assert e.networks == ()
    assert e.workload is None
    assert e.user is None


def test_workload_address_validity_window() -> None:
    a = _repo()
    addr = ip_address("198.18.0.9")
    assert a.attribute(addr, T0).kind is EndpointKind.WORKLOAD
    assert a.attribute(addr, T0 - HOUR).kind is EndpointKind.WORKLOAD  # from is inclusive
    outside = a.attribute(addr, T0 + HOUR)  # until is exclusive
    assert outside.kind is EndpointKind.NETWORK
    assert [n.name for n in outside.networks] == ["lab"]


def test_every_containing_network_sorted_by_name() -> None:
    e = _repo().attribute(ip_address("198.18.7.7"), T0)
    assert e.kind is EndpointKind.NETWORK
    assert [n.name for n in e.networks] == ["lab", "lab-dmz"]


def test_network_with_several_cidrs() -> None:
    e = _repo().attribute(ip_address("10.1.2.3"), T0)
    assert [n.name for n in e.networks] == ["internet", "lab"]


def test_excepts_are_subtracted() -> None:
    e = _repo().attribute(ip_address("198.18.200.1"), T0)
    assert [n.name for n in e.networks] == ["lab"]  # internet excepts 198.18.0.0/15


def test_ipv6_network() -> None:
    e = _repo().attribute(ip_address("2001:db8::99"), T0)
    assert [n.name for n in e.networks] == ["internet"]


def test_unknown_when_no_network_contains_it() -> None:
    a = Attributor(repo(network("lab", "10.0.0.0/8")))
    e = a.attribute(ip_address("192.0.2.1"), T0)
    assert e.kind is EndpointKind.UNKNOWN
    assert e.to_json() == {"address": "192.0.2.1", "kind": "unknown"}


def test_network_answers_are_stable_across_calls() -> None:
    a = _repo()
    first = a.networks_containing(ip_address("198.18.7.7"))
    assert a.networks_containing(ip_address("198.18.7.7")) == first


def test_endpoint_to_json_for_workload() -> None:
    e = _repo().attribute(ip_address("198.18.0.1"), T0)
    assert e.to_json() == {
        "address": "198.18.0.1",
        "kind": "workload",
        "workload": "web-1",
        "mode": "enforced",
        "enforcer": None,
    }
