"""Pack validation in stages, every problem of a stage collected (house style §6).

Stages; every stage runs and all their problems are reported together, except that
nothing runs after a syntax or schema error (there is no pack to check), and expressions
are checked only when ids and dependencies are sound (references are judged against the
step graph); with duplicate ids, cycles through those ids are not reported:

1. syntax: YAML or JSON (:mod:`dsl.loader`), duplicate keys;
2. schema: the pydantic models (unknown fields, unknown step types, wrong types);
3. ids: step ids unique across the whole pack, nesting and error handlers included;
4. dependencies: each names an existing sibling; no cycles, reported as paths
   (``a -> b -> a``), also cycles that pass through a group and its members;
5. expressions: conditions, collections and ``${ }`` templates parse; ``steps.<id>``
   references name steps that are guaranteed to have finished first;
5b. secrets: each ``${ secrets.NAME }`` and each read of a ``secret: true`` input is used
   whole and only where the step task inserts it, names are valid, ``secret`` flags sit on
   top-level inputs (:func:`dsl.secrets.secret_reference_issues`); values are not looked up;
6. services: every ``service_call`` names a service of the registry (when one is given);
   every ``task`` names a function the deployment allows (when a policy is given,
   :mod:`dsl.task_spec`);
7. input schema: the pack's ``inputs`` is a valid JSON Schema.

Then warnings, which do not stop a pack: steps that can never run (the branch of a
condition or switch case whose expression is a constant that never selects it, the body of
a loop over a constant empty list).

Every issue carries a JSON pointer, the YAML line and column, a stable code and a sentence.
"""

from __future__ import annotations

import collections
import copy
import difflib
import json
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from pydantic import ValidationError

from dsl.errors import ExpressionError, InputValidationError, PackValidationError, ValidationIssue
from dsl.expressions import parse_expression
from dsl.http_spec import url_form_problem
from dsl.loader import SourceMap, escape_pointer, parse_document
from dsl.patterns import InputSchemaValidator, PatternError, pattern_issues
from dsl.models import (
    STEP_TYPES,
    ConditionStep,
    EmitStep,
    HttpStep,
    LoopStep,
    ServiceCallStep,
    Step,
    SwitchStep,
    TaskStep,
    WebhookStep,
    WorkflowPack,
    all_steps,
)
from dsl.secrets import secret_input_names, secret_reference_issues
from dsl.task_spec import TaskPolicy, task_function_issues
from dsl.templates import compile_template

__all__ = ["LoadedPack", "load_pack", "unstorable_reason", "validate_document", "validate_inputs", "validate_options"]


@dataclass(frozen=True)
class LoadedPack:
    """A validated pack with the warnings found and its source text (when it had one)."""

    pack: WorkflowPack
    warnings: tuple[ValidationIssue, ...]
    document: dict[str, Any]
    source_text: str | None = None


def load_pack(
    text: str,
    source: str = "<pack>",
    *,
    services: Collection[str] | None = None,
    fmt: str | None = None,
    tasks: TaskPolicy | None = None,
) -> LoadedPack:
    """Parse and validate a pack from YAML or JSON text.

    Args:
        text: the pack source.
        source: a label for messages (file path, ``<request>``).
        services: names in the service registry; ``None`` skips the service check.
        tasks: which functions ``task`` steps may name (``CORTX_TASK_MODULES``, registered
            names); ``None`` skips that check.
        fmt: ``"yaml"`` or ``"json"``; guessed from the text when omitted.

    Returns:
        The :class:`LoadedPack`.

    Raises:
        PackLoadError: the text is not YAML/JSON (message has the line and column).
        PackValidationError: with every issue of the first stage that found errors.
    """
    parsed = parse_document(text, source, fmt=fmt)
    if parsed.issues:
        raise PackValidationError(parsed.issues, source)
    loaded = validate_document(parsed.data, source, source_map=parsed.source_map, services=services, tasks=tasks)
    return LoadedPack(loaded.pack, loaded.warnings, loaded.document, text)


