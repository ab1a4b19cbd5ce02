"""The control plane: the API server that security teams, app owners, auditors and agents share.

::

    people (CLI, UI) ── token ──┐                       ┌── agents (mutual TLS)
                                ▼                       ▼
                     app (FastAPI routes: parse, authorize, call one function, format)
                                │
          ┌─────────────────────┼──────────────────────────┐
          ▼                     ▼                          ▼
      documents              provision                   audit
   (draft resources,   (validate, assertions, replay,  (append-only, hash-chained,
    scope checks)       immutable numbered versions,     in the same transaction as
                        diff, rollback)                  every write)
          └─────────────────────┴──────────────────────────┘
                                ▼
                        db (SQLAlchemy 2: SQLite by default, PostgreSQL by URL;
                            schema by Alembic migrations)

Policy meaning is the core's (``septum.model``, ``septum.engine``): the server stores
documents, turns them into a ``Repository`` with the same parser as the files, and keeps
every decision (validation, assertions, replay, scope containment) in the core.
"""
