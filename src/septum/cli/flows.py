"""``septum flows import|query|compact|settings|inventory`` and ``septum replay``: visibility
commands, as thin front ends over :mod:`septum.flows`.

Exit codes: 0 success; 1 the answer is "no" (``import`` met malformed lines and stored the
rest; ``replay --fail-on`` found such changes); 2 bad input or a file that could not be
imported at all (nothing of it stored), reported without a traceback.

Imported by ``septum.cli.main`` at its end (it uses main's plumbing).
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from septum.cli.main import (
    AtOpt,
    JsonOpt,
    _fail,
    _load,
    _now,
    _print_json,
    _reported,
    app,
    err,
    out,
)
from septum.errors import SeptumError

flows_app = typer.Typer(
    name="flows",
    help="The flow store: import flow records and logs, query them, keep the store tidy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        envvar="SEPTUM_DATA",
        help="Data directory of the flow store (env SEPTUM_DATA).",
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Start of the time window: RFC 3339, or an age like 24h, 7d."),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="End of the time window (exclusive), same forms.")
]
_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def window_time(text: str | None, now: datetime, option: str) -> datetime | None:
    """``--since 24h`` → now − 24 h; RFC 3339 with zone as is; None stays None."""
    if text is None:
        return None
    age = _AGE.match(text.strip())
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{option} {text!r} is neither an RFC 3339 time nor an age like 24h or 7d")
    if when.tzinfo is None:
        _fail(f"{option} {text!r} has no time zone (add Z or +01:00)")
    return when


_FORMAT_BY_SUFFIX = {
    ".parquet": "parquet",
    ".jsonl": "agent",
    ".csv": "csv",
    ".pcap": "netflow",
    ".pcapng": "netflow",
}
FlowsFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--flows-format",
        help="When --flows is a file: its format (default from the suffix: .parquet, "
        ".jsonl = agent, .csv, .pcap/.pcapng = netflow).",
    ),
]


@contextmanager
def _flow_source(path: Path, fmt: str | None, model: Any, now: datetime) -> Iterator[Any]:
    """The flow store at ``path`` (a data directory), or a flow file imported into a
    temporary store (attributed with ``model``) for the duration of one command."""
    import tempfile

    from septum.flows.importers import ImportOptions, importer_for
    from septum.flows.store import FlowStore, StoreSettings

    if path.is_dir():
        yield _store(path, create=False)
        return
    if not path.is_file():
        raise SeptumError(f"{path}: no such flow file or data directory")
    name = path.name.removesuffix(".gz")
    chosen = fmt or _FORMAT_BY_SUFFIX.get(Path(name).suffix.lower())
    if chosen is None:
        raise SeptumError(f"{path}: say which format it is with --flows-format")
    with tempfile.TemporaryDirectory(prefix="septum-flows-") as tmp:
        store = FlowStore(Path(tmp))
        store.configure(StoreSettings(retention_days=None))
        report = store.import_file(path, importer_for(chosen), ImportOptions(now=now), model)
        if not report.ok:
            raise SeptumError(f"{path}: not imported: {report.error}")
        if report.malformed:
            err.print(f"[yellow]{path}: {report.malformed:,} malformed line(s) left out[/]")
        yield store


def _store(data: Path, *, create: bool) -> Any:
    from septum.flows.store import FlowStore

    return FlowStore(data, create=create)


def _columns(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        field, sep, column = part.partition("=")
        if not sep or not field.strip() or not column.strip():
            _fail(f"--map {text!r}: expected FIELD=COLUMN pairs separated by commas")
        mapping[field.strip()] = column.strip()
    return mapping


@flows_app.command("import")
def import_command(
    files: Annotated[list[Path], typer.Argument(help="Flow files (gzip is read as such).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="agent, vpc, hubble, conntrack, netflow (pcap/pcapng), csv or parquet.",
        ),
    ],
    data: DataOpt = Path("septum-data"),
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="Policy repository: the inventory to attribute with."),
    ] = None,
    fields: Annotated[
        str | None,
        typer.Option("--fields", help="VPC flow logs: the custom format's field names."),
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option("--map", help="CSV: FIELD=COLUMN pairs, e.g. source=src_ip,port=dport."),
    ] = None,
    time_format: Annotated[
        str | None, typer.Option("--time-format", help="CSV: strptime format of time columns.")
    ] = None,
    reporter: Annotated[
        str | None, typer.Option("--reporter", help="Who observed the flows, if not in them.")
    ] = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import flow files into the store: streaming, attributed to workloads, users and
    networks by time, all or nothing per file. Malformed lines are counted and reported
    with their line numbers (exit 1); a file that cannot be read at all stores nothing
    (exit 2)."""
    from septum.flows.importers import ImportOptions, importer_for
    from septum.model.resources import Repository

    now = _now(at)
    with _reported(as_json):
        importer = importer_for(fmt)
        model = _load(repo) if repo is not None else Repository()
        if repo is None and not as_json:
            err.print(
                "[yellow]no --repo: flows are attributed without an inventory (every address "
                "is unknown)[/]"
            )
        store = _store(data, create=True)
        options = ImportOptions(
            now=now,
            reporter=reporter,
            fields=tuple(fields.replace(",", " ").split()) if fields else None,
            columns=_columns(mapping),
            time_format=time_format,
        )
        for f in files:
            if not f.is_file():
                raise SeptumError(f"{f}: no such file")
        reports = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal or as_json,
        ) as progress:
            for f in files:
                task = progress.add_task(f"importing {f.name}", total=f.stat().st_size)
                reports.append(
                    store.import_file(
                        f,
                        importer,
                        options,
                        model,
                        progress=lambda done, task=task: progress.update(task, completed=done),
                    )
                )
                progress.update(task, completed=f.stat().st_size)
    failed = [r for r in reports if not r.ok]
    malformed = sum(r.malformed for r in reports)
    if as_json:
        _print_json({"ok": not failed, "files": [r.to_json() for r in reports]})
    else:
        for r in reports:
            if not r.ok:
                where = f" (stopped at line {r.line})" if r.line else ""
                err.print(f"[bold red]{r.origin}: not imported{where}:[/] {r.error}")
                err.print("  nothing of this file was stored")
                continue
            skipped = ", ".join(f"{n} {why}" for why, n in sorted(r.skipped.items()))
            out.print(
                f"{r.origin}: {r.stored:,} flows stored in {len(r.partitions)} partition(s)"
                + (f", {r.expired:,} older than the retention window" if r.expired else "")
                + (f", skipped {skipped}" if skipped else "")
                + (f", [yellow]{r.malformed:,} malformed line(s)[/]" if r.malformed else "")
            )
            for m in r.malformed_examples:
                err.print(f"  {r.origin}:{m.line}: {m.reason}")
            if r.malformed > len(r.malformed_examples):
                err.print(f"  … and {r.malformed - len(r.malformed_examples):,} more")
    if failed:
        raise typer.Exit(2)
    if malformed:
        raise typer.Exit(1)


