"""``septum server``, ``push``, ``pull``, ``provision``, ``rollback``, ``versions`` and
``audit verify``: thin front ends of the control plane (``septum.server``)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from septum.cli.main import _fail, _load, _print_json, _reported, app, err, out
from septum.errors import SeptumError

server_app = typer.Typer(
    help="Run the control-plane API server.", no_args_is_help=True, add_completion=False
)
audit_app = typer.Typer(help="The control plane's audit log.", no_args_is_help=True)

ServerOpt = Annotated[
    str,
    typer.Option("--server", envvar="SEPTUM_SERVER", help="The API server's URL."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="SEPTUM_TOKEN", help="API token (or SEPTUM_TOKEN)."),
]
DataOpt = Annotated[
    Path,
    typer.Option("--data", envvar="SEPTUM_DATA", help="Data directory (SQLite, flows, TLS)."),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="SEPTUM_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _client(server: str, token: str | None) -> Any:
    from septum.server.client import ApiClient

    return ApiClient(server, token)


def _api_errors(as_json: bool, call: Any) -> Any:
    from septum.server.client import ApiError

    try:
        return call()
    except ApiError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        problems = body.get("problems") or []
        if as_json:
            _print_json({"ok": False, "status": exc.status, **body})
            raise typer.Exit(2 if exc.status != 422 or problems else 1) from None
        err.print(f"[bold red]error:[/] {exc}")
        for p in problems:
            where = f"{p.get('document', '')}: {p.get('field', '')}".rstrip(": ")
            err.print(f"  [bold]{where}[/]: {p.get('message')}")
        failed = (body.get("assertions") or {}).get("results") or []
        for r in failed:
            if not r.get("passed"):
                err.print(f"  [red]assertion {r.get('name')} fails[/]")
        raise typer.Exit(2 if exc.status != 422 or problems else 1) from None


# ------------------------------------------------------------------ server


@server_app.command("run")
def server_run(
    data: DataOpt = Path("septum-data"),
    database_url: DatabaseOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8443,
    bootstrap_admin: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-admin",
            help="With no user yet: create this admin and print its token once.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.1,
            help="Re-read enforcer revisions at least this often (seconds), for agents' "
            "long-polls, in case a PostgreSQL notification was lost.",
        ),
    ] = 2.0,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--no-tls",
            help="Serve HTTPS with a certificate from the control plane's CA; agents may "
            "present client certificates (mutual TLS).",
        ),
    ] = False,
    tls_names: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-name",
            help="A DNS name or IP address for the server certificate (repeatable; "
            "default: 127.0.0.1 and localhost).",
        ),
    ] = None,
) -> None:
    """Serve the API (OpenAPI at /docs and /openapi.json, metrics at /metrics)."""
    import uvicorn

    from septum.server.app import AppContext, create_app, json_log_config
    from septum.server.db import Database
    from septum.server.service import bootstrap_admin as bootstrap
    from septum.server.settings import ServerSettings

    with _reported(False):
        data.mkdir(parents=True, exist_ok=True)
        settings = ServerSettings(
            data_dir=data, database_url=database_url, poll_interval=poll_interval
        )
        db = Database(settings.url)
        db.migrate()
        if bootstrap_admin:
            token = bootstrap(db, bootstrap_admin, datetime.now(UTC))
            if token is not None:
                out.print(json.dumps(token))
        tls_options: dict[str, Any] = {}
        if tls:
            from septum.server import enrolment
            from septum.server.tls import server_ssl_config

            # A fresh server certificate (and key) at every start; the CA is the database's.
            now = datetime.now(UTC)
            ca = enrolment.authority(db, now)
            issued = enrolment.server_certificate(db, tls_names or ["127.0.0.1", "localhost"], now)
            assert issued.key_pem is not None  # made here, so its key is here
            tls_options = dict(
                server_ssl_config(
                    settings.data_dir / "tls",
                    ca_pem=ca.cert_pem,
                    cert_pem=issued.cert_pem,
                    key_pem=issued.key_pem,
                )
            )
            err.print(f"TLS: CA fingerprint {enrolment.ca_fingerprint(ca)}")
        config = uvicorn.Config(
            create_app(AppContext(settings, db)),
            host=host,
            port=port,
            log_config=json_log_config(log_level),
            access_log=False,
            # Agents' long-polls wait up to a minute; on shutdown they are cut after this
            # (agents retry with backoff) instead of holding the process that long.
            timeout_graceful_shutdown=3,
            **tls_options,
        )
        uvicorn.Server(config).run()


@server_app.command("migrate")
def server_migrate(data: DataOpt = Path("septum-data"), database_url: DatabaseOpt = None) -> None:
    """Bring the database schema to the newest migration (the server also does at start)."""
    from septum.server.db import Database
    from septum.server.settings import ServerSettings

    with _reported(False):
        data.mkdir(parents=True, exist_ok=True)
        db = Database(ServerSettings(data_dir=data, database_url=database_url).url)
        db.migrate()
        current, head = db.schema_revision()
        out.print(f"schema at {current} (newest {head})")


@server_app.command("bootstrap")
def server_bootstrap(
    name: Annotated[str, typer.Argument(help="The first admin's name.")],
    data: DataOpt = Path("septum-data"),
    database_url: DatabaseOpt = None,
) -> None:
    """Create the first admin and print its API token (only while there is no user)."""
    from septum.server.db import Database
    from septum.server.service import bootstrap_admin
    from septum.server.settings import ServerSettings

    with _reported(False):
        data.mkdir(parents=True, exist_ok=True)
        db = Database(ServerSettings(data_dir=data, database_url=database_url).url)
        db.migrate()
        token = bootstrap_admin(db, name, datetime.now(UTC))
        if token is None:
            _fail("the server has users already; ask an admin for a token")
        _print_json(token)


# ------------------------------------------------------------------ GitOps


def repository_entries(repo: Path) -> list[dict[str, Any]]:
    """Every document of a repository directory with its path relative to it, in load
    order (validated first: bad files fail here with file:line:column)."""
    from septum.sources.files import repository_files
    from septum.sources.yamldoc import parse_yaml

    _load(repo)
    entries: list[dict[str, Any]] = []
    for file in repository_files(repo):
        rel = str(file.relative_to(repo)) if repo.is_dir() else file.name
        for doc in parse_yaml(file.read_text(encoding="utf-8-sig"), str(file)).documents:
            entries.append({"path": rel, "body": doc.value})
    return entries


@app.command()
def push(
    repo: Annotated[Path, typer.Argument(help="Policy repository directory.")],
    server: ServerOpt = "http://127.0.0.1:8443",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a repository as the server's draft (validated here first; all or nothing)."""
    with _reported(as_json):
        entries = repository_entries(repo)
        with _client(server, token) as c:
            result = _api_errors(
                as_json, lambda: c.call("PUT", "/api/v1/draft", json={"documents": entries})
            )
    if as_json:
        _print_json(result)
    else:
        out.print(f"draft: {result['changed']} document(s) changed ({len(entries)} in all)")


