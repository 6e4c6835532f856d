"""Regular expressions of input schemas, matched in linear time (RE2), never by backtracking.

A pack's input schema is the pack author's, and the inputs are the caller's: with
Python's backtracking ``re``, a ``pattern`` such as ``^(a+)+$`` and an input of thirty
``a`` and a ``!`` keep a CPU busy for minutes (ReDoS). jsonschema matches ``pattern``,
``patternProperties`` and ``additionalProperties`` (which skips the keys
``patternProperties`` matched) with ``re``; :data:`InputSchemaValidator` is draft 2020-12
with those three keywords matched by RE2 (google-re2), whose time is linear in the input.

RE2 has no backreferences and no lookaround; a pattern that needs them is refused when the
pack is validated (:func:`pattern_issues`), with its pointer, as is ``unevaluatedProperties``
in a schema that also uses ``patternProperties`` (jsonschema would match those keys with
``re`` again). Compiled patterns are cached.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import re2
from jsonschema.exceptions import ValidationError

__all__ = ["InputSchemaValidator", "PatternError", "compile_pattern", "pattern_issues"]

#: Compiled patterns kept (per process).
PATTERN_CACHE_SIZE = 512
#: RE2 memory budget of one compiled pattern, in bytes (larger programs are refused).
PATTERN_MAX_MEMORY = 8 << 20


class PatternError(ValueError):
    """A pattern RE2 cannot compile; ``reason`` says why (e.g. a backreference)."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"pattern {pattern!r} cannot be matched in linear time: {reason}")
        self.pattern, self.reason = pattern, reason


@functools.lru_cache(maxsize=PATTERN_CACHE_SIZE)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program of ``pattern`` (searched, as JSON Schema's ``pattern`` is: unanchored).

    Raises:
        PatternError: RE2 refuses it (backreferences, lookaround, too large, bad syntax).
    """
    options = re2.Options()
    options.max_mem = PATTERN_MAX_MEMORY
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(pattern, str(reason) or "RE2 refuses it") from None


def _search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key for key in instance if key not in properties and not any(_search(p, key) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(each) for each in sorted(extras))
        if patterns:
            yield ValidationError(f"{listed} do not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


def _canonical(value: Any) -> Any:
    """``value`` with integral floats as ints (1.0 -> 1, -0.0 -> 0), for JSON equality."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    return value


def _json_key(value: Any) -> str:
    """A key equal for JSON-equal values (1 == 1.0, true != 1, object keys unordered).

    A string, not a tuple of the values: str hashes are randomised per process, int hashes
    are not (``n`` and ``n + 2**61 - 1`` collide), so a body of colliding integers cannot
    make the set quadratic.
    """
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``uniqueItems`` in linear time (jsonschema compares unhashable items pairwise: an
    array of 5,000 objects took about 20 s, on the API's event loop)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for item in instance:
        key = _json_key(item)
        if key in seen:
            yield ValidationError(f"{_short_repr(instance)} has non-unique elements")
            return
        seen.add(key)


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Draft 2020-12, with ``pattern``, ``patternProperties`` and ``additionalProperties`` on RE2,
#: and a linear-time ``uniqueItems``.
InputSchemaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "uniqueItems": _unique_items,
    },
)


def pattern_issues(schema: Any, pointer: str = "") -> list[tuple[str, str]]:
    """Every pattern of ``schema`` RE2 refuses, and unsupported keyword mixes.

    Returns:
        ``[(json_pointer, message), ...]``; pointers are into ``schema``.
    """
    found: list[tuple[str, str]] = []
    for where, node in _schemas(schema, pointer):
        text = node.get("pattern")
        if isinstance(text, str):
            try:
                compile_pattern(text)
            except PatternError as exc:
                found.append((where + "/pattern", str(exc)))
        props = node.get("patternProperties")
        if isinstance(props, dict):
            for key in props:
                try:
                    compile_pattern(str(key))
                except PatternError as exc:
                    found.append((where + "/patternProperties/" + _escape(str(key)), str(exc)))
            if "unevaluatedProperties" in node:
                found.append((
                    where + "/unevaluatedProperties",
                    "unevaluatedProperties cannot be combined with patternProperties; use additionalProperties",
                ))
    return found


def _schemas(value: Any, pointer: str) -> Iterable[tuple[str, dict]]:
    """Every object in ``value`` with its pointer (a walk of the whole document)."""
    if isinstance(value, dict):
        yield pointer, value
        for key, item in value.items():
            yield from _schemas(item, f"{pointer}/{_escape(str(key))}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _schemas(item, f"{pointer}/{index}")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
