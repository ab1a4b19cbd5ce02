"""``septum agent``: run the host agent for one enforcer (thin: parse, call ``run_agent``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated

import typer

from septum.errors import SeptumError
from septum.model.resources import Direction, FailsafeEntry

__all__ = ["agent_command", "parse_failsafe"]


def parse_failsafe(text: str) -> FailsafeEntry:
    """``DIRECTION:SERVICE:CIDR[,CIDR...]``, e.g. ``ingress:tcp/22:198.19.255.0/24``."""
    from septum.model.parse import parse_service_port

    parts = text.split(":", 2)
    if len(parts) != 3:
        raise SeptumError(f"--failsafe {text!r}: expected DIRECTION:SERVICE:CIDR[,CIDR...]")
    direction, service, cidrs = parts
    try:
        d = Direction(direction)
    except ValueError:
        raise SeptumError(f"--failsafe {text!r}: direction must be ingress or egress") from None
    try:
        port = parse_service_port(service)
        nets = tuple(ip_network(c.strip(), strict=True) for c in cidrs.split(","))
    except (ValueError, SeptumError) as exc:
        raise SeptumError(f"--failsafe {text!r}: {exc}") from None
    return FailsafeEntry(direction=d, services=(port,), cidrs=nets, description=None)


def agent_command(
    enforcer: Annotated[str, typer.Option("--enforcer", help="The enforcer this host is.")],
    repo: Annotated[
        Path, typer.Option("--repo", help="Policy repository directory (desired state).")
    ],
    state_dir: Annotated[
        Path,
        typer.Option("--state-dir", help="Where the last applied state is kept."),
    ] = Path("/var/lib/septum/agent"),
    flows: Annotated[
        Path | None,
        typer.Option("--flows", help="Append flow records (JSON lines) to this file."),
    ] = None,
    flow_interval: Annotated[
        float, typer.Option("--flow-interval", help="Seconds per flow record interval.")
    ] = 5.0,
    poll: Annotated[
        float, typer.Option("--poll", help="Seconds between checks of the source.")
    ] = 0.2,
    fail_open: Annotated[
        bool,
        typer.Option(
            "--fail-open", help="With no usable state, install nothing (not fail-closed)."
        ),
    ] = False,
    failsafe: Annotated[
        list[str] | None,
        typer.Option(
            "--failsafe",
            help="Failsafe entry for the fail-closed table: DIRECTION:SERVICE:CIDR[,CIDR...].",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Restore, apply the desired state once, exit.")
    ] = False,
) -> None:
    """Run the host agent: restore the last applied state, then keep the enforcer's nftables
    table equal to the repository (one atomic transaction per change) and record flows."""
    from septum.agent.agent import AgentSettings
    from septum.agent.runner import FlowOptions, run_agent
    from septum.agent.source import RepositorySource

    try:
        entries = tuple(parse_failsafe(f) for f in failsafe or ())
    except SeptumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    settings = AgentSettings(
        enforcer=enforcer,
        state_dir=state_dir,
        fail_open=fail_open,
        failsafe=entries,
        poll_interval=poll,
    )

    def report(message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        print(f"{stamp} septum-agent[{enforcer}]: {message}", file=sys.stderr, flush=True)

    code = run_agent(
        settings,
        RepositorySource(repo),
        flows=FlowOptions(flows, flow_interval) if flows is not None else None,
        once=once,
        report=report,
    )
    raise typer.Exit(code)
