"""The agent's logic against a fake nft backend: restore first, fail closed, deltas for
churn, nothing half-applied, revocation. The kernel versions of these are in
test_agent_kernel.py."""

from __future__ import annotations

import shutil
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from septum.agent.agent import Agent, AgentSettings, StartOutcome, SyncOutcome
from septum.agent.conntrack import ConntrackEntry
from septum.agent.source import RepositorySource
from septum.agent.state import StateStore
from septum.errors import SeptumError
from septum.model.parse import parse_service_port
from septum.model.resources import Direction, FailsafeEntry
from septum.testing.fakes import FakeConntrackTable, FakeNft
from tests.conftest import EXAMPLES, EXAMPLES_AT

ENFORCER = "host-dev-docker-1"


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    return repo


def _agent(tmp_path: Path, repo: Path, nft: FakeNft, **kw: object) -> Agent:
    settings = AgentSettings(enforcer=ENFORCER, state_dir=tmp_path / "state", **kw)  # type: ignore[arg-type]
    return Agent(settings, RepositorySource(repo), nft, clock=lambda: EXAMPLES_AT)


def _move_address(repo: Path, old: str, new: str) -> None:
    f = repo / "inventory" / "workloads" / "shop.yaml"
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new))


def test_first_start_without_state_installs_the_fail_closed_table(tmp_path: Path) -> None:
    nft = FakeNft()
    entry = FailsafeEntry(
        Direction.INGRESS, (parse_service_port("tcp/22"),), (ip_network("198.19.255.1/32"),), None
    )
    agent = _agent(tmp_path, _repo(tmp_path), nft, failsafe=(entry,))  # type: ignore[arg-type]
    assert agent.start() is StartOutcome.FAIL_CLOSED
    assert "septum/fail-closed" in nft.last
    assert "198.19.255.1 meta l4proto tcp th dport 22" in nft.last
    assert nft.table_exists("inet", "septum")


def test_fail_open_installs_nothing(tmp_path: Path) -> None:
    nft = FakeNft()
    agent = _agent(tmp_path, _repo(tmp_path), nft, fail_open=True)
    assert agent.start() is StartOutcome.OPEN
    assert nft.applied == []


