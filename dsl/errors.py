"""The one exception tree of the CORTX Workflow Service.

Every error the service raises on purpose is a :class:`WorkflowError`. Each class
has a stable ``code`` (used in CLI output and, later, in RFC 9457 ``type`` URIs),
keeps its constructor arguments as attributes and builds its own message, and
pickles (instances cross Ray process boundaries; ``tests/unit/test_errors.py``
round-trips every class)::

    WorkflowError
    ├── PackValidationError         a pack is malformed (carries every ValidationIssue)
    ├── PackLoadError               a pack file is missing, unreadable or not YAML/JSON
    ├── InputValidationError        run inputs are not JSON or break the pack's input schema
    ├── ExpressionError             base of the expression language's errors
    │   ├── ExpressionSyntaxError   text does not parse (offset into the expression)
    │   ├── UnknownNameError        a name or key the scope does not hold
    │   ├── ForbiddenConstructError a construct the language refuses
    │   ├── ExpressionTypeError     operands of the wrong type (no implicit coercion)
    │   └── ExpressionLimitError    an evaluation budget was exceeded
    ├── ConfigurationError          a setting or registry entry is invalid
    ├── ExecutionNotFoundError      no execution with that id
    ├── PackConflictError           a pack id and version already stored with another body
    ├── PackNotFoundError           no stored pack (version) with that id, or every version deprecated
    ├── UnstorableValueError        a string the database cannot store (NUL, unpaired surrogate)
    ├── FencedError                 a checkpoint write by an owner that lost the run
    └── SecretNotFoundError         a secret a step names has no value where secrets are read

A user step's failure is *not* an exception that travels: it is recorded as data
(``kind``, ``message``, ``retryable``, ``attempt``); see ``actors.steps``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ConfigurationError",
    "ExecutionNotFoundError",
    "ExpressionError",
    "ExpressionLimitError",
    "ExpressionSyntaxError",
    "ExpressionTypeError",
    "FencedError",
    "PackConflictError",
    "PackNotFoundError",
    "ForbiddenConstructError",
    "InputValidationError",
    "PackLoadError",
    "PackValidationError",
    "SecretNotFoundError",
    "UnknownNameError",
    "UnstorableValueError",
    "ValidationIssue",
    "WorkflowError",
]


class WorkflowError(Exception):
    """Root of the service's errors.

    Subclasses set ``code`` and pass their arguments to ``__init__`` unchanged so
    that ``pickle`` (which calls ``cls(*self.args)``) rebuilds them.
    """

    code = "workflow_error"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

    def __str__(self) -> str:
        return self.message()

    def message(self) -> str:
        """One sentence describing the error."""
        return str(self.args[0]) if self.args else self.code


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a pack or in run inputs.

    Attributes:
        code: stable identifier, e.g. ``duplicate_id``, ``dependency_cycle``.
        pointer: JSON pointer (RFC 6901) to the offending value, e.g.
            ``/steps/3/on_error/retry/max_attempts``; ``""`` is the document.
        message: one sentence naming what is wrong.
        line: 1-based line in the YAML/JSON source, when known.
        column: 1-based column in the source, when known.
        severity: ``error`` or ``warning``.
    """

    code: str
    pointer: str
    message: str
    line: int | None = None
    column: int | None = None
    severity: str = "error"

    def format(self, source: str | None = None) -> str:
        """``source:line:col: pointer: message [code]`` on one line."""
        where = source or ""
        if self.line is not None:
            where = f"{where}:{self.line}:{self.column or 1}" if where else f"line {self.line}:{self.column or 1}"
        parts = [p for p in (where, self.pointer or "/") if p]
        prefix = ": ".join(parts)
        label = "" if self.severity == "error" else f"{self.severity}: "
        return f"{prefix}: {label}{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the fields."""
        return asdict(self)


class PackValidationError(WorkflowError):
    """A pack failed validation; ``issues`` holds every problem found.

    Args:
        issues: the problems, each with a pointer and (for YAML) line/column.
        source: the file name or label the pack came from, for messages.
    """

    code = "pack_invalid"

    def __init__(self, issues: list[ValidationIssue], source: str | None = None) -> None:
        super().__init__(issues, source)
        self.issues = list(issues)
        self.source = source

    def message(self) -> str:
        errors = [i for i in self.issues if i.severity == "error"]
        head = f"{len(errors)} problem(s) in pack"
        if self.source:
            head += f" {self.source}"
        return head + ": " + "; ".join(i.format(self.source) for i in errors)

    def lines(self) -> list[str]:
        """One formatted line per issue, errors first."""
        ordered = sorted(self.issues, key=lambda i: i.severity != "error")
        return [i.format(self.source) for i in ordered]