@flows_app.command("query")
def query_command(
    data: DataOpt = Path("septum-data"),
    source: Annotated[
        str | None, typer.Option("--from", help="Selector on the source's labels.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--to", help="Selector on the destination's labels.")
    ] = None,
    services: Annotated[
        list[str] | None,
        typer.Option("--service", help="tcp/443, udp/53, tcp/8000-8099, icmp (repeatable)."),
    ] = None,
    verdicts: Annotated[
        list[str] | None,
        typer.Option(
            "--verdict", help="allowed, denied, would-deny, logged or unknown (repeatable)."
        ),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    rule: Annotated[
        str | None,
        typer.Option("--rule", help="Deciding rule contains this (tier/ or tier/policy)."),
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="Label keys to group by, e.g. app,env.")
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="Take labels from this repository, not the store's."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    limit: Annotated[int | None, typer.Option("--limit", help="Show the N largest edges.")] = None,
    counts_only: Annotated[
        bool,
        typer.Option(
            "--counts-only",
            help="Records and bytes only (no services, verdicts, times): faster on big stores.",
        ),
    ] = False,
    at: AtOpt = None,
) -> None:
    """Aggregated edges of the stored flows: filter by selector, service, verdict, time
    window and rule; group by label keys."""
    from septum.engine.observed import RecordedVerdict
    from septum.flows.analysis import repository_identities
    from septum.flows.query import EDGE_COLUMNS, FlowQuery, query_flows
    from septum.model.parse import parse_service_port
    from septum.model.selector import parse_selector

    if fmt not in ("table", "json", "csv"):
        _fail(f"--format {fmt!r} is not one of table, json, csv")
    now = _now(at)
    with _reported(fmt == "json"):
        try:
            wanted = tuple(RecordedVerdict(v) for v in verdicts or ())
        except ValueError as e:
            raise SeptumError(f"--verdict: {e}") from None
        query = FlowQuery(
            source=parse_selector(source) if source else None,
            destination=parse_selector(destination) if destination else None,
            services=tuple(_service(s, parse_service_port) for s in services or ()),
            verdicts=wanted,
            since=window_time(since, now, "--since"),
            until=window_time(until, now, "--until"),
            rule=rule,
            group_by=tuple(k.strip() for k in group_by.split(",") if k.strip()) if group_by else (),
            limit=limit,
            counts_only=counts_only,
        )
        store = _store(data, create=False)
        identities = repository_identities(_load(repo)) if repo is not None else None
        result = query_flows(store, query, identities)
    if fmt == "json":
        _print_json({"records": result.records, "edges": result.edges, "rows": result.to_json()})
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(EDGE_COLUMNS)
        for row in result.rows:
            writer.writerow(
                [
                    *row[:2],
                    " ".join(row[2]),
                    *row[3:7],
                    _iso(row[7]),
                    _iso(row[8]),
                    *row[9:],
                ]
            )
        return
    table = Table(
        title=f"{result.records:,} flow records, {result.edges:,} edges"
        + (f" (largest {len(result.rows)})" if len(result.rows) < result.edges else "")
    )
    for column in (
        "source",
        "destination",
        "services",
        "records",
        "bytes",
        "allowed",
        "denied",
        "would-deny",
        "last seen",
    ):
        table.add_column(column, justify="right" if column in ("records", "bytes") else "left")
    for row in result.rows:
        services_text = ", ".join(row[2][:4]) + (f", +{len(row[2]) - 4}" if len(row[2]) > 4 else "")
        table.add_row(
            row[0],
            row[1],
            services_text,
            f"{row[3]:,}",
            f"{row[6]:,}",
            f"{row[9]:,}",
            f"{row[10]:,}",
            f"{row[11]:,}",
            _iso(row[8]),
        )
    out.print(table)


def _iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when is not None else ""


def _service(text: str, parse: Any) -> Any:
    try:
        return parse(text)
    except (ValueError, SeptumError) as e:
        raise SeptumError(f"--service {text!r}: {e}") from None


@flows_app.command("compact")
def compact_command(
    data: DataOpt = Path("septum-data"), at: AtOpt = None, as_json: JsonOpt = False
) -> None:
    """Merge small files per partition, drop partitions past retention, remove orphans."""
    now = _now(at)
    with _reported(as_json):
        result = _store(data, create=False).compact(now)
    if as_json:
        _print_json(result.to_json())
    else:
        out.print(
            f"{result.files_before} → {result.files_after} files "
            f"({result.merged_partitions} partition(s) merged, "
            f"{result.expired_partitions} expired, {result.orphans_removed} orphan(s) removed)"
        )


@flows_app.command("settings")
def settings_command(
    data: DataOpt = Path("septum-data"),
    retention_days: Annotated[
        int | None, typer.Option("--retention-days", help="Keep flows this many days.", min=1)
    ] = None,
    keep_forever: Annotated[
        bool, typer.Option("--keep-forever", help="No retention limit.")
    ] = False,
    compact_min_files: Annotated[
        int | None,
        typer.Option("--compact-min-files", help="Merge partitions with this many files.", min=2),
    ] = None,
) -> None:
    """Show or change the store's settings (retention, compaction)."""
    from dataclasses import replace

    with _reported(False):
        store = _store(data, create=True)
        settings = store.settings
        if keep_forever:
            settings = replace(settings, retention_days=None)
        elif retention_days is not None:
            settings = replace(settings, retention_days=retention_days)
        if compact_min_files is not None:
            settings = replace(settings, compact_min_files=compact_min_files)
        if settings != store.settings:
            store.configure(settings)
    _print_json(settings.to_json())


@flows_app.command("reattribute")
def reattribute_command(
    repo: Annotated[Path, typer.Argument(help="Policy repository (the inventory to use).")],
    data: DataOpt = Path("septum-data"),
    at: AtOpt = None,
) -> None:
    """Attribute every stored flow again with this inventory and the ownership history
    (for flows imported before the inventory was known). Day by day, each all or nothing."""
    now = _now(at)
    with _reported(False):
        rows = _store(data, create=False).reattribute(_load(repo), now)
    out.print(f"{rows:,} flow records attributed again")


@flows_app.command("inventory")
def inventory_command(
    repo: Annotated[Path, typer.Argument(help="Policy repository (its inventory now).")],
    data: DataOpt = Path("septum-data"),
    at: AtOpt = None,
) -> None:
    """Record the repository's inventory as a snapshot in the store's ownership history,
    so flows are attributed to whoever held an address at the time."""
    now = _now(at)
    with _reported(False):
        intervals = _store(data, create=True).record_inventory(_load(repo), now)
    out.print(f"ownership history: {intervals:,} interval(s)")


FailOn = Annotated[
    str | None,
    typer.Option(
        "--fail-on", help="Exit 1 on: newly-denied, newly-allowed or any (for CI on policy PRs)."
    ),
]


@app.command("replay")
def replay_command(
    draft: Annotated[Path, typer.Argument(help="Draft policy repository.")],
    flows: Annotated[
        Path,
        typer.Option(
            "--flows", envvar="SEPTUM_DATA", help="Data directory of the flows, or a flow file."
        ),
    ],
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Active repository (default: the recorded verdicts)."),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    fail_on: FailOn = None,
    examples: Annotated[int, typer.Option("--examples", help="Example flows per tier.")] = 3,
    flows_format: FlowsFormatOpt = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-evaluate recorded flows under a draft repository: flows newly denied and newly
    allowed, grouped by the tier (and its owners) that decides them, with examples."""
    from septum.flows.analysis import replay_store

    if fail_on not in (None, "newly-denied", "newly-allowed", "any"):
        _fail(f"--fail-on {fail_on!r} is not one of newly-denied, newly-allowed, any")
    now = _now(at)
    with _reported(as_json):
        draft_model = _load(draft)
        active = _load(against) if against is not None else None
        inventory = active if active is not None else draft_model
        with _flow_source(flows, flows_format, inventory, now) as store:
            report = replay_store(
                store,
                draft_model,
                active,
                since=window_time(since, now, "--since"),
                until=window_time(until, now, "--until"),
                examples=examples,
            )
    failing = (fail_on in ("newly-denied", "any") and report.newly_denied > 0) or (
        fail_on in ("newly-allowed", "any") and report.newly_allowed > 0
    )
    if as_json:
        _print_json({**report.to_json(), "ok": not failing})
    else:
        out.print(
            f"replayed {report.records:,} flow records ({report.groups:,} distinct flows) "
            f"against {report.baseline}: [red]{report.newly_denied:,} newly denied[/] "
            f"({report.newly_denied_groups:,} flows), [green]{report.newly_allowed:,} newly "
            f"allowed[/] ({report.newly_allowed_groups:,} flows)"
        )
        for owner in report.by_owner:
            who = ", ".join(owner.owners) or "no owners"
            tier = owner.tier or "(repository default)"
            out.print(
                f"\n[bold]{owner.change.value}[/]: {owner.records:,} records "
                f"({owner.groups:,} flows), tier [bold]{tier}[/] ({who})"
            )
            for e in owner.examples:
                j = e.to_json()
                out.print(
                    f"  {j['source_identity']} ({j['source']}) → {j['destination_identity']} "
                    f"({j['destination']}) {j['service']}: {e.records:,} records, "
                    f"last {j['last_seen']}"
                )
                out.print(f"    now:    {j['after']}")
                out.print(f"    before: {j['before']}")
    if failing:
        raise typer.Exit(1)


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        _fail(f"--granularity {text!r}: expected label keys such as app,env")
    return keys


@app.command("map")
def map_command(
    repo: Annotated[
        Path | None,
        typer.Argument(help="Active repository (edges marked under it); none: recorded verdicts."),
    ] = None,
    flows: Annotated[
        Path,
        typer.Option(
            "--flows", envvar="SEPTUM_DATA", help="Data directory of the flows, or a flow file."
        ),
    ] = Path("septum-data"),
    granularity: Annotated[
        str, typer.Option("--granularity", help="Label keys of a node, e.g. app,env.")
    ] = "app,env",
    fmt: Annotated[str, typer.Option("--format", help="json, graphml, dot or svg.")] = "json",
    output: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    flows_format: FlowsFormatOpt = None,
    at: AtOpt = None,
) -> None:
    """The application dependency graph of the recorded flows at a label granularity, each
    edge marked allowed / denied / would-be-denied under the active policy."""
    from septum.engine.depmap import MapOptions
    from septum.flows.analysis import map_store
    from septum.flows.graphviz import render_svg
    from septum.model.resources import Repository
    from septum.render.graph import map_to_dot, map_to_graphml, map_to_json

    if fmt not in ("json", "graphml", "dot", "svg"):
        _fail(f"--format {fmt!r} is not one of json, graphml, dot, svg")
    now = _now(at)
    with _reported(False):
        active = _load(repo) if repo is not None else None
        inventory = active if active is not None else Repository()
        with _flow_source(flows, flows_format, inventory, now) as store:
            dependency_map = map_store(
                store,
                active,
                MapOptions(granularity=_keys(granularity)),
                since=window_time(since, now, "--since"),
                until=window_time(until, now, "--until"),
            )
        if fmt == "json":
            import json

            text = json.dumps(map_to_json(dependency_map), indent=2) + "\n"
        elif fmt == "graphml":
            text = map_to_graphml(dependency_map)
        else:
            text = map_to_dot(dependency_map)
            if fmt == "svg":
                text = render_svg(text)
        if output is not None:
            output.write_text(text)
    if output is None:
        sys.stdout.write(text)
    else:
        err.print(
            f"{len(dependency_map.nodes)} nodes, {len(dependency_map.edges)} edges → {output}"
        )


@app.command("recommend")
def recommend_command(
    repo: Annotated[Path, typer.Argument(help="Policy repository (inventory and tiers).")],
    flows: Annotated[
        Path,
        typer.Option(
            "--flows", envvar="SEPTUM_DATA", help="Data directory of the flows, or a flow file."
        ),
    ] = Path("septum-data"),
    scope: Annotated[
        str, typer.Option("--scope", help="Selector of the workloads to protect.")
    ] = "all()",
    granularity: Annotated[
        str, typer.Option("--granularity", help="Label keys to generalise to, e.g. app,role,env.")
    ] = "app,role,env",
    tier: Annotated[
        str | None, typer.Option("--tier", help="Put the policies in this tier.")
    ] = None,
    min_records: Annotated[
        int, typer.Option("--min-records", help="Leave out dependencies seen fewer times.", min=1)
    ] = 1,
    previous: Annotated[
        Path | None,
        typer.Option("--previous", help="An earlier proposal (YAML) to refine, not rewrite."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", help="Write the policies (YAML) here.")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    flows_format: FlowsFormatOpt = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Least-privilege allow policies learned from the recorded flows of the scope,
    generalised to labels, with coverage, per-rule support and the outliers left out."""
    from septum.engine.recommend import RecommendOptions
    from septum.flows.analysis import recommend_store
    from septum.model.selector import parse_selector

    now = _now(at)
    with _reported(as_json):
        model = _load(repo)
        earlier = _load_policies(previous, repo) if previous is not None else ()
        source = _flow_source(flows, flows_format, model, now)
        with source as store:
            result = recommend_store(
                store,
                model,
                RecommendOptions(
                    scope=parse_selector(scope),
                    granularity=_keys(granularity),
                    at=now,
                    tier=tier,
                    min_records=min_records,
                    previous=earlier,
                ),
                since=window_time(since, now, "--since"),
                until=window_time(until, now, "--until"),
            )
        text = result.to_yaml()
        if output is not None:
            output.write_text(text)
    if as_json:
        _print_json({**result.to_json(), "yaml": text if output is None else str(output)})
        return
    if output is None:
        sys.stdout.write(text)
    c = result.coverage
    err.print(
        f"{len(result.policies)} policies in tier {result.tier.name} ({result.tier.detail}); "
        f"coverage: {c.records_allowed:,}/{c.records:,} records "
        f"({c.records_share:.1%}), {c.groups_allowed:,}/{c.groups:,} flows; "
        f"{len(result.outliers)} outlier(s) left out"
        + (f" → {output}" if output is not None else "")
    )
    for o in result.outliers[:10]:
        j = o.to_json()
        err.print(f"  outlier: {j.get('reason')}: {j.get('flow') or j}")
    for note in result.notes[:10]:
        err.print(f"  note: {note}")


def _load_policies(previous: Path, repo: Path) -> tuple[Any, ...]:
    """The policies of an earlier proposal file, parsed together with the repository (its
    tiers and services), so that refinement keeps their names and rules."""
    import yaml

    from septum.sources.files import load_repository

    try:
        documents = list(yaml.safe_load_all(previous.read_text()))
    except yaml.YAMLError as e:
        raise SeptumError(f"{previous}: not YAML: {e}") from None
    names = {
        d["metadata"]["name"]
        for d in documents
        if isinstance(d, dict) and d.get("kind") == "Policy" and isinstance(d.get("metadata"), dict)
    }
    combined = load_repository(repo, extra=[previous])
    return tuple(p for p in combined.policies if p.name in names)


app.add_typer(flows_app, name="flows")
