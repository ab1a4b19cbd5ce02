"""``septum`` command line: a thin front end. Each command parses its arguments, calls one
library function and formats the result (Rich for people, ``--json`` for programs).

Exit codes: 0 success; 1 the answer is "no" (a failing assertion, a denied flow with
``--expect``); 2 bad input (validation errors, unknown names), reported without a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from septum.cli.agent import agent_app
from septum.cli.lab import lab_app
from septum.errors import SeptumError, ValidationError
from septum.model.resources import Repository
from septum.runtime import gc_paused

app = typer.Typer(
    name="septum",
    help="Identity-based microsegmentation: policy as code, explained and compiled to nftables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output keeps whole names (Rich would otherwise assume 80 columns and truncate).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RepoArg = Annotated[Path, typer.Argument(help="Policy repository directory (or one file).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
AtOpt = Annotated[
    str | None,
    typer.Option("--at", help="Evaluation time (RFC 3339, with zone); default: now."),
]


# ------------------------------------------------------------------------------ plumbing


def _fail(message: str, code: int = 2, *, as_json: bool = False, extra: Any = None) -> NoReturn:
    if as_json:
        print(json.dumps({"ok": False, "error": message, **(extra or {})}, indent=2))
    else:
        err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def _reported(as_json: bool) -> Iterator[None]:
    """Turn Septum's own errors into a clean message and exit code 2 (never a traceback)."""
    try:
        yield
    except ValidationError as e:
        problems = [
            {"file": p.file, "line": p.line, "column": p.column, "message": p.message}
            for p in e.problems
        ]
        if as_json:
            _fail(f"{len(problems)} problem(s)", as_json=True, extra={"problems": problems})
        for p in e.problems:
            err.print(f"[bold]{p.file}:{p.line}:{p.column}[/]: [red]error:[/] {p.message}")
        err.print(f"[red]{len(problems)} problem(s); nothing was changed.[/]")
        raise typer.Exit(2) from None
    except SeptumError as e:
        _fail(str(e), as_json=as_json)
    except OSError as e:
        _fail(f"{e.filename or ''}: {e.strerror or e}", as_json=as_json)