class PackLoadError(WorkflowError):
    """A pack (or inputs) file could not be read or parsed.

    Args:
        source: the path or label.
        reason: what went wrong, one sentence.
        line: 1-based line of a syntax error, when known.
        column: 1-based column, when known.
    """

    code = "pack_unreadable"

    def __init__(self, source: str, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(source, reason, line, column)
        self.source, self.reason, self.line, self.column = source, reason, line, column

    def message(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.reason}"


class InputValidationError(WorkflowError):
    """Run inputs are not acceptable; ``issues`` has one entry per violation.

    Args:
        issues: violations with pointers into the inputs document.
    """

    code = "inputs_invalid"

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__(issues)
        self.issues = list(issues)

    def message(self) -> str:
        return "invalid inputs: " + "; ".join(f"{i.pointer or '/'}: {i.message}" for i in self.issues)


class ExpressionError(WorkflowError):
    """Base of expression errors.

    Args:
        expression: the source text of the expression.
        detail: one sentence saying what is wrong.
        offset: 0-based character offset into ``expression``, when known.
    """

    code = "expression_error"

    def __init__(self, expression: str, detail: str, offset: int | None = None) -> None:
        super().__init__(expression, detail, offset)
        self.expression, self.detail, self.offset = expression, detail, offset

    def message(self) -> str:
        at = f" at offset {self.offset}" if self.offset is not None else ""
        return f"{self.detail} (in expression `{self.expression}`{at})"


class ExpressionSyntaxError(ExpressionError):
    """The expression text does not parse."""

    code = "expression_syntax"


class UnknownNameError(ExpressionError):
    """A name, key or index the evaluation scope does not hold."""

    code = "unknown_name"


class ForbiddenConstructError(ExpressionError):
    """A construct the language refuses (e.g. a private name, an unknown function)."""

    code = "forbidden_construct"


class ExpressionTypeError(ExpressionError):
    """Operands of the wrong type; the language never coerces implicitly."""

    code = "expression_type"


class ExpressionLimitError(ExpressionError):
    """Evaluation exceeded a budget (steps, size of a value, size of a number)."""

    code = "expression_limit"


class ConfigurationError(WorkflowError):
    """A setting, environment variable or registry entry is invalid.

    Args:
        name: the variable or key, e.g. ``MAX_PARALLEL_STEPS``.
        value: the offending value as given.
        rule: the rule it breaks, one sentence.
    """

    code = "configuration_invalid"

    def __init__(self, name: str, value: Any, rule: str) -> None:
        super().__init__(name, value, rule)
        self.name, self.value, self.rule = name, value, rule

    def message(self) -> str:
        return f"{self.name}={self.value!r}: {self.rule}"


class ExecutionNotFoundError(WorkflowError):
    """No execution has this id.

    Args:
        execution_id: the id that was asked for.
    """

    code = "execution_not_found"

    def __init__(self, execution_id: str) -> None:
        super().__init__(execution_id)
        self.execution_id = execution_id

    def message(self) -> str:
        return f"no execution with id {self.execution_id!r}"


class FencedError(WorkflowError):
    """A write by an owner whose lease on the execution was taken over.

    Args:
        execution_id: the execution.
        owner_epoch: the epoch the stale owner held.
    """

    code = "owner_fenced"

    def __init__(self, execution_id: str, owner_epoch: int) -> None:
        super().__init__(execution_id, owner_epoch)
        self.execution_id, self.owner_epoch = execution_id, owner_epoch

    def message(self) -> str:
        return f"execution {self.execution_id} is owned by a newer epoch than {self.owner_epoch}; write refused"


class PackConflictError(WorkflowError):
    """A pack with this id and version is already stored with a different body.

    Pack versions are immutable: deploy a new version instead.

    Args:
        pack_id: the pack's id.
        version: the version that exists.
    """

    code = "pack_conflict"

    def __init__(self, pack_id: str, version: str) -> None:
        super().__init__(pack_id, version)
        self.pack_id, self.version = pack_id, version

    def message(self) -> str:
        return f"pack {self.pack_id!r} version {self.version!r} already exists with a different body"


class PackNotFoundError(WorkflowError):
    """No such pack, pack version, or (version omitted) no version that is not deprecated.

    Raised when a run names a deployed pack (``workflow_pack_id``/``version``) that the
    store does not hold; the HTTP API answers it 404 ``pack_not_found``.

    Args:
        pack_id: the pack asked for.
        version: the version asked for, or None for "latest".
        reason: what is missing, one sentence, when not the obvious.
    """

    code = "pack_not_found"

    def __init__(self, pack_id: str, version: str | None = None, reason: str | None = None) -> None:
        super().__init__(pack_id, version, reason)
        self.pack_id, self.version, self.reason = pack_id, version, reason

    def message(self) -> str:
        if self.reason:
            return self.reason
        if self.version is None:
            return f"no pack with id {self.pack_id!r}"
        return f"no pack {self.pack_id!r} with version {self.version!r}"


class UnstorableValueError(WorkflowError):
    """A string holds a NUL character or a lone surrogate, which the database cannot store.

    Args:
        pointer: JSON pointer of the string in the document or request body (``""`` = the root).
    """

    code = "value_unstorable"

    def __init__(self, pointer: str) -> None:
        super().__init__(pointer)
        self.pointer = pointer

    def message(self) -> str:
        return f"the string at {self.pointer or '/'} holds a NUL character or an unpaired surrogate"


class SecretNotFoundError(WorkflowError):
    """A secret a step refers to (``${ secrets.NAME }``) has no value.

    Raised in the step task, where secrets are read; the step fails without retries. The
    message names the secret and where it was looked for, never a value.

    Args:
        name: the secret's name.
        sources: where it was looked for, e.g. ``"environment variable CORTX_SECRET_X"``.
    """

    code = "secret_missing"

    def __init__(self, name: str, sources: str) -> None:
        super().__init__(name, sources)
        self.name, self.sources = name, sources

    def message(self) -> str:
        return f"secret {self.name!r} is not set (looked in: {self.sources})"
