"""The event outbox and the delivery cursors of event subscriptions (FDD §2.4 "Events").

- ``execution_events``: one row per lifecycle event of a run, ``(execution_id, seq)``,
  ``seq`` counting 1, 2, 3, ... per run without gaps. Written in the same transaction as
  the state change it describes (``docs/events.md``). ``ix_execution_events_created_at``
  lets the delivery loop read only recent events.
- ``event_deliveries``: how far each subscription has delivered each run's events
  (``delivered_seq``), with the retry state of the next event (``attempts``,
  ``next_attempt_at``, ``last_error``).

Both go with their execution (``ON DELETE CASCADE``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "execution_events",
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("step_key", sa.String(512), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_execution_events"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_execution_events_execution_id_executions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_execution_events_created_at", "execution_events", ["created_at"])
    op.create_table(
        "event_deliveries",
        sa.Column("subscription", sa.String(100), nullable=False),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("delivered_seq", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription", "execution_id", name="pk_event_deliveries"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_event_deliveries_execution_id_executions",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("event_deliveries")
    op.drop_index("ix_execution_events_created_at", table_name="execution_events")
    op.drop_table("execution_events")
