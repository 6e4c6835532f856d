"""Where secrets could leak, read back for tests: database rows, Ray's log files, any JSON.

Each helper returns text to search, so a test can assert that no secret value occurs in
it (and, to show the search looked at the right place, that something known does).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

__all__ = ["dump_rows", "occurrences", "ray_log_files"]


def dump_rows(database_url: str, tables: tuple[str, ...] = ("executions", "step_checkpoints")) -> str:
    """Every column of every row of ``tables``, as text (one line per row).

    Args:
        database_url: a ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL.
        tables: table names (fixed names of the schema, not user input).
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def dump() -> str:
        engine = create_async_engine(database_url)
        lines: list[str] = []
        try:
            async with engine.connect() as conn:
                for table in tables:
                    result = await conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
                    for row in result.mappings():
                        lines.append(f"{table}: " + json.dumps(dict(row), default=str, ensure_ascii=False))
        finally:
            await engine.dispose()
        return "\n".join(lines)

    return asyncio.run(dump())


def ray_log_files() -> list[Path]:
    """Every file under the current Ray session's log folder (worker, raylet, GCS logs)."""
    import ray

    node = ray._private.worker._global_node  # noqa: SLF001 - the public API does not expose the folder
    logs = Path(node.get_logs_dir_path())
    return sorted(p for p in logs.rglob("*") if p.is_file())


def occurrences(values: list[str], **places: Any) -> list[str]:
    """``"<value> in <place>"`` for each value found in each place (text, or JSON-dumped)."""
    found = []
    for name, place in places.items():
        text = place if isinstance(place, str) else json.dumps(place, default=str, ensure_ascii=False)
        found.extend(f"{value} in {name}" for value in values if value in text)
    return found
