"""Initial schema: packs, executions, step_checkpoints.

Revision ID: 0001
Revises:
Create Date: 2024-06-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "packs",
        sa.Column("pack_id", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("document", _json(), nullable=False),
        sa.Column("source_text", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("deprecated", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", _tz(), nullable=False),
        sa.PrimaryKeyConstraint("pack_id", "version", name="pk_packs"),
    )
    op.create_table(
        "executions",
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("workflow_pack_id", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("pack_document", _json(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("inputs", _json(), nullable=False),
        sa.Column("options", _json(), nullable=False),
        sa.Column("context", _json(), nullable=False),
        sa.Column("isolation", sa.String(16), nullable=False),
        sa.Column("current_step", sa.String(512), nullable=True),
        sa.Column("completed_steps", _json(), nullable=False),
        sa.Column("outputs", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_detail", _json(), nullable=True),
        sa.Column("owner_epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("started_at", _tz(), nullable=True),
        sa.Column("completed_at", _tz(), nullable=True),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name="pk_executions"),
    )
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_index("ix_executions_workflow_pack_id_created_at", "executions", ["workflow_pack_id", "created_at"])
    op.create_table(
        "step_checkpoints",
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("step_key", sa.String(512), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("step_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outputs", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("idempotency_key", sa.String(300), nullable=True),
        sa.Column("started_at", _tz(), nullable=False),
        sa.Column("ended_at", _tz(), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "step_key", "attempt", name="pk_step_checkpoints"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_step_checkpoints_execution_id_executions",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("step_checkpoints")
    op.drop_index("ix_executions_workflow_pack_id_created_at", table_name="executions")
    op.drop_index("ix_executions_status", table_name="executions")
    op.drop_table("executions")
    op.drop_table("packs")
