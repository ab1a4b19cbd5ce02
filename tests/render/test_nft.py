"""The nftables compiler: golden files, determinism, nft syntax, modes, deltas, real kernel.

Golden files live in ``tests/golden/<case>/<enforcer>.nft``; regenerate them with
``SEPTUM_UPDATE_GOLDEN=1 pytest tests/render``. Tests marked ``root`` need root and ``nft``;
they are skipped elsewhere, except in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.kernel import kernel_state, ns_nft

from septum.engine.resolve import resolve_policy
from septum.errors import RenderError
from septum.model.resources import (
    Direction,
    Mode,
    PolicyMode,
    Repository,
    Workload,
    WorkloadKind,
)
from septum.render.compile import build_all, compile_all, compile_delta, compile_enforcer
from septum.render.hostruleset import (
    Chain,
    HostRuleset,
    MapElement,
    NftRule,
    Verdict,
    apply_delta,
    build_host_ruleset,
    diff_rulesets,
    workload_chain_name,
)
from septum.render.nft import render_nft, render_set_delta, rules_text
from septum.testing.builders import (
    T0,
    cidr,
    failsafe,
    net,
    network,
    policy,
    repo,
    rule,
    segment,
    settings,
    tier,
    user,
    users,
    workload,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# ------------------------------------------------------------------------------- estates


def _objects_basic() -> list[object]:
    return [
        tier("security", 10, "pass", owners=("secops",)),
        tier("app", 100),
        network("internet", "0.0.0.0/0", "::/0", excepts=["10.0.0.0/8"], zone="internet"),
        network("corp", "10.0.0.0/8", zone="corp"),
        workload("web-1", "10.0.1.1", "2001:db8::1", app="web", env="prod", enforcer="h1"),
        workload("web-2", "10.0.1.2", app="web", env="prod", enforcer="h1"),
        workload("db-1", "10.0.2.1", app="db", env="prod", pci="yes", enforcer="h2"),
        workload("batch-1", "10.0.4.1", app="batch", enforcer="h2", mode=Mode.IDLE),
        workload("printer", "10.0.5.1", app="printer"),  # unmanaged
        user("alice", ("10.9.0.5", None, None), role="dba"),
        settings(
            failsafe=[
                failsafe("ingress", "tcp/22", cidrs=["10.255.0.0/16"]),
                failsafe(None, "udp/53"),
            ]
        ),
        policy(
            "quarantine",
            "security",
            order=1,
            applies_to="has(quarantine)",
            ingress=[rule("deny")],
            egress=[rule("deny")],
        ),
        policy(
            "corp-to-app",
            "security",
            order=5,
            ingress=[rule("pass", 'zone == "corp"'), rule("log", cidr("192.168.0.0/16"))],
        ),
        policy(
            "web",
            "app",
            applies_to='app == "web"',
            ingress=[rule("allow", 'zone == "internet"', ports=["tcp/443", "tcp/80"])],
            egress=[
                rule("allow", 'app == "db"', ports=["tcp/5432"]),
                rule("allow", net("internet"), ports=["udp/123", "icmp", "icmpv6"]),
            ],
        ),
        policy(
            "db",
            "app",
            applies_to='app == "db"',
            ingress=[
                rule(
                    "allow",
                    'app == "web"',
                    users('role == "dba"'),
                    segment("pci", "has(pci)"),
                    ports=["tcp/5432"],
                ),
                rule("deny", cidr("10.0.0.0/8")),
                rule("allow", cidr("10.0.0.0/8"), ports=["tcp/9100"], expires=T0),  # expired
            ],
            egress=[],
        ),
        policy(
            "db-staged",
            "app",
            order=1,
            applies_to='app == "db"',
            mode=PolicyMode.STAGED,
            ingress=[rule("deny", ports=["tcp/5432"])],
        ),
    ]


def _objects_modes() -> list[object]:
    objs: list[object] = [
        tier("app", 10),
        workload("client", "198.18.0.1", app="client"),
        policy(
            "svc",
            "app",
            applies_to='role == "svc"',
            ingress=[
                rule("deny", cidr("198.18.99.0/24")),
                rule("allow", 'app == "client"', ports=["tcp/443"]),
            ],
        ),
    ]
    for i, mode in enumerate(Mode):
        objs.append(
            workload(
                f"svc-{mode.value}",
                f"198.18.1.{i + 1}",
                f"2001:db8:1::{i + 1}",
                role="svc",
                enforcer="h1",
                mode=mode,
            )
        )
    return objs


def _objects_k8s() -> list[object]:
    return [
        settings("allow", cidr_matches_workloads=False),
        tier("anp", 10, "pass"),
        tier("np", 20),
        tier("banp", 30, "pass"),
        workload(
            "frontend-abc",
            "10.244.1.10",
            kind=WorkloadKind.POD,
            namespace="shop",
            app="frontend",
            enforcer="node-1",
            labels={"kubernetes.io/metadata.name": "shop"},
        ),
        workload(
            "backend-def",
            "10.244.1.11",
            kind=WorkloadKind.POD,
            namespace="shop",
            app="backend",
            enforcer="node-1",
            labels={"kubernetes.io/metadata.name": "shop"},
        ),
        workload(
            "backend-ghi",
            "10.244.2.12",
            kind=WorkloadKind.POD,
            namespace="shop",
            app="backend",
            enforcer="node-2",
            labels={"kubernetes.io/metadata.name": "shop"},
        ),
        policy(
            "anp-deny-sensitive",
            "anp",
            order=5,
            ingress=[rule("deny", cidr("10.99.0.0/16"), ports=["tcp/1-1024", "tcp/1000-2000"])],
        ),
        policy(
            "shop.backend",
            "np",
            applies_to='app == "backend"',
            ingress=[
                rule("allow", 'app == "frontend"', ports=["tcp/8080", "sctp/9000", "udp"]),
                rule("allow", cidr("10.244.0.0/16"), cidr("fd00::/64"), ports=["tcp/9090"]),
            ],
        ),
        policy("banp-log", "banp", ingress=[rule("log")], egress=[rule("pass")]),
    ]


ESTATES: dict[str, Callable[[], list[object]]] = {
    "basic": _objects_basic,
    "modes": _objects_modes,
    "k8s": _objects_k8s,
}


def _repo(case: str, *, shuffle: int | None = None) -> Repository:
    objects = ESTATES[case]()
    if shuffle is None:
        return repo(*objects)  # type: ignore[arg-type]
    random.Random(shuffle).shuffle(objects)
    return repo(*objects, sort=False)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- root / nft


def _nft_check(nft: str, script: str, tmp_path: Path, name: str = "ruleset.nft") -> None:
    path = tmp_path / name
    path.write_text(script)
    proc = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("case", sorted(ESTATES))
def test_golden(case: str) -> None:
    scripts = compile_all(_repo(case), T0)
    assert scripts, "every estate has enforcers"
    directory = GOLDEN / case
    if os.environ.get("SEPTUM_UPDATE_GOLDEN") == "1":
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.nft"):
            old.unlink()
        for enforcer, script in scripts.items():
            (directory / f"{enforcer}.nft").write_text(script)
    expected = {p.stem: p.read_text() for p in sorted(directory.glob("*.nft"))}
    assert set(expected) == set(scripts)
    for enforcer, script in scripts.items():
        assert script == expected[enforcer], f"golden {case}/{enforcer}.nft differs"


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("case", sorted(ESTATES))
def test_deterministic_and_order_independent(case: str) -> None:
    first = compile_all(_repo(case), T0)
    assert compile_all(_repo(case), T0) == first
    for seed in range(3):
        assert compile_all(_repo(case, shuffle=seed), T0) == first


def test_compile_enforcer_matches_compile_all() -> None:
    r = _repo("basic")
    scripts = compile_all(r, T0)
    for enforcer, script in scripts.items():
        assert compile_enforcer(r, enforcer, T0) == script


def test_script_replaces_only_its_table() -> None:
    script = compile_enforcer(_repo("basic"), "h1", T0)
    lines = [ln for ln in script.splitlines() if ln and not ln.startswith(("#", "\t", "}"))]
    assert lines == ["table inet septum", "delete table inet septum", "table inet septum {"]


# ------------------------------------------------------------------------------- nft -c


@pytest.mark.root
@pytest.mark.parametrize("case", sorted(ESTATES))
def test_nft_accepts_every_script(case: str, nft: str, tmp_path: Path) -> None:
    for enforcer, script in compile_all(_repo(case), T0).items():
        _nft_check(nft, script, tmp_path, f"{enforcer}.nft")


# ------------------------------------------------------------------------------- semantics


def _ruleset(case: str, enforcer: str) -> HostRuleset:
    return build_host_ruleset(resolve_policy(_repo(case), T0), enforcer)


def _walk(rs: HostRuleset, chain: Chain) -> list[NftRule]:
    """The rules of a chain with jumped-to chains inlined (one level is enough here)."""
    out: list[NftRule] = []
    for r in chain.rules:
        if r.verdict is Verdict.JUMP and r.target is not None:
            out.extend(rs.chain(r.target).rules)
        else:
            out.append(r)
    return out


def _deny_rules(rs: HostRuleset, workload: str) -> tuple[NftRule, NftRule, NftRule]:
    """(explicit deny rule, tier default, repository default) of a workload's ingress."""
    rules = _walk(rs, rs.chain(workload_chain_name(workload, Direction.INGRESS)))
    explicit = next(r for r in rules if str(r.provenance) == "app/svc/ingress/0")
    tier_default = next(r for r in rules if str(r.provenance) == "app/*/ingress/default")
    repo_default = next(r for r in rules if str(r.provenance) == "*/*/ingress/default")
    return explicit, tier_default, repo_default


