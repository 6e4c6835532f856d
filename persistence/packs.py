"""Deployed packs: storing a validated pack version, finding the version a run means, summaries.

Shared by every way in that deploys or runs a stored pack — the HTTP API
(``POST /v1/packs``, ``POST /v1/workflows/execute``) and the Python driver
(``WorkflowClient.deploy``, ``WorkflowClient.start(workflow_pack_id=...)``) — so both
validate, store and resolve packs the same way, in the same ``packs`` table.

* :func:`deploy_pack` validates YAML or JSON text with :mod:`dsl.validation` (services
  checked against the registry) and stores it; :func:`save_loaded_pack` stores a pack
  already validated (a dict or a model built in Python). The stored document is the
  validated model (``WorkflowPack.model_dump``), so the same pack sent as YAML, as JSON,
  as a dict or as a model, reformatted or not, is the same version; ``source`` keeps the
  first text. Versions are immutable per ``(id, version)``: the same document again is
  accepted (``created`` False → HTTP 200), a different one raises ``PackConflictError``
  (409).
* :func:`resolve_pack` finds the version a run means: the named one, else the latest
  version that is not deprecated (:func:`latest_version`).
* :func:`pack_summary` / :func:`pack_detail` are the answers of the pack endpoints (and
  of ``WorkflowClient.deploy``).

Version order: when every candidate version parses as a PEP 440 / semantic version
(``1.0.0``, ``1.2``, ``2.0.0rc1``, ``1.0.0-beta``), the highest wins (creation time breaks
ties such as ``1.0`` vs ``1.0.0``); otherwise the most recently deployed version wins.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from dsl.errors import PackNotFoundError
from dsl.models import PACK_ID_PATTERN
from dsl.task_spec import TaskPolicy
from dsl.validation import LoadedPack, load_pack
from persistence.records import MAX_PACK_ID, MAX_VERSION, PackRecord, isoformat_z
from persistence.store import Store
from persistence.validation import check_storable

__all__ = [
    "Deployed",
    "deploy_pack",
    "latest_version",
    "pack_detail",
    "pack_summary",
    "plausible_pack_key",
    "resolve_pack",
    "save_loaded_pack",
    "sort_versions",
]

_PACK_ID = re.compile(PACK_ID_PATTERN)


@dataclass(frozen=True)
class Deployed:
    """Result of :func:`deploy_pack`: the stored record, whether it was new, and warnings.

    ``warnings`` are ``{"pointer", "message", "code", "line", "column"}`` dicts (line and
    column None for a pack that had no text).
    """

    record: PackRecord
    created: bool
    warnings: tuple[dict[str, Any], ...] = ()

    def summary(self) -> dict[str, Any]:
        """:func:`pack_summary` plus ``created`` and ``warnings`` (the ``POST /v1/packs`` body)."""
        return {**pack_summary(self.record), "created": self.created, "warnings": list(self.warnings)}


def plausible_pack_key(pack_id: str, version: str | None = None) -> bool:
    """False for an id or version no stored pack can have (so the store is not asked).

    Guards the database from values it would refuse rather than answer "not found"
    (PostgreSQL rejects NUL characters in parameters).
    """
    if len(pack_id) > MAX_PACK_ID or not _PACK_ID.match(pack_id):
        return False
    if version is None:
        return True
    return 0 < len(version) <= MAX_VERSION and "\x00" not in version and version.isprintable()


async def deploy_pack(
    store: Store, text: str, fmt: str | None, services: Collection[str] | None, tasks: TaskPolicy | None = None
) -> Deployed:
    """Validate pack text and store it as a pack version (idempotent per identical document).

    Args:
        store: the database.
        text: the pack as YAML or JSON text.
        fmt: ``"yaml"`` or ``"json"``; None guesses from the text.
        services: the registry's service names (every ``service_call`` must name one);
            None skips that check.
        tasks: which functions ``task`` steps may name (``CORTX_TASK_MODULES``); None
            skips that check.

    Raises:
        PackLoadError: the text does not parse (HTTP 400, with line and column).
        PackValidationError: every issue of the first failing stage (422, with pointers).
        UnstorableValueError: a string the database cannot store (422).
        PackConflictError: the version exists with a different document (409).
    """
    # Parsing and validating up to the body limit is CPU work of up to a second: off the
    # event loop, which in a Serve replica also answers Serve's health checks.
    loaded = await asyncio.to_thread(load_pack, text, "<request>", services=services, fmt=fmt, tasks=tasks)
    return await save_loaded_pack(store, loaded, text)


async def save_loaded_pack(store: Store, loaded: LoadedPack, source_text: str | None = None) -> Deployed:
    """Store a pack already validated by :mod:`dsl.validation` (see :func:`deploy_pack`).

    Args:
        store: the database.
        loaded: the validated pack (``load_pack`` / ``validate_document``).
        source_text: the text it came from, kept as the version's ``source`` (None: the
            pack's own ``loaded.source_text``, if any).

    Raises:
        UnstorableValueError: a string the database cannot store.
        PackConflictError: the version exists with a different document.
    """
    check_storable(loaded.document)
    pack = loaded.pack
    document = pack.model_dump(mode="json", by_alias=True, exclude_none=True)
    existing = await store.get_pack(pack.id, pack.version)
    text = source_text if source_text is not None else loaded.source_text
    record = await store.save_pack(pack.id, pack.version, document, source_text=text)
    warnings = tuple(
        {"pointer": w.pointer, "message": w.message, "code": w.code, "line": w.line, "column": w.column}
        for w in loaded.warnings
    )
    return Deployed(record, existing is None, warnings)


def _parsed(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


def sort_versions(records: list[PackRecord]) -> list[PackRecord]:
    """Versions of one pack, lowest first, in the order described in the module docstring."""
    parsed = [_parsed(r.version) for r in records]
    if all(v is not None for v in parsed):
        pairs = sorted(zip(parsed, records), key=lambda p: (p[0], p[1].created_at))
        return [r for _, r in pairs]
    return sorted(records, key=lambda r: (r.created_at, r.version))


def latest_version(records: list[PackRecord]) -> PackRecord | None:
    """The latest version that is not deprecated, or None when there is none."""
    candidates = sort_versions([r for r in records if not r.deprecated])
    return candidates[-1] if candidates else None


async def resolve_pack(store: Store, pack_id: str, version: str | None) -> PackRecord:
    """The pack version a run names (latest not deprecated when ``version`` is None).

    A deprecated version named explicitly is still returned (pinned callers keep working).

    Raises:
        PackNotFoundError: no such pack or version, or every version is deprecated.
    """
    if not plausible_pack_key(pack_id, version):
        raise PackNotFoundError(pack_id, version)
    if version is not None:
        record = await store.get_pack(pack_id, version)
        if record is None:
            raise PackNotFoundError(pack_id, version)
        return record
    versions = await store.list_pack_versions(pack_id)
    if not versions:
        raise PackNotFoundError(pack_id)
    latest = latest_version(versions)
    if latest is None:
        raise PackNotFoundError(
            pack_id, None, f"every version of pack {pack_id!r} is deprecated; name a version to run it"
        )
    return latest


def pack_summary(record: PackRecord) -> dict[str, Any]:
    """``{id, version, name, description, deprecated, created_at, content_hash, steps}``.

    ``created_at`` is ISO 8601 UTC; ``steps`` counts steps at every level.
    """
    doc = record.document
    return {
        "id": record.pack_id,
        "version": record.version,
        "name": doc.get("name"),
        "description": doc.get("description"),
        "deprecated": record.deprecated,
        "created_at": isoformat_z(record.created_at),
        "content_hash": record.content_hash,
        "steps": _count_steps(doc.get("steps") or []),
    }


def pack_detail(record: PackRecord) -> dict[str, Any]:
    """:func:`pack_summary` plus ``document`` (the validated pack) and ``source`` (text as deployed)."""
    return {**pack_summary(record), "document": record.document, "source": record.source_text}


def _count_steps(steps: list[Any]) -> int:
    """Steps at every level (nested lists and error handlers included)."""
    count, stack = 0, list(steps)
    while stack:
        step = stack.pop()
        if not isinstance(step, dict):
            continue
        count += 1
        for field in ("steps", "then", "else", "default"):
            stack.extend(step.get(field) or [])
        for case in step.get("cases") or []:
            stack.extend(case.get("steps") or [])
        handler = step.get("on_error") or {}
        stack.extend(handler.get("fallback") or [])
        stack.extend(handler.get("compensate") or [])
    return count
