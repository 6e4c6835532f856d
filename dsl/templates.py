"""``${ ... }`` templates in step inputs, headers, endpoints and outputs.

A template is any JSON-like value. :func:`compile_template` walks its dicts (keys are
kept literally, values compiled), lists and strings; every ``${ expr }`` inside a string
is an expression of :mod:`dsl.expressions`. :meth:`Template.render` evaluates them against
a scope and returns a new value:

* a string that is exactly one ``${ expr }`` (whitespace allowed only inside the braces)
  becomes the expression's value with its type kept: ``"${ inputs.amount }"`` → ``12000``,
  a list stays a list;
* otherwise each ``${ expr }`` is written into the text: strings as they are, numbers as
  ``str()`` does (``12``, ``1.5``), ``true``/``false``, ``null``, lists and objects as compact
  JSON (``[1,"a"]``);
* a secret (``${ secrets.NAME }``, a ``secret: true`` input) is never written as text:
  it stays a marker of :mod:`dsl.secrets`, and a string it is part of renders as a
  :class:`~dsl.secrets.SecretText` that the step task completes;
* ``$${`` is an escape for a literal ``${`` (``"$${ x }"`` renders as ``"${ x }"``); a
  ``${`` with a ``$`` in front is always literal.

The closing ``}`` is found with the expression tokenizer, so braces inside string or map
literals (``${ {'a': '}'} }``) do not end an expression.

Limits: each expression has its own evaluation budget (see :mod:`dsl.expressions`); text
built by interpolation is at most :data:`~dsl.expressions.MAX_STRING_LENGTH` characters in
total per render; and a compiled or rendered value has at most :data:`MAX_TEMPLATE_NODES`
nodes, which also stops reference cycles and alias bombs (shared sub-lists) cold.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dsl.errors import ExpressionError, ExpressionLimitError, ExpressionSyntaxError
from dsl.expressions import (
    MAX_STRING_LENGTH,
    Expression,
    format_value,
    parse_expression,
    scan_expression_end,
)
from dsl.secrets import SecretRef, SecretText, SecretValue

__all__ = ["MAX_TEMPLATE_NODES", "Template", "compile_template"]

MAX_TEMPLATE_NODES: int = 1_000_000
"""Most values (containers and scalars) a template may hold, or a render may produce."""

_SPACE = " \t\r\n"


# --- compiled nodes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Static:
    value: Any  # a private copy; rendering copies it again


@dataclass(frozen=True, slots=True)
class _Whole:
    expression: Expression


@dataclass(frozen=True, slots=True)
class _Text:
    source: str  # the template string, for errors
    parts: tuple[str | Expression, ...]


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Dict:
    items: tuple[tuple[Any, Any], ...]


_Compiled = _Static | _Whole | _Text | _List | _Dict


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pointer_token(key: Any) -> str:
    text = key if isinstance(key, str) else str(key)
    return text.replace("~", "~0").replace("/", "~1")


def _compile_string(text: str) -> tuple[_Compiled, list[Expression]]:
    """Compile one template string.

    Raises:
        ExpressionSyntaxError, ForbiddenConstructError, ExpressionLimitError: with
            ``expression`` the whole string and ``offset`` into it.
    """
    if "${" not in text:
        return _Static(text), []
    parts: list[str | Expression] = []
    literal: list[str] = []
    i = 0
    whole = False
    while True:
        j = text.find("${", i)
        if j < 0:
            literal.append(text[i:])
            break
        if j > i and text[j - 1] == "$":
            literal.append(text[i : j - 1] + "${")
            i = j + 2
            continue
        literal.append(text[i:j])
        inner = j + 2
        end = scan_expression_end(text, inner)
        if end < 0:
            raise ExpressionSyntaxError(text, "'${' is not closed by '}'", j)
        body = text[inner:end]
        lead = len(body) - len(body.lstrip(_SPACE))
        source = body.strip(_SPACE)
        if not source:
            raise ExpressionSyntaxError(text, "empty expression in '${ }'", j)
        try:
            expression = parse_expression(source)
        except ExpressionError as exc:
            offset = inner + lead + exc.offset if exc.offset is not None else j
            raise type(exc)(text, exc.detail, offset) from None
        if literal and any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(expression)
        whole = j == 0 and end == len(text) - 1
        i = end + 1
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    expressions = [p for p in parts if isinstance(p, Expression)]
    if not expressions:
        return _Static(tail), []
    if whole and len(parts) == 1:
        return _Whole(expressions[0]), expressions
    return _Text(text, tuple(parts)), expressions


def _limit(detail: str) -> ExpressionLimitError:
    return ExpressionLimitError("<template>", detail)


def _compile(value: Any) -> tuple[_Compiled, list[tuple[str, Expression]]]:
    """Compile a whole template iteratively (no recursion limit on deep documents)."""
    found: list[tuple[str, Expression]] = []
    nodes = 0

    def leaf(item: Any, pointer: str) -> _Compiled:
        if isinstance(item, str):
            node, expressions = _compile_string(item)
            found.extend((pointer, e) for e in expressions)
            return node
        return _Static(item)

    if not isinstance(value, (list, dict)):
        return leaf(value, ""), found
    # Each frame: the container, its key in the parent, its pointer, an iterator over
    # (key, child), and the compiled children so far.
    stack: list[tuple[Any, Any, str, Iterator[tuple[Any, Any]], list[tuple[Any, _Compiled]]]] = []
    open_ids: set[int] = set()

    def push(container: Any, key: Any, pointer: str) -> None:
        if id(container) in open_ids:
            raise _limit(f"template value at {pointer or '/'} contains itself")
        open_ids.add(id(container))
        pairs = iter(container.items()) if isinstance(container, dict) else enumerate(container)
        stack.append((container, key, pointer, pairs, []))

    push(value, None, "")
    while True:
        container, own_key, pointer, pairs, children = stack[-1]
        nodes += 1
        if nodes > MAX_TEMPLATE_NODES:
            raise _limit(f"template has more than {MAX_TEMPLATE_NODES} values")
        step = next(pairs, None)
        if step is not None:
            key, child = step
            child_pointer = f"{pointer}/{_pointer_token(key)}"
            if isinstance(child, (list, dict)):
                push(child, key, child_pointer)
            else:
                children.append((key, leaf(child, child_pointer)))
            continue
        stack.pop()
        open_ids.discard(id(container))
        built: _Compiled
        if all(isinstance(c, _Static) for _, c in children):
            # Collapse static subtrees so rendering copies them in one go.
            statics = [(k, c.value) for k, c in children if isinstance(c, _Static)]
            built = _Static(dict(statics) if isinstance(container, dict) else [v for _, v in statics])
        elif isinstance(container, dict):
            built = _Dict(tuple(children))
        else:
            built = _List(tuple(c for _, c in children))
        if not stack:
            return built, found
        stack[-1][4].append((own_key, built))


class Template:
    """A compiled template: immutable and picklable.

    Build one with :func:`compile_template` (the constructor takes compiled parts).

    Attributes:
        is_static: True when the template holds no expression at all.
    """

    __slots__ = ("_root", "_expressions", "is_static", "_steps")

    is_static: bool

    def __init__(self, root: Any, expressions: tuple[tuple[str, Expression], ...]) -> None:
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_expressions", expressions)
        object.__setattr__(self, "is_static", not expressions)
        steps: frozenset[str] = frozenset().union(*(e.step_references() for _, e in expressions))
        object.__setattr__(self, "_steps", steps)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Template is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Template is immutable")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Template, (self._root, self._expressions))

    def __repr__(self) -> str:
        return f"<Template {len(self._expressions)} expression(s)>"

    def expressions(self) -> list[tuple[str, Expression]]:
        """(JSON pointer, expression) for every ``${ }``, in document order.

        Pointers are relative to the template root (RFC 6901: ``~`` → ``~0``, ``/`` → ``~1``),
        e.g. ``/customer`` or ``/items/0``; ``""`` for a template that is one string. A
        string with several expressions appears once per expression.
        """
        return list(self._expressions)

    def step_references(self) -> frozenset[str]:
        """Union of :meth:`Expression.step_references` over the expressions."""
        return self._steps

    def render(self, scope: Mapping[str, Any]) -> Any:
        """Evaluate every expression against ``scope`` and build the result.

        Args:
            scope: root name → JSON value, as for :meth:`Expression.evaluate`.

        Returns:
            A new JSON value sharing nothing with the template or the scope.

        Raises:
            ExpressionError: any subclass raised by an expression, unchanged.
            ExpressionLimitError: interpolated text over
                :data:`~dsl.expressions.MAX_STRING_LENGTH` characters in total, or a result
                with more than :data:`MAX_TEMPLATE_NODES` values.
        """
        return _Renderer(scope).render(self._root)


class _Renderer:
    """State of one render: the scope, text written so far, values copied so far."""

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope
        self.chars = 0
        self.nodes = 0

    def count(self, source: str = "<template>") -> None:
        self.nodes += 1
        if self.nodes > MAX_TEMPLATE_NODES:
            raise ExpressionLimitError(source, f"rendered value has more than {MAX_TEMPLATE_NODES} values")

    def render(self, root: Any) -> Any:
        holder: list[Any] = [None]
        # Each task: (compiled node, container to store into, key there).
        tasks: list[tuple[Any, Any, Any]] = [(root, holder, 0)]
        while tasks:
            node, target, key = tasks.pop()
            self.count()
            if isinstance(node, _Static):
                target[key] = self.copy(node.value)
            elif isinstance(node, _Whole):
                target[key] = self.copy(node.expression.evaluate(self.scope), node.expression.source)
            elif isinstance(node, _Text):
                target[key] = self.text(node)
            elif isinstance(node, _List):
                out: list[Any] = [None] * len(node.items)
                target[key] = out
                # Reversed so expressions are evaluated (and fail) in document order.
                tasks.extend((child, out, i) for i, child in reversed(list(enumerate(node.items))))
            else:
                obj: dict[Any, Any] = dict.fromkeys(k for k, _ in node.items)
                target[key] = obj
                tasks.extend((child, obj, k) for k, child in reversed(node.items))
        return holder[0]

    def text(self, node: _Text) -> str | SecretText:
        pieces: list[Any] = []
        for part in node.parts:
            if isinstance(part, str):
                piece = part
            else:
                value = part.evaluate(self.scope)
                if isinstance(value, (SecretRef, SecretValue, SecretText)):
                    # Secrets stay markers; the step task writes them in (dsl.secrets).
                    pieces.append(value)
                    continue
                remaining = MAX_STRING_LENGTH - self.chars
                piece = format_value(value, source=part.source, max_chars=max(remaining, 0))
            self.chars += len(piece)
            if self.chars > MAX_STRING_LENGTH:
                raise ExpressionLimitError(
                    _clip(node.source), f"rendered text would be longer than {MAX_STRING_LENGTH} characters"
                )
            pieces.append(piece)
        if any(not isinstance(p, str) for p in pieces):
            return SecretText.join(pieces)
        return "".join(pieces)

    def copy(self, value: Any, source: str = "<template>") -> Any:
        """Deep copy of a JSON value, iterative and counted (shared sub-lists are unshared)."""
        if not isinstance(value, (list, dict)):
            return value
        holder: list[Any] = [None]
        tasks: list[tuple[Any, Any, Any]] = [(value, holder, 0)]
        while tasks:
            item, target, key = tasks.pop()
            self.count(source)
            if isinstance(item, list):
                out: list[Any] = list(item)
                target[key] = out
                tasks.extend((child, out, i) for i, child in enumerate(item) if isinstance(child, (list, dict)))
                self.nodes += len(item)
            elif isinstance(item, dict):
                obj = dict(item)
                target[key] = obj
                tasks.extend((child, obj, k) for k, child in item.items() if isinstance(child, (list, dict)))
                self.nodes += len(item)
            else:
                target[key] = item
        return holder[0]


def compile_template(value: Any) -> Template:
    """Compile a template value once; render it many times.

    Args:
        value: a JSON-like value: dicts (keys kept literally), lists, strings with
            ``${ expr }`` sections; other scalars are kept as they are.

    Returns:
        The compiled :class:`Template`.

    Raises:
        ExpressionSyntaxError: an unclosed ``${``, an empty one, or an expression that does
            not parse; ``expression`` is the offending string and ``offset`` is into it.
        ForbiddenConstructError: an expression uses a refused construct (same offsets).
        ExpressionLimitError: an expression is too long or deep, or the value has more than
            :data:`MAX_TEMPLATE_NODES` values or contains itself.
    """
    root, found = _compile(value)
    return Template(root, tuple(found))

