"""Storage: the server's tables (SQLAlchemy 2), the engine, and the write transaction.

One schema for SQLite (the embedded default) and PostgreSQL (several replicas). The schema
is created and changed only by Alembic migrations (``septum/server/migrations``); the ORM
classes here must match the newest migration (a test compares them).

Writes are serialized: every write transaction starts by locking the one ``control`` row
(``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite the first statement is an UPDATE, which
takes the database's write lock). That row holds the audit chain's head and the active
version, so concurrent writers through different replicas can never fork the audit chain or
hand out one version number twice. Writes are rare (people and provisioning), so one lock
costs nothing that matters; agent reports do not take it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AUTH_CHANNEL",
    "STATE_CHANNEL",
    "AgentCertificate",
    "ApiToken",
    "AuditEntry",
    "Authority",
    "Base",
    "Control",
    "Database",
    "DraftDocument",
    "EnforcerChange",
    "EnforcerState",
    "EnforcerStatus",
    "JoinToken",
    "StateFragment",
    "User",
    "Version",
    "notify",
    "utcnow",
]

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Times are stored in UTC and always come back timezone-aware (SQLite forgets zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Control(Base):
    """The one row every write locks first (see the module docstring)."""

    __tablename__ = "control"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    audit_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_hash: Mapped[str] = mapped_column(String(64))
    #: Bumped by every change of what agents must enforce (the agents' revision).
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Bumped by every write of the draft: provision checks it has not moved since it read
    #: the draft (cheaper than reading and hashing the whole draft again under the lock).
    draft_revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: The next instant the active version's meaning changes by itself (a rule expires, an
    #: address starts or stops being held): enforcer states are planned again then.
    next_change_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DraftDocument(Base):
    """One resource of the shared draft: its whole document (apiVersion, kind, metadata,
    spec) as JSON, and where ``pull`` writes it (file path, order in the file)."""

    __tablename__ = "draft_documents"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    position: Mapped[int] = mapped_column(Integer, default=0)
    body: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(253))


class Version(Base):
    """An immutable, numbered snapshot of the whole repository (documents compressed)."""

    __tablename__ = "versions"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(253))
    note: Mapped[str] = mapped_column(Text)
    #: "provision" or "rollback"
    origin: Mapped[str] = mapped_column(String(16))
    rollback_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    digest: Mapped[str] = mapped_column(String(64))
    documents: Mapped[bytes] = mapped_column(LargeBinary)
    summary: Mapped[dict[str, Any]]


class User(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    #: Owners: the selector text of what they may see and write policy for.
    scope: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Owners: the team names they act for (matched against a tier's ``owners``).
    teams: Mapped[list[Any]]
    #: Agents: the enforcer whose state and reports are theirs.
    enforcer: Mapped[str | None] = mapped_column(String(253), nullable=True)
    created_at: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """An API token: ``sep_<id>_<secret>``; only the secret's SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")