def _is_drop(r: NftRule) -> bool:
    return r.verdict is Verdict.DROP and r.log is not None and r.log.group == 1


def _is_log_accept(r: NftRule) -> bool:
    return r.verdict is Verdict.ACCEPT and r.log is not None and r.log.group == 2


@pytest.mark.parametrize(
    ("mode", "explicit_drops", "defaults_drop"),
    [
        (Mode.ENFORCED, True, True),
        (Mode.SELECTIVE, True, False),
        (Mode.TEST, False, False),
    ],
)
def test_mode_verdicts(mode: Mode, explicit_drops: bool, defaults_drop: bool) -> None:
    rs = _ruleset("modes", "h1")
    explicit, tier_default, repo_default = _deny_rules(rs, f"svc-{mode.value}")
    assert _is_drop(explicit) if explicit_drops else _is_log_accept(explicit)
    for r in (tier_default, repo_default):
        assert _is_drop(r) if defaults_drop else _is_log_accept(r)
    text = render_nft(rs)
    name = workload_chain_name(f"svc-{mode.value}", Direction.INGRESS)
    assert f"chain {name} {{" in text


def test_mode_verdicts_in_text() -> None:
    text = render_nft(_ruleset("modes", "h1"))
    assert 'log prefix "septum deny app/svc/ingress/0 " group 1 drop' in text
    assert 'log prefix "septum would-deny app/svc/ingress/0 " group 2 accept' in text
    assert 'log prefix "septum would-deny */*/ingress/default " group 2 accept' in text