@app.command()
def pull(
    directory: Annotated[Path, typer.Argument(help="Where to write the repository's files.")],
    server: ServerOpt = "http://127.0.0.1:8443",
    token: TokenOpt = None,
    state: Annotated[
        str, typer.Option("--state", help="active, draft or a version number.")
    ] = "active",
    as_json: JsonOpt = False,
) -> None:
    """Write the active repository (or the draft, or a version) back to files. Files the
    server has no documents for are left alone; written files are replaced whole."""
    with _reported(as_json):
        with _client(server, token) as c:
            result = _api_errors(
                as_json, lambda: c.call("GET", "/api/v1/repository", params={"state": state})
            )
        files: dict[str, list[Any]] = {}
        for entry in result["documents"]:
            files.setdefault(entry["path"], []).append(entry["body"])
        root = directory.resolve()
        for rel in files:
            target = (root / rel).resolve()
            if root not in target.parents:
                raise SeptumError(f"the server names a file outside {directory}: {rel}")
        for rel, bodies in files.items():
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            text = "---\n".join(
                yaml.safe_dump(b, sort_keys=False, allow_unicode=True) for b in bodies
            )
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
    if as_json:
        _print_json({"files": sorted(files), "documents": len(result["documents"])})
    else:
        out.print(f"wrote {len(result['documents'])} document(s) in {len(files)} file(s)")


