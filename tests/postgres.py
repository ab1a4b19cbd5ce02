"""A private PostgreSQL cluster for the tests: one per test session, a database per test.

The server binaries come from the Debian package ``postgresql`` (scripts/test.sh installs it),
which puts them in /usr/lib/postgresql/<major>/bin/, off PATH; elsewhere ``initdb`` on PATH
will do. Whatever cluster the package made and perhaps started is not used: ``running_postgres``
runs initdb in a fresh temporary directory (on /dev/shm when roomy) and starts its own server
there, listening only on 127.0.0.1 on a free port (and on a unix socket inside that directory),
with ``trust`` authentication (test-only) and durability off for speed. As root it runs the
server as the ``postgres`` system user, since PostgreSQL refuses to run as root. The postmaster
is a child of the test process (not daemonized by pg_ctl), so that stopping it also reaps it;
it has a session of its own, so that Ctrl-C reaches pytest alone, whose teardown then drops
the test's database and stops the server in that order.

The fixtures built on this (``postgres_server``, ``postgres_url``, ``database_url``) are in
conftest.py; psycopg is imported only when a server is started, so that collecting the rest
of the suite never needs it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

SUPERUSER = "postgres"
HOST = "127.0.0.1"
#: The programs a cluster needs, all from one bin directory.
PROGRAMS = ("initdb", "postgres")
#: Appended to the generated postgresql.conf (later settings win). Durability is off: a crash
#: loses the cluster, which is a temporary directory anyway.
SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}
HBA = f"""\
# test-only: anyone on this machine may connect to this throwaway cluster as anyone
local all all trust
host all all {HOST}/32 trust
"""


class PostgresUnavailable(Exception):
    """This machine cannot run a PostgreSQL server for the tests (a reason, not a bug)."""


class PostgresStartError(RuntimeError):
    """The server binaries are here but the cluster did not come up (a bug to look at)."""


@dataclass(frozen=True)
class PostgresInstall:
    """Where the server programs are, and whom to run them as (None: this process's user)."""

    bindir: Path
    run_as: tuple[int, int] | None

    def program(self, name: str) -> str:
        return str(self.bindir / name)


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in PROGRAMS)


def find_bindir() -> Path | None:
    """The bin directory of the highest PostgreSQL under /usr/lib/postgresql (Debian), else
    the directory of ``initdb`` on PATH; None when neither has all of ``PROGRAMS``."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        key = _version_key(bindir.parent.name)
        if key is not None and _complete(bindir):
            found.append((key, bindir))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb is not None and _complete(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    return None


def find_postgres() -> PostgresInstall:
    """What ``running_postgres`` needs, or ``PostgresUnavailable`` saying what is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError as e:
        raise PostgresUnavailable(f"psycopg is not installed ({e})") from e
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server programs (initdb, postgres) in "
            "/usr/lib/postgresql/*/bin or on PATH (Debian package postgresql)"
        )
    if os.geteuid() != 0:
        return PostgresInstall(bindir, None)
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError as e:
        raise PostgresUnavailable(
            f"as root, the server must run as the {SUPERUSER!r} system user, and there is none"
        ) from e
    return PostgresInstall(bindir, (user.pw_uid, user.pw_gid))


@dataclass(frozen=True)
class PostgresServer:
    """A running private cluster; every database in it belongs to the tests."""

    host: str
    port: int
    superuser: str
    socket_dir: Path

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """The libpq connection string of database ``dbname``, for psycopg directly."""
        return f"host={self.host} port={self.port} user={self.superuser} dbname={dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection to ``dbname``, in autocommit mode unless told otherwise."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.conninfo(dbname), **kwargs)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a copy of template0, so never blocked by a session on
        template1) and return its name: ``name``, or a fresh unique one."""
        from psycopg import sql

        name = name or f"septum_{uuid.uuid4().hex[:16]}"
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending the sessions still connected to it."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the start retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _as_owner(install: PostgresInstall) -> dict[str, Any]:
    """subprocess arguments that run a program as the cluster's owner, with a clean env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if install.run_as is None:
        return {"env": env}
    uid, gid = install.run_as
    return {"env": env, "user": uid, "group": gid, "extra_groups": []}


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the postmaster and reap it: SIGINT is a fast shutdown (``pg_ctl stop -m fast``),
    SIGQUIT an immediate one, and SIGKILL the last resort."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            return
        with suppress(ProcessLookupError):
            server.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            server.wait(wait)


def _start(
    install: PostgresInstall, data: Path, log: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], PostgresServer] | None:
    """Start the postmaster on a free port as a child of this process and wait until it
    accepts connections; None when the port was taken meanwhile (the caller retries).
    Each attempt truncates the log, so that it tells about this attempt alone."""
    import psycopg

    port = free_port()
    server = PostgresServer(HOST, port, SUPERUSER, data.parent / "sockets")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [install.program("postgres"), "-D", str(data), "-p", str(port)],
            cwd=data.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_owner(install),
        )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                if re.search(r"could not bind|already in use", _tail(log)):
                    return None
                raise PostgresStartError(f"postgres exited ({proc.returncode}):\n{_tail(log)}")
            try:
                with server.connect(connect_timeout=5) as conn:
                    row = conn.execute("SHOW data_directory").fetchone()
                if row is None or Path(row[0]) != data:
                    _stop(proc)  # another server took the port: ours cannot bind it
                    return None
                return proc, server
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"postgres not accepting connections after {timeout}s: {e}\n{_tail(log)}"
                    ) from e
            time.sleep(0.02)
    except BaseException:
        _stop(proc)
        raise


def _scratch_parent(install: PostgresInstall) -> str | None:
    """/dev/shm when it is roomy (at least 1 GiB free) and the server's user may enter it,
    else None (the default temporary directory). Every database is some 300 files, and on a
    disk creating them can take a millisecond each even with fsync off: a CREATE DATABASE
    measured 200-300 ms on ext4 and 10 ms on tmpfs."""
    shm = "/dev/shm"
    try:
        fs, mode = os.statvfs(shm), os.stat(shm).st_mode
    except OSError:
        return None
    roomy = fs.f_bavail * fs.f_frsize >= 1 << 30
    enterable = install.run_as is None or mode & 0o001
    return shm if roomy and enterable and os.access(shm, os.W_OK | os.X_OK) else None


@contextmanager
def running_postgres(
    install: PostgresInstall, *, startup_timeout: float = 60
) -> Iterator[PostgresServer]:
    """Run a fresh cluster for the duration of the block; stop it and delete its directory
    afterwards, even when the block (or the start) fails."""
    base = Path(tempfile.mkdtemp(prefix="septum-pg-", dir=_scratch_parent(install)))
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    try:
        sockets.mkdir()
        if install.run_as is not None:
            for path in (base, sockets):
                os.chown(path, *install.run_as)
        try:
            init = subprocess.run(
                [
                    install.program("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                cwd=base,
                capture_output=True,
                text=True,
                timeout=startup_timeout,
                check=False,
                **_as_owner(install),
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresStartError(f"initdb took more than {startup_timeout}s") from e
        if init.returncode != 0:
            raise PostgresStartError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        # as root these files belong to the postgres user; root may still write them
        (data / "pg_hba.conf").write_text(HBA)
        settings = {**SETTINGS, "unix_socket_directories": f"'{sockets}'"}
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# septum tests (tests/postgres.py); the port is on the command line\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        for _attempt in range(5):
            started = _start(install, data, log, startup_timeout)
            if started is not None:
                break
        else:
            raise PostgresStartError(f"no free port after 5 attempts:\n{_tail(log)}")
        proc, server = started
        try:
            yield server
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
