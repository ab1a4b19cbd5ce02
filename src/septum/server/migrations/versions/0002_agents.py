"""Agents: the certificate authority, join tokens, issued certificates, each enforcer's
desired state and its recent changes, and what agents report.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from septum.server.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "control",
        sa.Column("draft_revision", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column("control", sa.Column("next_change_at", UTCDateTime(), nullable=True))
    op.create_table(
        "authority",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("certificate", sa.Text, nullable=False),
        sa.Column("private_key", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("enforcer", sa.String(253), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(253), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("serial", sa.String(40), nullable=True),
    )
    op.create_table(
        "agent_certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("enforcer", sa.String(253), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(253), nullable=True),
    )
    op.create_index(
        "ix_agent_certificates_enforcer", "agent_certificates", ["enforcer"], unique=False
    )
    op.create_table(
        "state_fragments",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "enforcer_states",
        sa.Column("enforcer", sa.String(253), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ruleset", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "enforcer_changes",
        sa.Column("enforcer", sa.String(253), primary_key=True),
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("previous", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("full", sa.Boolean, nullable=False),
        sa.Column("deltas", sa.LargeBinary, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "enforcer_status",
        sa.Column("enforcer", sa.String(253), primary_key=True),
        sa.Column("applied_revision", sa.BigInteger, nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("counters", sa.JSON, nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "enforcer_status",
        "enforcer_changes",
        "enforcer_states",
        "state_fragments",
        "agent_certificates",
        "join_tokens",
        "authority",
    ):
        op.drop_table(table)
    op.drop_column("control", "draft_revision")
    op.drop_column("control", "next_change_at")