@app.command()
def provision(
    note: Annotated[str, typer.Option("--note", help="Why (e.g. the ticket). Required.")],
    server: ServerOpt = "http://127.0.0.1:8443",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Provision the draft: validate, run every assertion, replay recent flows, and make it
    the next version. Exit 1 when refused (a failing assertion), 2 on bad input."""
    with _reported(as_json), _client(server, token) as c:
        result = _api_errors(
            as_json, lambda: c.call("POST", "/api/v1/provision", json={"note": note})
        )
    if as_json:
        _print_json(result)
        return
    replay = result.get("replay") or {}
    out.print(
        f"version {result['version']}: {len(result['changes'])} change(s); "
        f"{result['assertions']['total']} assertion(s) pass; replay: "
        f"{(replay.get('newly_denied') or {}).get('records', 0)} record(s) newly denied, "
        f"{(replay.get('newly_allowed') or {}).get('records', 0)} newly allowed"
    )


@app.command()
def rollback(
    version: Annotated[int, typer.Argument(help="The version whose documents come back.")],
    note: Annotated[str, typer.Option("--note", help="Why. Required.")],
    server: ServerOpt = "http://127.0.0.1:8443",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an old version's documents the next version (and the draft)."""
    with _reported(as_json), _client(server, token) as c:
        result = _api_errors(
            as_json,
            lambda: c.call("POST", f"/api/v1/versions/{version}/rollback", json={"note": note}),
        )
    if as_json:
        _print_json(result)
    else:
        out.print(f"version {result['version']}: the documents of version {version}")


@app.command()
def versions(
    server: ServerOpt = "http://127.0.0.1:8443",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The numbered versions, newest last, and which is active."""
    with _reported(as_json), _client(server, token) as c:
        result = _api_errors(as_json, lambda: c.call("GET", "/api/v1/versions"))
    if as_json:
        _print_json(result)
        return
    for v in result["versions"]:
        mark = "*" if v["version"] == result["active"] else " "
        out.print(
            f"{mark} {v['version']:>4}  {v['created_at']}  {v['created_by']}  "
            f"{v['origin']}  {v['note']}"
        )


# ------------------------------------------------------------------ audit


@audit_app.command("verify")
def audit_verify(
    server: Annotated[
        str | None,
        typer.Option("--server", envvar="SEPTUM_SERVER", help="Verify through the API."),
    ] = None,
    token: TokenOpt = None,
    data: DataOpt = Path("septum-data"),
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the audit log's hash chain here, from the entries read through the API
    (--server) or from the database directly. Exit 1 at the first altered, missing or
    reordered entry."""
    from septum.server.audit import entry_json, verify_entries

    with _reported(as_json):
        if server:
            with _client(server, token) as c:
                entries: list[dict[str, Any]] = []
                head: tuple[int, str] | None = None
                while True:
                    after = entries[-1]["seq"] if entries else 0
                    params = {"after": after, "limit": 10_000}
                    page = _api_errors(
                        as_json,
                        lambda params=params: c.call("GET", "/api/v1/audit", params=params),
                    )
                    if head is None and page.get("head"):
                        head = (page["head"]["seq"], page["head"]["hash"])
                    if not page["entries"]:
                        break
                    entries.extend(page["entries"])
            count, problems = verify_entries(entries, head)
        else:
            from sqlalchemy import select

            from septum.server.db import AuditEntry, Control, Database
            from septum.server.settings import ServerSettings

            db = Database(ServerSettings(data_dir=data, database_url=database_url).url)
            with db.read() as s:
                control = s.get(Control, 1)
                if control is None:
                    raise SeptumError("not a Septum database (no control row)")
                rows = s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
                count, problems = verify_entries(
                    (entry_json(e) for e in rows), (control.audit_seq, control.audit_hash)
                )
    if as_json:
        _print_json(
            {"ok": not problems, "entries": count, "problems": [p.to_json() for p in problems]}
        )
    elif problems:
        for p in problems:
            err.print(f"[red]entry {p.seq}:[/] {p.message}")
    else:
        out.print(f"audit log intact: {count} entries")
    raise typer.Exit(1 if problems else 0)


app.add_typer(server_app, name="server")
app.add_typer(audit_app, name="audit")
