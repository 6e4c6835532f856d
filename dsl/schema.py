"""The JSON Schema of the pack format, generated from the models (never written by hand).

``cortx-workflow schema`` prints it; point an editor's YAML language server at it
(``# yaml-language-server: $schema=...``) or let the Designer validate and complete packs.
The structural rules (unique ids, dependencies, cycles, expressions) need the whole pack
and are checked by ``cortx-workflow validate``, not by the schema.
"""

from __future__ import annotations

from typing import Any

from dsl.models import WorkflowPack

__all__ = ["pack_json_schema"]


def pack_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a WorkflowPack document."""
    schema = WorkflowPack.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cortx.dev/schemas/workflow-pack.json",
        "title": "CORTX WorkflowPack",
        **{k: v for k, v in schema.items() if k != "title"},
    }
