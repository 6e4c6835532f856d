"""Step attempts record their Ray node; indexes for the admission queue and listing.

- ``step_checkpoints.node_id``: the Ray node (hex id) the attempt ran on, ``NULL`` for
  steps evaluated in the ExecutionActor and for rows written before this revision.
- ``ix_executions_status_created_at`` replaces ``ix_executions_status``: the admission
  queue takes ``queued`` runs oldest first, and the status filter still uses its prefix.
- ``ix_executions_created_at_execution_id``: keyset pagination of the execution listing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("step_checkpoints") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))
    op.drop_index("ix_executions_status", table_name="executions")
    op.create_index("ix_executions_status_created_at", "executions", ["status", "created_at"])
    op.create_index("ix_executions_created_at_execution_id", "executions", ["created_at", "execution_id"])


def downgrade() -> None:
    op.drop_index("ix_executions_created_at_execution_id", table_name="executions")
    op.drop_index("ix_executions_status_created_at", table_name="executions")
    op.create_index("ix_executions_status", "executions", ["status"])
    with op.batch_alter_table("step_checkpoints") as batch:
        batch.drop_column("node_id")