@pytest.mark.parametrize("mode", [Mode.IDLE, Mode.VISIBILITY])
def test_idle_and_visibility_workloads_have_no_chain_and_no_dispatch(mode: Mode) -> None:
    # Visibility is observed by the agent (conntrack + evaluation), not by kernel rules.
    rs = _ruleset("modes", "h1")
    names = {c.name for c in rs.chains}
    for d in Direction:
        assert workload_chain_name(f"svc-{mode.value}", d) not in names
        assert workload_chain_name("svc-enforced", d) in names
    keys = {str(e.key) for m in rs.maps for e in m.elements}
    assert "198.18.1.1/32" not in keys  # svc-idle (Mode order: idle first)
    assert "198.18.1.4/32" in keys


def test_egress_allow_continues_to_destination_side() -> None:
    rs = _ruleset("basic", "h1")
    rules = _walk(rs, rs.chain(workload_chain_name("web-1", Direction.EGRESS)))
    allows = [r for r in rules if str(r.provenance).startswith("app/web/egress/")]
    assert allows
    assert all(r.verdict is Verdict.GOTO and r.target == "ingress_dispatch" for r in allows)


def test_pass_returns_to_next_tier_and_log_continues() -> None:
    rs = _ruleset("basic", "h1")
    rules = _walk(rs, rs.chain(workload_chain_name("web-1", Direction.INGRESS)))
    passes = [r for r in rules if str(r.provenance) == "security/corp-to-app/ingress/0"]
    assert passes
    assert all(r.verdict is Verdict.RETURN for r in passes)
    (log,) = [r for r in rules if str(r.provenance) == "security/corp-to-app/ingress/1"]
    assert log.verdict is Verdict.CONTINUE
    assert log.log is not None
    assert log.log.group == 3
    # the pass tier has no default deny
    assert not any(str(r.provenance) == "security/*/ingress/default" for r in rules)


