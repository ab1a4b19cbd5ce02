"""The schema comes from Alembic migrations only; the ORM must describe exactly what the
newest migration creates, on SQLite and PostgreSQL, and migrating twice changes nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from septum.server.db import Base, Database


def test_orm_matches_the_migrations(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        db.migrate()  # idempotent
        current, head = db.schema_revision()
        assert current == head == "0002"
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert differences == []
    finally:
        db.dispose()
