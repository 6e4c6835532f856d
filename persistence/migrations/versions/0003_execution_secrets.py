"""The secret store: values of a run's ``secret: true`` inputs, kept out of ``executions``.

- ``execution_secrets``: one row per secret input of a run, ``(execution_id, name)``, with
  its value. The run's ``executions.inputs`` holds ``"***"`` in its place; the owner of
  the run reads the row when it (re)starts the run, so a run stays resumable after a crash.
  Rows are deleted when the run ends, and with their execution (``ON DELETE CASCADE``).
  See ``docs/security.md``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "execution_secrets",
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", _json(), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "name", name="pk_execution_secrets"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_execution_secrets_execution_id_executions",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("execution_secrets")