def test_staged_and_expired_are_not_rendered() -> None:
    text = compile_enforcer(_repo("basic"), "h2", T0)
    assert "db-staged" not in text
    assert "app/db/ingress/0" in text
    assert "app/db/ingress/1" in text
    assert "app/db/ingress/2" not in text  # expired at T0
    # before its expiry it is there
    earlier = compile_enforcer(_repo("basic"), "h2", T0 - timedelta(hours=1))
    assert "app/db/ingress/2" in earlier


def test_every_rule_has_counter_and_provenance_comment() -> None:
    for case in ESTATES:
        for rs in build_all(resolve_policy(_repo(case), T0), _repo(case).enforcers()).values():
            for c in rs.chains:
                for r in c.rules:
                    assert str(r.provenance)
                    if r.verdict not in (Verdict.JUMP, Verdict.GOTO) or r.log is not None:
                        assert r.counter or r.dispatch is not None


def test_network_peers_exclude_attributed_addresses() -> None:
    text = render_nft(_ruleset("basic", "h1"))
    assert "ip saddr != @attributed_v4 ip saddr @s_zone_internet_" in text
    rs = _ruleset("basic", "h1")
    attributed = next(s for s in rs.sets if s.name == "attributed_v4")
    # workloads and the user session
    assert {str(e.network_address) for e in attributed.elements} >= {"10.0.1.1", "10.9.0.5"}


def test_cidr_matches_workloads_false_excludes_workload_addresses() -> None:
    text = render_nft(_ruleset("k8s", "node-1"))
    assert "ip saddr != @workloads_v4 ip saddr 10.244.0.0/16" in text
    assert "ip6 saddr != @workloads_v6 ip6 saddr fd00::/64" in text
    # overlapping port ranges are merged
    assert "meta l4proto tcp th dport 1-2000" in text


def test_failsafe_precedes_dispatch() -> None:
    rs = _ruleset("basic", "h1")
    ingress = [str(r.provenance) for r in rs.chain("ingress_dispatch").rules]
    assert ingress[:2] == ["septum/failsafe/ingress/0", "septum/failsafe/ingress/1"]
    egress = [str(r.provenance) for r in rs.chain("egress_dispatch").rules]
    assert egress[0] == "septum/failsafe/egress/1"


def test_enforcer_without_workloads_renders_empty_dispatch() -> None:
    rs = build_host_ruleset(resolve_policy(_repo("basic"), T0), "nobody")
    assert all(not m.elements for m in rs.maps)
    assert not rs.sets


# ------------------------------------------------------------------------------- deltas


def _with_workload(r: Repository, name: str, **changes: object) -> Repository:
    ws = tuple(replace(w, **changes) if w.name == name else w for w in r.workloads)  # type: ignore[arg-type]
    return replace(r, workloads=ws)


def _relabel(w: Workload, **labels: str) -> dict[str, object]:
    return {"labels": {**w.labels, **labels}}


def _readdress(r: Repository, name: str, *addresses: str) -> Repository:
    target = r.workload(name)
    assert target is not None
    fresh = workload(name, *addresses, labels=dict(target.labels))
    return _with_workload(r, name, addresses=fresh.addresses)


