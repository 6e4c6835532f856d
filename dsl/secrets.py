"""Secrets in packs: references that travel instead of values.

A pack names a secret, never holds it. Two kinds exist:

* **Named secrets**, written ``${ secrets.NAME }`` in the templated fields of work steps
  (a ``service_call``'s ``endpoint``, ``headers`` and ``inputs``; a ``webhook``'s ``url``,
  ``headers`` and ``body``; an ``http`` step's ``headers`` and ``body``). Their values live outside the service (the environment or a
  secrets file) and are read only inside the step task (``actors.secrets``).
* **Secret inputs**: top-level properties of the pack's input schema flagged
  ``secret: true``. Their values are kept out of the run's record (a placeholder,
  :data:`MASK`, is stored in their place) and travel to the step task wrapped in
  :class:`SecretValue`, whose ``repr`` and ``str`` are the mask.

Rendering a template in the engine therefore gives, where a secret was used, one of the
marker objects below instead of text: :class:`SecretRef` (a whole ``${ secrets.NAME }``),
:class:`SecretValue` (a whole ``${ inputs.<secret input> }``) or :class:`SecretText`
(text with secrets interpolated, e.g. ``"Bearer ${ secrets.API_KEY }"``). Only the step
task turns markers into text. They are not JSON values, so a rendered value holding one
cannot be stored as step outputs, context or run outputs: a secret that would reach the
database fails the step instead.

Rules (checked by :func:`secret_reference_issues` when a pack is validated):

* a secret name is letters, digits and ``_``, not starting with a digit, at most 128
  characters (:data:`SECRET_NAME_PATTERN`), so ``CORTX_SECRET_<NAME>`` is a valid
  environment variable name;
* ``secrets`` may appear only as the whole expression ``${ secrets.NAME }`` (no function,
  operator or comparison on it: the engine never sees the value), and only in the fields
  listed above.

Whether the value exists is not checked at validation: a missing value fails the step,
without retries, with an error naming the secret (``kind: secret_missing``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MASK",
    "SECRET_FIELDS",
    "SECRET_NAME_PATTERN",
    "SecretRef",
    "SecretText",
    "SecretValue",
    "contains_secret",
    "mask_secret_inputs",
    "secret_input_names",
    "secret_names",
    "secret_reference_issues",
    "split_secret_inputs",
    "with_secret_inputs",
]

MASK = "***"
"""What is written in place of a secret value (stored inputs, redacted messages)."""

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""Valid secret names: usable in an environment variable name."""

SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "service_call": ("endpoint", "headers", "inputs"),
    "webhook": ("url", "headers", "body"),
    # The http step joins its URL and query as text before the task runs: secrets go in
    # headers or the body there.
    "http": ("headers", "body"),
}
"""Step type -> the templated fields where ``${ secrets.NAME }`` is allowed."""

_NAME = re.compile(SECRET_NAME_PATTERN)
_WHOLE_REF = re.compile(r"^secrets\s*\.\s*([^\s.\[\]()]+)$|^secrets\s*\[\s*(['\"])(.*)\2\s*\]$")


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A named secret, ``${ secrets.NAME }``; its value is read in the step task.

    Attributes:
        name: the secret's name (matches :data:`SECRET_NAME_PATTERN`).
    """

    name: str

    def __repr__(self) -> str:
        return f"<secret {self.name}>"

    __str__ = __repr__


class SecretValue:
    """A secret input's value, carried opaquely from the run's secret store to the step task.

    ``repr()`` and ``str()`` give :data:`MASK`, so an error message or log line that
    formats it shows no value; :meth:`reveal` gives the value. Pickles (it crosses the Ray
    boundary to the step task).

    Args:
        name: the input's name (top-level property of the input schema).
        value: the value given at execute time (a string, number or boolean).
    """

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> Any:
        """The value itself (only the step task and the secret store call this)."""
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other.name == self.name and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretValue", self.name))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (SecretValue, (self.name, self._value))


@dataclass(frozen=True, slots=True)
class SecretText:
    """Text with secrets in it: literal pieces and markers, joined in the step task.

    Attributes:
        parts: ``str``, :class:`SecretRef` or :class:`SecretValue` pieces, in order.
    """

    parts: tuple[Any, ...]

    @classmethod
    def join(cls, pieces: list[Any]) -> SecretText:
        """Concatenate text and markers (nested :class:`SecretText` flattened, text merged)."""
        flat: list[Any] = []
        for piece in pieces:
            for part in piece.parts if isinstance(piece, SecretText) else (piece,):
                if isinstance(part, str) and flat and isinstance(flat[-1], str):
                    flat[-1] += part
                elif not (isinstance(part, str) and part == ""):
                    flat.append(part)
        return cls(tuple(flat))

    def __repr__(self) -> str:
        return "".join(p if isinstance(p, str) else repr(p) for p in self.parts)

    __str__ = __repr__

    def with_placeholders(self) -> tuple[str, dict[str, Any]]:
        """The text with each marker replaced by a unique placeholder, and the placeholders.

        Lets code that needs a ``str`` (joining a base URL and an endpoint) work on text
        that holds secrets; :meth:`from_placeholders` puts the markers back.
        """
        out: list[str] = []
        found: dict[str, Any] = {}
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                token = f"\ue000{len(found)}\ue001"
                found[token] = part
                out.append(token)
        return "".join(out), found

    @staticmethod
    def from_placeholders(text: str, found: Mapping[str, Any]) -> str | SecretText:
        """Inverse of :meth:`with_placeholders`: ``text`` with its placeholders made markers again."""
        if not found:
            return text
        pieces: list[Any] = []
        for chunk in re.split("(\ue000\\d+\ue001)", text):
            pieces.append(found.get(chunk, chunk))
        return SecretText.join(pieces)


_MARKERS = (SecretRef, SecretValue, SecretText)


def contains_secret(value: Any) -> bool:
    """Whether a rendered value holds a secret marker anywhere (dicts and lists walked)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _MARKERS):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- secret inputs ----------------------------------------------------------------------------