class AuditEntry(Base):
    """One write, chained: ``hash = sha256(previous hash ‖ canonical JSON of the entry)``.
    Append-only: triggers in the migration refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(253))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    before: Mapped[Any] = mapped_column(JSON, nullable=True)
    after: Mapped[Any] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Authority(Base):
    """The control plane's certificate authority (one row, id 1), shared by every replica.
    Its private key is stored as PEM: whoever can read the database can mint agents, so the
    database is as sensitive as the key (protect it like one)."""

    __tablename__ = "authority"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate: Mapped[str] = mapped_column(Text)
    private_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class JoinToken(Base):
    """A one-time join token ``sepj_<id>_<secret>`` bound to one enforcer; only the secret's
    SHA-256 is stored. ``used_at`` is set by the enrolment that consumed it."""

    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    enforcer: Mapped[str] = mapped_column(String(253))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The certificate issued with it (hex serial).
    serial: Mapped[str | None] = mapped_column(String(40), nullable=True)


class AgentCertificate(Base):
    """A client certificate issued to an agent; checked on every agent request."""

    __tablename__ = "agent_certificates"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex
    enforcer: Mapped[str] = mapped_column(String(253), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime]
    not_after: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(253), nullable=True)


class StateFragment(Base):
    """One part of enforcers' rulesets (a chain, set or map; wire JSON, zlib), stored once
    by content digest however many enforcers use it (a selector's set is in hundreds)."""

    __tablename__ = "state_fragments"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class EnforcerState(Base):
    """The desired state of one enforcer: its ruleset's skeleton (the wire header and the
    digests of its parts, JSON) at ``revision``, made from version ``version``. Revisions
    come from ``control.revision``: one number per provision that changed anything, so an
    enforcer's revisions increase but skip the provisions that left it alone."""

    __tablename__ = "enforcer_states"
    enforcer: Mapped[str] = mapped_column(String(253), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    ruleset: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]


class EnforcerChange(Base):
    """How one enforcer got to ``revision`` from its previous one: element deltas (wire
    JSON, zlib) when only set and map elements changed, else ``full`` (no deltas). The last
    few are kept, so that an agent a few revisions behind gets deltas, not the whole table."""

    __tablename__ = "enforcer_changes"
    enforcer: Mapped[str] = mapped_column(String(253), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    previous: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer)
    full: Mapped[bool] = mapped_column(Boolean)
    deltas: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime]


class EnforcerStatus(Base):
    """What an enforcer's agent reported last (not under the control row's lock)."""

    __tablename__ = "enforcer_status"
    enforcer: Mapped[str] = mapped_column(String(253), primary_key=True)
    applied_revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    counters: Mapped[dict[str, Any]]
    reported_at: Mapped[datetime]


GENESIS_HASH = "0" * 64


class Database:
    """The engine, sessions, migrations and the serialized write transaction."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        # Draft rows are JSON documents, read by the thousand at every provision: orjson
        # parses them several times faster than the standard library.
        kwargs: dict[str, Any] = {"echo": echo, "json_deserializer": orjson.loads}
        if self.sqlite:
            # One connection per thread; the write lock is SQLite's own.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(url, **kwargs)
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway; queueing in-process avoids busy timeouts.
        self._local_write = threading.Lock()

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ migrations

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; on PostgreSQL replicas
        starting together take an advisory lock, so one migrates and the others wait)."""
        cfg = self.alembic_config()
        with self.engine.begin() as conn:
            if not self.sqlite:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7463286119)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with self.sessions.begin() as s:
            if s.get(Control, 1) is None:
                s.add(Control(id=1, active_version=None, audit_seq=0, audit_hash=GENESIS_HASH))

    def schema_revision(self) -> tuple[str | None, str | None]:
        """(the database's migration revision, the newest one this code knows)."""
        head = ScriptDirectory.from_config(self.alembic_config()).get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current, head

    # ------------------------------------------------------------------ sessions

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[tuple[Session, Control]]:
        """A write transaction holding the control row's lock: commits on success, rolls
        back everything (the change and its audit entries) on any exception."""
        with self._local_write, self.sessions.begin() as s:
            if self.sqlite:
                s.execute(update(Control).where(Control.id == 1).values(id=1))
                control = s.execute(select(Control).where(Control.id == 1)).scalar_one()
            else:
                control = s.execute(
                    select(Control).where(Control.id == 1).with_for_update()
                ).scalar_one()
            yield s, control


#: PostgreSQL notification channels: a new desired state (payload: the revision), and a
#: revoked credential (replicas forget the agent identities they verified recently).
STATE_CHANNEL = "septum_state"
AUTH_CHANNEL = "septum_auth"


def notify(s: Session, channel: str, payload: str = "") -> None:
    """Tell every replica listening on ``channel`` when this transaction commits
    (PostgreSQL; a no-op on SQLite, where one process serves)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
