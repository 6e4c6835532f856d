"""SQLAlchemy 2 declarative models of the four tables, and row -> record conversion.

The schema is created and changed **only** by the Alembic migrations in
``persistence/migrations/versions``; ``Base.metadata`` is never passed to ``create_all``.
It exists so that the store can build typed Core statements and so that
``alembic revision --autogenerate`` (and the test comparing models with migrations)
can see what the code expects.

Tables::

    packs            PK (pack_id, version)            one row per immutable pack version
    executions       PK execution_id (uuid string)    one row per run, fenced by owner_epoch
    step_checkpoints PK (execution_id, step_key, attempt), FK -> executions ON DELETE CASCADE
    execution_secrets PK (execution_id, name), FK -> executions ON DELETE CASCADE: the values
                     of a run's ``secret: true`` inputs, kept out of ``executions.inputs``
    execution_events PK (execution_id, seq), FK -> executions ON DELETE CASCADE: the event
                     outbox, one row per lifecycle event (``persistence.outbox``)
    event_deliveries PK (subscription, execution_id), FK -> executions ON DELETE CASCADE:
                     how far each event subscription has delivered each run's events

JSON columns are ``JSON`` on SQLite and ``JSONB`` on PostgreSQL. ``None`` is stored as
SQL ``NULL`` (not the JSON literal ``null``). JSONB does not keep object key order, so a
document read back from PostgreSQL may list its keys in a different order than it was
written; values and list order are preserved.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from persistence.records import (
    MAX_IDEMPOTENCY_KEY,
    MAX_NODE_ID,
    MAX_PACK_ID,
    MAX_STEP_ID,
    MAX_STEP_KEY,
    MAX_STEP_TYPE,
    MAX_VERSION,
    ExecutionRecord,
    PackRecord,
    StepCheckpoint,
    as_utc,
)

__all__ = [
    "EXECUTIONS",
    "EXECUTION_EVENTS",
    "EVENT_DELIVERIES",
    "EXECUTION_SECRETS",
    "PACKS",
    "STEP_CHECKPOINTS",
    "Base",
    "ExecutionRow",
    "ExecutionSecretRow",
    "PackRow",
    "StepCheckpointRow",
    "execution_from_row",
    "json_type",
    "pack_from_row",
    "checkpoint_from_row",
]

#: Constraint names are deterministic so migrations can refer to them on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def json_type() -> TypeEngine[Any]:
    """``JSON`` that stores Python ``None`` as SQL NULL, ``JSONB`` on PostgreSQL."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _tz() -> DateTime:
    return DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base holding the service's ``MetaData``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PackRow(Base):
    """A pack version. ``content_hash`` is the SHA-256 of the canonical JSON of ``document``."""

    __tablename__ = "packs"
    __table_args__ = (PrimaryKeyConstraint("pack_id", "version", name="pk_packs"),)

    pack_id: Mapped[str] = mapped_column(String(MAX_PACK_ID))
    version: Mapped[str] = mapped_column(String(MAX_VERSION))
    document: Mapped[dict] = mapped_column(json_type(), nullable=False)
    source_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    deprecated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)


class ExecutionRow(Base):
    """A workflow execution; ``owner_epoch`` fences writes by owners that lost the run."""

    __tablename__ = "executions"
    __table_args__ = (
        PrimaryKeyConstraint("execution_id", name="pk_executions"),
        Index("ix_executions_status_created_at", "status", "created_at"),
        Index("ix_executions_workflow_pack_id_created_at", "workflow_pack_id", "created_at"),
        Index("ix_executions_created_at_execution_id", "created_at", "execution_id"),
    )

    execution_id: Mapped[str] = mapped_column(String(36))
    workflow_pack_id: Mapped[str] = mapped_column(String(MAX_PACK_ID), nullable=False)
    version: Mapped[str] = mapped_column(String(MAX_VERSION), nullable=False)
    pack_document: Mapped[dict] = mapped_column(json_type(), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    inputs: Mapped[dict] = mapped_column(json_type(), nullable=False)
    options: Mapped[dict] = mapped_column(json_type(), nullable=False)
    context: Mapped[dict] = mapped_column(json_type(), nullable=False)
    isolation: Mapped[str] = mapped_column(String(16), nullable=False)
    current_step: Mapped[str | None] = mapped_column(String(MAX_STEP_KEY), nullable=True)
    completed_steps: Mapped[list] = mapped_column(json_type(), nullable=False)
    outputs: Mapped[dict | None] = mapped_column(json_type(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_detail: Mapped[dict | None] = mapped_column(json_type(), nullable=True)
    owner_epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)


class StepCheckpointRow(Base):
    """One attempt of one step; first write wins on (execution_id, step_key, attempt)."""

    __tablename__ = "step_checkpoints"
    __table_args__ = (
        PrimaryKeyConstraint("execution_id", "step_key", "attempt", name="pk_step_checkpoints"),
        ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_step_checkpoints_execution_id_executions",
            ondelete="CASCADE",
        ),
    )

    execution_id: Mapped[str] = mapped_column(String(36))
    step_key: Mapped[str] = mapped_column(String(MAX_STEP_KEY))
    attempt: Mapped[int] = mapped_column(Integer)
    step_id: Mapped[str] = mapped_column(String(MAX_STEP_ID), nullable=False)
    step_type: Mapped[str] = mapped_column(String(MAX_STEP_TYPE), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    outputs: Mapped[Any | None] = mapped_column(json_type(), nullable=True)
    error: Mapped[dict | None] = mapped_column(json_type(), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_IDEMPOTENCY_KEY), nullable=True)
    started_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)
    ended_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)
    node_id: Mapped[str | None] = mapped_column(String(MAX_NODE_ID), nullable=True)


