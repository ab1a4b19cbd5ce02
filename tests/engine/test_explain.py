"""The evaluation engine against semantics.md: one test (or case) per rule, each of which
fails when that rule is broken; then properties over random repositories.

Most tests evaluate one side only: the source ``web-1`` is a workload in ``idle`` mode (so it
is attributed, and selectors see its labels, but it is not evaluated) and the destination
``db-1`` is enforced; the flow is web-1 -> db-1 tcp/5432 at T0 unless said otherwise.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.explain import (
    DecidedBy,
    Evaluator,
    Explanation,
    Flow,
    StagedChange,
    TierOutcome,
    Verdict,
    explain,
)
from septum.model.resources import (
    Direction,
    Mode,
    Peer,
    PolicyMode,
    Repository,
    RepositoryDefault,
    Rule,
    Settings,
)
from septum.testing import builders as b
from septum.testing.builders import (
    T0,
    cidr,
    failsafe,
    flow,
    net,
    network,
    policy,
    repo,
    rule,
    segment,
    service,
    tier,
    user,
    users,
    workload,
)

ALLOW, DENY = Verdict.ALLOW, Verdict.DENY
HOUR = timedelta(hours=1)
WEB, DB, OUTSIDE = "198.18.0.1", "198.18.0.2", "203.0.113.7"


def single(
    *objects: object,
    db_mode: Mode = Mode.ENFORCED,
    web_mode: Mode = Mode.IDLE,
    sort: bool = True,
) -> Repository:
    """web-1 (idle by default: not evaluated) and db-1 plus the given objects (kept in the
    given order when ``sort`` is False)."""
    return repo(
        workload("web-1", WEB, app="web", env="prod", mode=web_mode),
        workload("db-1", DB, app="db", env="prod", mode=db_mode, enforcer="h-db"),
        *objects,  # type: ignore[arg-type]
        sort=sort,
    )


def ex(r: Repository, f: Flow | None = None) -> Explanation:
    return Evaluator(r).explain(f if f is not None else flow(WEB, DB, "tcp/5432"))


def two_tiers(first: list[Rule], second: list[Rule] | None = None, **kw: object) -> Repository:
    """Tier ``one`` (order 1) with policy p1 = first; tier ``two`` (order 2) with p2 = second
    (default: allow everything)."""
    return single(
        tier("one", 1),
        tier("two", 2),
        policy("p1", "one", ingress=first),
        policy("p2", "two", ingress=second if second is not None else [rule("allow")]),
        **kw,  # type: ignore[arg-type]
    )


def other(action: str) -> str:
    return "deny" if action == "allow" else "allow"


# ----------------------------------------------------------------------------- step 1: order


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_tiers_walked_in_ascending_order_not_by_name(action: str) -> None:
    r = single(
        tier("z-first", 1),
        tier("a-second", 2),
        policy("p1", "z-first", ingress=[rule(action)]),
        policy("p2", "a-second", ingress=[rule(other(action))]),
    )
    side = ex(r).sides[0]
    assert side.verdict is Verdict(action)
    assert side.tier == "z-first"


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_tier_order_ties_broken_by_name(action: str) -> None:
    r = single(
        tier("b", 5),
        tier("a", 5),
        policy("pb", "b", ingress=[rule(other(action))]),
        policy("pa", "a", ingress=[rule(action)]),
        sort=False,  # the repository's tuple order must not be what breaks the tie
    )
    side = ex(r).sides[0]
    assert side.verdict is Verdict(action)
    assert side.tier == "a"


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_policies_in_ascending_order_within_tier(action: str) -> None:
    r = single(
        tier("t", 1),
        policy("z", "t", order=1, ingress=[rule(action)]),
        policy("a", "t", order=2, ingress=[rule(other(action))]),
    )
    side = ex(r).sides[0]
    assert side.verdict is Verdict(action)
    assert side.rule is not None
    assert side.rule.policy == "z"


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_policy_order_ties_broken_by_name(action: str) -> None:
    r = single(
        tier("t", 1),
        policy("b", "t", order=1, ingress=[rule(other(action))]),
        policy("a", "t", order=1, ingress=[rule(action)]),
        sort=False,
    )
    side = ex(r).sides[0]
    assert side.verdict is Verdict(action)
    assert side.rule is not None
    assert side.rule.policy == "a"


# ---------------------------------------------------------------------- step 2: first match


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_rules_in_written_order(action: str) -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[rule(action), rule(other(action))]))
    side = ex(r).sides[0]
    assert side.verdict is Verdict(action)
    assert side.rule is not None
    assert side.rule.index == 0


def test_no_match_in_one_policy_continues_with_next_policy() -> None:
    r = single(
        tier("t", 1),
        policy("a", "t", order=1, ingress=[rule("deny", ports=["tcp/1"])]),
        policy("b", "t", order=2, ingress=[rule("deny", ports=["udp/5432"]), rule("allow")]),
    )
    side = ex(r).sides[0]
    assert side.verdict is ALLOW
    assert side.rule is not None
    assert (side.rule.policy, side.rule.index) == ("b", 1)


def test_allow_ends_evaluation() -> None:
    e = ex(two_tiers([rule("allow")], [rule("deny")]))
    assert e.verdict is ALLOW
    assert [t.tier for t in e.sides[0].tiers] == ["one"]


def test_deny_ends_evaluation() -> None:
    e = ex(two_tiers([rule("deny")], [rule("allow")]))
    assert e.verdict is DENY
    assert e.sides[0].decided_by is DecidedBy.RULE
    assert [t.tier for t in e.sides[0].tiers] == ["one"]


def test_pass_skips_rest_of_tier_and_goes_to_next() -> None:
    r = single(
        tier("one", 1),
        tier("two", 2),
        policy("p1", "one", order=1, ingress=[rule("pass"), rule("deny")]),
        policy("p1b", "one", order=2, ingress=[rule("deny")]),
        policy("p2", "two", ingress=[rule("allow")]),
    )
    e = ex(r)
    assert e.verdict is ALLOW
    first, second = e.sides[0].tiers
    assert first.outcome is TierOutcome.PASS
    assert (first.policy, first.rule_index) == ("p1", 0)
    assert second.outcome is TierOutcome.ALLOW


def test_log_records_match_and_continues() -> None:
    r = single(
        tier("t", 1),
        policy("a", "t", order=1, ingress=[rule("log", description="audit db")]),
        policy("b", "t", order=2, ingress=[rule("log", ports=["udp/1"]), rule("deny")]),
    )
    e = ex(r)
    assert e.verdict is DENY  # the log did not decide
    side = e.sides[0]
    assert side.rule is not None
    assert side.rule.policy == "b"
    (t,) = side.tiers
    assert [(r.policy, r.index, r.description) for r in t.logs] == [("a", 0, "audit db")]
    assert side.logs == t.logs  # non-matching log rule (udp/1) is not recorded
    assert e.to_json()["causes"][0]["tiers"][0]["logs"][0]["action"] == "log"  # type: ignore[index]


def test_log_matches_recorded_when_tier_default_decides() -> None:
    e = ex(single(tier("t", 1, "pass"), policy("a", "t", ingress=[rule("log")])))
    (t,) = e.sides[0].tiers
    assert t.outcome is TierOutcome.DEFAULT_PASS
    assert len(t.logs) == 1


# ------------------------------------------------------------------- step 3: tier defaults


def test_tier_default_deny_when_policies_applied_but_no_rule_decided() -> None:
    e = ex(two_tiers([rule("allow", cidr("10.0.0.0/8"))]))
    assert e.verdict is DENY
    side = e.sides[0]
    assert side.decided_by is DecidedBy.TIER_DEFAULT
    assert side.tier == "one"
    assert side.tiers[-1].outcome is TierOutcome.DEFAULT_DENY
    assert side.tiers[-1].policies == ("p1",)


def test_tier_default_pass_goes_to_next_tier() -> None:
    r = single(
        tier("one", 1, "pass"),
        tier("two", 2),
        policy("p1", "one", ingress=[rule("deny", cidr("10.0.0.0/8"))]),
        policy("p2", "two", ingress=[rule("allow")]),
    )
    e = ex(r)
    assert e.verdict is ALLOW
    assert [t.outcome for t in e.sides[0].tiers] == [TierOutcome.DEFAULT_PASS, TierOutcome.ALLOW]


def test_tier_skipped_when_no_policy_applies() -> None:
    r = single(
        tier("one", 1),
        tier("two", 2),
        policy("p1", "one", applies_to='app == "other"', ingress=[rule("deny")]),
        policy("p2", "two", ingress=[rule("allow")]),
    )
    e = ex(r)
    assert e.verdict is ALLOW
    first = e.sides[0].tiers[0]
    assert first.outcome is TierOutcome.NO_POLICY
    assert first.outcome.value == "no policy applied"


def test_policy_declaring_empty_direction_applies_and_matches_nothing() -> None:
    e = ex(two_tiers([]))
    assert e.verdict is DENY
    assert e.sides[0].decided_by is DecidedBy.TIER_DEFAULT
    assert e.sides[0].tier == "one"


def test_policy_without_the_direction_does_not_apply() -> None:
    r = single(
        tier("one", 1),
        tier("two", 2),
        policy("p1", "one", egress=[rule("deny")]),  # ingress absent
        policy("p2", "two", ingress=[rule("allow")]),
    )
    e = ex(r)
    assert e.verdict is ALLOW
    assert e.sides[0].tiers[0].outcome is TierOutcome.NO_POLICY


def test_applies_to_absent_applies_to_every_workload() -> None:
    r = single(
        workload("bare-1", "198.18.0.50"),  # no labels of its own
        tier("t", 1),
        policy("everyone", "t", ingress=[rule("deny")]),
    )
    for dst in (DB, "198.18.0.50"):
        side = ex(r, flow(WEB, dst, "tcp/5432")).sides[0]
        assert side.rule is not None
        assert side.rule.policy == "everyone"


def test_applies_to_selects_the_endpoint_by_labels() -> None:
    r = single(
        tier("t", 1),
        policy("to-web", "t", applies_to='app == "web"', ingress=[rule("allow")]),
        policy("to-db", "t", applies_to='app == "db"', ingress=[rule("deny")]),
    )
    side = ex(r).sides[0]
    assert side.rule is not None
    assert side.rule.policy == "to-db"


# -------------------------------------------------------------- step 4: repository default


def test_repository_default_deny() -> None:
    e = ex(single(tier("unused", 1)))
    assert e.verdict is DENY
    assert e.sides[0].decided_by is DecidedBy.REPOSITORY_DEFAULT
    assert [t.outcome for t in e.sides[0].tiers] == [TierOutcome.NO_POLICY]


def test_repository_default_allow() -> None:
    e = ex(single(b.settings("allow")))
    assert e.verdict is ALLOW
    assert e.sides[0].decided_by is DecidedBy.REPOSITORY_DEFAULT


def test_repository_default_allow_does_not_override_tier_default() -> None:
    e = ex(single(b.settings("allow"), tier("t", 1), policy("p", "t", ingress=[])))
    assert e.verdict is DENY
    assert e.sides[0].decided_by is DecidedBy.TIER_DEFAULT


# ------------------------------------------------------------------------- the two sides


@pytest.mark.parametrize(
    ("egress", "ingress", "expected"),
    [
        ("allow", "allow", ALLOW),
        ("allow", "deny", DENY),
        ("deny", "allow", DENY),
        ("deny", "deny", DENY),
    ],
)
def test_every_evaluated_side_must_allow(egress: str, ingress: str, expected: Verdict) -> None:
    r = single(
        tier("t", 1),
        policy("p", "t", egress=[rule(egress)], ingress=[rule(ingress)]),
        web_mode=Mode.ENFORCED,
    )
    e = ex(r)
    assert e.verdict is expected
    assert e.policy_verdict is expected
    assert [s.verdict for s in e.sides] == [Verdict(egress), Verdict(ingress)]


def test_egress_evaluated_at_source_ingress_at_destination() -> None:
    r = single(
        tier("t", 1),
        # would deny if egress were evaluated at the destination or ingress at the source
        policy("trap", "t", order=1, applies_to='app == "db"', egress=[rule("deny")]),
        policy("trap2", "t", order=1, applies_to='app == "web"', ingress=[rule("deny")]),
        policy("ok", "t", order=2, egress=[rule("allow")], ingress=[rule("allow")]),
        web_mode=Mode.ENFORCED,
    )
    e = ex(r)
    assert e.verdict is ALLOW
    assert [(s.direction, s.workload) for s in e.sides] == [
        (Direction.EGRESS, "web-1"),
        (Direction.INGRESS, "db-1"),
    ]


def test_workload_talking_to_itself_is_allowed() -> None:
    r = repo(
        workload("db-1", DB, "2001:db8::2", app="db"),
        tier("t", 1),
        policy("p", "t", ingress=[rule("deny")], egress=[rule("deny")]),
    )
    for src, dst in ((DB, DB), (DB, "2001:db8::2")):
        e = ex(r, flow(src, dst))
        assert e.verdict is ALLOW
        assert e.self_traffic
        assert e.sides == ()
        assert e.summary().startswith("allow: self traffic")


@pytest.mark.parametrize("remote", [OUTSIDE, "198.19.0.1", "203.0.113.9"])
def test_unmanaged_side_not_evaluated(remote: str) -> None:
    # unknown, user session, network address: never an evaluated side
    r = single(
        network("partners", "203.0.113.0/24"),
        user("alice", (("198.19.0.1"), None, None)),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow")], egress=[rule("allow")]),
    )
    e_in = ex(r, flow(remote, DB))
    assert [s.direction for s in e_in.sides] == [Direction.INGRESS]
    e_out = ex(r, flow(DB, remote))
    assert [s.direction for s in e_out.sides] == [Direction.EGRESS]
    assert e_in.verdict is ALLOW
    assert e_out.verdict is ALLOW


def test_idle_workload_not_evaluated() -> None:
    e = ex(single(db_mode=Mode.IDLE))  # both idle, repository default deny
    assert e.verdict is ALLOW
    assert e.sides == ()
    assert not e.would_be_denied


# ----------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", [Mode.VISIBILITY, Mode.TEST])
def test_visibility_and_test_report_would_be_denied_but_allow(mode: Mode) -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[rule("deny")]), db_mode=mode)
    e = ex(r)
    assert e.verdict is ALLOW
    assert e.policy_verdict is DENY
    assert e.would_be_denied
    assert e.sides[0].verdict is DENY
    assert not e.sides[0].enforced
    assert e.summary().startswith("allow (would be denied: ingress at db-1")


def test_enforced_mode_enforces_default_deny() -> None:
    e = ex(single())
    assert e.verdict is DENY
    assert e.sides[0].enforced
    assert not e.would_be_denied


@pytest.mark.parametrize(
    ("objects", "expected", "decided_by"),
    [
        ([tier("t", 1), policy("p", "t", ingress=[rule("deny")])], DENY, DecidedBy.RULE),
        ([tier("t", 1), policy("p", "t", ingress=[])], ALLOW, DecidedBy.TIER_DEFAULT),
        ([], ALLOW, DecidedBy.REPOSITORY_DEFAULT),
    ],
)
def test_selective_enforces_explicit_deny_only(
    objects: list[object], expected: Verdict, decided_by: DecidedBy
) -> None:
    e = ex(single(*objects, db_mode=Mode.SELECTIVE))
    assert e.policy_verdict is DENY
    assert e.verdict is expected
    assert e.sides[0].decided_by is decided_by
    assert e.would_be_denied is (expected is ALLOW)


def test_enforced_deny_on_one_side_wins_over_unenforced_deny_on_other() -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[], egress=[]), web_mode=Mode.VISIBILITY)
    e = ex(r)
    assert e.verdict is DENY
    assert not e.would_be_denied
    assert [s.enforced for s in e.sides] == [False, True]


def test_unenforced_deny_with_other_side_allowing() -> None:
    r = single(
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow")], egress=[]),
        web_mode=Mode.VISIBILITY,
    )
    e = ex(r)
    assert e.verdict is ALLOW
    assert e.policy_verdict is DENY
    assert e.would_be_denied


# ---------------------------------------------------------------------------------- staged


def test_staged_policy_excluded_from_enforcement_reported_would_be_denied() -> None:
    r = single(
        tier("one", 1),
        tier("two", 2),
        policy("new-deny", "one", mode=PolicyMode.STAGED, ingress=[rule("deny")]),
        policy("p2", "two", ingress=[rule("allow")]),
    )
    e = ex(r)
    assert e.verdict is ALLOW
    assert e.policy_verdict is ALLOW
    assert e.sides[0].tiers[0].outcome is TierOutcome.NO_POLICY
    assert e.staged_verdict is DENY
    change: str | None = e.staged_change
    assert change == "would be denied"
    assert e.staged_change is StagedChange.WOULD_BE_DENIED
    staged = e.staged_sides[0]
    assert staged.rule is not None
    assert staged.rule.policy == "new-deny"
    assert e.to_json()["staged"] == {
        "verdict": "deny",
        "change": "would be denied",
        "causes": [staged.to_json()],
    }


def test_staged_policy_reported_would_be_allowed() -> None:
    r = single(
        tier("t", 1), policy("new-allow", "t", mode=PolicyMode.STAGED, ingress=[rule("allow")])
    )
    e = ex(r)
    assert e.verdict is DENY
    assert e.staged_verdict is ALLOW
    assert e.staged_change is StagedChange.WOULD_BE_ALLOWED


def test_staged_empty_policy_would_make_tier_default_apply() -> None:
    r = two_tiers([rule("deny", cidr("10.0.0.0/8"))])
    r2 = single(
        tier("one", 1),
        tier("two", 2),
        policy("staged-empty", "one", mode=PolicyMode.STAGED, ingress=[]),
        policy("p2", "two", ingress=[rule("allow")]),
    )
    assert ex(r).verdict is DENY  # sanity: an applying policy makes tier one default-deny
    e = ex(r2)
    assert e.verdict is ALLOW
    assert e.staged_change is StagedChange.WOULD_BE_DENIED
    assert e.staged_sides[0].decided_by is DecidedBy.TIER_DEFAULT


def test_no_staged_change_without_difference() -> None:
    r = single(tier("t", 1), policy("s", "t", mode=PolicyMode.STAGED, ingress=[rule("deny")]))
    e = ex(r)
    assert e.verdict is DENY
    assert e.staged_verdict is DENY
    assert e.staged_change is None


# ---------------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(
    ("expires", "alive"),
    [(T0 - HOUR, False), (T0, False), (T0 + timedelta(seconds=1), True), (None, True)],
)
def test_expired_rule_does_not_exist(expires: object, alive: bool) -> None:
    r = single(tier("t", 1, "pass"), policy("p", "t", ingress=[rule("allow", expires=expires)]))  # type: ignore[arg-type]
    e = ex(r)
    assert e.verdict is (ALLOW if alive else DENY)
    assert e.sides[0].decided_by is (DecidedBy.RULE if alive else DecidedBy.REPOSITORY_DEFAULT)


# ------------------------------------------------------------------------------------ peers


def peer_repo(p: Peer | str, **settings_kw: object) -> Repository:
    return single(
        network("partners", "203.0.113.0/24", excepts=["203.0.113.128/25"], zone="partner"),
        network("wide", "203.0.0.0/8", zone="wide"),
        network("lab", "198.18.0.0/16", zone="lab"),
        user("alice", ("198.19.0.1", T0 - HOUR, T0 + HOUR), role="dba"),
        workload("dba-box", "198.18.0.60", role="dba", mode=Mode.IDLE),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow", p)]),
        Settings(**settings_kw),  # type: ignore[arg-type]
    )


def allowed_from(p: Peer | str, src: str, when: object = T0, **settings_kw: object) -> bool:
    e = ex(peer_repo(p, **settings_kw), flow(src, DB, "tcp/5432", when))  # type: ignore[arg-type]
    return e.verdict is ALLOW


@pytest.mark.parametrize(
    ("src", "expected"),
    [(OUTSIDE, True), ("192.0.2.1", False), (WEB, True), ("198.19.0.1", True)],
)
def test_cidr_peer_matches_any_address_in_it(src: str, expected: bool) -> None:
    p = cidr("203.0.113.0/24") if src in (OUTSIDE, "192.0.2.1") else cidr("198.0.0.0/8")
    assert allowed_from(p, src) is expected


@pytest.mark.parametrize(
    ("src", "expected"),
    [(WEB, False), ("198.18.0.99", True), ("198.19.0.1", True)],  # workload, network, user
)
def test_cidr_peer_skips_workloads_when_cidr_matches_workloads_false(
    src: str, expected: bool
) -> None:
    p = cidr("198.16.0.0/12")
    assert allowed_from(p, src, cidr_matches_workloads=False) is expected
    assert allowed_from(p, src, cidr_matches_workloads=True)


@pytest.mark.parametrize(
    ("src", "peer", "expected"),
    [
        (OUTSIDE, "partners", True),  # in partners (and wide)
        (OUTSIDE, "wide", True),  # every containing network is attributed
        ("203.0.113.200", "partners", False),  # in partners' except
        ("203.0.113.200", "wide", True),
        (OUTSIDE, "lab", False),  # another network
        (WEB, "lab", False),  # held by a workload inside the range
        ("198.18.0.99", "lab", True),
        ("192.0.2.1", "partners", False),  # unknown
    ],
)
def test_network_peer(src: str, peer: str, expected: bool) -> None:
    assert allowed_from(net(peer), src) is expected


def test_network_peer_does_not_match_user_session_in_its_range() -> None:
    r = single(
        network("lab", "198.16.0.0/12"),
        user("alice", ("198.19.0.1", None, None)),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow", net("lab"))]),
    )
    assert ex(r, flow("198.19.0.1", DB)).verdict is DENY
    assert ex(r, flow("198.19.0.2", DB)).verdict is ALLOW


@pytest.mark.parametrize(
    ("src", "selector", "expected"),
    [
        (OUTSIDE, 'zone == "partner"', True),
        (OUTSIDE, 'zone == "wide"', True),  # any of the containing networks
        (OUTSIDE, 'septum.io/name == "partners"', True),
        (OUTSIDE, 'septum.io/kind == "network"', True),
        (OUTSIDE, 'zone == "lab"', False),
        (WEB, 'app == "web"', True),
        (WEB, 'app == "db"', False),
        ("198.19.0.1", 'role == "dba"', False),  # selector peers do not select users
        ("198.18.0.60", 'role == "dba"', True),  # ...but do select workloads
        ("192.0.2.1", "!has(app)", False),  # unknown has no labels to select
        ("192.0.2.1", 'app != "web"', False),
    ],
)
def test_selector_peer_matches_workloads_and_networks(
    src: str, selector: str, expected: bool
) -> None:
    assert allowed_from(selector, src) is expected


def test_segment_peer_uses_segment_selector() -> None:
    assert allowed_from(segment("webs", 'app == "web"'), WEB)
    assert not allowed_from(segment("dbs", 'app == "db"'), WEB)
    assert allowed_from(segment("partners", 'zone == "partner"'), OUTSIDE)


@pytest.mark.parametrize("src", [WEB, OUTSIDE, "198.19.0.1", "192.0.2.1"])
def test_all_matches_every_remote(src: str) -> None:
    assert allowed_from("all()", src)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (cidr("192.0.2.0/24"), True),
        ("all()", True),
        ("!has(app)", False),
        (net("partners"), False),
        (users("all()"), False),
        (segment("s", "!has(x)"), False),
    ],
)
def test_unknown_address_matches_only_cidr_and_all(peer: Peer | str, expected: bool) -> None:
    e = ex(peer_repo(peer), flow("192.0.2.1", DB, "tcp/5432"))
    assert e.source.kind.value == "unknown"
    assert (e.verdict is ALLOW) is expected


@pytest.mark.parametrize(
    ("src", "peer", "when", "expected"),
    [
        ("198.19.0.1", users('role == "dba"'), T0, True),
        ("198.19.0.1", users('role == "dba"'), T0 - HOUR, True),  # session start inclusive
        ("198.19.0.1", users('role == "dba"'), T0 + HOUR, False),  # session ended
        ("198.19.0.1", users('role == "dba"'), T0 - 2 * HOUR, False),  # not yet
        ("198.19.0.1", users('role == "dev"'), T0, False),
        ("198.19.0.1", users("all()"), T0, True),
        ("198.19.0.1", users('septum.io/name == "alice"'), T0, True),
        ("198.18.0.60", users('role == "dba"'), T0, False),  # a workload is not a user
        (OUTSIDE, users("all()"), T0, False),  # nor a network
    ],
)
def test_users_peer_matches_session_holders_at_flow_time(
    src: str, peer: Peer, when: object, expected: bool
) -> None:
    assert allowed_from(peer, src, when) is expected


def test_peers_are_a_union_and_empty_means_any() -> None:
    assert allowed_from(cidr("10.0.0.0/8"), WEB) is False
    r = single(
        tier("t", 1), policy("p", "t", ingress=[rule("allow", cidr("10.0.0.0/8"), 'app == "web"')])
    )
    assert ex(r).verdict is ALLOW
    r = single(tier("t", 1), policy("p", "t", ingress=[rule("allow")]))
    assert ex(r, flow("192.0.2.1", DB)).verdict is ALLOW


def test_address_validity_times_decide_the_workload() -> None:
    r = single(
        workload("web-2", ("198.18.0.5", None, T0), app="web", mode=Mode.IDLE),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow", 'app == "web"')]),
    )
    assert ex(r, flow("198.18.0.5", DB, "tcp/1", T0 - HOUR)).verdict is ALLOW
    e = ex(r, flow("198.18.0.5", DB, "tcp/1", T0))  # until is exclusive: unknown now
    assert e.source.kind.value == "unknown"
    assert e.verdict is DENY
    # a destination address not yet valid: nothing to evaluate
    r2 = repo(workload("db-9", ("198.18.0.9", T0 + HOUR, None)))
    assert ex(r2, flow(OUTSIDE, "198.18.0.9")).sides == ()
    assert len(ex(r2, flow(OUTSIDE, "198.18.0.9", "tcp/1", T0 + HOUR)).sides) == 1


# --------------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    ("ports", "svc", "expected"),
    [
        (["tcp/5432"], "tcp/5432", True),
        (["tcp/5432"], "tcp/5433", False),
        (["tcp/5432"], "udp/5432", False),
        (["tcp/8000-8099"], "tcp/8000", True),
        (["tcp/8000-8099"], "tcp/8099", True),
        (["tcp/8000-8099"], "tcp/8100", False),
        (["tcp"], "tcp/1", True),
        (["udp/53", "tcp/443"], "tcp/443", True),
        (["udp/53", "tcp/443"], "udp/53", True),
        (["udp/53", "tcp/443"], "udp/443", False),
        (["icmp"], "icmp", True),
        (["icmp"], "icmpv6", False),
        (["icmp"], "tcp/1", False),
        (["icmpv6"], "icmpv6", True),
        (["sctp/9000"], "sctp/9000", True),
        (["any"], "udp/53", True),
        (["any"], "icmp", True),
        ([], "sctp/1", True),
    ],
)
def test_services_protocol_ports(ports: list[str], svc: str, expected: bool) -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[rule("allow", ports=ports)]))
    assert (ex(r, flow(WEB, DB, svc)).verdict is ALLOW) is expected


def test_named_services_union_with_inline_ports() -> None:
    pg = service("postgres", "tcp/5432")
    r = single(
        pg, tier("t", 1), policy("p", "t", ingress=[rule("allow", services=[pg], ports=["udp/53"])])
    )
    assert ex(r, flow(WEB, DB, "tcp/5432")).verdict is ALLOW
    assert ex(r, flow(WEB, DB, "udp/53")).verdict is ALLOW
    assert ex(r, flow(WEB, DB, "tcp/443")).verdict is DENY


# --------------------------------------------------------------------------------- failsafe


def failsafe_repo(*entries: object) -> Repository:
    return single(
        tier("t", 1),
        policy("deny-all", "t", ingress=[rule("deny")], egress=[rule("deny")]),
        b.settings(failsafe=entries),  # type: ignore[arg-type]
        web_mode=Mode.ENFORCED,
    )


def test_failsafe_beats_explicit_deny() -> None:
    e = ex(
        failsafe_repo(
            failsafe("ingress", "tcp/22", cidrs=["198.18.0.0/24"]), failsafe("egress", "tcp/22")
        ),
        flow(WEB, DB, "tcp/22"),
    )
    assert e.verdict is ALLOW
    assert [(s.decided_by, s.failsafe_index) for s in e.sides] == [
        (DecidedBy.FAILSAFE, 1),
        (DecidedBy.FAILSAFE, 0),
    ]
    assert e.sides[0].tiers == ()


@pytest.mark.parametrize(
    ("entry", "svc", "egress_ok", "ingress_ok"),
    [
        (failsafe(None, "tcp/22"), "tcp/22", True, True),  # no direction: both
        (failsafe(None, "tcp/22"), "tcp/23", False, False),  # service must match
        (failsafe("ingress", "tcp/22"), "tcp/22", False, True),
        (failsafe("egress", "tcp/22"), "tcp/22", True, False),
        (failsafe(None, "tcp/22", cidrs=["198.18.0.2/32"]), "tcp/22", True, False),  # remote
        (failsafe(None, "any", cidrs=["198.18.0.1/32"]), "udp/9", False, True),
    ],
)
def test_failsafe_direction_services_and_remote_cidrs(
    entry: object, svc: str, egress_ok: bool, ingress_ok: bool
) -> None:
    e = ex(failsafe_repo(entry), flow(WEB, DB, svc))
    assert [s.verdict is ALLOW for s in e.sides] == [egress_ok, ingress_ok]


# ----------------------------------------------------------------------------------- causes


def causes_repo() -> Repository:
    return single(
        tier("baseline", 0, "pass", owners=["netops"]),
        tier("security", 10, owners=["secops", "ciso"]),
        policy("observe", "baseline", ingress=[rule("log", description="watch")]),
        policy(
            "dev-prod-isolation",
            "security",
            applies_to='env == "prod"',
            ingress=[
                rule("allow", 'app == "lb"'),
                rule("deny", 'app == "web"', description="web may not reach db"),
            ],
        ),
    )


def test_causes_name_tier_policy_rule_and_owners() -> None:
    e = ex(causes_repo())
    assert e.verdict is DENY
    (side,) = e.sides
    assert (side.direction, side.workload, side.mode) == (Direction.INGRESS, "db-1", Mode.ENFORCED)
    assert side.decided_by is DecidedBy.RULE
    assert side.enforced
    assert side.tier == "security"
    assert side.owners == ("secops", "ciso")
    assert side.rule is not None
    assert (side.rule.policy, side.rule.index, side.rule.description) == (
        "dev-prod-isolation",
        1,
        "web may not reach db",
    )
    baseline, security = side.tiers
    assert (baseline.tier, baseline.owners, baseline.outcome) == (
        "baseline",
        ("netops",),
        TierOutcome.DEFAULT_PASS,
    )
    assert baseline.logs[0].description == "watch"
    assert (security.outcome, security.policy, security.rule_index) == (
        TierOutcome.DENY,
        "dev-prod-isolation",
        1,
    )
    assert security.rule_description == "web may not reach db"
    assert e.source.workload is not None
    assert e.source.workload.name == "web-1"
    assert e.destination.kind.value == "workload"
    assert (
        e.summary() == "deny: ingress at db-1 by tier security, policy dev-prod-isolation, rule 1"
    )


def test_to_json_shape() -> None:
    data = ex(causes_repo()).to_json()
    json.dumps(data)  # JSON-ready
    assert data["verdict"] == "deny"
    assert data["policy_verdict"] == "deny"
    assert data["would_be_denied"] is False
    assert data["staged"] == {"verdict": "deny", "change": None, "causes": data["causes"]}
    assert data["source"] == {
        "address": WEB,
        "kind": "workload",
        "workload": "web-1",
        "mode": "idle",
        "enforcer": None,
    }
    assert data["flow"] == {
        "source": WEB,
        "destination": DB,
        "protocol": "tcp",
        "port": 5432,
        "at": "2026-11-01T12:00:00+00:00",
    }
    causes = data["causes"]
    assert isinstance(causes, list)
    (cause,) = causes
    assert cause["direction"] == "ingress"
    assert cause["workload"] == "db-1"
    assert cause["decided_by"] == "rule"
    assert cause["tier"] == "security"
    assert cause["owners"] == ["secops", "ciso"]
    assert cause["policy"] == "dev-prod-isolation"
    assert cause["rule_index"] == 1
    assert [t["outcome"] for t in cause["tiers"]] == ["default pass", "deny"]


def test_summaries() -> None:
    e = ex(single(b.settings("allow"), web_mode=Mode.ENFORCED))
    assert e.summary() == (
        "allow: egress at web-1 by repository default; ingress at db-1 by repository default"
    )
    assert ex(single(db_mode=Mode.IDLE)).summary() == "allow: no managed workload on either side"
    e = ex(single(tier("t", 1), policy("p", "t", ingress=[])))
    assert e.summary() == "deny: ingress at db-1 by default of tier t"


def test_module_level_explain_matches_evaluator() -> None:
    r = causes_repo()
    f = flow(WEB, DB, "tcp/5432")
    assert explain(r, f) == Evaluator(r).explain(f)


def test_evaluator_is_deterministic_across_calls() -> None:
    ev = Evaluator(causes_repo())
    f = flow(WEB, DB, "tcp/5432")
    assert ev.explain(f) == ev.explain(f)
    assert ev.verdict(f) is DENY


def test_reused_evaluator_sees_rule_expiry() -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[rule("allow", expires=T0)]))
    ev = Evaluator(r)
    assert ev.explain(flow(WEB, DB, "tcp/1", T0 - HOUR)).verdict is ALLOW
    assert ev.explain(flow(WEB, DB, "tcp/1", T0)).verdict is DENY
    assert ev.explain(flow(WEB, DB, "tcp/1", T0 - HOUR)).verdict is ALLOW


def test_reused_evaluator_sees_who_holds_the_remote_address() -> None:
    r = single(
        workload("web-2", ("198.18.0.5", None, T0), app="web", mode=Mode.IDLE),
        user("alice", ("198.18.0.5", T0, None), role="dba"),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow", users('role == "dba"'))]),
    )
    ev = Evaluator(r)
    assert ev.explain(flow("198.18.0.5", DB, "tcp/1", T0 - HOUR)).verdict is DENY
    assert ev.explain(flow("198.18.0.5", DB, "tcp/1", T0)).verdict is ALLOW
    assert ev.explain(flow("198.18.0.5", DB, "tcp/1", T0 - HOUR)).verdict is DENY


def test_reused_evaluator_sees_address_moving_between_workloads() -> None:
    r = single(
        workload("web-2", ("198.18.0.5", None, T0), app="web", mode=Mode.IDLE),
        workload("lb-2", ("198.18.0.5", T0, None), app="lb", mode=Mode.IDLE),
        tier("t", 1),
        policy("p", "t", ingress=[rule("allow", 'app == "web"')]),
    )
    ev = Evaluator(r)
    assert ev.explain(flow("198.18.0.5", DB, "tcp/1", T0 - HOUR)).verdict is ALLOW
    assert ev.explain(flow("198.18.0.5", DB, "tcp/1", T0)).verdict is DENY


def test_reused_evaluator_sees_port_and_protocol() -> None:
    r = single(tier("t", 1), policy("p", "t", ingress=[rule("allow", ports=["tcp/443"])]))
    ev = Evaluator(r)
    assert ev.explain(flow(WEB, DB, "tcp/443")).verdict is ALLOW
    assert ev.explain(flow(WEB, DB, "tcp/444")).verdict is DENY
    assert ev.explain(flow(WEB, DB, "udp/443")).verdict is DENY
    assert ev.explain(flow(WEB, DB, "tcp/443")).verdict is ALLOW


def test_evaluator_orders_tiers_by_order_then_name() -> None:
    ev = Evaluator(repo(tier("b", 1), tier("a", 1), tier("c", 0)))
    assert [t.name for t in ev.tiers] == ["c", "a", "b"]


# ------------------------------------------------------------------------------ properties

_ADDRS = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"]
_REMOTES = [*_ADDRS, "203.0.113.5", "198.19.0.1", "192.0.2.1"]
_PEERS: list[Peer | str] = [
    'app == "web"',
    'env == "prod"',
    "all()",
    'zone == "ext"',
    cidr("198.18.0.0/30"),
    cidr("203.0.113.0/24"),
    net("ext"),
    users('role == "dba"'),
]
_rules = st.lists(
    st.builds(
        lambda action, peers, ports: rule(action, *peers, ports=ports),
        st.sampled_from(["allow", "deny", "pass", "log"]),
        st.lists(st.sampled_from(_PEERS), max_size=2),
        st.sampled_from([[], ["tcp/443"], ["udp/53"], ["tcp/1-1000"]]),
    ),
    max_size=3,
)


@st.composite
def _objects(draw: st.DrawFn) -> list[object]:
    objs: list[object] = [
        network("ext", "203.0.113.0/24", zone="ext"),
        user("alice", ("198.19.0.1", None, None), role="dba"),
        Settings(
            default_action=draw(st.sampled_from(list(RepositoryDefault))),
            cidr_matches_workloads=draw(st.booleans()),
        ),
    ]
    for i, addr in enumerate(_ADDRS[: draw(st.integers(1, len(_ADDRS)))]):
        objs.append(
            workload(
                f"w{i}",
                addr,
                mode=draw(st.sampled_from(list(Mode))),
                app=draw(st.sampled_from(["web", "db"])),
                env=draw(st.sampled_from(["prod", "dev"])),
            )
        )
    tiers = [
        tier(f"t{i}", draw(st.integers(0, 2)), draw(st.sampled_from(["deny", "pass"])))
        for i in range(draw(st.integers(0, 3)))
    ]
    objs.extend(tiers)
    if tiers:
        for i in range(draw(st.integers(0, 5))):
            objs.append(
                policy(
                    f"p{i}",
                    draw(st.sampled_from(tiers)).name,
                    order=draw(st.integers(0, 2)),
                    applies_to=draw(st.sampled_from([None, 'app == "web"', 'env == "dev"'])),
                    ingress=draw(st.none() | _rules),
                    egress=draw(st.none() | _rules),
                    mode=draw(st.sampled_from(list(PolicyMode))),
                )
            )
    return objs


_flows = st.builds(
    lambda s, d, svc: flow(s, d, svc),
    st.sampled_from(_REMOTES),
    st.sampled_from(_REMOTES),
    st.sampled_from(["tcp/443", "udp/53", "tcp/22", "icmp"]),
)


@settings(max_examples=150, deadline=None)
@given(_objects(), st.lists(_flows, min_size=1, max_size=5))
def test_order_of_repository_tuples_never_changes_an_explanation(
    objects: list[object], flows: list[Flow]
) -> None:
    forward = Evaluator(repo(*objects))  # type: ignore[arg-type]
    backward = Evaluator(repo(*reversed(objects), sort=False))  # type: ignore[arg-type]
    for f in flows:
        a, z = forward.explain(f), backward.explain(f)
        assert a.to_json() == z.to_json()
        # consistency of the verdict fields
        if a.verdict is DENY:
            assert a.policy_verdict is DENY
            assert not a.would_be_denied
        assert a.would_be_denied == (a.verdict is ALLOW and a.policy_verdict is DENY)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(list(Mode)), min_size=1, max_size=4),
    st.lists(_flows, min_size=1, max_size=5),
    st.lists(st.tuples(st.sampled_from(["deny", "pass"]), st.integers(0, 3)), max_size=3),
)
def test_default_allow_without_policies_allows_everything(
    modes: list[Mode], flows: list[Flow], tier_specs: list[tuple[str, int]]
) -> None:
    r = repo(
        *[workload(f"w{i}", _ADDRS[i], mode=m) for i, m in enumerate(modes)],
        *[tier(f"t{i}", order, default) for i, (default, order) in enumerate(tier_specs)],
        b.settings("allow"),
    )
    ev = Evaluator(r)
    for f in flows:
        e = ev.explain(f)
        assert e.verdict is ALLOW
        assert e.policy_verdict is ALLOW
        assert not e.would_be_denied
        assert e.staged_change is None


_TIMES = [T0 - 2 * HOUR, T0 - HOUR, T0, T0 + HOUR, T0 + 2 * HOUR]


@st.composite
def _timed_objects(draw: st.DrawFn) -> list[object]:
    """Repositories where time matters: address validity, sessions, rule expiry."""

    def window() -> tuple[datetime | None, datetime | None]:
        start = draw(st.none() | st.sampled_from(_TIMES))
        end = draw(st.none() | st.sampled_from(_TIMES))
        return start, end

    objs: list[object] = [
        network("ext", "203.0.113.0/24", "198.18.0.0/24", zone="ext"),
        user("alice", ("198.19.0.1", *window()), ("198.18.0.3", *window()), role="dba"),
        workload("w0", ("198.18.0.1", *window()), app="web"),
        workload("w1", "198.18.0.2", ("198.18.0.3", *window()), app="db"),
        tier("t", 1, draw(st.sampled_from(["deny", "pass"]))),
        b.settings(draw(st.sampled_from(["deny", "allow"]))),
    ]
    timed_rules = st.lists(
        st.builds(
            lambda action, peers, expires: rule(action, *peers, expires=expires),
            st.sampled_from(["allow", "deny", "pass", "log"]),
            st.lists(st.sampled_from(_PEERS), max_size=2),
            st.none() | st.sampled_from(_TIMES),
        ),
        max_size=4,
    )
    for i in range(draw(st.integers(0, 3))):
        objs.append(
            policy(
                f"p{i}",
                "t",
                order=draw(st.integers(0, 1)),
                ingress=draw(st.none() | timed_rules),
                egress=draw(st.none() | timed_rules),
                mode=draw(st.sampled_from(list(PolicyMode))),
            )
        )
    return objs


@settings(max_examples=150, deadline=None)
@given(
    _timed_objects(),
    st.lists(
        st.builds(
            lambda s, d, svc, when: flow(s, d, svc, when),
            st.sampled_from(["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.19.0.1"]),
            st.sampled_from(["198.18.0.1", "198.18.0.2", "198.18.0.3", "203.0.113.5"]),
            st.sampled_from(["tcp/443", "udp/53"]),
            st.sampled_from([*_TIMES, T0 + timedelta(minutes=30)]),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_reused_evaluator_equals_fresh_one_across_times(
    objects: list[object], flows: list[Flow]
) -> None:
    r = repo(*objects)  # type: ignore[arg-type]
    shared = Evaluator(r)
    for f in flows + flows:  # second round hits every cache
        assert shared.explain(f) == Evaluator(r).explain(f)
