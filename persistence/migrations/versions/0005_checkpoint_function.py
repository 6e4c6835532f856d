"""PostgreSQL: the engine's hot writes as server-side functions (checkpoint, events, admission).

The engine writes a checkpoint after every step attempt (FDD §2.3): the fenced update of
the run's row, the checkpoint row (first write wins) and the attempt's outbox events, in
one transaction. Done as separate statements that is a ``BEGIN``, three to five statements
and a ``COMMIT``: as many round trips, each paying the SQLAlchemy layer's CPU in the
ExecutionHost. The function does the same work in one call (one round trip, its own
transaction when the caller is in autocommit); ``persistence.sql_store.SqlStore``
calls it on PostgreSQL. SQLite (one process, no network) keeps the statements.

What it does, in order, in one transaction:

1. ``SELECT ... FOR UPDATE`` of the run's row at ``p_epoch`` in an active status
   (``queued``, ``running``). None: return -1 and write nothing (the caller tells a
   missing run from a lost epoch). Taking the row lock first orders concurrent writers
   of one run, so each later statement (a fresh snapshot under READ COMMITTED) sees the
   events the writer before it committed.
2. ``INSERT`` of the checkpoint, ``ON CONFLICT DO NOTHING`` on its key (first write wins).
3. ``UPDATE`` of the run: ``updated_at``; ``current_step`` and ``context`` when given
   (not NULL); ``p_completed_step`` appended to ``completed_steps`` when the checkpoint
   row is new and the key is not listed yet.
4. When the checkpoint row is new: the events of ``p_events`` (a JSON array of
   ``{"type", "step_key", "attempt", "payload"}``) with ``seq`` following the run's last,
   stamped ``p_now`` or the run's last event's time if later (so ``created_at`` never goes
   backwards in ``seq`` order when a writer's clock reading waited for the row lock).

Returns 1 (checkpoint new), 0 (it was already there: nothing but ``updated_at``,
``current_step`` and ``context`` changed) or -1 (refused).

``cortx_append_events`` is the same without the checkpoint: the fenced lock, ``updated_at``
(and ``current_step`` when not NULL), then every event of ``p_events``; it returns the
run's last ``seq`` after the write (0 when it has no events), or -1 refused.
It is a step's start (``set_current_step``) and a retry's event (``append_events``).

``cortx_admit`` is an admission pass (``persistence.admission``, FDD §9.2) in one call:
nothing queued, return at once without a lock; else take
``pg_advisory_xact_lock(p_lock_key)``, count the ``running`` runs and move the oldest
``queued`` ones (by ``created_at``, then id) to ``running`` while fewer than ``p_max``
run; it returns the rows it moved.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The events of ``p_events`` after the run's last ``seq`` (both functions that write events;
#: the caller holds the run's row lock, so the last ``seq`` cannot move underneath).
_APPEND_EVENTS = """SELECT seq, created_at INTO last_seq, last_at FROM execution_events
     WHERE execution_id = p_eid ORDER BY seq DESC LIMIT 1;
    INSERT INTO execution_events (execution_id, seq, type, step_key, attempt, payload, created_at)
    SELECT p_eid, COALESCE(last_seq, 0) + e.ord::integer, e.value ->> 'type', e.value ->> 'step_key',
           (e.value ->> 'attempt')::integer, e.value -> 'payload', GREATEST(p_now, last_at)
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(value, ord);"""

#: Lock the run's row if ``p_epoch`` still owns it and it is not terminal; else answer -1
#: with nothing written (both functions that write for a run's owner).
_LOCK_OWNED_RUN = """PERFORM 1 FROM executions
     WHERE execution_id = p_eid AND owner_epoch = p_epoch AND status IN ('queued', 'running')
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;"""

_CREATE = """
CREATE OR REPLACE FUNCTION cortx_write_checkpoint(
    p_eid text, p_epoch bigint,
    p_step_key text, p_attempt integer, p_step_id text, p_step_type text, p_status text,
    p_outputs jsonb, p_error jsonb, p_idempotency_key text,
    p_started_at timestamptz, p_ended_at timestamptz, p_node_id text,
    p_current_step text, p_completed_step text, p_context jsonb,
    p_events jsonb, p_now timestamptz
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    new_row integer;
    last_seq integer;
    last_at timestamptz;
BEGIN
    {lock_owned_run}

    INSERT INTO step_checkpoints (execution_id, step_key, attempt, step_id, step_type, status,
                                  outputs, error, idempotency_key, started_at, ended_at, node_id)
    VALUES (p_eid, p_step_key, p_attempt, p_step_id, p_step_type, p_status,
            p_outputs, p_error, p_idempotency_key, p_started_at, p_ended_at, p_node_id)
    ON CONFLICT (execution_id, step_key, attempt) DO NOTHING;
    GET DIAGNOSTICS new_row = ROW_COUNT;

    UPDATE executions
       SET updated_at = p_now,
           current_step = COALESCE(p_current_step, current_step),
           context = COALESCE(p_context, context),
           completed_steps = CASE
               WHEN new_row = 1 AND p_completed_step IS NOT NULL
                    AND NOT completed_steps @> jsonb_build_array(p_completed_step)
               THEN completed_steps || jsonb_build_array(p_completed_step)
               ELSE completed_steps
           END
     WHERE execution_id = p_eid;

    IF new_row = 1 AND jsonb_array_length(p_events) > 0 THEN
        {append_events}
    END IF;
    RETURN new_row;
END
$fn$
""".replace("{lock_owned_run}", _LOCK_OWNED_RUN).replace("{append_events}", _APPEND_EVENTS)

_CREATE_APPEND = """
CREATE OR REPLACE FUNCTION cortx_append_events(
    p_eid text, p_epoch bigint, p_current_step text, p_events jsonb, p_now timestamptz
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    last_seq integer;
    last_at timestamptz;
BEGIN
    {lock_owned_run}
    UPDATE executions
       SET updated_at = p_now, current_step = COALESCE(p_current_step, current_step)
     WHERE execution_id = p_eid;
    {append_events}
    RETURN COALESCE(last_seq, 0) + jsonb_array_length(p_events);
END
$fn$
""".replace("{lock_owned_run}", _LOCK_OWNED_RUN).replace("{append_events}", _APPEND_EVENTS)

_CREATE_ADMIT = """
CREATE OR REPLACE FUNCTION cortx_admit(p_max bigint, p_lock_key bigint, p_now timestamptz)
RETURNS SETOF executions
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    slots bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM executions WHERE status = 'queued') THEN
        RETURN;  -- the common case: one indexed read, no lock
    END IF;
    PERFORM pg_advisory_xact_lock(p_lock_key);
    SELECT p_max - count(*) INTO slots FROM executions WHERE status = 'running';
    IF slots <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE executions SET status = 'running', started_at = p_now, updated_at = p_now
     WHERE status = 'queued' AND execution_id IN (
           SELECT execution_id FROM executions WHERE status = 'queued'
            ORDER BY created_at, execution_id LIMIT slots)
    RETURNING *;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)
        op.execute(_CREATE_APPEND)
        op.execute(_CREATE_ADMIT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS cortx_write_checkpoint(text, bigint, text, integer, text, text, text, jsonb,"
            " jsonb, text, timestamptz, timestamptz, text, text, text, jsonb, jsonb, timestamptz)"
        )
        op.execute("DROP FUNCTION IF EXISTS cortx_append_events(text, bigint, text, jsonb, timestamptz)")
        op.execute("DROP FUNCTION IF EXISTS cortx_admit(bigint, bigint, timestamptz)")