def secret_input_names(schema: Mapping[str, Any]) -> list[str]:
    """Top-level input properties flagged ``secret: true`` in a full input JSON Schema.

    Args:
        schema: ``WorkflowPack.input_schema()``.

    Returns:
        The property names, sorted.
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    return sorted(
        name for name, prop in properties.items() if isinstance(prop, Mapping) and prop.get("secret") is True
    )


def split_secret_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate secret inputs from the rest, for storing.

    Returns:
        ``(stored, secret)``: ``stored`` is ``inputs`` with each secret input that is
        present replaced by :data:`MASK`; ``secret`` maps those inputs to their values.
    """
    names = set(secret_input_names(schema))
    stored = {k: (MASK if k in names else v) for k, v in inputs.items()}
    secret = {k: v for k, v in inputs.items() if k in names}
    return stored, secret


def mask_secret_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` as they are stored: secret inputs replaced by :data:`MASK`."""
    return split_secret_inputs(schema, inputs)[0]


def with_secret_inputs(inputs: Mapping[str, Any], secret: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs a run's scheduler sees: stored inputs with each secret one a :class:`SecretValue`."""
    return {**inputs, **{name: SecretValue(name, value) for name, value in secret.items()}}


# --- validation -------------------------------------------------------------------------------


def _expressions_in(value: Any, pointer: str) -> Iterator[tuple[str, Any]]:
    """(pointer, Expression) for every ``${ }`` in the strings of a template value."""
    from dsl.errors import ExpressionError
    from dsl.templates import compile_template

    stack: list[tuple[str, Any]] = [(pointer, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                template = compile_template(item)
            except ExpressionError:
                continue  # reported by the expression stage
            for _, expression in template.expressions():
                yield where, expression
        elif isinstance(item, dict):
            stack.extend((f"{where}/{str(k).replace('~', '~0').replace('/', '~1')}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(item))


def _templated_fields(step: Any) -> Iterator[tuple[str, Any]]:
    for name in ("endpoint", "url", "headers", "query", "inputs", "body", "data", "outputs", "set_context"):
        value = getattr(step, name, None)
        if value is not None:
            yield name, value
    for name in ("condition", "collection"):
        text = getattr(step, name, None)
        if isinstance(text, str):
            yield name, "${ " + text + " }"
    for index, case in enumerate(getattr(step, "cases", None) or ()):
        yield f"cases/{index}/when", "${ " + case.when + " }"


def _whole_reference(source: str) -> str | None:
    match = _WHOLE_REF.match(source.strip())
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(3)


def secret_reference_issues(pack: Any) -> list[Any]:
    """Check every use of a secret in a pack (the "secret references" validation stage).

    Named secrets (``secrets.NAME``) and secret inputs (``inputs.X`` for a ``secret: true``
    input, read by a literal name) follow the same rules: only in :data:`SECRET_FIELDS`,
    and only whole (alone or inside text).

    Args:
        pack: a :class:`~dsl.models.WorkflowPack`.

    Returns:
        :class:`~dsl.errors.ValidationIssue` items (codes ``invalid_secret_name``,
        ``secret_not_allowed_here``, ``secret_expression``, ``invalid_secret_flag``), each with the JSON pointer of
        the offending string; empty when every use is valid. Values are not looked up.
    """
    from dsl.errors import ValidationIssue
    from dsl.models import all_steps

    issues: list[ValidationIssue] = []
    places: list[tuple[str, str, Any]] = [("/outputs", "pack outputs", pack.outputs)]
    for pointer, step, _ in all_steps(pack):
        allowed = SECRET_FIELDS.get(step.type, ())
        for field, value in _templated_fields(step):
            where = field if field in allowed else None
            places.append((f"{pointer}/{field}", f"step {step.id!r} {field}" if where is None else "", value))
    issues.extend(_secret_flag_issues(pack))
    secret_inputs = set(secret_input_names(pack.input_schema()))
    for pointer, refused, value in places:
        for sub_pointer, expression in _expressions_in(value, pointer):
            named = "secrets" in expression.root_names()
            inputs = _secret_inputs_read(expression, secret_inputs)
            if not named and not inputs:
                continue
            name = _whole_reference(expression.source)
            if refused:
                fields = "; ".join(f"{t}: {', '.join(f)}" for t, f in SECRET_FIELDS.items())
                what = "secrets" if named else f"the secret input {inputs[0]!r}"
                issues.append(
                    ValidationIssue(
                        "secret_not_allowed_here",
                        sub_pointer,
                        f"{refused} may not use {what} (`{expression.source}`); secrets are allowed only in "
                        f"the fields where the step task inserts them ({fields})",
                    )
                )
            elif not named:
                if not _INPUT_WHOLE.match(expression.source.strip()):
                    issues.append(
                        ValidationIssue(
                            "secret_expression",
                            sub_pointer,
                            f"`{expression.source}`: the secret input {inputs[0]!r} can only be inserted whole, as "
                            f"${{ inputs.{inputs[0]} }}; nothing can be computed from it",
                        )
                    )
            elif name is None:
                issues.append(
                    ValidationIssue(
                        "secret_expression",
                        sub_pointer,
                        f"`{expression.source}`: a secret can only be inserted whole, as ${{ secrets.NAME }}; "
                        "the engine never sees its value, so nothing can be computed from it",
                    )
                )
            elif not _NAME.match(name):
                issues.append(
                    ValidationIssue(
                        "invalid_secret_name",
                        sub_pointer,
                        f"secret name {name!r} is invalid: use letters, digits and _, not starting with a digit "
                        "(at most 128 characters)",
                    )
                )
    return issues


#: Longest name of a ``secret: true`` input: the width of the secret store's key column.
MAX_SECRET_INPUT_NAME: Final = 200


def _storable_secret_input_name(pointer_token: str) -> bool:
    from dsl.validation import unstorable_reason  # dsl.validation imports this module

    name = pointer_token.replace("~1", "/").replace("~0", "~")
    return 0 < len(name) <= MAX_SECRET_INPUT_NAME and unstorable_reason(name) is None


def _secret_flag_issues(pack: Any) -> list[Any]:
    """``secret`` flags must be booleans on top-level input properties; elsewhere they would protect nothing."""
    from dsl.errors import ValidationIssue

    full = pack.input_schema() == dict(pack.inputs)  # else the shorthand {name: schema}
    names = (pack.inputs.get("properties") or {}) if full else pack.inputs
    base = "/inputs/properties" if full else "/inputs"
    top = {f"{base}/{str(n).replace('~', '~0').replace('/', '~1')}" for n in (names if isinstance(names, dict) else {})}
    issues = []
    stack: list[tuple[str, Any]] = [("/inputs", pack.inputs)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            # A dict value is a schema: a property that happens to be named "secret".
            flag = item.get("secret", {})
            if where in top and not isinstance(flag, (bool, dict)):
                issues.append(ValidationIssue("invalid_secret_flag", f"{where}/secret", "secret must be true or false"))
            elif where in top and flag is True and not _storable_secret_input_name(where.rsplit("/", 1)[-1]):
                issues.append(ValidationIssue(
                    "invalid_secret_input_name", where,
                    f"a secret input's name must be 1 to {MAX_SECRET_INPUT_NAME} characters without NUL or"
                    " surrogate characters (the secret store keeps it as a key)",
                ))
            elif where not in top and isinstance(flag, bool):
                issues.append(
                    ValidationIssue(
                        "invalid_secret_flag",
                        f"{where}/secret",
                        "only a top-level input property can be flagged secret: true; flag the whole top-level input",
                    )
                )
            stack.extend((f"{where}/{str(k).replace('~', '~0').replace('/', '~1')}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(item))
    return issues


_INPUT_REF = re.compile(r"\binputs\s*(?:\.\s*([A-Za-z0-9_-]+)|\[\s*(['\"])(.*?)\2\s*\])")
_INPUT_WHOLE = re.compile(r"^inputs\s*(?:\.\s*[A-Za-z0-9_-]+|\[\s*(['\"]).*\1\s*\])$")


def _secret_inputs_read(expression: Any, secret_inputs: set[str]) -> list[str]:
    """The secret inputs an expression reads by a literal name (``inputs.card``, ``inputs['card']``)."""
    if not secret_inputs or "inputs" not in expression.root_names():
        return []
    names = [m.group(1) or m.group(3) for m in _INPUT_REF.finditer(expression.source)]
    return [n for n in names if n in secret_inputs]


def secret_names(pack: Any) -> list[str]:
    """Names of the valid ``${ secrets.NAME }`` references in a pack, sorted."""
    from dsl.models import all_steps

    names: set[str] = set()
    for pointer, step, _ in all_steps(pack):
        for field in SECRET_FIELDS.get(step.type, ()):
            value = getattr(step, field, None)
            for _, expression in _expressions_in(value, pointer):
                if "secrets" in expression.root_names():
                    name = _whole_reference(expression.source)
                    if name is not None and _NAME.match(name):
                        names.add(name)
    return sorted(names)