class ExecutionSecretRow(Base):
    """The value of one ``secret: true`` input of a run (the secret store, ``docs/security.md``).

    ``executions.inputs`` holds ``"***"`` in its place; rows go when the run ends.
    """

    __tablename__ = "execution_secrets"
    __table_args__ = (
        PrimaryKeyConstraint("execution_id", "name", name="pk_execution_secrets"),
        ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_execution_secrets_execution_id_executions",
            ondelete="CASCADE",
        ),
    )

    execution_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[Any] = mapped_column(json_type(), nullable=False)


class ExecutionEventRow(Base):
    """One lifecycle event of a run (the outbox, ``persistence.outbox``); ``seq`` 1, 2, ... per run, no gaps."""

    __tablename__ = "execution_events"
    __table_args__ = (
        PrimaryKeyConstraint("execution_id", "seq", name="pk_execution_events"),
        ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_execution_events_execution_id_executions",
            ondelete="CASCADE",
        ),
        Index("ix_execution_events_created_at", "created_at"),
    )

    execution_id: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(100), nullable=False)
    step_key: Mapped[str | None] = mapped_column(String(MAX_STEP_KEY), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict] = mapped_column(json_type(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)


class EventDeliveryRow(Base):
    """How far one event subscription has delivered one run's events, and the next event's retry state."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        PrimaryKeyConstraint("subscription", "execution_id", name="pk_event_deliveries"),
        ForeignKeyConstraint(
            ["execution_id"],
            ["executions.execution_id"],
            name="fk_event_deliveries_execution_id_executions",
            ondelete="CASCADE",
        ),
    )

    subscription: Mapped[str] = mapped_column(String(100))
    execution_id: Mapped[str] = mapped_column(String(36))
    delivered_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(_tz(), nullable=False)


#: Core ``Table`` objects; the store builds statements against these.
PACKS: Table = PackRow.__table__  # type: ignore[assignment]
EXECUTIONS: Table = ExecutionRow.__table__  # type: ignore[assignment]
STEP_CHECKPOINTS: Table = StepCheckpointRow.__table__  # type: ignore[assignment]
EXECUTION_SECRETS: Table = ExecutionSecretRow.__table__  # type: ignore[assignment]
EXECUTION_EVENTS: Table = ExecutionEventRow.__table__  # type: ignore[assignment]
EVENT_DELIVERIES: Table = EventDeliveryRow.__table__  # type: ignore[assignment]


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def pack_from_row(row: RowMapping) -> PackRecord:
    """Build a :class:`PackRecord` from a ``packs`` row mapping (datetimes made aware UTC)."""
    return PackRecord(
        pack_id=row["pack_id"],
        version=row["version"],
        document=row["document"],
        source_text=row["source_text"],
        deprecated=bool(row["deprecated"]),
        created_at=as_utc(row["created_at"]),
    )


def execution_from_row(row: RowMapping) -> ExecutionRecord:
    """Build an :class:`ExecutionRecord` from an ``executions`` row mapping."""
    return ExecutionRecord(
        execution_id=row["execution_id"],
        workflow_pack_id=row["workflow_pack_id"],
        version=row["version"],
        status=row["status"],
        inputs=row["inputs"],
        options=row["options"],
        context=row["context"],
        isolation=row["isolation"],
        current_step=row["current_step"],
        completed_steps=list(row["completed_steps"] or []),
        outputs=row["outputs"],
        error=row["error"],
        error_detail=row["error_detail"],
        owner_epoch=int(row["owner_epoch"]),
        created_at=as_utc(row["created_at"]),
        started_at=_opt_utc(row["started_at"]),
        completed_at=_opt_utc(row["completed_at"]),
        updated_at=as_utc(row["updated_at"]),
        pack_document=row["pack_document"],
    )


def checkpoint_from_row(row: RowMapping) -> StepCheckpoint:
    """Build a :class:`StepCheckpoint` from a ``step_checkpoints`` row mapping."""
    return StepCheckpoint(
        execution_id=row["execution_id"],
        step_key=row["step_key"],
        attempt=int(row["attempt"]),
        step_id=row["step_id"],
        step_type=row["step_type"],
        status=row["status"],
        outputs=row["outputs"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
        started_at=as_utc(row["started_at"]),
        ended_at=as_utc(row["ended_at"]),
        node_id=row["node_id"],
    )