def validate_document(
    data: Any,
    source: str = "<pack>",
    *,
    source_map: SourceMap | None = None,
    services: Collection[str] | None = None,
    tasks: TaskPolicy | None = None,
) -> LoadedPack:
    """Validate already-parsed pack data (a dict, e.g. from a JSON request body).

    Raises:
        PackValidationError: as :func:`load_pack`.
    """
    marks = source_map or SourceMap()

    def located(issues: Iterable[ValidationIssue]) -> list[ValidationIssue]:
        out = []
        for issue in issues:
            line, column = marks.locate(issue.pointer) if issue.line is None else (issue.line, issue.column)
            out.append(ValidationIssue(issue.code, issue.pointer, issue.message, line, column, issue.severity))
        return out

    if not isinstance(data, dict):
        raise PackValidationError(located([ValidationIssue("not_a_mapping", "", "a pack must be a mapping")]), source)
    key = _cache_key(data, source, services, tasks) if source_map is None else None
    cached = _VALIDATED.get(key) if key is not None else None
    if cached is not None:
        return LoadedPack(cached[0], cached[1], data)
    try:
        pack = WorkflowPack.model_validate(data)
    except ValidationError as exc:
        raise PackValidationError(located(_schema_issues(exc, data)), source) from None

    counts = collections.Counter(step.id for _, step, _ in all_steps(pack))
    issues = _id_issues(pack) + _dependency_issues(pack, duplicated={i for i, n in counts.items() if n > 1})
    if not issues:  # expressions are checked against the step graph, which must be sound
        issues = _expression_issues(pack)
    issues = located(
        issues
        + secret_reference_issues(pack)
        + _service_issues(pack, services)
        + task_function_issues(all_steps(pack), tasks)
        + _input_schema_issues(pack)
    )
    if any(i.severity == "error" for i in issues):
        raise PackValidationError(issues, source)
    loaded = LoadedPack(pack, tuple(located(_never_run_warnings(pack))), data)
    if key is not None:
        _VALIDATED.put(key, (loaded.pack, loaded.warnings))
    return loaded