def test_sync_applies_the_whole_table_then_restart_restores_it_before_the_source(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    result = agent.sync()
    assert result.outcome is SyncOutcome.FULL
    full = nft.last
    assert "delete table inet septum" in full
    assert "w_shop_web_dev_1" in full

    # Restart with the source gone (control plane unreachable): the same script comes back.
    shutil.rmtree(repo)
    nft2 = FakeNft()
    again = _agent(tmp_path, repo, nft2)
    assert again.start() is StartOutcome.RESTORED
    assert nft2.applied == [full]
    r = again.sync()
    assert r.outcome is SyncOutcome.UNAVAILABLE
    assert "no such file" in (r.error or "")
    assert nft2.applied == [full]  # nothing else was applied
    assert (tmp_path / "state" / "status.json").read_text().count("no such file") == 1


def test_address_change_is_an_element_delta_and_restore_replays_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    _move_address(repo, "198.18.30.11", "198.18.30.99")
    result = agent.sync()
    assert result.outcome is SyncOutcome.DELTA
    delta = nft.last
    assert "delete table" not in delta
    assert "delete element inet septum" in delta
    assert "198.18.30.99" in delta
    assert result.elements_changed > 0

    loaded = StateStore(tmp_path / "state").load()
    assert loaded is not None
    assert loaded.deltas == 1
    assert not loaded.torn_tail
    assert loaded.script.endswith(delta)


def test_policy_change_replaces_the_table(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    f = repo / "services.yaml"
    f.write_text(f.read_text().replace("6379", "6380"))
    assert agent.sync().outcome is SyncOutcome.FULL
    assert "6380" in nft.last
    assert "delete table inet septum" in nft.last


def test_unchanged_source_applies_nothing(tmp_path: Path) -> None:
    nft = FakeNft()
    agent = _agent(tmp_path, _repo(tmp_path), nft)
    agent.start()
    agent.sync()
    n = len(nft.applied)
    assert agent.sync().outcome is SyncOutcome.UNCHANGED
    assert len(nft.applied) == n


def test_invalid_source_is_reported_and_the_previous_ruleset_stays(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    n = len(nft.applied)
    (repo / "policies" / "broken.yaml").write_text("apiVersion: septum/v1\nkind: Policy\n")
    result = agent.sync()
    assert result.outcome is SyncOutcome.INVALID
    assert "broken.yaml:" in (result.error or "")
    assert len(nft.applied) == n
    # Not re-read every poll while unchanged, and fixed when the file is fixed.
    assert agent.sync().outcome is SyncOutcome.INVALID
    (repo / "policies" / "broken.yaml").unlink()
    assert agent.sync().outcome is SyncOutcome.UNCHANGED


def test_rejected_transaction_keeps_the_previous_state(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    before = StateStore(tmp_path / "state").load()
    f = repo / "services.yaml"
    f.write_text(f.read_text().replace("6379", "6380"))
    nft.reject = 1
    result = agent.sync()
    assert result.outcome is SyncOutcome.FAILED
    assert "rejected" in (result.error or "")
    assert StateStore(tmp_path / "state").load() == before
    # The next change (or a recompute) tries again and succeeds.
    assert agent.sync(force=True).outcome is SyncOutcome.FULL


def test_rejected_delta_falls_back_to_the_whole_table(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    _move_address(repo, "198.18.30.11", "198.18.30.99")
    nft.reject = 1
    assert agent.sync().outcome is SyncOutcome.FULL
    assert "198.18.30.99" in nft.last


def test_corrupt_state_is_reported_and_stays_fail_closed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    script = next((tmp_path / "state").glob("applied-*.nft"))
    script.write_text(script.read_text().replace("accept", "drop", 1))
    messages: list[str] = []

    # Fresh kernel (a reboot): fail-closed table, error reported.
    nft2 = FakeNft()
    settings = AgentSettings(enforcer=ENFORCER, state_dir=tmp_path / "state")
    again = Agent(settings, RepositorySource(tmp_path / "gone"), nft2, report=messages.append)
    assert again.start() is StartOutcome.FAIL_CLOSED
    assert "septum/fail-closed" in nft2.last
    assert any("corrupt agent state" in m and "checksum" in m for m in messages)
    assert again.last_error is not None
    assert "corrupt" in again.last_error

    # Same kernel (agent restart): our table is already there and stays in force.
    kept = Agent(settings, RepositorySource(tmp_path / "gone"), nft, report=messages.append)
    n = len(nft.applied)
    assert kept.start() is StartOutcome.KEPT
    assert len(nft.applied) == n


def test_state_of_another_enforcer_is_not_applied(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    agent = _agent(tmp_path, repo, FakeNft())
    agent.start()
    agent.sync()
    nft = FakeNft()
    settings = AgentSettings(enforcer="vm-dns-1", state_dir=tmp_path / "state")
    other = Agent(settings, RepositorySource(repo), nft)
    assert other.start() is StartOutcome.FAIL_CLOSED


def test_torn_journal_tail_restores_the_state_before_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    agent.sync()
    full = nft.last
    _move_address(repo, "198.18.30.11", "198.18.30.99")
    agent.sync()
    journal = next((tmp_path / "state").glob("applied-*.journal"))
    journal.write_bytes(journal.read_bytes()[:-10])
    loaded = StateStore(tmp_path / "state").load()
    assert loaded is not None
    assert loaded.torn_tail
    assert loaded.script == full


def test_damaged_journal_middle_is_corrupt(tmp_path: Path) -> None:
    from septum.agent.state import CorruptState

    repo = _repo(tmp_path)
    agent = _agent(tmp_path, repo, FakeNft())
    agent.start()
    agent.sync()
    _move_address(repo, "198.18.30.11", "198.18.30.99")
    agent.sync()
    _move_address(repo, "198.18.30.99", "198.18.30.98")
    agent.sync()
    journal = next((tmp_path / "state").glob("applied-*.journal"))
    data = bytearray(journal.read_bytes())
    data[60] ^= 0x01
    journal.write_bytes(bytes(data))
    with pytest.raises(CorruptState):
        StateStore(tmp_path / "state").load()


def test_revoked_flows_lose_their_conntrack_entries(tmp_path: Path) -> None:
    web, api = ip_address("198.18.30.11"), ip_address("198.18.30.21")
    # shop web -> api on 8080 is allowed in the examples; 9999 is not.
    allowed = ConntrackEntry(4, "tcp", web, api, 40000, 8080, "ESTABLISHED")
    denied = ConntrackEntry(4, "tcp", web, api, 40001, 9999, "ESTABLISHED")
    table = FakeConntrackTable([allowed, denied])
    repo = _repo(tmp_path)
    settings = AgentSettings(enforcer=ENFORCER, state_dir=tmp_path / "state")
    agent = Agent(
        settings,
        RepositorySource(repo),
        FakeNft(),
        conntrack=table,
        clock=lambda: EXAMPLES_AT,
    )
    agent.start()
    assert agent.sync().revoked == 1
    assert table.deleted == [denied]
    # Revoke web -> api 8080: the established entry goes too.
    f = repo / "services.yaml"
    f.write_text(f.read_text().replace("8080", "8081"))
    assert agent.sync().revoked == 1
    assert table.deleted == [denied, allowed]


def test_provenance_of_an_accepted_flow_names_both_sides(tmp_path: Path) -> None:
    agent = _agent(tmp_path, _repo(tmp_path), FakeNft())
    agent.start()
    agent.sync()
    got = agent.provenance_of(ip_address("198.18.30.11"), ip_address("198.18.30.21"), "tcp", 8080)
    assert got == ("shop/shop-web/egress/0", "shop/shop-api/ingress/0")


def test_visibility_denies_are_reported_by_evaluation_not_by_rules(tmp_path: Path) -> None:
    # billing-api-staging-1 (198.18.21.21) is in visibility mode: its enforcer installs no
    # rules, so its would-be denies come from evaluating accepted flows.
    repo = _repo(tmp_path)
    nft = FakeNft()
    settings = AgentSettings(enforcer="vm-billing-api-staging-1", state_dir=tmp_path / "s")
    agent = Agent(settings, RepositorySource(repo), nft, clock=lambda: EXAMPLES_AT)
    agent.start()
    agent.sync()
    assert " drop comment" not in nft.last  # no verdicts: only chains counting connections
    assert " accept comment" not in nft.last
    assert "ct state new counter" in nft.last
    web, api = ip_address("198.18.30.11"), ip_address("198.18.21.21")
    got = agent.unlogged_would_deny(web, api, "tcp", 22)
    assert got
    assert all(p.endswith(("/default", "/0", "/1", "/2")) for p in got)
    assert all("/ingress/" in p for p in got)
    # The same flow seen by an enforced host's agent: its denies are logged by its rules.
    other = _agent(tmp_path / "o", repo, FakeNft())
    other.start()
    other.sync()
    assert other.unlogged_would_deny(web, api, "tcp", 22) == ()


def test_element_deltas_received_as_such_apply_without_a_diff(tmp_path: Path) -> None:
    from septum.render.hostruleset import ElementDelta, diff_rulesets

    repo = _repo(tmp_path)
    nft = FakeNft()
    agent = _agent(tmp_path, repo, nft)
    agent.start()
    with pytest.raises(SeptumError):
        agent.apply_element_delta([], None)
    agent.sync()
    base = agent.ruleset
    assert base is not None
    name = next(s.name for s in base.sets if s.elements and s.name.endswith("_v4"))
    new = ip_network("198.18.99.1/32")
    result = agent.apply_element_delta([ElementDelta(name, added=(new,))], "d2")
    assert result.outcome is SyncOutcome.DELTA
    assert result.elements_changed == 1
    assert nft.last.strip() == f"add element inet septum {name} {{ 198.18.99.1 }}"
    assert agent.ruleset is not None
    delta = diff_rulesets(base, agent.ruleset)
    assert not delta.structure_changed
    assert [(d.name, d.added) for d in delta.elements] == [(name, (new,))]
    loaded = StateStore(tmp_path / "state").load()
    assert loaded is not None
    assert loaded.deltas == 1
