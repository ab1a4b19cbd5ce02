"""Septum → Kubernetes → Septum: every rendering, imported back by our own importer (which
passes the netpol-analyzer conformance cases), allows what the repository allows, or differs
only where a limitation reaching the pair announced it (``septum render --verify``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import EXAMPLES, EXAMPLES_AT
from typer.testing import CliRunner

from septum.cli.main import app
from septum.model.resources import (
    Mode,
    PeerKind,
    Policy,
    PolicyMode,
    Repository,
    Segment,
    Tier,
    TierDefault,
)
from septum.render.manifests import Approximation, Limitation
from septum.render.platforms import Verification, render_target, verify_rendering
from septum.render.validate import validate_manifests
from septum.sources.files import load_repository
from septum.testing.builders import T0, policy, repo, rule, tier, workload
from septum.testing.builders import settings as repo_settings
from septum.testing.strategies import repositories, rules, selectors

_EXAMPLES = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check(r: Repository, *, validate: bool = True) -> Verification:
    rendering = render_target(r, "k8s", T0, inventory=True)
    if validate:
        assert validate_manifests(rendering.manifests) == []
    return verify_rendering(r, rendering, T0)


def _workload_pairs(check: Verification) -> list[str]:
    return [line for line in check.diff.lines() if "[External]" not in line]


def _names_an_end(x: Limitation, line: str) -> bool:
    ends = line[2:].split(" : ")[0].split(" => ")
    named = {*x.workloads, x.source.removeprefix("workload/")}
    return any(end.partition("@")[0] in named for end in ends)


@_EXAMPLES
@given(repositories())
def test_random_repositories_round_trip_or_say_where_they_differ(r: Repository) -> None:
    # (validity of these renderings: test_kubernetes_render's own property test)
    check = _check(r, validate=False)
    assert check.unexplained_changes() == [], check.diff.lines()
    assert check.passed


@st.composite
def _tiered(draw: st.DrawFn) -> Repository:
    """Like ``repositories()``, but with two or three tiers of enforced policies and mostly
    enforced workloads: passes followed by more tiers are the rule, not the exception."""
    base = draw(repositories())
    workloads = tuple(
        w if draw(st.integers(0, 3)) == 0 else replace(w, mode=Mode.ENFORCED)
        for w in base.workloads
    )
    tiers = tuple(
        Tier(f"t{i}", i, draw(st.sampled_from(tuple(TierDefault))))
        for i in range(draw(st.integers(2, 3)))
    )
    network_names = tuple(n.name for n in base.networks)
    direction_rules = st.one_of(st.none(), rules(network_names))
    policies = tuple(
        Policy(
            name=f"p{i}",
            tier=draw(st.sampled_from(tiers)).name,
            order=draw(st.integers(0, 2)),
            applies_to=draw(selectors()),
            mode=PolicyMode.ENFORCE,
            ingress=draw(direction_rules),
            egress=draw(direction_rules),
        )
        for i in range(draw(st.integers(2, 6)))
    )
    segments = {
        peer.ref: Segment(peer.ref, peer.selector)
        for p in policies
        for rs in (p.ingress, p.egress)
        for x in rs or ()
        for peer in x.peers
        if peer.kind is PeerKind.SEGMENT and peer.ref is not None and peer.selector is not None
    }
    return replace(
        base,
        workloads=workloads,
        tiers=tiers,
        policies=policies,
        segments=tuple(segments[k] for k in sorted(segments)),
    )


@settings(_EXAMPLES, max_examples=60)
@given(_tiered())
def test_passes_across_tiers_round_trip_exactly_between_workloads(r: Repository) -> None:
    """Tier order, first match, pass and tier defaults are rendered exactly: a workload pair
    may differ only through an address-level limitation naming one of its ends (a pod peer
    standing for some of a workload's addresses, a pod with fewer addresses)."""
    check = _check(r)
    assert check.passed, check.summary()
    for line in _workload_pairs(check):
        assert any(_names_an_end(x, line) for x in check.limitations), line


def test_pass_goes_to_the_next_tier_not_past_every_admin_network_policy() -> None:
    """The security tier passes everything; the app tier (an ANP tier: it has a deny) must
    still decide. A Kubernetes Pass would jump to NetworkPolicy and skip it."""
    r = repo(
        tier("security", 10),
        tier("apps", 20),
        tier("last", 30),
        workload("web", "198.18.0.1", app="web"),
        workload("db", "198.18.0.2", app="db"),
        workload("cache", "198.18.0.3", app="cache"),
        policy("quarantine", "security", ingress=[rule("deny", "has(quarantine)")]),
        policy("hand-off", "security", order=1000, ingress=[rule("pass")], egress=[rule("pass")]),
        policy(
            "db",
            "apps",
            applies_to='app == "db"',
            ingress=[rule("deny", 'app == "cache"'), rule("allow", 'app == "web"')],
        ),
        policy("rest", "last", egress=[rule("allow")], ingress=[rule("allow", 'app == "db"')]),
    )
    rendering = render_target(r, "k8s", T0, inventory=True)
    actions = {
        x["action"]
        for m in rendering.manifests
        if m["kind"] == "AdminNetworkPolicy"
        for d in ("ingress", "egress")
        for x in m["spec"].get(d, [])
    }
    assert "Pass" not in actions
    check = verify_rendering(r, rendering, T0)
    assert check.diff.empty, check.diff.lines()


def test_pass_of_some_subjects_splits_later_policies_into_cells() -> None:
    """A pass whose policy applies to only some subjects of a later policy of its tier: the
    later policy is rendered per cell (inside the pass's subjects: cut; outside: whole).
    b => a1 on tcp/80 is passed by ``pci`` (a1 only) and then denied by ``apps``."""
    r = repo(
        tier("security", 10),
        tier("apps", 20, "pass"),
        workload("a1", "198.18.0.1", app="a", pci="yes"),
        workload("a2", "198.18.0.2", app="a"),
        workload("b", "198.18.0.3", app="b"),
        workload("c", "198.18.0.4", app="c"),
        policy(
            "pci",
            "security",
            order=1,
            applies_to="has(pci)",
            ingress=[rule("pass", 'app == "b"', ports=["tcp/80"])],
        ),
        policy(
            "guard",
            "security",
            order=2,
            applies_to='app == "a"',
            ingress=[rule("deny", 'app in {"b", "c"}'), rule("allow")],
        ),
        policy(
            "apps",
            "apps",
            applies_to='app == "a"',
            ingress=[rule("deny", 'app == "b"', ports=["tcp/80-81"]), rule("allow")],
        ),
        repo_settings("allow"),
    )
    check = _check(r)
    assert _workload_pairs(check) == []  # (ANP ingress cannot allow external sources)
    assert check.passed


def test_examples_round_trip_between_workloads() -> None:
    model = load_repository(Path(EXAMPLES))
    rendering = render_target(model, "k8s", EXAMPLES_AT, inventory=True)
    check = verify_rendering(model, rendering, EXAMPLES_AT)
    assert _workload_pairs(check) == []
    # External sources too: what the ANP tiers allow them is rendered as NetworkPolicies.
    assert check.diff.empty, check.diff.lines()
    assert check.passed, check.summary()
    assert validate_manifests(rendering.manifests) == []


def test_cli_render_examples_verify_passes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "render",
            str(EXAMPLES),
            "--target",
            "k8s",
            "--verify",
            "--at",
            "2026-11-25T12:00:00Z",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    assert "FAILED" not in result.output


def test_a_workload_pair_difference_needs_a_limitation_reaching_it() -> None:
    """The scope rule itself: a limitation of the right direction that reaches neither end
    does not explain a workload-pair difference; one reaching an end does."""
    r = repo(
        tier("apps", 10, "pass"),
        workload("a", "198.18.0.1", app="a"),
        workload("b", "198.18.0.2", app="b"),
        workload("c", "198.18.0.3", app="c"),
        policy("pa", "apps", applies_to='app == "a"', egress=[rule("deny", 'app == "b"')]),
        policy("pc", "apps", applies_to='app == "c"', egress=[rule("deny", 'app == "b"')]),
        repo_settings("allow"),
    )
    rendering = render_target(r, "k8s", T0, inventory=True)
    assert verify_rendering(r, rendering, T0).diff.empty
    # Drop a's deny from the rendering: a => b is allowed.
    broken = replace(
        rendering,
        manifests=tuple(
            m for m in rendering.manifests if m["metadata"]["name"] != "septum-apps-pa"
        ),
    )
    assert [str(x) for x in verify_rendering(r, broken, T0).diff.lines()] == [
        "+ a => b : All Connections"
    ]

    def passes(*limitations: Limitation) -> bool:
        return verify_rendering(r, replace(broken, limitations=limitations), T0).passed

    assert not passes()
    assert not passes(Limitation("policy/pc/egress/0", "elsewhere", Approximation.WIDENED))
    assert not passes(Limitation("policy/pa/egress/0", "wrong way", Approximation.NARROWED))
    assert not passes(
        Limitation("policy/pa/egress/0", "external", Approximation.WIDENED, external=True)
    )
    assert not passes(Limitation("policy/pa/ingress/0", "other side", Approximation.WIDENED))
    assert passes(Limitation("policy/pa/egress/0", "here", Approximation.WIDENED))
    assert passes(Limitation("policy/pa", "whole policy", Approximation.DROPPED))
    assert passes(Limitation("tier/apps", "its tier", Approximation.WIDENED))
    assert passes(Limitation("workload/b", "an end", Approximation.WIDENED))
    assert passes(Limitation("settings", "everyone", Approximation.WIDENED))
    assert passes(
        Limitation("policy/pc/egress/0", "names a", Approximation.WIDENED, workloads=("a",))
    )
