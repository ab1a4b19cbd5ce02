"""Alembic migrations of the server schema (run by ``Database.migrate``)."""