def _now(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        _fail(f"--at {at!r} is not an RFC 3339 time (e.g. 2026-11-25T12:00:00Z)")
    if when.tzinfo is None:
        _fail(f"--at {at!r} has no time zone (add Z or +01:00)")
    return when


def _load(path: Path) -> Repository:
    from septum.sources.files import load_repository

    if not path.exists():
        raise SeptumError(f"{path}: no such file or directory")
    return load_repository(path)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


# ------------------------------------------------------------------------------ commands


@app.command()
def validate(repo: RepoArg, as_json: JsonOpt = False) -> None:
    """Load and validate a policy repository; print what it holds."""
    with _reported(as_json):
        model = _load(repo)
    counts = _counts(model)
    if as_json:
        _print_json({"ok": True, "counts": counts, "enforcers": list(model.enforcers())})
        return
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    out.print(f"[green]valid[/]: {repo} ({summary}; {len(model.enforcers())} enforcers)")


def _counts(model: Repository) -> dict[str, int]:
    return {
        "workloads": len(model.workloads),
        "networks": len(model.networks),
        "services": len(model.services),
        "segments": len(model.segments),
        "tiers": len(model.tiers),
        "policies": len(model.policies),
        "users": len(model.users),
        "user_groups": len(model.user_groups),
        "assertions": len(model.assertions),
    }


@app.command()
def explain(
    repo: RepoArg,
    source: Annotated[str, typer.Argument(metavar="FROM", help="Workload name or address.")],
    target: Annotated[str, typer.Argument(metavar="TO", help="Workload name or address.")],
    port: Annotated[
        str, typer.Argument(metavar="PORT/PROTO", help="443/tcp, tcp/443, udp/53 or icmp.")
    ],
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why is a flow allowed or denied? The verdict with its causes."""
    from septum.engine.explain import Flow
    from septum.engine.explain import explain as explain_flow
    from septum.engine.lookup import endpoint_address, parse_flow_port

    when = _now(at)
    with _reported(as_json):
        model = _load(repo)
        protocol, number = parse_flow_port(port)
        flow = Flow(
            endpoint_address(model, source, when),
            endpoint_address(model, target, when),
            protocol,
            number,
            when,
        )
        result = explain_flow(model, flow)
    if as_json:
        _print_json(result.to_json())
        return
    _print_explanation(result)


def _print_explanation(result: Any) -> None:
    colour = "green" if result.verdict.value == "allow" else "red"
    src = result.source.name or "unknown"
    dst = result.destination.name or "unknown"
    out.print(
        f"[bold {colour}]{result.verdict.value.upper()}[/]  {result.flow.source} ({src}) → "
        f"{result.flow.destination} ({dst}) {result.flow.protocol.value}/{result.flow.port}"
    )
    if not result.sides:
        out.print(f"  {result.summary()}")
    for side in result.sides:
        out.print(f"  {side.describe()}")
    if result.would_be_denied:
        out.print("  [yellow]would be denied[/] (reported, not enforced under the mode)")
    if result.staged_change is not None:
        out.print(f"  [yellow]staged policies: {result.staged_change}[/]")


@app.command("test")
def run_tests(repo: RepoArg, at: AtOpt = None, as_json: JsonOpt = False) -> None:
    """Run every Assertion (flow assertions and never/always invariants)."""
    from septum.engine.assertions import run_assertions

    when = _now(at)
    with _reported(as_json):
        model = _load(repo)
        with _progress() as progress:
            progress.add_task(f"checking {len(model.assertions)} assertions", total=None)
            with gc_paused():
                report = run_assertions(model, when)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_assertions(report)
    raise typer.Exit(0 if report.passed else 1)


def _print_assertions(report: Any) -> None:
    table = Table("assertion", "kind", "result", "flows evaluated", title="Assertions")
    for r in report.results:
        result = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(r.name, r.kind.value, result, str(r.flows_evaluated))
    out.print(table)
    for r in report.failures:
        expected = f" (expected {r.expected.value})" if r.expected is not None else ""
        out.print(f"[red]FAIL[/] {r.name}{expected}{': ' + r.error if r.error else ''}")
        if r.counterexample is not None:
            out.print("  counter-example:")
            _print_explanation(r.counterexample.explanation)
    passed = sum(r.passed for r in report.results)
    out.print(f"{passed} passed, {len(report.results) - passed} failed")


@app.command("compile")
def compile_command(
    repo: RepoArg,
    enforcer: Annotated[str | None, typer.Option(help="Print this enforcer's nft script.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write every enforcer's script to DIR/<enforcer>.nft."),
    ] = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compile host rulesets to nft scripts (one atomic transaction per enforcer)."""
    from septum.render.compile import compile_all, compile_enforcer

    when = _now(at)
    if (enforcer is None) == (out_dir is None):
        _fail("give exactly one of --enforcer NAME or --out DIR", as_json=as_json)
    with _reported(as_json):
        model = _load(repo)
        if enforcer is not None:
            if enforcer not in model.enforcers():
                known = ", ".join(model.enforcers()) or "none"
                raise SeptumError(f"no enforcer {enforcer!r} (enforcers: {known})")
            script = compile_enforcer(model, enforcer, when)
            if as_json:
                _print_json({"enforcer": enforcer, "script": script})
            else:
                sys.stdout.write(script)
            return
        assert out_dir is not None
        with _progress() as progress:
            progress.add_task(f"compiling {len(model.enforcers())} enforcers", total=None)
            with gc_paused():
                scripts = compile_all(model, when)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, script in scripts.items():
            (out_dir / f"{name}.nft").write_text(script)
    if as_json:
        _print_json({"out": str(out_dir), "enforcers": {n: f"{n}.nft" for n in scripts}})
    else:
        out.print(f"wrote {len(scripts)} scripts to {out_dir}/")


@app.command()
def plan(
    repo: RepoArg,
    against: Annotated[Path, typer.Option(help="The repository as it was before the change.")],
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a change does: per enforcer, rules and set elements; assertion flows that change."""
    from septum.engine.plan import plan_change

    when = _now(at)
    with _reported(as_json):
        new, old = _load(repo), _load(against)
        with _progress() as progress:
            progress.add_task("planning", total=None)
            with gc_paused():
                result = plan_change(old, new, when)
    if as_json:
        _print_json(result.to_json())
        return
    _print_plan(result)


def _print_plan(result: Any) -> None:
    table = Table("enforcer", "rules +", "rules -", "elements +", "elements -", title="Plan")
    for e in result.enforcers:
        table.add_row(
            e.enforcer,
            str(len(e.rules_added)),
            str(len(e.rules_removed)),
            str(e.elements_added),
            str(e.elements_removed),
        )
    out.print(table if result.enforcers else "no enforcer changes")
    for change in result.verdict_changes:
        out.print(f"  verdict change: {change.describe()}")
    if not result.verdict_changes:
        out.print("no assertion flow changes its verdict")


@app.command()
def schema() -> None:
    """Print the JSON Schema of resource files (for editors' completion and checks)."""
    from septum.model.schema import repository_json_schema

    _print_json(repository_json_schema())


@app.command()
def demo(repo: RepoArg = Path("examples"), at: AtOpt = None, as_json: JsonOpt = False) -> None:
    """The main job on embedded defaults: validate, test, compile every enforcer, explain."""
    from septum.engine.assertions import run_assertions
    from septum.engine.explain import Evaluator
    from septum.engine.lookup import assertion_flow
    from septum.engine.resolve import resolve_policy
    from septum.model.resources import FlowAssertion
    from septum.render.compile import build_all
    from septum.render.nft import render_nft

    when = _now(at)
    with _reported(as_json):
        model = _load(repo)
        with _progress() as progress:
            progress.add_task("testing and compiling", total=None)
            with gc_paused():
                report = run_assertions(model, when)
                rulesets = build_all(resolve_policy(model, when), model.enforcers())
        visibility = _demo_visibility(repo, model, when)
        evaluator = Evaluator(model)
        flows = [
            assertion_flow(model, a.check, when)
            for a in model.assertions
            if isinstance(a.check, FlowAssertion)
        ][:4]
        explained = [evaluator.explain(f) for f in flows]
        with gc_paused():
            platforms = _platform_rows(model, when)
    nft = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)
    enforcers = [
        {
            "enforcer": name,
            "workloads": sum(1 for w in model.workloads if w.enforcer == name),
            "chains": len(rs.chains),
            "rules": sum(len(c.rules) for c in rs.chains),
            "sets": len(rs.sets),
            "elements": sum(len(s.elements) for s in rs.sets),
            "bytes": len(script := render_nft(rs)),
            "nft_check": _nft_check(nft, script),
        }
        for name, rs in rulesets.items()
    ]
    if as_json:
        _print_json(
            {
                "repository": str(repo),
                "counts": _counts(model),
                "assertions": report.to_json(),
                "enforcers": enforcers,
                "platforms": platforms,
                "visibility": visibility,
                "explained": [e.to_json() for e in explained],
            }
        )
        raise typer.Exit(0 if report.passed else 1)
    out.rule(f"[bold]Septum[/] on {repo}")
    validate(repo)
    _print_assertions(report)
    table = Table(
        *enforcers[0].keys() if enforcers else ["enforcer"],
        title="Compiled host rulesets (one atomic nft transaction each)",
    )
    for row in enforcers:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)
    targets = Table(*platforms[0].keys(), title="Rendered for cloud-native enforcers "
                    "(septum render --target T --verify)")
    for row in platforms:
        targets.add_row(*(str(v) for v in row.values()))
    out.print(targets)
    if visibility:
        edges = Table(
            "source", "destination", "services", "records", "allowed", "denied",
            title=f"Recorded flows ({visibility['file']}, {visibility['stored']} records), "
            "by app,role,env (septum flows query)",
        )  # fmt: skip
        for row in visibility["edges"]:
            edges.add_row(
                row["source"], row["destination"], ", ".join(row["services"]),
                str(row["records"]), str(row["allowed"]), str(row["denied"]),
            )  # fmt: skip
        out.print(edges)
        r, c = visibility["replay"], visibility["recommend"]
        out.print(
            f"replay against the recorded verdicts: {r['newly_denied']['records']} newly "
            f"denied, {r['newly_allowed']['records']} newly allowed; recommend for "
            f'app == "shop": {len(c["policies"])} policies in tier {c["tier"]["name"]}, '
            f"coverage {c['coverage']['records_share']:.0%}, {len(c['outliers'])} outlier(s)"
        )
    out.rule("explained flows")
    for e in explained:
        _print_explanation(e)
    raise typer.Exit(0 if report.passed else 1)


def _demo_visibility(repo: Path, model: Repository, when: datetime) -> dict[str, Any]:
    """The visibility pipeline on the repository's sample agent records (``flows/*.jsonl``),
    in a temporary store: import, query by labels, replay, recommend. Empty without them."""
    import tempfile

    from septum.engine.recommend import RecommendOptions
    from septum.flows.analysis import recommend_store, replay_store
    from septum.flows.importers import ImportOptions, importer_for
    from septum.flows.query import FlowQuery, query_flows
    from septum.flows.store import FlowStore, StoreSettings
    from septum.model.selector import parse_selector

    samples = sorted((repo / "flows").glob("*.jsonl")) if repo.is_dir() else []
    if not samples:
        return {}
    with tempfile.TemporaryDirectory(prefix="septum-demo-") as tmp:
        store = FlowStore(Path(tmp))
        store.configure(StoreSettings(retention_days=None))
        stored = 0
        for sample in samples:
            imported = store.import_file(
                sample, importer_for("agent"), ImportOptions(now=when), model
            )
            if not imported.ok:
                raise SeptumError(f"{sample}: {imported.error}")
            stored += imported.stored
        edges = query_flows(store, FlowQuery(group_by=("app", "role", "env")))
        replayed = replay_store(store, model)
        proposal = recommend_store(
            store,
            model,
            RecommendOptions(
                scope=parse_selector('app == "shop"'),
                granularity=("app", "role", "env"),
                at=when,
            ),
        )
    return {
        "file": ", ".join(str(s) for s in samples),
        "stored": stored,
        "edges": edges.to_json(),
        "replay": replayed.to_json(),
        "recommend": proposal.to_json(),
    }



def _platform_rows(model: Repository, when: datetime) -> list[dict[str, Any]]:
    """Per target: objects rendered, limitations, and the equivalence check where there is
    one (k8s, aws)."""
    from septum.engine.connectivity import analyze_connectivity
    from septum.render.platforms import TARGETS, render_target, verify_rendering

    rows: list[dict[str, Any]] = []
    connections = len(analyze_connectivity(model, when).connections)
    for target in TARGETS:
        rendering = render_target(model, target, when, inventory=target == "k8s")
        verdict = "-"
        if target in ("k8s", "aws"):
            check = verify_rendering(model, rendering, when)
            verdict = ("equivalent" if check.diff.empty else
                       f"{len(check.diff.changes)} pairs differ, as reported" if check.passed
                       else f"FAILED: {len(check.diff.changes)} pairs differ")
        rows.append({
            "target": target,
            "objects": len(rendering.manifests),
            "limitations": len(rendering.limitations),
            "verify": verdict,
            "connections (septum analyze)": connections,
        })
    return rows


# ------------------------------------------------------------- connectivity, k8s, render

FormatOpt = Annotated[
    str, typer.Option("--format", help="Output format: txt, json, csv, md or dot.")
]


def _report_format(text: str) -> Any:
    from septum.engine.connectivity import ReportFormat

    try:
        return ReportFormat(text)
    except ValueError:
        _fail(f"--format {text!r} is not one of txt, json, csv, md, dot")


@app.command()
def analyze(repo: RepoArg, fmt: FormatOpt = "txt", at: AtOpt = None) -> None:
    """Every allowed connection between workloads, and between workloads and external
    ranges, of a Septum repository (the connlist format of `septum k8s connectivity`)."""
    from septum.engine.connectivity import analyze_connectivity, format_connectivity

    report_format = _report_format(fmt)
    when = _now(at)
    with _reported(False):
        model = _load(repo)
        with _progress() as progress:
            progress.add_task("analysing", total=None)
            with gc_paused():
                result = analyze_connectivity(model, when)
    sys.stdout.write(format_connectivity(result, report_format))


@app.command("diff")
def diff_command(
    old: Annotated[Path, typer.Argument(help="Repository or cluster manifests before.")],
    new: Annotated[Path, typer.Argument(help="Repository or cluster manifests after.")],
    fmt: FormatOpt = "txt",
    at: AtOpt = None,
) -> None:
    """The semantic difference between two repositories or two clusters: connections added
    (+) and removed (-). Exit code 1 when they differ."""
    from septum.engine.connectivity import format_diff
    from septum.engine.kubernetes import semantic_diff
    from septum.sources.kubernetes import load_input

    report_format = _report_format(fmt)
    when = _now(at)
    with _reported(False):
        before, after = load_input(old), load_input(new)
        with gc_paused():
            result = semantic_diff(before, after, when)
    sys.stdout.write(format_diff(result, report_format))
    if not result.empty:
        err.print(f"{len(result.changes)} pair(s) changed")
    raise typer.Exit(0 if result.empty else 1)


k8s_app = typer.Typer(
    name="k8s",
    help="Kubernetes clusters: import manifests, analyse their connectivity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ManifestsArg = Annotated[Path, typer.Argument(help="Directory of manifests (.yaml/.yml/.json).")]


@k8s_app.command("connectivity")
def k8s_connectivity(manifests: ManifestsArg, fmt: FormatOpt = "txt", at: AtOpt = None) -> None:
    """Every allowed connection of the cluster, in netpol-analyzer's connlist format."""
    from septum.engine.connectivity import format_connectivity
    from septum.engine.kubernetes import analyze_cluster
    from septum.sources.kubernetes import load_cluster

    report_format = _report_format(fmt)
    when = _now(at)
    with _reported(False):
        cluster = load_cluster(manifests)
        for w in cluster.warnings:
            err.print(f"[bold]{w.file}:{w.line}:{w.column}[/]: [yellow]warning:[/] {w.message}")
        with gc_paused():
            result = analyze_cluster(cluster, when)
    sys.stdout.write(format_connectivity(result, report_format))


@k8s_app.command("import")
def k8s_import(
    manifests: ManifestsArg,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write the cluster as a Septum repository.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a cluster's manifests into Septum's model: workloads (one per owning workload),
    tiers (AdminNetworkPolicy, NetworkPolicy, BaselineAdminNetworkPolicy) and policies."""
    from septum.sources.kubernetes import load_cluster, write_repository

    with _reported(as_json):
        cluster = load_cluster(manifests)
        written = write_repository(cluster.repository, out_dir) if out_dir is not None else None
    model = cluster.repository
    tiers = [t.name for t in model.tiers]
    summary = {
        "workloads": len(model.workloads),
        "tiers": tiers,
        "policies": len(model.policies),
        "exposures": len(cluster.exposures),
        "warnings": [str(w) for w in cluster.warnings],
        "out": str(written) if written is not None else None,
    }
    if as_json:
        _print_json(summary)
        return
    for w in cluster.warnings:
        err.print(f"[bold]{w.file}:{w.line}:{w.column}[/]: [yellow]warning:[/] {w.message}")
    out.print(f"{summary['workloads']} workloads, {summary['policies']} policies in tiers "
              f"{', '.join(tiers) or '(none)'}; {summary['exposures']} exposed")
    if written is not None:
        out.print(f"wrote the repository to {written}/")


@app.command()
def render(
    repo: RepoArg,
    target: Annotated[str, typer.Option("--target", help="k8s, calico, cilium or aws.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write the manifests to DIR.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Import the rendering back and compare "
                                            "its connectivity with the repository's.")
    ] = False,
    inventory: Annotated[
        bool, typer.Option("--inventory/--no-inventory",
                           help="Also render Namespaces and Pods (k8s target).")
    ] = False,
    at: AtOpt = None,
) -> None:
    """Compile the repository to a platform's native policy. What the target cannot express
    is listed (never dropped in silence); exit code 1 when --verify finds a difference the
    listed limitations do not account for."""
    from septum.render.platforms import TARGETS, render_target, verify_rendering
    from septum.sources.kubernetes import write_rendering

    if target not in TARGETS:
        _fail(f"--target {target!r} is not one of {', '.join(TARGETS)}")
    when = _now(at)
    with _reported(False):
        model = _load(repo)
        with gc_paused():
            rendering = render_target(model, target, when, inventory=inventory or verify)
            check = verify_rendering(model, rendering, when) if verify else None
        if out_dir is not None:
            files = write_rendering(rendering, out_dir)
            err.print(f"wrote {', '.join(files)} to {out_dir}/")
        else:
            sys.stdout.write(rendering_text(rendering))
    for limitation in rendering.limitations:
        err.print(f"[yellow]cannot express:[/] {limitation}")
    if check is None:
        return
    for line in check.diff.lines()[:50]:
        err.print(f"  {line}")
    err.print(check.summary())
    raise typer.Exit(0 if check.passed else 1)


def rendering_text(rendering: Any) -> str:
    from septum.sources.kubernetes import rendering_files

    files = rendering_files(rendering)
    if len(files) == 1:
        return next(iter(files.values()))
    return "".join(f"# ---- {name}\n{text}" for name, text in files.items())


app.add_typer(agent_app, name="agent")
app.add_typer(lab_app, name="lab")
app.add_typer(k8s_app, name="k8s")


def _nft_check(nft: str | None, script: str) -> str:
    """Check-mode load (``nft -c``): changes nothing in the kernel."""
    if nft is None:
        return "nft not installed"
    done = subprocess.run(
        [nft, "-c", "-f", "-"], input=script, text=True, capture_output=True, check=False
    )
    return "ok" if done.returncode == 0 else done.stderr.strip().splitlines()[0][:80]


# Visibility commands (flows, replay, map, recommend) use the plumbing above.
import septum.cli.flows  # noqa: E402
import septum.cli.server  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    # Run as ``python -m septum.cli.main``, this module is ``__main__``; the visibility
    # commands registered themselves on ``septum.cli.main.app``, so run that one.
    from septum.cli.main import app as registered

    registered()
