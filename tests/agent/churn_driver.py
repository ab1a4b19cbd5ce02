"""A real agent applying several desired states in a loop, for the SIGKILL fault test.

``fork_churn`` forks a child that enters a network namespace (setns) and applies the given
repositories in turn until killed: A → B replaces the table (rules changed), B → C is an
element delta (an address moved), C → A replaces the table again. Forking from the test
process (rather than starting a new interpreter) makes 50 kills cost seconds, not minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

from septum.agent.agent import Agent, AgentSettings
from septum.agent.backend import LibNftables, NftCli
from septum.agent.source import RepositorySource
from septum.model.resources import Repository
from septum.sources.files import load_repository, repository_digest
from tests.agent.netlab import enter_netns
from tests.conftest import EXAMPLES_AT

ENFORCER = "host-dev-docker-1"


def load_all(repos: list[Path]) -> list[tuple[Repository, str]]:
    return [(load_repository(r), repository_digest(r)) for r in repos]


def fork_churn(
    ns: str, loaded: list[tuple[Repository, str]], state: Path, backend: str
) -> tuple[int, int]:
    """Fork the churning agent into namespace ``ns``; returns (pid, read end of a pipe on
    which the child writes one byte per completed apply). The child is a session leader, so
    its nft subprocess can be found by session id after the child is killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(w)
        return pid, r
    try:  # child: never returns
        os.close(r)
        os.setsid()
        enter_netns(ns)
        settings = AgentSettings(enforcer=ENFORCER, state_dir=state)
        nft = LibNftables() if backend == "libnftables" else NftCli()
        agent = Agent(settings, RepositorySource(state), nft, clock=lambda: EXAMPLES_AT)
        agent.start()
        n = 0
        while True:
            repo, digest = loaded[n % len(loaded)]
            agent.apply_repository(repo, digest)
            n += 1
            os.write(w, b".")
    finally:
        os._exit(4)