def _assert_delta_only(old: Repository, new: Repository, enforcer: str) -> None:
    before = build_host_ruleset(resolve_policy(old, T0), enforcer)
    after = build_host_ruleset(resolve_policy(new, T0), enforcer)
    delta = diff_rulesets(before, after)
    assert delta.elements, "the change shows up as element deltas"
    assert not delta.structure_changed
    assert rules_text(before) == rules_text(after)
    patched = apply_delta(before, delta)
    assert patched.elements() == after.elements()
    assert render_nft(patched) == render_nft(after)
    for d in delta.elements:
        assert not set(d.added) & set(d.removed)


def test_address_change_of_local_workload_is_an_element_delta() -> None:
    old = _repo("basic")
    new = _readdress(old, "web-1", "10.0.1.7", "2001:db8::7")
    _assert_delta_only(old, new, "h1")
    _assert_delta_only(old, new, "h2")  # web-1 is a peer (app == "web") on h2
    _, script = compile_delta(old, new, "h1", T0)
    assert "delete element inet septum egress_v4 { 10.0.1.1 }" in script
    assert "add element inet septum egress_v4 { 10.0.1.7 : goto w_web_1_" in script
    assert script.index("delete element") < script.index("add element")


def test_label_change_of_peer_workload_is_an_element_delta() -> None:
    old = _repo("basic")
    printer = old.workload("printer")
    assert printer is not None
    new = _with_workload(old, "printer", **_relabel(printer, app="db"))
    _assert_delta_only(old, new, "h1")  # web egress to app == "db"
    _, script = compile_delta(old, new, "h1", T0)
    assert "add element inet septum s_app_db_" in script
    assert "10.0.5.1" in script


def test_label_change_of_applies_to_changes_rules() -> None:
    old = _repo("basic")
    web2 = old.workload("web-2")
    assert web2 is not None
    new = _with_workload(old, "web-2", **_relabel(web2, quarantine="yes"))
    delta, script = compile_delta(old, new, "h1", T0)
    assert delta.structure_changed
    assert script.startswith("# septum ruleset")
    with pytest.raises(RenderError):
        render_set_delta(build_host_ruleset(resolve_policy(new, T0), "h1"), delta)


def test_no_change_no_delta() -> None:
    delta, script = compile_delta(_repo("basic"), _repo("basic"), "h1", T0)
    assert not delta
    assert script == ""


def test_render_set_delta_rejects_unknown_names() -> None:
    rs = _ruleset("basic", "h1")
    from septum.render.hostruleset import ElementDelta

    with pytest.raises(RenderError):
        render_set_delta(rs, [ElementDelta("nope", added=())])
    text = render_set_delta(
        ["egress_v4"],
        [
            ElementDelta(
                "egress_v4", removed=(MapElement(next(iter(rs.maps[0].elements)).key, "w_x_eg"),)
            )
        ],
    )
    assert text.startswith("delete element inet septum egress_v4 {")


@pytest.mark.root
def test_nft_accepts_delta_after_full_script(nft: str, tmp_path: Path) -> None:
    old = _repo("basic")
    new = _readdress(old, "web-1", "10.0.1.7", "2001:db8::7")
    _, delta_script = compile_delta(old, new, "h1", T0)
    _nft_check(nft, compile_enforcer(old, "h1", T0) + delta_script, tmp_path)


# ------------------------------------------------------------------------------- kernel


def _expected_elements(rs: HostRuleset) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in rs.sets:
        out[s.name] = {
            str(e.network_address) if e.prefixlen == e.max_prefixlen else str(e) for e in s.elements
        }
    for m in rs.maps:
        out[m.name] = {f"{e.key.network_address} : goto {e.chain}" for e in m.elements}
    return out


