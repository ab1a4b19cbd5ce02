"""Wiring of a real agent process: nft CLI backend, conntrack, flow recorder, signals.

::

    RepositorySource ──► Agent ──► NftCli (nft -f -, one transaction)
                           │  └──► ConntrackCli (delete revoked entries)
                           └─ provenance_of ◄── FlowRecorder (nflog + conntrack events)
                                                      └──► flows.jsonl
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from septum.agent.agent import Agent, AgentSettings, SyncOutcome
from septum.agent.backend import default_backend
from septum.agent.source import DesiredStateSource

if TYPE_CHECKING:
    from septum.agent.capture import FlowRecorder

__all__ = ["FlowOptions", "flow_recorder", "run_agent"]


@dataclass(frozen=True, slots=True)
class FlowOptions:
    sink: Path
    interval: float = 5.0


def flow_recorder(agent: Agent, sink: Path, interval: float) -> FlowRecorder:
    """The flow recorder of ``agent``'s enforcer, asking the agent what allowed a flow."""
    from septum.agent.capture import FlowRecorder

    s = agent.settings
    return FlowRecorder(
        enforcer=s.enforcer,
        sink=sink,
        interval=interval,
        deny_group=s.nft.deny_group,
        would_deny_group=s.nft.would_deny_group,
        log_group=s.nft.log_group,
        explain_accepted=lambda key: agent.provenance_of(
            key.source, key.destination, key.protocol, key.port
        ),
        unlogged_would_deny=lambda key: agent.unlogged_would_deny(
            key.source, key.destination, key.protocol, key.port
        ),
    )


def run_agent(
    settings: AgentSettings,
    source: DesiredStateSource,
    *,
    flows: FlowOptions | None = None,
    once: bool = False,
    report: Callable[[str], None] = print,
) -> int:
    """Run until SIGTERM/SIGINT (or one sync with ``once``). Exit status: 0, or 1 when
    ``once`` could not apply the desired state (the previous ruleset stays in force)."""
    from septum.agent.conntrack import ConntrackCli, enable_accounting

    enable_accounting()
    backend = default_backend()
    agent = Agent(settings, source, backend, conntrack=ConntrackCli(), report=report)
    report(f"nftables backend: {type(backend).__name__}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    agent.start()
    recorder = None
    if flows is not None:
        recorder = flow_recorder(agent, flows.sink, flows.interval)
        recorder.start()
    # Only now say "applied": whoever waits for it (the lab, a test) may send traffic at
    # once, and it must be recorded.
    agent.write_status()
    try:
        if once:
            result = agent.sync(force=True)
            ok = result.outcome in (SyncOutcome.FULL, SyncOutcome.DELTA, SyncOutcome.UNCHANGED)
            return 0 if ok else 1
        while not stop.is_set():
            agent.sync()
            stop.wait(settings.poll_interval)
        return 0
    finally:
        if recorder is not None:
            recorder.stop()
