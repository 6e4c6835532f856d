"""The database layer of the CORTX Workflow Service.

Stores WorkflowPack versions, executions (with the pack snapshot each one runs, its
progress and an ``owner_epoch`` fencing token) and one checkpoint per step attempt, so a
run can resume after a crash and a stale owner can never overwrite a newer one.

Entry point: :func:`open_store` with ``DATABASE_URL`` — PostgreSQL (``asyncpg``), SQLite
(``aiosqlite``) or ``memory://`` (nothing survives the process). The schema is created
and upgraded only by the Alembic migrations in ``persistence/migrations``.

Modules: ``records`` (records, statuses, time helpers), ``models`` (tables),
``engine`` (URLs, engines, migrations), ``validation`` (argument checks),
``sql_store`` / ``memory_store`` (implementations), ``store`` (Protocol, ``open_store``),
and what the HTTP API and the Python driver both answer: ``packs`` (deploying and resolving
pack versions), ``listing`` (the executions listing and its cursors), ``history`` (a run's
step history).

Layering: imports ``dsl.errors`` only; never ``ray``, ``actors`` or ``serve_app``.
"""

from persistence.records import (
    ACTIVE_STATUSES,
    EXECUTION_STATUSES,
    ISOLATION_MODES,
    STATUS_CANCELLED,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    STEP_STATUS_SKIPPED,
    STEP_STATUSES,
    TERMINAL_STATUSES,
    ExecutionRecord,
    PackRecord,
    StepCheckpoint,
    content_hash,
    isoformat_z,
    utc_now,
)
from persistence.store import MEMORY_URL, MemoryStore, SqlStore, Store, is_transient_error, open_store

__all__ = [
    "ACTIVE_STATUSES",
    "EXECUTION_STATUSES",
    "ISOLATION_MODES",
    "MEMORY_URL",
    "STATUS_CANCELLED",
    "STATUS_COMPLETED",
    "STATUS_FAILED",
    "STATUS_QUEUED",
    "STATUS_RUNNING",
    "STEP_STATUSES",
    "STEP_STATUS_SKIPPED",
    "TERMINAL_STATUSES",
    "ExecutionRecord",
    "MemoryStore",
    "PackRecord",
    "SqlStore",
    "StepCheckpoint",
    "Store",
    "content_hash",
    "is_transient_error",
    "isoformat_z",
    "open_store",
    "utc_now",
]