@pytest.mark.root
def test_real_kernel_load_and_delta(netns: str) -> None:
    old = _repo("basic")
    new = _readdress(old, "web-1", "10.0.1.7", "2001:db8::7")
    printer = new.workload("printer")
    assert printer is not None
    new = _with_workload(new, "printer", **_relabel(printer, app="db"))

    before = build_host_ruleset(resolve_policy(old, T0), "h1")
    after = build_host_ruleset(resolve_policy(new, T0), "h1")
    ns_nft(netns, "-f", "-", stdin=render_nft(before))
    elements0, rules0 = kernel_state(netns)
    assert elements0 == _expected_elements(before)
    assert rules0

    # loading the full script again replaces the table (no duplicate rules)
    ns_nft(netns, "-f", "-", stdin=render_nft(before))
    assert kernel_state(netns) == (elements0, rules0)

    delta = diff_rulesets(before, after)
    assert not delta.structure_changed
    ns_nft(netns, "-f", "-", stdin=render_set_delta(before, delta))
    elements1, rules1 = kernel_state(netns)
    assert elements1 == _expected_elements(after)
    assert elements1 != elements0
    assert rules1 == rules0


# ------------------------------------------------------------------------------- scale


def _scale_repo(n_workloads: int, n_policies: int, n_enforcers: int) -> Repository:
    objs: list[object] = [tier("platform", 10, "pass"), tier("app", 100)]
    for i in range(n_workloads):
        objs.append(
            workload(
                f"w-{i}",
                f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
                app=f"app-{i % (n_policies // 2 or 1)}",
                env="prod" if i % 3 else "dev",
                enforcer=f"host-{i % n_enforcers}",
            )
        )
    for j in range(n_policies):
        app = f"app-{j % (n_policies // 2 or 1)}"
        peer = f"app-{(j + 1) % (n_policies // 2 or 1)}"
        objs.append(
            policy(
                f"p-{j}",
                "app" if j % 10 else "platform",
                order=j,
                applies_to=f'app == "{app}"',
                ingress=[rule("allow", f'app == "{peer}"', ports=["tcp/443"])],
                egress=[rule("allow", f'app == "{peer}" && env == "prod"', ports=["tcp/8443"])],
            )
        )
    return repo(*objs)  # type: ignore[arg-type]


def test_scale_sanity() -> None:
    """A loose guard against quadratic behaviour (the real benchmark lives elsewhere)."""
    r = _scale_repo(2000, 200, 20)
    start = time.perf_counter()
    scripts = compile_all(r, T0)
    elapsed = time.perf_counter() - start
    assert len(scripts) == 20
    assert elapsed < 5.0, elapsed


def test_ipv4_element_text_matches_ipaddress() -> None:
    """The fast dotted-quad path writes exactly what ipaddress would."""
    import ipaddress

    from septum.render.nft import element_text

    for text in [
        "0.0.0.0/0",
        "198.18.0.1/32",
        "255.255.255.255/32",
        "10.1.2.0/24",
        "198.19.255.254/31",
        "2001:db8::1/128",
        "2001:db8::/32",
    ]:
        net = ipaddress.ip_network(text)
        expected = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        assert element_text(net) == expected


@given(st.lists(st.sampled_from([0, 0, 0, 1, 0xABC, 0xFFFF]), min_size=8, max_size=8))
def test_ipv6_text_is_what_ipaddress_writes(hextets: list[int]) -> None:
    from ipaddress import IPv6Address

    from septum.render.nft import ipv6_text

    i = 0
    for h in hextets:
        i = (i << 16) | h
    if IPv6Address(i).ipv4_mapped is None:  # Python >= 3.13 writes those dotted
        assert ipv6_text(i) == str(IPv6Address(i))


def test_render_cache_reuses_the_text_of_equal_sets_from_a_previous_render() -> None:
    from dataclasses import replace
    from ipaddress import ip_network

    from septum.render.nft import RenderCache

    first = _ruleset("basic", "h1")
    again = _ruleset("basic", "h1")  # a second compile: equal sets, other objects
    assert first.sets == again.sets
    assert all(a is not b for a, b in zip(first.sets, again.sets, strict=True))
    changed = next(s for s in again.sets if s.name.endswith("_v4") and s.elements)
    extra = ip_network("198.18.99.99/32")
    again = replace(
        again,
        sets=tuple(
            replace(s, elements=(*s.elements, extra)) if s is changed else s for s in again.sets
        ),
    )
    previous = RenderCache()
    render_nft(first, previous)
    text = render_nft(again, RenderCache(previous=previous))
    assert text == render_nft(again)
    assert "198.18.99.99" in text
