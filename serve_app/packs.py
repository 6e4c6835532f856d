"""Pack deployment for the Designer, and resolving which pack version a run uses.

* :func:`deploy_pack` validates YAML or JSON text with :mod:`dsl.validation` (services
  checked against the registry) and stores it with ``Store.save_pack``. The stored
  document is the validated model (``WorkflowPack.model_dump``), so the same pack sent as
  YAML or as JSON, or reformatted, is the same version; ``source`` keeps the first text.
  Versions are immutable per ``(id, version)``: the same document again is accepted
  (``created`` False → HTTP 200), a different one raises ``PackConflictError`` (409).
* :func:`resolve_pack` finds the version an execute request means: the named one, else
  the latest version that is not deprecated (:func:`latest_version`).

Version order: when every candidate version parses as a PEP 440 / semantic version
(``1.0.0``, ``1.2``, ``2.0.0rc1``, ``1.0.0-beta``), the highest wins (creation time breaks
ties such as ``1.0`` vs ``1.0.0``); otherwise the most recently deployed version wins.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from dsl.models import PACK_ID_PATTERN
from dsl.validation import load_pack
from persistence.records import MAX_PACK_ID, MAX_VERSION, PackRecord
from persistence.store import Store
from serve_app.errors import PackNotFoundError
from serve_app.schemas import check_storable

__all__ = ["Deployed", "deploy_pack", "latest_version", "plausible_pack_key", "resolve_pack", "sort_versions"]

_PACK_ID = re.compile(PACK_ID_PATTERN)


@dataclass(frozen=True)
class Deployed:
    """Result of :func:`deploy_pack`: the stored record, whether it was new, and warnings."""

    record: PackRecord
    created: bool
    warnings: tuple[dict[str, Any], ...] = ()


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


async def deploy_pack(store: Store, text: str, fmt: str, services: Collection[str] | None) -> Deployed:
    """Validate and store a pack version (idempotent per identical document).

    Args:
        store: the database.
        text: the pack as YAML or JSON text.
        fmt: ``"yaml"`` or ``"json"``.
        services: the registry's service names (every ``service_call`` must name one).

    Raises:
        PackLoadError: the text does not parse (400, with line and column).
        PackValidationError: every issue of the first failing stage (422, with pointers).
        UnstorableValueError: a string the database cannot store (422).
        PackConflictError: the version exists with a different document (409).
    """
    loaded = load_pack(text, "<request>", services=services, fmt=fmt)
    check_storable(loaded.document)
    pack = loaded.pack
    document = pack.model_dump(mode="json", by_alias=True, exclude_none=True)
    existing = await store.get_pack(pack.id, pack.version)
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
    """The pack version an execute request names (latest not deprecated when ``version`` is None).

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
