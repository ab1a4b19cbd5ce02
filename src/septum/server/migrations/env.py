"""Alembic environment: the server hands in its connection (``Database.migrate``), so
migrations run in the caller's transaction (and under its advisory lock on PostgreSQL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from septum.server.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # plain `alembic` use: a URL from the config
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    context.run_migrations()