class _LruCache:
    """A small thread-safe LRU map (validated packs, see :func:`validate_document`)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


#: Valid packs already checked, by their canonical JSON and what they were checked against:
#: running a deployed pack (HTTP execute, the driver) validates the same document again and
#: again, and a full validation costs several ms (the input schema's meta-schema check most).
_VALIDATED = _LruCache(256)


def _cache_key(data: dict, source: str, services: Collection[str] | None, tasks: TaskPolicy | None) -> str | None:
    """The canonical JSON of everything the result depends on, or None if ``data`` is not JSON."""
    policy = None if tasks is None else [list(tasks.modules), None if tasks.registered is None else sorted(tasks.registered)]
    try:
        return json.dumps(
            [data, source, None if services is None else sorted(services), policy],
            sort_keys=True, separators=(",", ":"), allow_nan=False,
        )
    except (TypeError, ValueError):
        return None


def validate_inputs(pack: WorkflowPack, inputs: Any) -> dict[str, Any]:
    """Check run inputs against the pack's input schema (JSON Schema, draft 2020-12).

    Returns:
        The inputs with the schema's ``default`` values filled in for absent properties
        (at every level of nested objects), which is what the run sees.

    Raises:
        InputValidationError: with every violation and its pointer into the inputs.
    """
    if not isinstance(inputs, dict):
        raise InputValidationError([ValidationIssue("inputs_not_object", "", "inputs must be a JSON object")])
    schema = pack.input_schema()
    # An empty registry: a $ref is resolved inside the schema only, never fetched.
    # Patterns are matched by RE2 in linear time (dsl.patterns): no ReDoS from a caller's input.
    validator = InputSchemaValidator(schema, registry=referencing.Registry())
    try:
        errors = sorted(validator.iter_errors(inputs), key=lambda e: list(map(str, e.absolute_path)))
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError, RecursionError, PatternError) as exc:
        raise InputValidationError(
            [ValidationIssue("input_schema_unusable", "", f"the pack's input schema cannot be applied: {type(exc).__name__}")]
        ) from None
    secret = set(secret_input_names(schema))
    issues = [
        ValidationIssue(
            "input_schema",
            "".join(f"/{escape_pointer(p)}" for p in err.absolute_path),
            # jsonschema quotes the offending value: never a secret input's, nor (at the top
            # level, where the value is all the inputs) any when the pack has secret inputs.
            f"the secret input breaks the schema rule {err.validator!r}"
            if err.absolute_path and err.absolute_path[0] in secret
            else f"the inputs break the schema rule {err.validator!r} (values not shown: the pack has secret inputs)"
            if secret and not err.absolute_path and err.validator not in ("required", "additionalProperties")
            else err.message,
        )
        for err in errors
    ]
    if issues:
        raise InputValidationError(issues)
    reason = unstorable_reason(inputs)
    if reason:
        pointer, _, message = reason.partition(": ")
        raise InputValidationError([ValidationIssue("input_unstorable", pointer.rstrip("/") if pointer != "/" else "", message)])
    return _with_defaults(schema, inputs)


def unstorable_reason(value: Any, pointer: str = "") -> str | None:
    """Why ``value`` cannot be stored as JSON in both databases, or None if it can.

    Refused: NaN and infinite numbers, strings with a NUL character or an unpaired
    surrogate (PostgreSQL's JSONB refuses both), keys that are not strings, values that are
    not JSON at all. The answer names the place as a JSON pointer.
    """
    stack: list[tuple[str, Any]] = [(pointer, value)]
    while stack:
        where, item = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return f"{where or '/'}: {item} is not a JSON number"
        elif isinstance(item, str):
            if "\x00" in item:
                return f"{where or '/'}: text with a NUL character cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where or '/'}: text with an unpaired surrogate cannot be stored"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    return f"{where or '/'}: key {key!r} is not a string"
                reason = unstorable_reason(key, f"{where}/{escape_pointer(key)}")
                if reason:
                    return reason
                stack.append((f"{where}/{escape_pointer(key)}", sub))
        elif isinstance(item, list):
            stack.extend((f"{where}/{index}", sub) for index, sub in enumerate(item))
        else:
            return f"{where or '/'}: a {type(item).__name__} is not a JSON value"
    return None


def validate_options(options: Any) -> dict[str, Any]:
    """Check the ``options`` of an execute request (FDD §3.1); return them as a plain dict.

    Raises:
        InputValidationError: with every problem and its pointer (``/options/max_retries``).
    """
    from pydantic import ValidationError as PydanticError

    from dsl.models import ExecutionOptions

    if options is None:
        return {}
    try:
        return ExecutionOptions.model_validate(options).model_dump(exclude_none=True)
    except PydanticError as exc:
        issues = [
            ValidationIssue(
                "invalid_option",
                "/options" + "".join(f"/{escape_pointer(p)}" for p in err["loc"]),
                err["msg"].removeprefix("Value error, "),
            )
            for err in exc.errors(include_url=False)
        ]
        raise InputValidationError(issues) from None


def _with_defaults(schema: Any, value: Any) -> Any:
    """A copy of ``value`` with ``default``s of absent object properties filled in."""
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return dict(value)
    out = dict(value)
    for name, sub in properties.items():
        if name in out:
            out[name] = _with_defaults(sub, out[name])
        elif isinstance(sub, dict) and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    return out


# --- stage 2: schema -------------------------------------------------------------------------


def _schema_issues(exc: ValidationError, data: Any) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        pointer, node = _pointer_for(err["loc"], data)
        kind = err["type"]
        if kind == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            issue = ValidationIssue(
                "unknown_step_type",
                pointer + "/type",
                f"unknown step type {tag!r}; expected one of {', '.join(STEP_TYPES)}",
            )
        elif kind == "union_tag_not_found":
            issue = ValidationIssue(
                "missing_step_type", pointer, f"step has no 'type'; expected one of {', '.join(STEP_TYPES)}"
            )
        elif kind == "extra_forbidden":
            name = pointer.rsplit("/", 1)[-1]
            issue = ValidationIssue("unknown_field", pointer, f"unknown field {name!r}")
        elif kind == "missing":
            name = pointer.rsplit("/", 1)[-1]
            issue = ValidationIssue("missing_field", pointer, f"missing required field {name!r}")
        elif kind == "string_pattern_mismatch" and pointer == "/id":
            issue = ValidationIssue(
                "bad_id",
                pointer,
                f"pack id {node!r} must start with a letter or digit and hold only letters, digits, '.', '-' "
                "and '_' (at most 200)",
            )
        elif kind == "string_pattern_mismatch" and pointer.endswith("/id"):
            issue = ValidationIssue(
                "bad_id",
                pointer,
                f"id {node!r} must start with a letter and hold only letters, digits, '-' and '_' (at most 100)",
            )
        else:
            message = err["msg"].removeprefix("Value error, ")
            issue = ValidationIssue("invalid_value", pointer, f"{message} (got {_short(node)})")
        if (issue.pointer, issue.code) not in seen:
            seen.add((issue.pointer, issue.code))
            issues.append(issue)
    return issues


def _pointer_for(loc: tuple[Any, ...], data: Any) -> tuple[str, Any]:
    """Map a pydantic error location to a JSON pointer into ``data``.

    Discriminated unions insert the tag (``service_call``) into the location; it is not a
    key of the document, so it is dropped here.
    """
    pointer, node = "", data
    after_index = False
    for part in loc:
        was_index, after_index = after_index, isinstance(part, int)
        if isinstance(node, dict):
            if was_index and node.get("type") == part:
                # The union's tag right after a list index (`steps/0/condition/...`), even when
                # the step also has a field of that name (a condition's `condition`).
                continue
            if part in node:
                node = node[part]
                pointer += f"/{escape_pointer(part)}"
            else:
                pointer += f"/{escape_pointer(part)}"
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            pointer += f"/{part}"
        else:
            pointer += f"/{escape_pointer(part)}"
            node = None
    return pointer, node


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- stage 3: ids ----------------------------------------------------------------------------


def _id_issues(pack: WorkflowPack) -> list[ValidationIssue]:
    first: dict[str, str] = {}
    issues = []
    for pointer, step, _ in all_steps(pack):
        if step.id in first:
            issues.append(
                ValidationIssue(
                    "duplicate_id",
                    pointer + "/id",
                    f"duplicate step id {step.id!r}: ids must be unique across the pack "
                    f"(first defined at {first[step.id]})",
                )
            )
        else:
            first[step.id] = pointer + "/id"
    return issues


# --- stage 4: dependencies -------------------------------------------------------------------


def _blocks(pack: WorkflowPack) -> Iterable[tuple[str, list[Step]]]:
    """Every list of sibling steps with its pointer: top level, nested lists, error handlers."""
    yield "/steps", pack.steps
    if pack.on_error is not None:
        yield "/on_error/compensate", pack.on_error.compensate
    for pointer, step, _ in all_steps(pack):
        for field, children in step.children():
            yield f"{pointer}/{field}", children
        if step.on_error is not None:
            yield f"{pointer}/on_error/fallback", step.on_error.fallback
            yield f"{pointer}/on_error/compensate", step.on_error.compensate


def _dependency_issues(pack: WorkflowPack, duplicated: Collection[str] = ()) -> list[ValidationIssue]:
    """Unknown, self, non-sibling dependencies and cycles.

    Args:
        pack: the pack.
        duplicated: ids defined more than once (reported by :func:`_id_issues`): the graph
            cannot tell their steps apart, so a cycle through one or a "not a sibling" about
            one is not reported, only what holds whatever the ids mean.
    """
    all_ids = {step.id for _, step, _ in all_steps(pack)}
    issues: list[ValidationIssue] = []
    # Graph of "must finish before": each step has a start and an end node; a container's
    # start precedes its members' starts and its members' ends precede its end. A cycle in
    # this graph is a cycle among steps, including one that passes through a group.
    edges: dict[str, set[str]] = {}

    def edge(a: str, b: str) -> None:
        edges.setdefault(a, set()).add(b)

    for block_pointer, steps in _blocks(pack):
        siblings = {s.id for s in steps}
        for index, step in enumerate(steps):
            edge(f"S:{step.id}", f"E:{step.id}")
            for field, children in step.children():
                for child in children:
                    edge(f"S:{step.id}", f"S:{child.id}")
                    edge(f"E:{child.id}", f"E:{step.id}")
            for dep_index, dep in enumerate(step.dependencies):
                pointer = f"{block_pointer}/{index}/dependencies/{dep_index}"
                if dep not in all_ids:
                    hint = difflib.get_close_matches(dep, sorted(all_ids), n=1)
                    extra = f"; did you mean {hint[0]!r}?" if hint else ""
                    issues.append(
                        ValidationIssue(
                            "unknown_dependency", pointer, f"step {step.id!r} depends on unknown step {dep!r}{extra}"
                        )
                    )
                    continue
                if dep == step.id and dep not in duplicated:
                    issues.append(
                        ValidationIssue("dependency_cycle", pointer, f"dependency cycle: step {dep!r} depends on itself ({dep} -> {dep})")
                    )
                    continue
                edge(f"E:{dep}", f"S:{step.id}")
                if dep not in siblings and dep not in duplicated:
                    issues.append(
                        ValidationIssue(
                            "dependency_not_sibling",
                            pointer,
                            f"step {step.id!r} depends on {dep!r}, which is not in the same list of steps; "
                            "a step may depend only on its siblings",
                        )
                    )
    if duplicated:  # cycles are looked for among the steps the ids name unambiguously
        edges = {a: {b for b in bs if b[2:] not in duplicated} for a, bs in edges.items() if a[2:] not in duplicated}
    for cycle in _cycles(edges):
        ids = []
        for node in cycle:
            name = node[2:]
            if not ids or ids[-1] != name:
                ids.append(name)
        if len(ids) > 1 and ids[0] == ids[-1]:
            ids.pop()
        path = " -> ".join(ids + [ids[0]])
        pointer = _pointer_of_step(pack, ids[0])
        issues.append(ValidationIssue("dependency_cycle", pointer + "/dependencies", f"dependency cycle: {path}"))
    return issues


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group found by depth-first search (iterative)."""
    color: dict[str, int] = {}
    found: list[list[str]] = []
    reported: set[frozenset[str]] = set()
    for root in sorted(edges):
        if color.get(root):
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        path = [root]
        color[root] = 1
        while stack:
            node, children = stack[-1]
            advanced = False
            for child in children:
                state = color.get(child, 0)
                if state == 0:
                    color[child] = 1
                    stack.append((child, iter(sorted(edges.get(child, ())))))
                    path.append(child)
                    advanced = True
                    break
                if state == 1:
                    cycle = path[path.index(child):]
                    key = frozenset(n[2:] for n in cycle)
                    if key not in reported:
                        reported.add(key)
                        found.append(cycle)
            if not advanced:
                color[node] = 2
                stack.pop()
                path.pop()
    return found


def _pointer_of_step(pack: WorkflowPack, step_id: str) -> str:
    for pointer, step, _ in all_steps(pack):
        if step.id == step_id:
            return pointer
    return "/steps"


# --- stage 5: expressions and references ------------------------------------------------------


def _expression_issues(pack: WorkflowPack) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    visible = _visible_steps(pack)
    all_ids = {step.id for _, step, _ in all_steps(pack)}

    def check_refs(pointer: str, refs: Iterable[str], allowed: StepSet | set[str], where: str) -> None:
        for ref in sorted(set(refs)):
            if ref not in all_ids:
                issues.append(ValidationIssue("unknown_step_reference", pointer, f"{where} refers to unknown step {ref!r}"))
            elif ref not in allowed:
                issues.append(
                    ValidationIssue(
                        "step_reference_not_ready",
                        pointer,
                        f"{where} refers to steps.{ref}, which is not guaranteed to have finished first; "
                        f"add {ref!r} (or a step containing it) to the dependencies",
                    )
                )

    def check_expr(pointer: str, text: str, allowed: StepSet | set[str], where: str) -> None:
        try:
            expr = parse_expression(text)
        except ExpressionError as exc:
            issues.append(ValidationIssue(exc.code, pointer, exc.message()))
            return
        check_refs(pointer, expr.step_references(), allowed, where)

    def check_template(pointer: str, value: Any, allowed: StepSet | set[str], where: str) -> None:
        # Compiled string by string, so a syntax error points at the string it is in.
        for sub_pointer, text in _strings(value, pointer):
            try:
                template = compile_template(text)
            except ExpressionError as exc:
                issues.append(ValidationIssue(exc.code, sub_pointer, exc.message()))
                continue
            for _, expr in template.expressions():
                check_refs(sub_pointer, expr.step_references(), allowed, where)

    compensation_ids = {
        s.id
        for _, parent, _ in all_steps(pack)
        if parent.on_error is not None
        for s in parent.on_error.compensate
    } | ({s.id for s in pack.on_error.compensate} if pack.on_error is not None else set())
    for pointer, step, _ in all_steps(pack):
        if step.compensates is not None:
            if step.id not in compensation_ids:
                issues.append(
                    ValidationIssue(
                        "compensates_outside_compensation",
                        pointer + "/compensates",
                        f"step {step.id!r} has 'compensates' but is not in an on_error.compensate list",
                    )
                )
            elif step.compensates not in all_ids:
                issues.append(
                    ValidationIssue(
                        "unknown_step_reference",
                        pointer + "/compensates",
                        f"step {step.id!r} compensates unknown step {step.compensates!r}",
                    )
                )
    for pointer, step, _ in all_steps(pack):
        before = visible[step.id]
        where = f"step {step.id!r}"
        if isinstance(step, ConditionStep):
            check_expr(pointer + "/condition", step.condition, before, where)
        if isinstance(step, SwitchStep):
            for index, case in enumerate(step.cases):
                check_expr(f"{pointer}/cases/{index}/when", case.when, before, where)
        if isinstance(step, LoopStep):
            if step.collection is not None:
                check_expr(pointer + "/collection", step.collection, before, where)
            if step.condition is not None:
                # A while condition sees the previous iteration's body steps.
                body = {s.id for s in step.steps} | {i for s in step.steps for i in _exported(s)}
                check_expr(pointer + "/condition", step.condition, before | body, where)
        if isinstance(step, ServiceCallStep):
            check_template(pointer + "/inputs", step.inputs, before, where)
            check_template(pointer + "/headers", step.headers, before, where)
            if step.endpoint is not None:
                check_template(pointer + "/endpoint", step.endpoint, before, where)
        if isinstance(step, WebhookStep):
            for name in ("url", "headers", "body"):
                check_template(f"{pointer}/{name}", getattr(step, name), before, where)
        if isinstance(step, EmitStep):
            check_template(pointer + "/data", step.data, before, where)
        if isinstance(step, TaskStep):
            check_template(pointer + "/inputs", step.inputs, before, where)
        if isinstance(step, HttpStep):
            for name in ("url", "headers", "query", "body"):
                check_template(f"{pointer}/{name}", getattr(step, name), before, where)
            if problem := url_form_problem(step.url):
                issues.append(ValidationIssue("bad_url", pointer + "/url", f"url of step {step.id!r}: {problem}"))
        # A step's own outputs mapping also sees its nested steps (and itself, for errors).
        inner = before | {step.id} | _exported(step)
        check_template(pointer + "/outputs", step.outputs, inner, where)
        check_template(pointer + "/set_context", step.set_context, inner, where)
    top_level: set[str] = set()
    for step in pack.steps:
        top_level |= {step.id} | _exported(step)
    check_template("/outputs", pack.outputs, top_level, "pack outputs")
    return issues


def _strings(value: Any, pointer: str) -> Iterable[tuple[str, str]]:
    """Every string in a JSON value with its pointer (mapping keys are not templates)."""
    if isinstance(value, str):
        yield pointer, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{pointer}/{escape_pointer(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{pointer}/{index}")


def _exported(step: Step) -> set[str]:
    """Ids of nested steps whose results are visible after ``step`` ends.

    A loop's body steps run once per item; outside the loop only the loop's own outputs
    (the list of iterations) exist, so they are not exported.
    """
    if isinstance(step, LoopStep):
        return set()
    out: set[str] = set()
    for _, children in step.children():
        for child in children:
            out.add(child.id)
            out |= _exported(child)
    return out


class StepSet:
    """An immutable set of step ids stored as a bit mask over the pack's ids.

    The steps visible before each step are, in a chain of ``n`` steps, ``n`` sets of up to
    ``n`` ids: as Python sets that is quadratic in time and memory (a 1 MB pack of 15,000
    chained steps took 46 s and gigabytes). As masks each union is ``n / 64`` machine
    words. Supports ``in`` and ``|`` with another StepSet or any iterable of ids.
    """

    __slots__ = ("_index", "_mask")

    def __init__(self, index: dict[str, int], mask: int = 0) -> None:
        self._index = index
        self._mask = mask

    def mask_of(self, ids: Iterable[str]) -> int:
        """The mask of ``ids`` (ids not in the pack are ignored)."""
        mask = 0
        for step_id in ids:
            position = self._index.get(step_id)
            if position is not None:
                mask |= 1 << position
        return mask

    def __contains__(self, step_id: object) -> bool:
        position = self._index.get(step_id) if isinstance(step_id, str) else None
        return position is not None and bool(self._mask >> position & 1)

    def __or__(self, other: StepSet | Iterable[str]) -> StepSet:
        mask = other._mask if isinstance(other, StepSet) else self.mask_of(other)
        return StepSet(self._index, self._mask | mask)


def _visible_steps(pack: WorkflowPack) -> dict[str, StepSet]:
    """For each step, the steps guaranteed to have finished (or been skipped) before it starts.

    Those are, for the step and each of its ancestors, the transitive sibling dependencies
    together with everything nested in them; a fallback or compensation step also sees the
    step it belongs to. Computed without recursion over dependencies (a chain of thousands
    of steps is fine) and as bit masks (:class:`StepSet`).
    """
    ids = [step.id for _, step, _ in all_steps(pack)]
    index = {step_id: position for position, step_id in enumerate(dict.fromkeys(ids))}
    empty = StepSet(index)
    every_id = StepSet(index, (1 << len(index)) - 1)
    exported: dict[int, int] = {}  # id(step) -> mask of _exported(step)

    def exported_mask(step: Step) -> int:
        key = id(step)
        if key not in exported:
            exported[key] = empty.mask_of(_exported(step))
        return exported[key]

    def closure(steps: list[Step]) -> dict[str, int]:
        by_id = {s.id: s for s in steps}
        memo: dict[str, int] = {}
        for root in steps:
            if root.id in memo:
                continue
            # Depth-first, post-order, with an explicit stack; an edge back into the path
            # (a cycle, reported by the dependency checks) is ignored, as it cannot finish first.
            path = {root.id}
            stack = [(root.id, iter(root.dependencies))]
            while stack:
                step_id, pending = stack[-1]
                for dep in pending:
                    if dep in by_id and dep not in path and dep not in memo:
                        path.add(dep)
                        stack.append((dep, iter(by_id[dep].dependencies)))
                        break
                else:
                    stack.pop()
                    path.discard(step_id)
                    mask = 0
                    for dep in by_id[step_id].dependencies:
                        if dep in memo and dep != step_id:
                            mask |= memo[dep] | (1 << index[dep]) | exported_mask(by_id[dep])
                    memo[step_id] = mask
        return memo

    result: dict[str, StepSet] = {}

    def walk(steps: list[Step], inherited: StepSet) -> None:
        local = closure(steps)
        for step in steps:
            seen = inherited | StepSet(index, local[step.id])
            result[step.id] = seen
            for _, children in step.children():
                walk(children, seen)
            if step.on_error is not None:
                handler_view = seen | StepSet(index, (1 << index[step.id]) | exported_mask(step))
                walk(step.on_error.fallback, handler_view)
                # Compensation undoes whatever completed; an entry usually reads the outputs of
                # the step it compensates (and runs only if that step completed), so any step
                # of the run may be referenced.
                walk(step.on_error.compensate, every_id)

    walk(pack.steps, empty)
    if pack.on_error is not None:
        walk(pack.on_error.compensate, every_id)
    return result


# --- warnings ---------------------------------------------------------------------------------


def _constant(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` reads no name and evaluates without error."""
    try:
        expr = parse_expression(text)
        if expr.root_names():
            return False, None
        return True, expr.evaluate({})
    except ExpressionError:
        return False, None


def _never_run_warnings(pack: WorkflowPack) -> list[ValidationIssue]:
    warnings: list[ValidationIssue] = []

    def warn(pointer: str, steps: list[Step], why: str) -> None:
        for index, step in enumerate(steps):
            warnings.append(
                ValidationIssue("never_runs", f"{pointer}/{index}", f"step {step.id!r} can never run: {why}", severity="warning")
            )

    for pointer, step, _ in all_steps(pack):
        if isinstance(step, ConditionStep):
            known, value = _constant(step.condition)
            if known and value is True:
                warn(pointer + "/else", step.else_, f"the condition `{step.condition}` is always true")
            elif known and value is False:
                warn(pointer + "/then", step.then, f"the condition `{step.condition}` is always false")
        elif isinstance(step, SwitchStep):
            for index, case in enumerate(step.cases):
                known, value = _constant(case.when)
                if known and value is False:
                    warn(f"{pointer}/cases/{index}/steps", case.steps, f"case {index} `{case.when}` is always false")
                if known and value is True:
                    for later in range(index + 1, len(step.cases)):
                        warn(f"{pointer}/cases/{later}/steps", step.cases[later].steps, f"case {index} is always true")
                    warn(pointer + "/default", step.default, f"case {index} is always true")
                    break
        elif isinstance(step, LoopStep) and step.collection is not None:
            known, value = _constant(step.collection)
            if known and value == []:
                warn(pointer + "/steps", step.steps, "the loop's collection is always empty")
    return warnings


# --- stages 6 and 7 ---------------------------------------------------------------------------


def _service_issues(pack: WorkflowPack, services: Collection[str] | None) -> list[ValidationIssue]:
    if services is None:
        return []
    known = sorted(services)
    issues = []
    for pointer, step, _ in all_steps(pack):
        if isinstance(step, ServiceCallStep) and step.service not in services:
            issues.append(
                ValidationIssue(
                    "unknown_service",
                    pointer + "/service",
                    f"service {step.service!r} is not in the service registry (known: {', '.join(known) or 'none'})",
                )
            )
    return issues


def _input_schema_issues(pack: WorkflowPack) -> list[ValidationIssue]:
    schema = pack.input_schema()
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"/{escape_pointer(p)}" for p in exc.path)
        return [ValidationIssue("bad_input_schema", "/inputs" + where, f"inputs is not a valid JSON Schema: {exc.message}")]
    except RecursionError:
        # e.g. a pattern of a thousand nested groups, which the meta-schema's regex check parses
        return [ValidationIssue("bad_input_schema", "/inputs", "inputs is nested too deeply to check (a pattern or a subschema)")]
    # Pointers are into the schema as the engine reads it (shorthand inputs sit under /properties).
    base = "/inputs"
    issues = [ValidationIssue("unsupported_pattern", base + where, message) for where, message in pattern_issues(schema)]
    for where, ref in _refs(schema, ""):
        if not ref.startswith("#"):
            issues.append(ValidationIssue("remote_ref", base + where, f"$ref {ref!r} points outside the pack; only local refs (#/...) are allowed"))
        elif _resolve_pointer(schema, ref[1:]) is _MISSING:
            issues.append(ValidationIssue("unresolved_ref", base + where, f"$ref {ref!r} points at nothing in the schema"))
    return issues


_MISSING = object()


def _refs(value: Any, pointer: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield f"{pointer}/$ref", item
            else:
                yield from _refs(item, f"{pointer}/{escape_pointer(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _refs(item, f"{pointer}/{index}")


def _resolve_pointer(document: Any, pointer: str) -> Any:
    if pointer in ("", "/"):
        return document
    node = document
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node
