"""How one server process runs: a typed settings object, built by the CLI and passed in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerSettings", "sqlite_url"]


def sqlite_url(data_dir: Path) -> str:
    """The embedded default database: one SQLite file in the data directory."""
    return f"sqlite+pysqlite:///{data_dir / 'septum.db'}"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything a server process needs; nothing is read from the environment inside."""

    #: Holds the SQLite database (by default), the flow store and the TLS files.
    data_dir: Path
    #: SQLAlchemy URL; None means SQLite in ``data_dir``.
    database_url: str | None = None
    #: Flows from the last this many days are replayed by ``provision``.
    replay_days: int = 7
    #: Run migrations to the newest schema at start (replicas racing is safe: see ``db``).
    migrate: bool = True
    #: Agents' long-polls re-read enforcer revisions at least this often (seconds), in
    #: case a notification was lost (or the database cannot send them: SQLite).
    poll_interval: float = 2.0

    @property
    def url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def flows_dir(self) -> Path:
        return self.data_dir / "flows-store"
