"""``septum lab up|probe|down DIR``: the network-namespace lab, as a thin front end.

Each command parses its options, calls one function of :mod:`septum.lab` and formats the
result like the rest of the CLI (Rich tables, ``--json``). Exit codes: 0 success; 1 ``probe``
found a disagreement; 2 bad input or a lab that cannot be built (LabError), no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

lab_app = typer.Typer(
    name="lab",
    help="A repository's workloads as network namespaces, with agents, probed for real.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RepoArg = Annotated[Path, typer.Argument(help="Policy repository directory.")]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state", help="Lab state directory (default /tmp/septum-lab-<hash of DIR>)."),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option("--prefix", help="Namespace name prefix (default septum-l<hash of state>-)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@lab_app.command("up")
def up(
    repo: RepoArg,
    state: StateOpt = None,
    prefix: PrefixOpt = None,
    no_agents: Annotated[
        bool, typer.Option("--no-agents", help="Plumbing only: start no agents.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the agents to apply the repository.")
    ] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Build the lab (or re-sync it with the repository) and wait until it is ready."""
    from septum.cli import main as cli
    from septum.lab.control import lab_up

    with cli._reported(as_json):
        report = lab_up(
            repo, state_dir=state, prefix=prefix, agents=not no_agents, timeout=timeout
        )
    if as_json:
        cli._print_json(report.to_json())
        return
    plan = report.plan
    table = Table("ns", "workload", "kind", "addresses", "enforcer", title=f"Lab {plan.prefix}*")
    for e in plan.endpoints:
        kind = e.kind.value + (f" on {e.host}" if e.host else "")
        table.add_row(e.short, e.name, kind, " ".join(map(str, e.addresses)), e.enforcer or "")
    cli.out.print(table)
    for name, reason in plan.skipped:
        cli.out.print(f"[yellow]skipped[/] {name}: {reason}")
    for name, (added, removed) in report.address_changes.items():
        changes = [f"+{a}" for a in added] + [f"-{a}" for a in removed]
        cli.out.print(f"addresses of {name}: {' '.join(changes)}")
    how = "built" if report.built else "re-synced"
    agents = f", {len(report.agents)} agents applied the repository" if report.agents else ""
    cli.out.print(
        f"[green]lab {how}[/]: {len(plan.endpoints)} namespaces{agents} in "
        f"{report.seconds:.1f} s (state {report.state_dir})"
    )


@lab_app.command("probe")
def probe(
    repo: RepoArg,
    state: StateOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds without an answer before a probe counts as blocked.")
    ] = 1.5,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the agents to apply the repository.")
    ] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Connect every pair of workloads on every service port; compare with `explain`."""
    from septum.cli import main as cli
    from septum.lab.probe import probe_lab

    with cli._reported(as_json):
        report = probe_lab(repo, state_dir=state, timeout=timeout, wait=wait)
    if as_json:
        cli._print_json(report.to_json())
        raise typer.Exit(0 if report.ok else 1)
    cells = report.cells()
    labels = [f"{e.short} {e.name}" for e in report.endpoints]
    table = Table(
        "source ↓  destination →",
        *(e.short for e in report.endpoints),
        title="Probes: connected/total per pair (! marks a disagreement)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    for src, label in zip(report.endpoints, labels, strict=True):
        row = []
        for dst in report.endpoints:
            cell = cells.get((src.name, dst.name))
            if src.name == dst.name:
                row.append("[dim]·[/]")
            elif cell is None:
                row.append("[dim]-[/]")
            else:
                text = f"{cell.connected}/{cell.total}" + ("!" if cell.disagreements else "")
                if cell.disagreements:
                    colour = "bold red"
                elif cell.connected == 0:
                    colour = "dim"
                else:
                    colour = "green" if cell.connected == cell.total else "default"
                row.append(f"[{colour}]{text}[/]")
        table.add_row(label, *row)
    # A matrix is only readable unwrapped: print it as wide as it needs to be.
    wide = Console(highlight=False, width=10_000)
    needed = Measurement.get(wide, wide.options, table).maximum
    Console(highlight=False, width=max(cli.out.width, needed)).print(table)
    for r in report.disagreements:
        cli.out.print(f"[red]disagreement[/] {r.describe()}")
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
    connected = sum(r.connected for r in report.results)
    colour = "green" if report.ok else "red"
    cli.out.print(
        f"[{colour}]{len(report.results)} probes, {connected} connected, "
        f"{len(report.disagreements)} disagreement(s)[/]"
        + (f"; skipped service entries: {skipped}" if skipped else "")
        + ("" if report.agents else " [yellow](no agents: nothing is enforced)[/]")
        + f" in {report.seconds:.1f} s"
    )
    raise typer.Exit(0 if report.ok else 1)


@lab_app.command("down")
def down(
    repo: RepoArg, state: StateOpt = None, prefix: PrefixOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop the lab's processes, delete its namespaces and state (safe to repeat)."""
    from septum.cli import main as cli
    from septum.lab.control import lab_down

    with cli._reported(as_json):
        report = lab_down(repo, state_dir=state, prefix=prefix)
    if as_json:
        cli._print_json(report.to_json())
        return
    cli.out.print(
        f"[green]lab down[/]: {len(report.namespaces)} namespaces deleted, "
        f"{len(report.processes)} processes stopped in {report.seconds:.1f} s"
    )
