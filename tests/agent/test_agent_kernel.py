"""The agent against the real kernel, in network namespaces this test creates.

Fault tests: SIGKILL at random points during 50 applies leaves the old or the new ruleset in
the kernel (never a partial or empty table) and a loadable state on disk; a restarted agent
with its source unreachable restores the last applied state; a corrupt state file is
reported and the agent stays fail-closed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from septum.agent.state import StateStore
from septum.render.compile import compile_enforcer
from septum.sources.files import load_repository
from tests.agent.churn_driver import fork_churn, load_all
from tests.conftest import EXAMPLES, EXAMPLES_AT, ROOT, netns_context
from tests.kernel import kernel_state, ns_nft

ENFORCER = "host-dev-docker-1"
KernelState = tuple[dict[str, set[str]], list[tuple[str, str]]]


def _variants(tmp_path: Path) -> list[Path]:
    """A: the examples; B: a rule changed (whole-table transaction); C: B with an address
    moved (element delta)."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shutil.copytree(EXAMPLES, a)
    shutil.copytree(EXAMPLES, b)
    services = b / "services.yaml"
    services.write_text(services.read_text().replace("6379", "6380"))
    shutil.copytree(b, c)
    shop = c / "inventory" / "workloads" / "shop.yaml"
    shop.write_text(shop.read_text().replace("198.18.30.11", "198.18.30.99"))
    return [a, b, c]


def _expected_states(repos: list[Path]) -> tuple[list[str], list[KernelState]]:
    scripts = [compile_enforcer(load_repository(r), ENFORCER, EXAMPLES_AT) for r in repos]
    states = []
    with netns_context() as scratch:
        for script in scripts:
            ns_nft(scratch, "-f", "-", stdin=script)
            states.append(kernel_state(scratch))
    return scripts, states


def _session_alive(sid: int) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # field 6 of stat: session id
            return True
    return False


def _wait_session_gone(sid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _session_alive(sid):
        assert time.monotonic() < deadline, "the killed agent's nft did not finish"
        time.sleep(0.02)


@pytest.mark.root
@pytest.mark.parametrize("backend", ["libnftables", "nft-cli"])
def test_sigkill_during_50_applies_leaves_old_or_new_ruleset(tmp_path: Path, backend: str) -> None:
    repos = _variants(tmp_path)
    scripts, states = _expected_states(repos)
    state_dir = tmp_path / "state"
    rng = random.Random(4)
    kills_mid_run = 0
    committed = False
    loaded = load_all(repos)
    with netns_context() as ns:
        ns_nft(ns, "-f", "-", stdin=scripts[0])
        for _ in range(50):
            pid, progress = fork_churn(ns, loaded, state_dir, backend)
            try:
                time.sleep(rng.uniform(0.02, 0.3))
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            with os.fdopen(progress, "rb") as f:
                kills_mid_run += len(f.read()) > 0
            # nft, once started, finishes its transaction on its own: wait for it.
            _wait_session_gone(pid)
            got = kernel_state(ns)
            assert got in states, "the kernel holds neither the old nor the new ruleset"
            loaded_state = StateStore(state_dir).load()  # never corrupt after a kill
            if loaded_state is None:
                # killed before its first commit (a busy machine starts the child late):
                # no state is right then, but a state once committed must never vanish
                assert not committed, "the agent's state vanished after a kill"
                continue
            committed = True
            assert any(loaded_state.script.startswith(s) for s in scripts)
    assert kills_mid_run >= 10  # the kills really landed among applies


@pytest.mark.root
def test_restart_with_source_unreachable_restores_last_state(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    state = tmp_path / "state"
    script = compile_enforcer(load_repository(repo), ENFORCER, EXAMPLES_AT)

    def agent(ns: str, source: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "septum.cli.main",
                "agent",
                "--once",
                "--enforcer",
                ENFORCER,
                "--repo",
                str(source),
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )

    with netns_context() as first:
        done = agent(first, repo)
        assert done.returncode == 0, done.stderr
    # "Reboot": a fresh kernel namespace, and the control plane unreachable.
    with netns_context() as rebooted, netns_context() as scratch:
        done = agent(rebooted, tmp_path / "unreachable")
        assert done.returncode == 1
        assert "restored" in done.stderr
        assert "unreachable: no such file" in done.stderr
        ns_nft(scratch, "-f", "-", stdin=script)
        # The time stamp differs (the agent compiles at its own now), the rules do not.
        assert kernel_state(rebooted)[1] == kernel_state(scratch)[1]
        status = json.loads((state / "status.json").read_text())
        assert status["applied"] is False or status["error"]


@pytest.mark.root
def test_corrupt_state_is_reported_and_agent_stays_fail_closed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    state = tmp_path / "state"
    cmd = [
        sys.executable,
        "-m",
        "septum.cli.main",
        "agent",
        "--once",
        "--enforcer",
        ENFORCER,
        "--state-dir",
        str(state),
        "--failsafe",
        "ingress:tcp/22:198.19.255.0/24",
    ]
    with netns_context() as ns:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd, "--repo", str(repo)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
    meta = state / "applied.json"
    meta.write_text(meta.read_text()[:-20])  # torn, unparsable
    with netns_context() as ns:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd, "--repo", str(tmp_path / "unreachable")],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 1
        assert "corrupt agent state" in done.stderr
        listing = ns_nft(ns, "list", "table", "inet", "septum")
        assert 'log prefix "septum deny septum/fail-closed " group 1 drop' in listing
        assert "ip saddr 198.19.255.0/24 tcp dport 22" in listing
        assert "w_shop_web_dev_1" not in listing
