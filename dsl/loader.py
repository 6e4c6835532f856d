"""Reading packs and inputs from YAML or JSON text, keeping where each value came from.

YAML is read with PyYAML's safe loader only (no Python tags), with two changes that keep
documents JSON-shaped: timestamps stay strings, and a key repeated in one mapping is an
error rather than a silent overwrite. Every node's line and column are kept in a
:class:`SourceMap` so validation issues can name the YAML line (house style §6).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsl.errors import PackLoadError, ValidationIssue

__all__ = ["MAX_PACK_BYTES", "ParsedDocument", "SourceMap", "escape_pointer", "parse_document", "read_text"]

#: Largest pack source accepted, in bytes (a Designer upload or a file).
MAX_PACK_BYTES = 1_048_576


def escape_pointer(token: str | int) -> str:
    """One JSON-pointer token (RFC 6901): ``~`` → ``~0``, ``/`` → ``~1``."""
    return str(token).replace("~", "~0").replace("/", "~1")


@dataclass
class SourceMap:
    """JSON pointer → (line, column), both 1-based, of the node (for a mapping value, its key)."""

    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def locate(self, pointer: str) -> tuple[int | None, int | None]:
        """Line and column of ``pointer``, or of its nearest ancestor that has one."""
        probe = pointer
        while True:
            if probe in self.marks:
                return self.marks[probe]
            if not probe:
                return None, None
            probe = probe.rsplit("/", 1)[0]


@dataclass
class ParsedDocument:
    """A parsed document: the JSON-shaped ``data``, its ``source_map`` and early ``issues``."""

    data: Any
    source_map: SourceMap
    issues: list[ValidationIssue]


class _Loader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver: dates stay strings, as in JSON."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_text(path: str | Path) -> str:
    """Read a pack or inputs file as UTF-8.

    Raises:
        PackLoadError: the file is missing, a folder, unreadable, too large or not UTF-8.
    """
    target = Path(path)
    label = str(path)
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        raise PackLoadError(label, "no such file") from None
    except OSError as exc:
        raise PackLoadError(label, f"cannot read the file: {exc.strerror or exc}") from None
    if target.is_dir():
        raise PackLoadError(label, "is a folder, not a file")
    if size > MAX_PACK_BYTES:
        raise PackLoadError(label, f"file is {size} bytes; the limit is {MAX_PACK_BYTES} bytes")
    try:
        # Read at most one byte past the limit: devices and pipes report no size.
        with target.open("rb") as handle:
            raw = handle.read(MAX_PACK_BYTES + 1)
        if len(raw) > MAX_PACK_BYTES:
            raise PackLoadError(label, f"file is larger than the limit of {MAX_PACK_BYTES} bytes")
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackLoadError(label, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise PackLoadError(label, f"cannot read the file: {exc.strerror or exc}") from None


def parse_document(text: str, source: str = "<pack>", *, fmt: str | None = None) -> ParsedDocument:
    """Parse YAML or JSON text into JSON-shaped data with a source map.

    Args:
        text: the document.
        source: a label for messages (a path, ``<request>``).
        fmt: ``"yaml"`` or ``"json"``; by default JSON when the text starts with ``{`` or
            ``[``, and YAML otherwise (JSON is read by the YAML parser then, for line marks).

    Returns:
        The data, the source map and shape issues found while building it (duplicate keys,
        keys that are not strings, non-finite numbers).

    Raises:
        PackLoadError: the text is too large, empty, or not well-formed; the message names
            the line and column of the syntax error.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_PACK_BYTES:
        raise PackLoadError(source, f"document is larger than {MAX_PACK_BYTES} bytes")
    if fmt is None:
        fmt = "json" if text.lstrip().startswith(("{", "[")) else "yaml"
    if fmt == "json":
        _check_json_syntax(text, source)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"not valid {fmt.upper()}: {exc.problem or exc.context}"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise PackLoadError(source, reason, line, column) from None
    except yaml.YAMLError as exc:
        raise PackLoadError(source, f"not valid {fmt.upper()}: {exc}") from None
    except RecursionError:
        raise PackLoadError(source, f"not valid {fmt.upper()}: nested too deeply") from None
    if node is None:
        raise PackLoadError(source, "the document is empty")
    builder = _Builder(source)
    try:
        data = builder.build(node, "")
    except RecursionError:
        raise PackLoadError(source, "nested too deeply") from None
    return ParsedDocument(data=data, source_map=builder.source_map, issues=builder.issues)


def _check_json_syntax(text: str, source: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackLoadError(source, f"not valid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise PackLoadError(source, "not valid JSON: nested too deeply") from None


_PLAIN_TAGS = frozenset(
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)


class _Builder:
    """Turns a composed YAML node tree into JSON-shaped data, recording marks and shape issues."""

    MAX_DEPTH = 200
    #: Values built at most; YAML aliases can make a small text expand without bound.
    MAX_VALUES = 100_000

    def __init__(self, source: str = "<pack>") -> None:
        self.source_map = SourceMap()
        self.issues: list[ValidationIssue] = []
        self._scalar_loader = _Loader("")
        self._source = source
        self._values = 0

    def _issue(self, code: str, pointer: str, message: str, node: yaml.Node) -> None:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(ValidationIssue(code, pointer, message, line, column))

    def build(self, node: yaml.Node, pointer: str, depth: int = 0) -> Any:
        self._values += 1
        if self._values > self.MAX_VALUES:
            raise PackLoadError(
                self._source,
                f"the document expands to more than {self.MAX_VALUES} values (YAML aliases repeating content?)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        self.source_map.marks.setdefault(pointer, (node.start_mark.line + 1, node.start_mark.column + 1))
        if node.tag not in _PLAIN_TAGS:
            # Safe loading already refuses Python tags; any other explicit tag is refused
            # too, so no document means something other than its JSON reading.
            self._issue("yaml_tag", pointer, f"YAML tag {node.tag!r} is not allowed", node)
            return None
        if depth > self.MAX_DEPTH:
            self._issue("too_deep", pointer, f"nested more than {self.MAX_DEPTH} levels", node)
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, pointer, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, f"{pointer}/{i}", depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self._scalar_loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, TypeError) as exc:
                detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                self._issue("bad_scalar", pointer, f"cannot read value {node.value[:40]!r}: {detail}", node)
                return None
            if isinstance(value, float) and not math.isfinite(value):
                self._issue("bad_number", pointer, f"{node.value!r} is not a finite number", node)
                return None
            if isinstance(value, bytes):
                self._issue("bad_scalar", pointer, "binary values are not allowed", node)
                return None
            return value
        self._issue("bad_node", pointer, "unsupported YAML node", node)
        return None

    def _mapping(self, node: yaml.MappingNode, pointer: str, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        try:
            self._scalar_loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self._issue("bad_merge", pointer, f"cannot merge keys: {getattr(exc, 'problem', None) or exc}", node)
            return result
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
                self._issue("bad_key", pointer, "mapping keys must be plain strings", key_node)
                continue
            try:
                key = self._scalar_loader.construct_object(key_node)
            except (yaml.YAMLError, ValueError, TypeError):
                key = key_node.value
            if not isinstance(key, str):
                # YAML reads `200:` or `yes:` as a number or boolean; JSON keys are strings.
                key = key_node.value
            child = f"{pointer}/{escape_pointer(key)}"
            if key in seen:
                self._issue(
                    "duplicate_key",
                    child,
                    f"key {key!r} appears twice in one mapping (first on line {seen[key]})",
                    key_node,
                )
                continue
            seen[key] = key_node.start_mark.line + 1
            self.source_map.marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child, depth + 1)
        return result
