"""``septum agent``: run the host agent for one enforcer, from a policy repository or from the
control plane, and enrol it with the control plane (thin: parse, call one library function).

::

    septum agent enrol --server URL --token T --ca-fingerprint sha256:… --enforcer E --state-dir D
    septum agent run   --enforcer E --state-dir D (--repo DIR | --server URL) [--flows FILE]
    septum agent       --enforcer E --repo DIR …      the same as `run --repo`, for old scripts
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from septum.errors import SeptumError
from septum.model.resources import Direction, FailsafeEntry

if TYPE_CHECKING:
    from septum.agent.agent import AgentSettings

__all__ = ["agent_app", "agent_command", "enrol_command", "parse_failsafe", "run_command"]


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


agent_app = typer.Typer(
    help="The host agent: enrol it with a control plane, and run it for one enforcer.",
    no_args_is_help=False,
)

EnforcerOpt = Annotated[str, typer.Option("--enforcer", help="The enforcer this host is.")]
StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where the last applied state (and identity) is kept.")
]
FlowsOpt = Annotated[
    Path | None,
    typer.Option("--flows", help="Append flow records (JSON lines) to this file."),
]
FlowIntervalOpt = Annotated[
    float, typer.Option("--flow-interval", help="Seconds per flow record interval.")
]
PollOpt = Annotated[float, typer.Option("--poll", help="Seconds between checks of the source.")]
FailOpenOpt = Annotated[
    bool,
    typer.Option("--fail-open", help="With no usable state, install nothing (not fail-closed)."),
]
FailsafeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--failsafe",
        help="Failsafe entry for the fail-closed table: DIRECTION:SERVICE:CIDR[,CIDR...].",
    ),
]
OnceOpt = Annotated[
    bool, typer.Option("--once", help="Restore, apply the desired state once, exit (--repo).")
]
DEFAULT_STATE_DIR = Path("/var/lib/septum/agent")


def _usage_error(message: str) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(2)


def _reporter(enforcer: str) -> Callable[[str], None]:
    def report(message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        print(f"{stamp} septum-agent[{enforcer}]: {message}", file=sys.stderr, flush=True)

    return report


def _settings(
    enforcer: str, state_dir: Path, fail_open: bool, failsafe: list[str] | None, poll: float
) -> AgentSettings:
    from septum.agent.agent import AgentSettings

    try:
        entries = tuple(parse_failsafe(f) for f in failsafe or ())
    except SeptumError as exc:
        raise _usage_error(str(exc)) from None
    return AgentSettings(
        enforcer=enforcer,
        state_dir=state_dir,
        fail_open=fail_open,
        failsafe=entries,
        poll_interval=poll,
    )


def _run_repository(
    settings: AgentSettings, repo: Path, flows: Path | None, flow_interval: float, once: bool
) -> None:
    from septum.agent.runner import FlowOptions, run_agent
    from septum.agent.source import RepositorySource

    code = run_agent(
        settings,
        RepositorySource(repo),
        flows=FlowOptions(flows, flow_interval) if flows is not None else None,
        once=once,
        report=_reporter(settings.enforcer),
    )
    raise typer.Exit(code)


def _run_server(
    settings: AgentSettings, server: str, flows: Path | None, flow_interval: float, wait: float
) -> None:
    from septum.agent.remote import (
        ControlPlaneClient,
        Identity,
        RemoteSettings,
        identity_dir,
        run_remote_agent,
        stop_on_signals,
    )

    report = _reporter(settings.enforcer)
    try:
        identity = Identity.load(identity_dir(settings.state_dir))
        if identity.enforcer != settings.enforcer:
            raise SeptumError(
                f"{identity_dir(settings.state_dir)}: enrolled as {identity.enforcer!r}, "
                f"not {settings.enforcer!r}"
            )
        client = ControlPlaneClient(server, identity)
    except SeptumError as exc:
        raise _usage_error(str(exc)) from None
    from septum.agent.conntrack import ConntrackCli, enable_accounting

    if flows is not None:
        enable_accounting()
    stop = stop_on_signals()
    try:
        code = run_remote_agent(
            settings,
            client,
            stop,
            remote=RemoteSettings(wait=wait),
            flows=flows,
            flow_interval=flow_interval,
            # Connections the new policy denies are cut after each change, as the control
            # plane answers (``RemoteRunner._cut_revoked``).
            conntrack=ConntrackCli(),
            report=report,
        )
    finally:
        client.close()
    raise typer.Exit(code)


@agent_app.callback(invoke_without_command=True)
def agent_command(
    ctx: typer.Context,
    enforcer: Annotated[
        str | None, typer.Option("--enforcer", help="The enforcer this host is.")
    ] = None,
    repo: Annotated[
        Path | None, typer.Option("--repo", help="Policy repository directory (desired state).")
    ] = None,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    flows: FlowsOpt = None,
    flow_interval: FlowIntervalOpt = 5.0,
    poll: PollOpt = 0.2,
    fail_open: FailOpenOpt = False,
    failsafe: FailsafeOpt = None,
    once: OnceOpt = False,
) -> None:
    """The host agent. Without a command, ``--enforcer E --repo DIR`` runs it from a
    repository (the same as ``run --repo``; kept for existing scripts and the lab)."""
    if ctx.invoked_subcommand is not None:
        return
    if enforcer is None or repo is None:
        if enforcer is None and repo is None:
            print(ctx.get_help())
            raise typer.Exit(0)
        raise _usage_error("--enforcer and --repo are both needed (or use `septum agent run`)")
    settings = _settings(enforcer, state_dir, fail_open, failsafe, poll)
    _run_repository(settings, repo, flows, flow_interval, once)


@agent_app.command("run")
def run_command(
    enforcer: EnforcerOpt,
    repo: Annotated[
        Path | None, typer.Option("--repo", help="Policy repository directory (desired state).")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Control plane URL (https://…); enrol first."),
    ] = None,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    flows: FlowsOpt = None,
    flow_interval: FlowIntervalOpt = 5.0,
    poll: PollOpt = 0.2,
    fail_open: FailOpenOpt = False,
    failsafe: FailsafeOpt = None,
    once: OnceOpt = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", help="Seconds a long-poll of the control plane may last (--server)."
        ),
    ] = 25.0,
) -> None:
    """Run the host agent for one enforcer, from a repository or the control plane.

    Restore the last applied state, then keep the enforcer's nftables table equal to the
    desired state (one atomic transaction per change) and record flows. The desired state
    comes from a repository directory (--repo) or from the control plane
    (--server, over mutual TLS with the identity `septum agent enrol` wrote; recorded flows
    are uploaded)."""
    if (repo is None) == (server is None):
        raise _usage_error("give exactly one of --repo and --server")
    settings = _settings(enforcer, state_dir, fail_open, failsafe, poll)
    if repo is not None:
        _run_repository(settings, repo, flows, flow_interval, once)
    assert server is not None
    if once:
        raise _usage_error("--once applies to --repo only")
    _run_server(settings, server, flows, flow_interval, wait)


@agent_app.command("enrol")
def enrol_command(
    server: Annotated[str, typer.Option("--server", help="Control plane URL (https://…).")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="SEPTUM_JOIN_TOKEN",
            help="The join token (sepj_…); also read from SEPTUM_JOIN_TOKEN, which keeps it "
            "out of the process list.",
        ),
    ],
    ca_fingerprint: Annotated[
        str,
        typer.Option(
            "--ca-fingerprint", help="sha256:… of the control plane's CA, from the join token."
        ),
    ],
    enforcer: EnforcerOpt,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
) -> None:
    """Enrol this host with the control plane (a join token buys a certificate).

    Trust the control plane's CA only if its fingerprint matches, spend the join token on a
    certificate for a key made here, and keep them in the state directory (the key readable
    by root only)."""
    from septum.agent.remote import enrol, identity_dir

    try:
        identity = enrol(server, token, ca_fingerprint, identity_dir(state_dir), enforcer)
    except SeptumError as exc:
        raise _usage_error(str(exc)) from None
    print(
        f"enrolled as enforcer {identity.enforcer}: certificate {identity.serial:x}, valid until "
        f"{identity.not_after.isoformat()}, in {identity.directory}"
    )
