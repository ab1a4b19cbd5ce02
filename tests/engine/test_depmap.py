"""The application dependency map (``septum.engine.depmap``) over a hand-made estate.

The estate: a 3-tier shop (web-1, web-2 → api-1 → db-1, granularity ``app, role``), a worker
in ``test`` mode, an idle legacy host without app labels, two admins (users), the internet
(203.0.113.0/24) and unknown addresses (198.19.200.0/24, 2001:db8:ffff::/48). Policies allow
the shop's call graph; security denies admins on the database (an explicit deny) and stages
a freeze of api → db.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.attribution import Attributor, EndpointKind
from septum.engine.depmap import (
    UNKNOWN_NODE,
    DependencyMap,
    EdgeStatus,
    MapEdge,
    MapOptions,
    StatusCounts,
    StatusSource,
    build_dependency_map,
)
from septum.engine.explain import Evaluator
from septum.engine.observed import FlowGroup, Identity, RecordedVerdict
from septum.model.resources import Mode, PolicyMode, Protocol
from septum.testing.builders import (
    T0,
    cidr,
    net,
    network,
    parse_port,
    policy,
    repo,
    rule,
    tier,
    user,
    users,
    workload,
)

SHOP = {"app": "shop", "env": "prod"}
REPO = repo(
    tier("security", 10, "pass", owners=["secops"]),
    tier("app", 100, owners=["shop-team"]),
    workload("web-1", "198.18.0.1", "2001:db8::1", role="web", labels=SHOP),
    workload("web-2", "198.18.0.2", role="web", labels=SHOP),
    workload("api-1", "198.18.0.10", role="api", labels=SHOP),
    workload("db-1", "198.18.0.20", role="db", labels=SHOP),
    workload("worker-1", "198.18.0.30", role="worker", mode=Mode.TEST, labels=SHOP),
    workload("legacy-1", "198.18.1.5", mode=Mode.IDLE, env="prod"),
    user("alice", "198.19.128.10", role="admin"),
    user("bob", "198.19.128.11", role="admin"),
    network("internet", "203.0.113.0/24"),
    policy(
        "deny-admins-db",
        "security",
        applies_to='role == "db"',
        ingress=[rule("deny", users('role == "admin"'), description="no humans on the db")],
    ),
    policy(
        "freeze-db",
        "security",
        applies_to='role == "db"',
        mode=PolicyMode.STAGED,
        ingress=[rule("deny", 'role == "api"', ports=["tcp/5432"])],
    ),
    policy(
        "shop-web",
        "app",
        applies_to='role == "web"',
        ingress=[
            rule("allow", net("internet"), ports=["tcp/443"]),
            rule("allow", cidr("198.19.200.0/24"), ports=["tcp/443"]),
            rule("allow", users('role == "admin"'), ports=["tcp/22"]),
            rule("allow", 'role == "web"', ports=["tcp/7000"]),
        ],
        egress=[
            rule("allow", 'role == "api"', ports=["tcp/8080-8089"]),
            rule("allow", 'role == "web"', ports=["tcp/7000"]),
        ],
    ),
    policy(
        "shop-api",
        "app",
        applies_to='role == "api"',
        ingress=[rule("allow", 'role == "web"', ports=["tcp/8080-8089"])],
        egress=[rule("allow", 'role == "db"', ports=["tcp/5432"])],
    ),
    policy(
        "shop-db",
        "app",
        applies_to='role == "db"',
        ingress=[rule("allow", 'role in {"api", "worker"}', ports=["tcp/5432"])],
    ),
    policy(
        "shop-worker",
        "app",
        applies_to='role == "worker"',
        egress=[rule("allow", 'role == "db"', ports=["tcp/5432"])],
    ),
)
ATTRIBUTOR = Attributor(REPO)
OPTIONS = MapOptions(granularity=("app", "role"))

WEB = "workload[app=shop,role=web]"
API = "workload[app=shop,role=api]"
DB = "workload[app=shop,role=db]"
WORKER = "workload[app=shop,role=worker]"
LEGACY = "workload/legacy-1"
ADMINS = "user[role=admin]"
INTERNET = "network/internet"


def identity(address: str, when: datetime) -> Identity:
    """Who holds ``address`` at ``when``, as the flow store would record it."""
    e = ATTRIBUTOR.attribute(ip_address(address), when)
    return Identity(e.kind, e.name, e.labels)


def group(
    source: str,
    destination: str,
    service: str = "tcp/443",
    records: int = 1,
    *,
    minutes: int = 0,
    verdicts: dict[RecordedVerdict, int] | None = None,
) -> FlowGroup:
    """A flow group of ``records`` records, first seen ``minutes`` after T0, last seen an hour
    later; connections = records, packets = 10 per record, bytes = 1000 per record."""
    sp = parse_port(service)
    assert sp.protocol is not None
    first = T0 + timedelta(minutes=minutes)
    return FlowGroup(
        source=ip_address(source),
        destination=ip_address(destination),
        protocol=sp.protocol,
        port=sp.ports.first if sp.protocol.has_ports else 0,
        first_seen=first,
        last_seen=first + timedelta(hours=1),
        records=records,
        connections=records,
        packets=10 * records,
        bytes=1000 * records,
        source_identity=identity(source, first),
        destination_identity=identity(destination, first),
        verdicts=verdicts or {},
    )


D, W, A = RecordedVerdict.DENIED, RecordedVerdict.WOULD_DENY, RecordedVerdict.ALLOWED

GROUPS = [
    group("203.0.113.5", "198.18.0.1", records=10, verdicts={A: 10}),
    group("203.0.113.6", "198.18.0.2", records=5, minutes=5),
    *(
        group("198.18.0.1", "198.18.0.10", f"tcp/{8080 + i}", records=i + 1, minutes=10 + i)
        for i in range(5)
    ),
    group("198.18.0.2", "198.18.0.10", "tcp/8080", records=2, minutes=30),
    group("198.18.0.10", "198.18.0.20", "tcp/5432", records=7),  # staged freeze
    group("198.18.0.2", "198.18.0.1", "tcp/7000", records=3),  # self-edge
    group("198.19.128.10", "198.18.0.20", "tcp/5432", records=2, verdicts={D: 2}),  # deny
    group("198.19.128.10", "198.18.0.1", "tcp/22"),
    group("198.19.128.11", "198.18.0.2", "tcp/22", minutes=1),
    group("198.18.0.30", "203.0.113.50", "tcp/443", records=4, verdicts={W: 4}),  # test mode
    group("198.18.0.30", "198.18.0.20", "tcp/5432", records=3),
    group("198.19.200.1", "198.18.0.1", "tcp/443", records=6),  # unknown, allowed by cidr
    group("2001:db8:ffff::1", "2001:db8::1", "tcp/443", verdicts={D: 1}),  # unknown, denied
    group("198.18.1.5", "203.0.113.7", "udp/123", records=8),  # idle: not evaluated
    group("198.19.200.2", "198.18.1.5", "icmp"),  # to the idle host
]


def policy_map(groups: list[FlowGroup] = GROUPS, options: MapOptions = OPTIONS) -> DependencyMap:
    return build_dependency_map(groups, Evaluator(REPO), options)


def edge(m: DependencyMap, source: str, destination: str) -> MapEdge:
    found = m.edge(source, destination)
    assert found is not None, f"no edge {source} -> {destination}"
    return found


# ---------------------------------------------------------------------------- nodes


def test_nodes_group_workloads_and_users_by_granularity_labels() -> None:
    m = policy_map()
    assert [n.id for n in m.nodes] == [
        LEGACY, API, DB, WEB, WORKER, ADMINS, INTERNET, UNKNOWN_NODE,
    ]  # fmt: skip
    web = m.node(WEB)
    assert web.kind is EndpointKind.WORKLOAD
    assert web.name == "app=shop, role=web"
    assert web.labels == (("app", "shop"), ("role", "web"))
    assert web.members == ("web-1", "web-2")
    assert web.address_count == 3  # 198.18.0.1, 198.18.0.2, 2001:db8::1
    admins = m.node(ADMINS)
    assert (admins.kind, admins.members, admins.address_count) == (
        EndpointKind.USER, ("alice", "bob"), 2,
    )  # fmt: skip
    assert admins.labels == (("role", "admin"),)


def test_workload_lacking_every_key_is_its_own_node_by_name() -> None:
    legacy = policy_map().node(LEGACY)
    assert (legacy.name, legacy.labels, legacy.members) == ("legacy-1", (), ("legacy-1",))


def test_networks_by_name_and_one_unknown_node_counting_addresses() -> None:
    m = policy_map()
    internet = m.node(INTERNET)
    assert (internet.kind, internet.name, internet.members) == (
        EndpointKind.NETWORK, "internet", (),
    )  # fmt: skip
    assert internet.address_count == 4  # .5 .6 .50 .7
    unknown = m.node(UNKNOWN_NODE)
    assert unknown.kind is EndpointKind.UNKNOWN
    assert unknown.address_count == 3  # 198.19.200.1, 198.19.200.2, 2001:db8:ffff::1
    assert len([n for n in m.nodes if n.kind is EndpointKind.UNKNOWN]) == 1


def test_missing_keys_are_left_out_of_a_partial_label_group() -> None:
    m = policy_map(options=MapOptions(granularity=("app", "env")))
    assert m.node("workload[env=prod]").members == ("legacy-1",)
    assert m.node("workload[app=shop,env=prod]").members == (
        "api-1", "db-1", "web-1", "web-2", "worker-1",
    )  # fmt: skip
    assert m.node("user/alice").name == "alice"  # users lack both keys


def test_empty_granularity_is_one_node_per_workload_and_user() -> None:
    m = policy_map(options=MapOptions(granularity=()))
    ids = {n.id for n in m.nodes}
    assert {"workload/web-1", "workload/web-2", "user/alice", "user/bob"} <= ids
    assert edge(m, "workload/web-2", "workload/web-1").services[0].text == "tcp/7000"


def test_node_ids_escape_separators_in_label_values() -> None:
    odd = Identity(EndpointKind.WORKLOAD, "odd-1", {"app": "a,b=c]\\"})
    g = FlowGroup(
        ip_address("198.18.9.1"), ip_address("198.18.9.1"), Protocol.TCP, 1, T0, T0,
        1, 1, 1, 1, odd, odd,
    )  # fmt: skip
    m = build_dependency_map([g], None, MapOptions(("app",)))
    assert [n.id for n in m.nodes] == ["workload[app=a\\,b\\=c\\]\\\\]"]
    assert m.nodes[0].name == "app=a,b=c]\\"


# ---------------------------------------------------------------------------- edges


def test_edges_with_services_counts_and_times() -> None:
    m = policy_map()
    assert len(m.edges) == 11
    assert m.groups == len(GROUPS)
    e = edge(m, WEB, API)
    assert [s.text for s in e.services] == [f"tcp/{p}" for p in range(8080, 8085)]
    assert e.records == 1 + 2 + 3 + 4 + 5 + 2
    assert (e.connections, e.packets, e.bytes) == (17, 170, 17000)
    assert e.services[0].records == 3  # web-1 and web-2 on tcp/8080
    assert e.first_seen == T0 + timedelta(minutes=10)
    assert e.last_seen == T0 + timedelta(minutes=30, hours=1)
    assert e.status is EdgeStatus.ALLOWED
    assert e.counts == StatusCounts(allowed=17)
    assert e.examples == ()  # nothing to explain when everything is allowed


def test_self_edges_are_kept() -> None:
    e = edge(policy_map(), WEB, WEB)
    assert e.is_self
    assert (e.records, e.status) == (3, EdgeStatus.ALLOWED)


def test_edges_and_services_are_sorted() -> None:
    m = policy_map()
    keys = [(e.source, e.destination) for e in m.edges]
    assert keys == sorted(keys)
    assert [s.text for s in edge(m, UNKNOWN_NODE, LEGACY).services] == ["icmp"]
    assert edge(m, UNKNOWN_NODE, LEGACY).services[0].port == 0


# ---------------------------------------------------------------------------- statuses


def test_explicit_deny_is_denied_with_its_explanation() -> None:
    e = edge(policy_map(), ADMINS, DB)
    assert e.status is EdgeStatus.DENIED
    assert e.counts == StatusCounts(denied=2)
    (example,) = e.examples
    assert example.status is EdgeStatus.DENIED
    assert example.records == 2
    assert str(example.flow.source) == "198.19.128.10"
    assert example.summary == (
        "deny: ingress at db-1 by tier security, policy deny-admins-db, rule 0"
    )
    assert example.explanation is not None
    assert example.explanation.sides[-1].owners == ("secops",)


def test_unenforced_deny_is_would_be_denied() -> None:
    e = edge(policy_map(), WORKER, INTERNET)
    assert e.status is EdgeStatus.WOULD_BE_DENIED
    assert e.counts == StatusCounts(would_be_denied=4)
    (example,) = e.examples
    assert example.summary == (
        "allow (would be denied: egress at worker-1 by default of tier app [test])"
    )


def test_staged_deny_is_counted_apart_and_explained_but_status_stays_allowed() -> None:
    e = edge(policy_map(), API, DB)
    assert e.status is EdgeStatus.ALLOWED
    assert (e.counts, e.staged_denied) == (StatusCounts(allowed=7), 7)
    (example,) = e.examples
    assert example.status is EdgeStatus.ALLOWED
    assert example.summary.endswith("[staged: would be denied]")
    assert edge(policy_map(), WORKER, DB).staged_denied == 0  # the freeze is for api only


def test_any_denied_record_makes_the_edge_denied() -> None:
    e = edge(policy_map(), UNKNOWN_NODE, WEB)
    assert e.counts == StatusCounts(allowed=6, denied=1)
    assert e.status is EdgeStatus.DENIED
    (example,) = e.examples
    assert str(example.flow.source) == "2001:db8:ffff::1"
    assert example.summary == "deny: ingress at web-1 by default of tier app"


def test_idle_workload_traffic_is_not_evaluated() -> None:
    m = policy_map()
    assert edge(m, LEGACY, INTERNET).status is EdgeStatus.ALLOWED
    assert edge(m, UNKNOWN_NODE, LEGACY).counts == StatusCounts(allowed=1)


def test_statuses_under_policy() -> None:
    m = policy_map()
    assert m.status_source is StatusSource.POLICY
    assert {(e.source, e.destination): e.status.value for e in m.edges} == {
        (LEGACY, INTERNET): "allowed",
        (API, DB): "allowed",
        (WEB, API): "allowed",
        (WEB, WEB): "allowed",
        (WORKER, DB): "allowed",
        (WORKER, INTERNET): "would-be-denied",
        (ADMINS, DB): "denied",
        (ADMINS, WEB): "allowed",
        (INTERNET, WEB): "allowed",
        (UNKNOWN_NODE, LEGACY): "allowed",
        (UNKNOWN_NODE, WEB): "denied",
    }


# ---------------------------------------------------------------------------- recorded


def test_without_evaluator_the_recorded_verdicts_decide() -> None:
    m = build_dependency_map(GROUPS, None, OPTIONS)
    assert m.status_source is StatusSource.RECORDED
    policy = policy_map()
    assert [(n.id, n.members, n.address_count) for n in m.nodes] == [
        (n.id, n.members, n.address_count) for n in policy.nodes
    ]
    # the recorded verdicts of the estate agree with the policy, except the staged freeze
    assert {(e.source, e.destination): e.status for e in m.edges} == {
        (e.source, e.destination): e.status for e in policy.edges
    }
    assert all(e.staged_denied == 0 for e in m.edges)
    denied = edge(m, ADMINS, DB)
    assert denied.examples[0].summary == "recorded: 2 denied of 2 records"
    assert denied.examples[0].explanation is None
    assert edge(m, WORKER, INTERNET).examples[0].summary == "recorded: 4 would-deny of 4 records"
    assert edge(m, API, DB).examples == ()


def test_recorded_counts_split_a_group_and_unreported_records_count_as_allowed() -> None:
    g = group("198.18.0.1", "198.18.0.10", "tcp/8080", records=6, verdicts={D: 1, W: 2, A: 1})
    m = build_dependency_map([g], None, OPTIONS)
    e = edge(m, WEB, API)
    assert e.counts == StatusCounts(allowed=3, would_be_denied=2, denied=1)
    assert e.status is EdgeStatus.DENIED
    assert e.examples[0].summary == "recorded: 1 denied, 2 would-deny of 6 records"
    overcount = group("198.18.0.1", "198.18.0.10", "tcp/8080", records=2, verdicts={D: 5, W: 5})
    assert edge(build_dependency_map([overcount], None, OPTIONS), WEB, API).counts == (
        StatusCounts(denied=2)
    )


# ---------------------------------------------------------------------------- examples


def test_at_most_max_examples_the_most_severe_and_first_flows() -> None:
    groups = [
        group(f"198.19.200.{i}", "198.18.0.1", "tcp/443", verdicts={W if i % 2 else D: 1})
        for i in range(10, 20)
    ]
    for options in (OPTIONS, MapOptions(("app", "role"), max_examples=3)):
        for order in (groups, groups[::-1]):
            e = edge(build_dependency_map(order, None, options), UNKNOWN_NODE, WEB)
            assert [str(x.flow.source) for x in e.examples] == [
                "198.19.200.10", "198.19.200.12", "198.19.200.14",
            ]  # fmt: skip
    e = edge(build_dependency_map(groups, None, MapOptions(("app",), max_examples=0)),
             UNKNOWN_NODE, "workload[app=shop]")  # fmt: skip
    assert e.examples == ()


def test_examples_keep_flows_at_first_seen() -> None:
    e = edge(policy_map(), ADMINS, DB)
    assert e.examples[0].flow.at == T0
    assert e.examples[0].flow.port == 5432


# ---------------------------------------------------------------------------- determinism


def test_empty_input_and_one_pass_over_an_iterator() -> None:
    empty = build_dependency_map([], Evaluator(REPO), OPTIONS)
    assert (empty.nodes, empty.edges, empty.groups) == ((), (), 0)
    assert build_dependency_map(iter(GROUPS), Evaluator(REPO), OPTIONS) == policy_map()


@settings(max_examples=40, deadline=None)
@given(st.permutations(GROUPS), st.booleans())
def test_same_groups_in_any_order_give_an_equal_map(
    shuffled: list[FlowGroup], evaluate: bool
) -> None:
    reference = build_dependency_map(GROUPS, Evaluator(REPO) if evaluate else None, OPTIONS)
    m = build_dependency_map(shuffled, Evaluator(REPO) if evaluate else None, OPTIONS)
    assert m == reference
    assert [x.summary for e in m.edges for x in e.examples] == [
        x.summary for e in reference.edges for x in e.examples
    ]


@pytest.mark.parametrize("kind", list(EdgeStatus))
def test_severity_orders_statuses(kind: EdgeStatus) -> None:
    assert kind.severity == [EdgeStatus.ALLOWED, EdgeStatus.WOULD_BE_DENIED,
                             EdgeStatus.DENIED].index(kind)  # fmt: skip
