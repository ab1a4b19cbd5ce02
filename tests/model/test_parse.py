"""Documents → validated model (septum.model.parse), and repositories on disk
(septum.sources.files), including the corpora under tests/corpus/."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.errors import Problem, ValidationError
from septum.model.parse import (
    InvalidValue,
    UnresolvedReferences,
    parse_cidr,
    parse_documents,
    parse_service_port,
    parse_time,
)
from septum.model.resources import (
    ALL_PORTS,
    Action,
    AddressBinding,
    Direction,
    Expect,
    FlowAssertion,
    Invariant,
    InvariantKind,
    Mode,
    PeerKind,
    PolicyMode,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    ServicePort,
    TierDefault,
    WorkloadKind,
)
from septum.model.selector import ALL, parse_selector
from septum.sources.files import load_repository, repository_files
from septum.sources.yamldoc import parse_yaml

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
BAD = sorted((CORPUS / "bad").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$")


def _parse(*texts: str) -> Repository:
    """Parse YAML texts as files f0.yaml, f1.yaml, ..."""
    docs = []
    for i, text in enumerate(texts):
        parsed = parse_yaml(text, f"f{i}.yaml")
        assert parsed.problems == []
        docs.extend(parsed.documents)
    return parse_documents(docs)


def _problems(*texts: str) -> list[Problem]:
    with pytest.raises(ValidationError) as info:
        _parse(*texts)
    return info.value.problems


HEAD = "apiVersion: septum/v1\n"
TIER = HEAD + "kind: Tier\nmetadata: {name: app}\nspec: {order: 1}\n---\n"


# ------------------------------------------------------------------------------ corpora


def test_bad_corpus_is_big_enough() -> None:
    assert len(BAD) >= 35


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_corpus(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").split("\n", 1)[0]
    m = EXPECT.match(first_line)
    assert m is not None, f"{path.name}: first line must be '# expect: LINE:COLUMN: message'"
    line, column, message = int(m.group(1)), int(m.group(2)), m.group(3)
    given_path = CORPUS.relative_to(Path.cwd()) / "bad" / path.name if _below_cwd() else path
    with pytest.raises(ValidationError) as info:
        load_repository(given_path)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    [problem] = problems
    assert problem.file == str(given_path)
    assert (problem.line, problem.column) == (line, column), str(problem)
    assert message.replace("tests/corpus/bad/", str(given_path.parent) + "/") in problem.message


def _below_cwd() -> bool:
    return CORPUS.is_relative_to(Path.cwd())


@pytest.fixture(scope="module")
def good() -> Repository:
    return load_repository(CORPUS / "good")


def test_good_corpus_loads_every_kind(good: Repository) -> None:
    assert [w.name for w in good.workloads] == ["db-1", "db-2", "web-1"]  # sorted by name
    assert [n.name for n in good.networks] == ["internet"]
    assert [s.name for s in good.services] == ["https", "web-alt"]
    assert [s.name for s in good.segments] == ["pci"]
    assert [t.name for t in good.tiers] == ["app", "security"]
    assert [p.name for p in good.policies] == ["quarantine", "web"]
    assert [u.name for u in good.users] == ["alice", "bob"]
    assert [g.name for g in good.user_groups] == ["dbas"]
    assert [a.name for a in good.assertions] == [
        "dev-never-prod",
        "no-ping",
        "web-always-db",
        "web-reaches-db",
    ]


def test_workload_labels_are_merged_with_implicit_ones(good: Repository) -> None:
    web = good.workload("web-1")
    assert web is not None
    # spec.labels win over metadata.labels (env), both are kept otherwise
    assert dict(web.labels) == {
        "team": "web",
        "env": "prod",
        "app": "web",
        "septum.io/kind": "host",
        "septum.io/name": "web-1",
    }
    db = good.workload("db-1")
    assert db is not None
    assert db.labels["septum.io/namespace"] == "shop"
    assert db.namespace == "shop"
    assert db.kind is WorkloadKind.POD


def test_workload_fields(good: Repository) -> None:
    web = good.workload("web-1")
    assert web is not None
    assert web.enforcer == "host-web-1"
    assert web.description == "front web server"
    assert web.addresses == (
        AddressBinding(ip_address("198.18.1.10")),
        AddressBinding(
            ip_address("2001:db8::10"),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
    )
    assert web.origin is not None
    assert web.origin.file.endswith("inventory.yaml")
    assert (web.origin.line, web.origin.column) == (2, 1)  # after the comment line
    assert good.enforcers() == ("host-web-1",)


def test_workload_mode_defaults_from_settings(good: Repository) -> None:
    modes = {w.name: w.mode for w in good.workloads}
    assert modes == {"web-1": Mode.ENFORCED, "db-1": Mode.VISIBILITY, "db-2": Mode.SELECTIVE}


def test_workload_mode_default_without_settings() -> None:
    repo = _parse(HEAD + "kind: Workload\nmetadata: {name: w}\nspec: {kind: host}\n")
    assert repo.workloads[0].mode is Mode.ENFORCED
    assert repo.settings.default_action is RepositoryDefault.DENY


def test_settings(good: Repository) -> None:
    s = good.settings
    assert s.default_mode is Mode.VISIBILITY
    assert s.default_action is RepositoryDefault.DENY
    assert s.cidr_matches_workloads is False
    assert s.failsafe[0].direction is Direction.INGRESS
    assert s.failsafe[0].services == (ServicePort(Protocol.TCP, PortRange(22, 22)),)
    assert s.failsafe[0].cidrs == (ip_network("198.18.255.0/24"),)
    assert s.failsafe[1].direction is None
    assert s.failsafe[1].cidrs == ()
    assert s.failsafe[1].description == "agent control channel"
    assert s.origin is not None


def test_network(good: Repository) -> None:
    [net] = good.networks
    assert net.cidrs == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert net.excepts == (ip_network("198.18.0.0/15"),)
    assert dict(net.labels) == {
        "zone": "internet",
        "trust": "none",
        "septum.io/kind": "network",
        "septum.io/name": "internet",
    }


def test_services_and_segments(good: Repository) -> None:
    alt = good.services[1]
    assert [str(p) for p in alt.ports] == [
        "tcp/8000-8099",
        "tcp/443",
        "icmp",
        "icmpv6",
        "sctp/9000",
        "any",
    ]
    [pci] = good.segments
    assert pci.selector is parse_selector('env == "prod" && has(pci)')
    assert pci.description == "cardholder data"


def test_tiers(good: Repository) -> None:
    app, security = good.tiers
    assert (app.order, app.default_action, app.owners) == (100.5, TierDefault.DENY, ())
    assert (security.order, security.default_action) == (10.0, TierDefault.PASS)
    assert security.owners == ("security-team",)


def test_policy_defaults(good: Repository) -> None:
    quarantine = good.policies[0]
    assert quarantine.order == 1000.0
    assert isinstance(quarantine.order, float)
    assert quarantine.applies_to is ALL
    assert quarantine.mode is PolicyMode.ENFORCE
    assert quarantine.ingress == ()  # declared empty: applies and matches nothing
    assert quarantine.egress is None  # absent: does not apply


def test_policy_rules(good: Repository) -> None:
    web = good.policies[1]
    assert web.tier == "app"
    assert web.order == 10.0
    assert web.mode is PolicyMode.STAGED
    assert web.applies_to is parse_selector('app == "web"')
    assert web.ingress is not None
    assert web.egress is not None
    first, second = web.ingress
    assert (first.index, second.index, web.egress[0].index) == (0, 1, 0)
    assert first.action is Action.ALLOW
    assert second.action is Action.LOG
    assert second.peers == ()
    assert second.services == ()
    assert [str(p) for p in first.peers] == [
        'app == "lb"',
        'role == "monitor"',
        "segment:pci",
        "network:internet",
        "cidr:198.18.0.0/24",
        'users:role == "dba"',
    ]
    segment_peer = first.peers[2]
    assert segment_peer.kind is PeerKind.SEGMENT
    assert segment_peer.selector is good.segments[0].selector
    assert first.peers[5].kind is PeerKind.USERS
    # named services flattened, then inline ports; duplicates (tcp/443) kept once
    assert [str(s) for s in first.services] == ["tcp/443", "udp/443", "tcp/8443"]
    assert first.service_refs == ("https",)
    assert first.expires == datetime(2026, 12, 31, tzinfo=UTC)
    assert first.description == "why this rule exists"
    assert first.origin is not None
    assert (first.origin.line, first.origin.column) == (24, 7)
    assert [str(s) for s in web.egress[0].services] == ["tcp/5432"]


def test_users_inherit_group_labels(good: Repository) -> None:
    alice, bob = good.users
    # own labels (role: dba) win over the group's (role: admin); the rest is inherited
    assert dict(alice.labels) == {
        "role": "dba",
        "location": "paris",
        "department": "ops",
        "language": "fr",
        "septum.io/kind": "user",
        "septum.io/name": "alice",
    }
    assert dict(bob.labels) == {
        "role": "admin",
        "language": "fr",
        "septum.io/kind": "user",
        "septum.io/name": "bob",
    }
    assert alice.sessions == (
        AddressBinding(
            ip_address("198.19.5.10"),
            datetime(2026, 11, 1, 8, tzinfo=UTC),
            datetime(2026, 11, 1, 18, tzinfo=UTC),
        ),
    )
    [group] = good.user_groups
    assert group.members == ("alice", "bob")
    assert dict(group.labels) == {"role": "admin", "language": "fr"}


def test_assertions(good: Repository) -> None:
    checks = {a.name: a.check for a in good.assertions}
    assert checks["web-reaches-db"] == FlowAssertion(
        "web-1",
        "198.18.1.20",
        ServicePort(Protocol.TCP, PortRange(5432, 5432)),
        Expect.ALLOW,
        datetime(2026, 11, 1, 12, tzinfo=timezone(timedelta(hours=1))),
    )
    assert checks["no-ping"] == FlowAssertion(
        "198.18.1.99", "db-2", ServicePort(Protocol.ICMP), Expect.DENY, None
    )
    assert checks["dev-never-prod"] == Invariant(
        InvariantKind.NEVER,
        parse_selector('env == "dev"'),
        parse_selector('env == "prod"'),
        (ServicePort(Protocol.TCP, PortRange(22, 22)),),
    )
    always = checks["web-always-db"]
    assert isinstance(always, Invariant)
    assert always.kind is InvariantKind.ALWAYS
    assert always.services == ()


def test_loading_is_deterministic(good: Repository) -> None:
    assert load_repository(CORPUS / "good") == good


# ------------------------------------------------------------------------------ files


def test_repository_files_order_and_skipping() -> None:
    files = repository_files(CORPUS / "good")
    names = [str(f.relative_to(CORPUS / "good")) for f in files]
    # sorted path order, recursive, .yml too; dot-files/dirs and other suffixes skipped
    assert names == [
        "assertions.yaml",
        "inventory.yaml",
        "policies/app.yaml",
        "services.yml",
        "settings.yaml",
        "users.yaml",
    ]


def test_paths_are_reported_as_given_path_joined(tmp_path: Path) -> None:
    (tmp_path / "examples" / "policies").mkdir(parents=True)
    (tmp_path / "examples" / "policies" / "web.yaml").write_text(HEAD + "kind: Nope\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        with pytest.raises(ValidationError) as info:
            load_repository(Path("examples"))
    assert [p.file for p in info.value.problems] == ["examples/policies/web.yaml"]


def test_single_file(tmp_path: Path) -> None:
    f = tmp_path / "one.yaml"
    f.write_text(HEAD + "kind: Tier\nmetadata: {name: t}\nspec: {order: 1}\n")
    assert [t.name for t in load_repository(f).tiers] == ["t"]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file or directory"):
        load_repository(tmp_path / "nope")


def test_empty_directory_is_an_empty_repository(tmp_path: Path) -> None:
    assert load_repository(tmp_path) == Repository()


def test_problems_from_all_files_are_collected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "kind: Nope\n")
    (tmp_path / "b.yaml").write_text(HEAD + "kind: Tier\nmetadata: {name: t}\nspec: {order: x}\n")
    (tmp_path / "c.yaml").write_bytes(b"a: \xff\n")
    with pytest.raises(ValidationError) as info:
        load_repository(tmp_path)
    got = [(Path(p.file).name, p.line, p.column) for p in info.value.problems]
    assert got == [("a.yaml", 2, 7), ("b.yaml", 4, 15), ("c.yaml", 1, 4)]
    assert "not valid UTF-8" in info.value.problems[2].message


def test_syntax_error_suppresses_follow_on_reference_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        TIER + HEAD + "kind: Policy\nmetadata: {name: p}\nspec: {tier: later, order: 1}\n"
    )
    (tmp_path / "b.yaml").write_text("kind: [\n")  # the Tier 'later' might have been here
    with pytest.raises(ValidationError) as info:
        load_repository(tmp_path)
    assert [Path(p.file).name for p in info.value.problems] == ["b.yaml"]


def test_duplicates_across_files_point_at_the_later_file(tmp_path: Path) -> None:
    tier = HEAD + "kind: Tier\nmetadata: {name: app}\nspec: {order: 1}\n"
    (tmp_path / "a.yaml").write_text(tier)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(tier)
    with pytest.raises(ValidationError) as info:
        load_repository(tmp_path)
    [problem] = info.value.problems
    assert problem.file == str(tmp_path / "sub" / "b.yaml")
    assert f"first defined at {tmp_path / 'a.yaml'}:3" in problem.message


def test_references_work_across_files_in_any_order() -> None:
    policy = HEAD + "kind: Policy\nmetadata: {name: p}\nspec: {tier: z}\n"
    tier = HEAD + "kind: Tier\nmetadata: {name: z}\nspec: {order: 1}\n"
    assert [p.tier for p in _parse(policy, tier).policies] == ["z"]


# ------------------------------------------------------------------------------ parse_documents


def test_all_problems_are_collected_and_sorted() -> None:
    problems = _problems(
        TIER + HEAD + "kind: Policy\nmetadata: {name: p}\nspec:\n  tier: nope\n  ingress:\n"
        "    - action: allow\n      from: ['a ==']\n      ports: [tcp/99999]\n"
    )
    assert [(p.line, p.column) for p in problems] == [(10, 9), (13, 19), (14, 15)]
    assert problems == sorted(problems)


def test_invalid_document_does_not_cause_unknown_reference_noise() -> None:
    # The tier is invalid (order is text), but the policy naming it must not also fail.
    problems = _problems(
        HEAD
        + "kind: Tier\nmetadata: {name: app}\nspec: {order: x}\n---\n"
        + HEAD
        + "kind: Policy\nmetadata: {name: p}\nspec: {tier: app}\n"
    )
    assert len(problems) == 1
    assert "order must be a number" in problems[0].message


def test_check_references_false_never_returns_unresolved_references() -> None:
    # A rule whose only peer names an unknown segment would otherwise mean "any peer".
    text = (
        TIER
        + HEAD
        + (
            "kind: Policy\nmetadata: {name: p}\nspec:\n  tier: app\n"
            "  ingress: [{action: allow, from: [{segment: nope}]}]\n"
        )
    )
    docs = parse_yaml(text, "f.yaml").documents
    with pytest.raises(UnresolvedReferences) as info:
        parse_documents(docs, check_references=False)
    assert [p.message for p in info.value.problems] == ["unknown segment 'nope'"]
    with pytest.raises(ValidationError, match="unknown segment 'nope'") as plain:
        parse_documents(docs)
    assert not isinstance(plain.value, UnresolvedReferences)
    # Other problems win: unresolved references are left out of them.
    broken = text.replace("action: allow", "action: permit")
    with pytest.raises(ValidationError) as both:
        parse_documents(parse_yaml(broken, "f.yaml").documents, check_references=False)
    assert [p.message[:14] for p in both.value.problems] == ["invalid action"]


def test_document_that_is_not_a_mapping() -> None:
    [problem] = _problems("just text\n")
    assert "must be a mapping" in problem.message


@pytest.mark.parametrize(
    ("selector_yaml", "column"),
    [
        ("app ==", 24),  # plain: the end of "app ==", which starts at 18
        ("'app =='", 25),  # single quoted: one more for the quote
        ('"app =="', 25),
        ("'it''s == x'", 21),  # the string starting at the (doubled) quote
    ],
)
def test_selector_error_column_accounts_for_quotes(selector_yaml: str, column: int) -> None:
    [problem] = _problems(
        HEAD + f"kind: Segment\nmetadata: {{name: s}}\nspec: {{selector: {selector_yaml}}}\n"
    )
    assert (problem.line, problem.column) == (4, column), problem
    assert problem.message.startswith("invalid selector:")


def test_selector_error_in_block_scalar_points_at_its_line() -> None:
    text = HEAD + "kind: Segment\nmetadata: {name: s}\nspec:\n  selector: >\n"
    text += "    has(a) &&\n    ~x\n"
    [problem] = _problems(text)
    assert (problem.line, problem.column) == (7, 5)


def test_label_value_hint_for_booleans() -> None:
    [problem] = _problems(HEAD + "kind: User\nmetadata: {name: u, labels: {vpn: true}}\n")
    assert problem.message == "label value for 'vpn' must be a string: write \"true\""


def test_non_string_label_key() -> None:
    [problem] = _problems(HEAD + "kind: User\nmetadata:\n  name: u\n  labels: {1: x}\n")
    assert (problem.line, problem.column) == (5, 12)
    assert "key must be a string" in problem.message


def test_labels_on_other_kinds_are_checked_too() -> None:
    [problem] = _problems(
        HEAD + "kind: Tier\nmetadata: {name: t, labels: {septum.io/name: x}}\nspec: {order: 1}\n"
    )
    assert "reserved" in problem.message


def test_workload_may_hold_an_address_twice_and_reuse_after_release() -> None:
    text = (
        HEAD + "kind: Workload\nmetadata: {name: a}\nspec:\n  kind: host\n  addresses:\n"
        "    - {address: 10.0.0.1, until: 2026-01-01T00:00:00Z}\n---\n"
        + HEAD
        + "kind: Workload\nmetadata: {name: b}\nspec:\n  kind: host\n  addresses:\n"
        "    - {address: 10.0.0.1, from: 2026-01-01T00:00:00Z}\n"
    )
    assert len(_parse(text).workloads) == 2
    overlapping = text.replace("from: 2026-01-01", "from: 2025-12-31")
    [problem] = _problems(overlapping)
    assert "also held by workload 'a'" in problem.message


def test_flow_assertion_missing_fields() -> None:
    [problem] = _problems(
        HEAD + "kind: Assertion\nmetadata: {name: a}\nspec:\n  from: 10.0.0.1\n  to: 10.0.0.2\n"
    )
    assert problem.message == "a flow assertion needs port, expect (or write never/always)"
    assert (problem.line, problem.column) == (4, 1)


def test_invariant_with_flow_fields() -> None:
    [problem] = _problems(
        HEAD + "kind: Assertion\nmetadata: {name: a}\nspec:\n  expect: deny\n"
        "  never: {from: all(), to: all()}\n"
    )
    assert "'expect' belongs to a flow assertion" in problem.message


def test_assertion_any_port_is_rejected() -> None:
    [problem] = _problems(
        HEAD + "kind: Assertion\nmetadata: {name: a}\n"
        "spec: {from: 10.0.0.1, to: 10.0.0.2, port: any, expect: deny}\n"
    )
    assert "not 'any'" in problem.message


def test_peer_mapping_must_not_be_empty() -> None:
    [problem] = _problems(
        TIER + HEAD + "kind: Policy\nmetadata: {name: p}\nspec:\n  tier: app\n"
        "  ingress:\n    - action: allow\n      from: [{}]\n"
    )
    assert "exactly one of" in problem.message
    assert (problem.line, problem.column) == (13, 14)


def test_peer_of_wrong_type() -> None:
    [problem] = _problems(
        TIER + HEAD + "kind: Policy\nmetadata: {name: p}\nspec:\n  tier: app\n"
        "  egress:\n    - action: allow\n      to: [5]\n"
    )
    assert problem.message == "to must be a string or a mapping, not number 5"
    assert (problem.line, problem.column) == (13, 12)


def test_unknown_field_deep_in_a_union_gets_a_suggestion() -> None:
    [problem] = _problems(
        HEAD + "kind: Workload\nmetadata: {name: w}\nspec:\n  kind: host\n  addresses:\n"
        "    - {adress: 10.0.0.1}\n"
    )
    assert "unknown field 'adress' (did you mean 'address'?)" in problem.message
    assert (problem.line, problem.column) == (7, 8)


def test_infinite_order_is_rejected() -> None:
    [problem] = _problems(HEAD + "kind: Tier\nmetadata: {name: t}\nspec: {order: .inf}\n")
    assert "finite" in problem.message


# ------------------------------------------------------------------------------ value parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-31T00:00:00Z", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31t00:00:00z", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31 01:00:00+01:00", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31T00:00:00.5-02:30", datetime(2026, 12, 31, 2, 30, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-31T00:00:00", "has no zone"),
        ("2026-12-31", "expected RFC 3339"),
        ("tomorrow", "expected RFC 3339"),
        ("2026-13-01T00:00:00Z", "invalid time"),
        ("2026-12-31T00:00:00+1", "expected RFC 3339"),
    ],
)
def test_parse_time_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp/443", ServicePort(Protocol.TCP, PortRange(443, 443))),
        ("udp/8000-8099", ServicePort(Protocol.UDP, PortRange(8000, 8099))),
        ("tcp", ServicePort(Protocol.TCP, ALL_PORTS)),
        ("sctp/0-65535", ServicePort(Protocol.SCTP, ALL_PORTS)),
        ("icmp", ServicePort(Protocol.ICMP)),
        ("icmpv6", ServicePort(Protocol.ICMPV6)),
        ("any", ServicePort(None)),
    ],
)
def test_parse_service_port(text: str, expected: ServicePort) -> None:
    assert parse_service_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp/70000", "out of range"),
        ("tcp/90-80", "reversed port range"),
        ("foo/1", "unknown protocol 'foo'"),
        ("TCP/1", "did you mean 'tcp'"),
        ("icmp/8", "icmp has no ports"),
        ("any/80", "unknown protocol 'any'"),
        ("tcp/", "invalid port ''"),
        ("tcp/-1", "invalid port ''"),
        ("tcp/1-", "invalid port ''"),
        ("tcp/٣", "invalid port"),  # a non-ASCII digit
        ("tcp/1-2-3", "invalid port '2-3'"),
    ],
)
def test_parse_service_port_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=re.escape(message)):
        parse_service_port(text)


def test_parse_cidr() -> None:
    assert parse_cidr("10.0.0.0/8") == ip_network("10.0.0.0/8")
    assert parse_cidr("10.0.0.1") == ip_network("10.0.0.1/32")
    assert parse_cidr("2001:db8::/32") == ip_network("2001:db8::/32")
    with pytest.raises(InvalidValue, match="host bits set"):
        parse_cidr("2001:db8::1/32")
    with pytest.raises(InvalidValue, match="invalid CIDR"):
        parse_cidr("10.0.0.0/8/8")


# ------------------------------------------------------------------------------ robustness

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70000),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "",
            "app",
            "tcp/443",
            "10.0.0.0/8",
            "2026-01-01T00:00:00",
            "all()",
            "app == 'x'",
            "web-1",
            "allow",
            "host",
            "septum.io/kind",
            "(",
            "{",
        ]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "kind",
                    "name",
                    "labels",
                    "spec",
                    "from",
                    "to",
                    "cidr",
                    "ports",
                    "action",
                    "ingress",
                    "egress",
                    "addresses",
                    "address",
                    "tier",
                    "never",
                    "selector",
                    "segment",
                    "members",
                    "order",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(
        [
            "Workload",
            "Network",
            "Service",
            "Segment",
            "Tier",
            "Policy",
            "User",
            "UserGroup",
            "Assertion",
            "Settings",
        ]
    ),
    spec=_values,
    metadata=_values,
)
def test_arbitrary_documents_raise_only_validation_errors(
    kind: str, spec: object, metadata: object
) -> None:
    import yaml

    text = yaml.safe_dump(
        {"apiVersion": "septum/v1", "kind": kind, "metadata": metadata, "spec": spec}
    )
    parsed = parse_yaml(text, "f.yaml")
    try:
        parse_documents(parsed.documents)
    except ValidationError as exc:
        for problem in exc.problems:
            assert problem.line >= 1
            assert problem.column >= 1
