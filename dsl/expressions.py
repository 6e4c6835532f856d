"""A small, safe expression language for step conditions, loop collections and ``${ }`` templates.

Text is read by a hand-written tokenizer and a precedence-climbing parser into an immutable
tree; a tree-walking evaluator runs that tree against a *scope*, a mapping of root names
(``inputs``, ``steps``, ``context``, ``item``, ``index``...) to JSON values. Nothing here uses
Python's ``eval``/``exec``/``compile``/``ast``, reads an attribute of a value or imports by
name: ``a.b`` is a dict lookup and a call can only reach the functions in :data:`FUNCTIONS`.

Grammar, lowest to highest precedence::

    expr        := or_expr ( '?' expr ':' expr )?
    or_expr     := and_expr ( ('or' | '||') and_expr )*
    and_expr    := not_expr ( ('and' | '&&') not_expr )*
    not_expr    := ('not' | '!') not_expr | comparison
    comparison  := additive ( ('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') additive )*
    additive    := term ( ('+'|'-') term )*
    term        := unary ( ('*'|'/'|'//'|'%') unary )*
    unary       := ('-'|'+') unary | power
    power       := postfix ( '**' unary )?
    postfix     := (primary | FUNCTION '(' args ')') ( '.' MEMBER | '[' expr ']' )*
    primary     := NUMBER | STRING | 'true' | 'false' | 'null' | NAME
                 | '(' expr ')' | '[' items ']' | '{' key ':' expr, ... '}'

* ``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``; ``true false null and or not in`` are reserved.
* ``MEMBER`` (after a dot) may also contain hyphens, but not end with one, so that
  ``steps.fetch-price.outputs.price`` works as in GitHub Actions. A minus right after a
  dotted name therefore needs spaces: write ``inputs.a - 1``, not ``inputs.a-1``.
* Names, members, literal keys (``a['k']``) and map-literal keys starting with ``_`` are
  refused (:class:`~dsl.errors.ForbiddenConstructError`), as is calling anything but a
  built-in function, and Python keywords such as ``lambda`` or ``import`` used as names.
* Comparisons chain like Python's: ``1 < x <= 10`` is ``1 < x and x <= 10``.
* Numbers: ``12``, ``1.5``, ``1e3``. Strings: single or double quotes with the escapes
  ``\\n \\t \\r \\\\ \\' \\" \\/ \\uXXXX`` (a surrogate pair of ``\\u`` escapes makes one character).

Semantics are strict; nothing is coerced implicitly:

* ``and``/``or``/``not`` and the condition of ``?:`` need booleans (no truthiness);
  ``and``/``or`` short-circuit, as does a chained comparison.
* ``==``/``!=`` compare any values deeply; a boolean is not a number (``true == 1`` is
  false) while ``1 == 1.0`` is true.
* ``< <= > >=`` compare two numbers or two strings.
* ``+`` adds numbers and concatenates two strings or two lists; ``- / // %`` and ``**``
  take numbers; ``*`` multiplies numbers or repeats a string or list a whole number of
  times. ``/`` always gives a float, ``//`` floors, ``%`` takes the sign of the divisor.
* ``x in y``: substring of a string, item of a list (deep equality), key of an object.
* ``a.b`` / ``a['b']`` read a key of an object, ``a[i]`` an item of a list or a character
  of a string (negative ``i`` counts from the end). A missing key, an index out of range,
  a name the scope lacks or a step through ``null`` raise
  :class:`~dsl.errors.UnknownNameError` naming the path; ``defined(path)`` tests for that.

Limits (each raises :class:`~dsl.errors.ExpressionLimitError`, checked before the work):
source text at most :data:`MAX_SOURCE_LENGTH` characters; nesting at most :data:`MAX_DEPTH`
levels (each bracket, operand of a higher-precedence operator, unary operator, branch and
argument is a level; chains such as ``a + b + c`` or ``a.b.c`` are not); integers at most
:data:`MAX_INT_BITS` bits and floats finite; strings at most :data:`MAX_STRING_LENGTH`
characters; lists built at most :data:`MAX_COLLECTION_LENGTH` items; and a budget of
:data:`MAX_STEPS` steps per :meth:`Expression.evaluate` call. Every node visited costs one
step; an operation whose work grows with its data costs one more step per 100 items it
builds, copies or compares and per 1000 characters it builds, so work *and* memory per
call stay bounded whatever the data.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from dsl.errors import (
    ExpressionError,
    ExpressionLimitError,
    ExpressionSyntaxError,
    ExpressionTypeError,
    ForbiddenConstructError,
    UnknownNameError,
)

__all__ = [
    "FUNCTIONS",
    "MAX_COLLECTION_LENGTH",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_SOURCE_LENGTH",
    "MAX_STEPS",
    "MAX_STRING_LENGTH",
    "Expression",
    "format_value",
    "parse_expression",
    "scan_expression_end",
]

MAX_SOURCE_LENGTH: int = 4096
"""Longest expression text accepted, in characters."""
MAX_DEPTH: int = 64
"""Deepest nesting accepted by the parser (see the module docstring for what counts)."""
MAX_STEPS: int = 10_000
"""Evaluation budget per :meth:`Expression.evaluate` call, in steps (node visits plus data work)."""
MAX_STRING_LENGTH: int = 1_000_000
"""Longest string an operation may build, in characters."""
MAX_COLLECTION_LENGTH: int = 100_000
"""Longest list an operation may build, in items."""
MAX_INT_BITS: int = 4096
"""Largest integer an operation may take or produce, in bits."""

# One extra step per this many items/characters of data work: fine enough that the
# budget bounds time and memory, coarse enough that a 100 000-item list stays usable.
_ITEMS_PER_STEP = 100
_CHARS_PER_STEP = 1000

# Keywords of Python that are not ours: used as names they are a sign of someone trying
# Python, so they get a clear refusal rather than "name is not defined" at run time.
_PYTHON_KEYWORDS = frozenset(
    "as assert async await break class continue def del elif else except finally for from "
    "global if import is lambda nonlocal pass raise return try while with yield".split()
)
_KEYWORDS = frozenset({"true", "false", "null", "and", "or", "not", "in"})
_PYTHON_LITERALS = {"True": "true", "False": "false", "None": "null"}


# --- tokenizer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, string, name, member, op, end
    text: str  # the lexeme; for strings the decoded value
    start: int
    end: int


_SPACE = frozenset(" \t\r\n")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NUMBER_TAIL = _NAME_START | _DIGITS | {"."}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMBER_RE = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STRING_CHUNK = {"'": re.compile(r"[^'\\]*"), '"': re.compile(r'[^"\\]*')}
_OPERATORS = (
    "**", "//", "==", "!=", "<=", ">=", "&&", "||",
    "(", ")", "[", "]", "{", "}", ".", ",", ":", "?", "+", "-", "*", "/", "%", "<", ">", "!",
)  # fmt: skip
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/"}
_CHAR_HINTS = {
    "=": "a single '=' is not an operator; use '==' to compare",
    "&": "use 'and' (or '&&')",
    "|": "use 'or' (or '||')",
    "$": "'$' cannot appear in an expression (is a '${' nested inside another?)",
}


def _syntax(text: str, detail: str, offset: int | None) -> ExpressionSyntaxError:
    return ExpressionSyntaxError(text, detail, offset)


def _read_string(text: str, pos: int) -> tuple[str, int]:
    """Decode the string literal opening at ``pos``; return (value, end offset)."""
    quote = text[pos]
    chunk = _STRING_CHUNK[quote]
    n = len(text)
    out: list[str] = []
    i = pos + 1
    while True:
        m = chunk.match(text, i)
        assert m is not None  # the pattern matches the empty string
        out.append(m.group())
        i = m.end()
        if i >= n:
            raise _syntax(text, "unterminated string", pos)
        if text[i] == quote:
            return "".join(out), i + 1
        if i + 1 >= n:
            raise _syntax(text, "unterminated string", pos)
        escape = text[i + 1]
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            i += 2
        elif escape == "u":
            code = _hex4(text, i)
            i += 6
            if 0xD800 <= code < 0xDC00:
                # JSON spells characters outside the BMP as a surrogate pair; accept that.
                low = _hex4(text, i) if text.startswith("\\u", i) else -1
                if not 0xDC00 <= low < 0xE000:
                    raise _syntax(text, "unpaired surrogate in \\u escape", i - 6)
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            elif 0xDC00 <= code < 0xE000:
                raise _syntax(text, "unpaired surrogate in \\u escape", i - 6)
            out.append(chr(code))
        else:
            raise _syntax(text, f"invalid escape '\\{escape}' in string", i)


def _hex4(text: str, i: int) -> int:
    digits = text[i + 2 : i + 6]
    if len(digits) != 4 or not all(c in _HEX for c in digits):
        raise _syntax(text, "invalid \\u escape: expected 4 hex digits", i)
    return int(digits, 16)


def _tokens(text: str, pos: int = 0) -> Iterator[_Token]:
    """Yield the tokens of ``text`` from ``pos``, ending with an ``end`` token.

    Lazy so that a template scanner can stop at the ``}`` closing a ``${`` without
    reading (or failing on) the text after it. Offsets are into ``text``.
    """
    n = len(text)
    after_dot = False
    while True:
        while pos < n and text[pos] in _SPACE:
            pos += 1
        if after_dot:
            m = _MEMBER_RE.match(text, pos)
            if m is None:
                raise _syntax(text, "expected a key name after '.'", pos)
            after_dot = False
            yield _Token("member", m.group(), pos, m.end())
            pos = m.end()
            continue
        if pos >= n:
            yield _Token("end", "", n, n)
            return
        ch = text[pos]
        if ch in _DIGITS:
            m = _NUMBER_RE.match(text, pos)
            assert m is not None
            end = m.end()
            if end < n and text[end] in _NUMBER_TAIL:
                raise _syntax(text, f"invalid number {text[pos:end + 1]!r}", pos)
            yield _Token("number", m.group(), pos, end)
            pos = end
        elif ch == "'" or ch == '"':
            value, end = _read_string(text, pos)
            yield _Token("string", value, pos, end)
            pos = end
        elif ch in _NAME_START:
            m = _NAME_RE.match(text, pos)
            assert m is not None
            yield _Token("name", m.group(), pos, m.end())
            pos = m.end()
        else:
            for op in _OPERATORS:
                if text.startswith(op, pos):
                    break
            else:
                raise _syntax(text, _CHAR_HINTS.get(ch, f"unexpected character {ch!r}"), pos)
            after_dot = op == "."
            yield _Token("op", op, pos, pos + len(op))
            pos += len(op)


def scan_expression_end(text: str, start: int) -> int:
    """Find the ``}`` that closes a ``${`` whose expression starts at ``text[start]``.

    The expression tokenizer does the scanning, so braces inside string literals and map
    literals (``${ {'a': '}'} }``) do not end the expression.

    Args:
        text: the whole template string.
        start: offset just after the ``${``.

    Returns:
        The offset of the closing ``}``, or -1 when the text ends before one.

    Raises:
        ExpressionSyntaxError: a token is malformed (``expression`` is ``text``, ``offset``
            is into ``text``).
        ExpressionLimitError: the expression would be longer than :data:`MAX_SOURCE_LENGTH`.
    """
    depth = 0
    for tok in _tokens(text, start):
        if tok.kind == "end":
            return -1
        if tok.end - start > MAX_SOURCE_LENGTH:
            raise ExpressionLimitError(
                text, f"expression inside '${{ }}' is longer than {MAX_SOURCE_LENGTH} characters", start
            )
        if tok.kind == "op":
            if tok.text == "{":
                depth += 1
            elif tok.text == "}":
                if depth == 0:
                    return tok.start
                depth -= 1
    return -1  # pragma: no cover - the token stream always ends with an end token


def _clip(text: str, limit: int = 200) -> str:
    """Shorten a very long text for use as an error's ``expression``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- tree -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Literal(_Node):
    value: Any


@dataclass(frozen=True, slots=True)
class _Name(_Node):
    name: str


@dataclass(frozen=True, slots=True)
class _Access:
    """One ``.key`` or ``[index]`` step of a path; ``index`` is None when ``key`` is literal."""

    end: int
    key: Any
    index: _Node | None
    dotted: bool


@dataclass(frozen=True, slots=True)
class _Path(_Node):
    base: _Node
    accesses: tuple[_Access, ...]


@dataclass(frozen=True, slots=True)
class _ListLit(_Node):
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _MapLit(_Node):
    keys: tuple[str, ...]
    values: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Unary(_Node):
    op: str
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Power(_Node):
    base: _Node
    exponent: _Node


@dataclass(frozen=True, slots=True)
class _Arith(_Node):
    """A left-associative chain ``first op1 x1 op2 x2 ...`` of one precedence level.

    Chains are flat so that ``1 + 1 + ... + 1`` neither deepens the tree nor the stack.
    """

    first: _Node
    rest: tuple[tuple[str, _Node], ...]


@dataclass(frozen=True, slots=True)
class _Logical(_Node):
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Compare(_Node):
    ops: tuple[str, ...]
    operands: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Conditional(_Node):
    condition: _Node
    then: _Node
    otherwise: _Node


@dataclass(frozen=True, slots=True)
class _Call(_Node):
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Defined(_Node):
    target: _Node  # a _Name or a _Path rooted at a _Name


def _children(node: _Node) -> Iterator[_Node]:
    if isinstance(node, _Path):
        yield node.base
        yield from (a.index for a in node.accesses if a.index is not None)
    elif isinstance(node, _ListLit):
        yield from node.items
    elif isinstance(node, _MapLit):
        yield from node.values
    elif isinstance(node, (_Unary, _Not)):
        yield node.operand
    elif isinstance(node, _Power):
        yield node.base
        yield node.exponent
    elif isinstance(node, _Arith):
        yield node.first
        yield from (n for _, n in node.rest)
    elif isinstance(node, (_Logical, _Compare)):
        yield from node.operands
    elif isinstance(node, _Conditional):
        yield from (node.condition, node.then, node.otherwise)
    elif isinstance(node, _Call):
        yield from node.args
    elif isinstance(node, _Defined):
        yield node.target


def _walk(root: _Node) -> Iterator[_Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


# --- parser -----------------------------------------------------------------------------------

_OR, _AND, _NOT, _CMP, _ADD, _MUL, _UNARY, _POW = range(1, 9)
_BINARY_OPS: dict[str, tuple[str, int]] = {
    "or": ("or", _OR), "||": ("or", _OR), "and": ("and", _AND), "&&": ("and", _AND),
    "==": ("==", _CMP), "!=": ("!=", _CMP), "<": ("<", _CMP), "<=": ("<=", _CMP),
    ">": (">", _CMP), ">=": (">=", _CMP), "in": ("in", _CMP),
    "+": ("+", _ADD), "-": ("-", _ADD), "*": ("*", _MUL), "/": ("/", _MUL), "//": ("//", _MUL),
    "%": ("%", _MUL), "**": ("**", _POW),
}  # fmt: skip


def _describe_token(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of expression"
    if tok.kind == "string":
        return f"string {_short_str(tok.text)}"
    if tok.kind == "number":
        return f"number {tok.text[:40]}"
    return repr(tok.text[:40])


class _Parser:
    """Precedence climbing over a token list; depth is checked on every nested operand."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = list(_tokens(source))
        self.i = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_op(self, text: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "op" and tok.text == text

    def at_word(self, word: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "name" and tok.text == word

    def expect(self, text: str, context: str) -> _Token:
        if not self.at_op(text):
            tok = self.peek()
            if tok.kind == "name" and tok.text in _PYTHON_KEYWORDS:
                raise self.unexpected(tok)
            raise _syntax(self.source, f"expected '{text}' {context}, found {_describe_token(tok)}", tok.start)
        return self.advance()

    def unexpected(self, tok: _Token) -> ExpressionError:
        if tok.kind == "name" and tok.text in _PYTHON_KEYWORDS:
            # `[x for x in y]`, `a if b else c`, `x is null`: Python, not a typo.
            return self.forbidden(f"'{tok.text}' is Python, not part of the expression language", tok.start)
        return _syntax(self.source, f"unexpected {_describe_token(tok)}", tok.start)

    def forbidden(self, detail: str, offset: int) -> ForbiddenConstructError:
        return ForbiddenConstructError(self.source, detail, offset)

    def parse(self) -> _Node:
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.unexpected(tok)
        return node

    def expr(self, depth: int) -> _Node:
        condition = self.binary(0, depth)
        if not self.at_op("?"):
            return condition
        self.advance()
        then = self.expr(depth + 1)
        self.expect(":", "in a conditional 'a ? b : c'")
        otherwise = self.expr(depth + 1)
        return _Conditional(condition.start, otherwise.end, condition, then, otherwise)

    def binary_op(self) -> tuple[str, int, int] | None:
        """The binary operator at the cursor as (operator, precedence, tokens), if any."""
        tok = self.peek()
        if tok.kind == "op" and tok.text in _BINARY_OPS:
            return (*_BINARY_OPS[tok.text], 1)
        if tok.kind == "name":
            if tok.text in ("and", "or", "in"):
                return (*_BINARY_OPS[tok.text], 1)
            if tok.text == "not" and self.at_word("in", 1):
                return ("not in", _CMP, 2)
        return None

    def skip(self, count: int) -> None:
        for _ in range(count):
            self.advance()

    def binary(self, min_prec: int, depth: int) -> _Node:
        depth += 1
        if depth > MAX_DEPTH:
            raise ExpressionLimitError(
                self.source, f"expression is nested more than {MAX_DEPTH} levels deep", self.peek().start
            )
        left = self.prefix(min_prec, depth)
        while True:
            found = self.binary_op()
            if found is None or found[1] < min_prec:
                return left
            prec = found[1]
            if prec == _POW:
                self.skip(found[2])
                right = self.binary(_UNARY, depth)  # right-associative; allows 2 ** -1
                left = _Power(left.start, right.end, left, right)
                continue
            operands = [left]
            ops: list[str] = []
            while found is not None and found[1] == prec:
                self.skip(found[2])
                ops.append(found[0])
                # Operands of a level are parsed one level tighter, so each level loops flat.
                operands.append(self.binary(_ADD if prec == _CMP else prec + 1, depth))
                found = self.binary_op()
            start, end = left.start, operands[-1].end
            if prec == _CMP:
                left = _Compare(start, end, tuple(ops), tuple(operands))
            elif prec in (_OR, _AND):
                left = _Logical(start, end, ops[0], tuple(operands))
            else:
                left = _Arith(start, end, left, tuple(zip(ops, operands[1:])))

    def prefix(self, min_prec: int, depth: int) -> _Node:
        tok = self.peek()
        if (tok.kind == "name" and tok.text == "not") or (tok.kind == "op" and tok.text == "!"):
            if min_prec > _NOT:
                raise _syntax(self.source, f"'{tok.text}' needs parentheses here", tok.start)
            self.advance()
            operand = self.binary(_NOT, depth)
            return _Not(tok.start, operand.end, operand)
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.advance()
            operand = self.binary(_UNARY, depth)
            return _Unary(tok.start, operand.end, tok.text, operand)
        return self.postfix(depth)

    def postfix(self, depth: int) -> _Node:
        tok = self.peek()
        if tok.kind == "name" and tok.text not in _KEYWORDS and self.at_op("(", 1):
            node = self.call(depth)
        else:
            node = self.primary(depth)
        accesses: list[_Access] = []
        while True:
            tok = self.peek()
            if tok.kind != "op":
                break
            if tok.text == ".":
                self.advance()
                member = self.advance()  # the tokenizer guarantees a member token here
                self.check_key(member.text, member.start)
                accesses.append(_Access(member.end, member.text, None, True))
            elif tok.text == "[":
                self.advance()
                index = self.expr(depth)
                close = self.expect("]", "to close the index")
                literal = isinstance(index, _Literal) and not isinstance(index.value, bool)
                if literal and isinstance(index.value, (str, int)):
                    if isinstance(index.value, str):
                        self.check_key(index.value, index.start)
                    accesses.append(_Access(close.end, index.value, None, False))
                else:
                    accesses.append(_Access(close.end, None, index, False))
            elif tok.text == "(":
                end = accesses[-1].end if accesses else node.end
                text = self.source[node.start : end]
                raise self.forbidden(
                    f"`{_clip(text, 60)}` cannot be called: only built-in functions such as length() can",
                    tok.start,
                )
            else:
                break
        if not accesses:
            return node
        return _Path(node.start, accesses[-1].end, node, tuple(accesses))

    def check_key(self, key: str, offset: int) -> None:
        if key.startswith("_"):
            raise self.forbidden(f"'{_clip(key, 40)}' starts with '_'; such names and keys are not allowed", offset)

    def check_name(self, name: str, offset: int) -> None:
        if name.startswith("_"):
            raise self.forbidden(f"'{_clip(name, 40)}' starts with '_'; such names are not allowed", offset)
        if name in _PYTHON_KEYWORDS:
            raise self.forbidden(f"'{name}' is Python, not part of the expression language", offset)
        if name in _PYTHON_LITERALS:
            raise _syntax(self.source, f"unknown name '{name}'; write {_PYTHON_LITERALS[name]}", offset)

    def call(self, depth: int) -> _Node:
        name_tok = self.advance()
        name = name_tok.text
        self.check_name(name, name_tok.start)
        if name not in FUNCTIONS:
            raise self.forbidden(
                f"{_clip(name, 40)}() is not a function of the expression language; "
                f"the functions are {', '.join(sorted(FUNCTIONS))}",
                name_tok.start,
            )
        self.advance()  # '('
        args: list[_Node] = []
        if not self.at_op(")"):
            while True:
                args.append(self.expr(depth))
                if not self.at_op(","):
                    break
                self.advance()
        close = self.expect(")", f"after the arguments of {name}()")
        low, high = _ARITY[name]
        if len(args) < low or (high is not None and len(args) > high):
            if high is None:
                wanted = f"at least {low} argument{'s' if low > 1 else ''}"
            elif low == high:
                wanted = f"exactly {low} argument{'s' if low > 1 else ''}"
            else:
                wanted = f"{low} to {high} arguments"
            raise _syntax(self.source, f"{name}() takes {wanted} ({len(args)} given)", name_tok.start)
        if name == "defined":
            target = args[0]
            if not (isinstance(target, _Name) or (isinstance(target, _Path) and isinstance(target.base, _Name))):
                raise _syntax(
                    self.source, "defined() takes a path such as inputs.customer.name", target.start
                )
            return _Defined(name_tok.start, close.end, target)
        return _Call(name_tok.start, close.end, name, tuple(args))

    def primary(self, depth: int) -> _Node:
        tok = self.advance()
        if tok.kind == "number":
            return _Literal(tok.start, tok.end, self.number(tok))
        if tok.kind == "string":
            return _Literal(tok.start, tok.end, tok.text)
        if tok.kind == "name":
            word = tok.text
            if word in ("true", "false", "null"):
                return _Literal(tok.start, tok.end, {"true": True, "false": False, "null": None}[word])
            if word in _KEYWORDS:
                raise self.unexpected(tok)
            self.check_name(word, tok.start)
            return _Name(tok.start, tok.end, word)
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr(depth)
            close = self.expect(")", "to close '('")
            # The span includes the parentheses so paths like (a).b quote sensible text.
            return replace(inner, start=tok.start, end=close.end)
        if tok.kind == "op" and tok.text == "[":
            items: list[_Node] = []
            if not self.at_op("]"):
                while True:
                    items.append(self.expr(depth))
                    if not self.at_op(","):
                        break
                    self.advance()
            close = self.expect("]", "to close the list")
            return _ListLit(tok.start, close.end, tuple(items))
        if tok.kind == "op" and tok.text == "{":
            return self.map_literal(tok, depth)
        raise self.unexpected(tok)

    def map_literal(self, open_tok: _Token, depth: int) -> _Node:
        keys: list[str] = []
        values: list[_Node] = []
        if not self.at_op("}"):
            while True:
                key_tok = self.advance()
                if key_tok.kind not in ("string", "name"):
                    found = _describe_token(key_tok)
                    raise _syntax(self.source, f"expected a key (a string or a name), found {found}", key_tok.start)
                self.check_key(key_tok.text, key_tok.start)
                if key_tok.text in keys:
                    raise _syntax(self.source, f"duplicate key {_short_str(key_tok.text)}", key_tok.start)
                self.expect(":", "after a key")
                keys.append(key_tok.text)
                values.append(self.expr(depth))
                if not self.at_op(","):
                    break
                self.advance()
        close = self.expect("}", "to close the object")
        return _MapLit(open_tok.start, close.end, tuple(keys), tuple(values))

    def number(self, tok: _Token) -> int | float:
        text = tok.text
        if "." in text or "e" in text or "E" in text:
            value = float(text)
            if not math.isfinite(value):
                raise ExpressionLimitError(self.source, f"number {text[:40]} is too large", tok.start)
            return value
        try:
            number = int(text)
        except ValueError:  # more digits than Python converts; far beyond MAX_INT_BITS anyway
            number = 1 << (MAX_INT_BITS + 1)
        if number.bit_length() > MAX_INT_BITS:
            raise ExpressionLimitError(self.source, f"integer literal exceeds {MAX_INT_BITS} bits", tok.start)
        return number


# --- values -----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "unsupported value"


def _short_str(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _short(value: Any) -> str:
    """A bounded rendering of ``value`` for error messages; never raises."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        bits = value.bit_length()
        return str(value) if bits <= 200 else f"<{bits}-bit integer>"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return _short_str(value)
    if isinstance(value, (list, dict)):
        return _dump(value, 60, truncate=True)
    return "<unsupported>"


def _describe(value: Any) -> str:
    """``string '9000'``, ``number 10000``, ``null``..."""
    return "null" if value is None else f"{_type_name(value)} {_short(value)}"


class _Overflow(Exception):
    """Internal: a dump grew past its limit."""


_END = object()


def _dump(
    value: Any,
    limit: int,
    *,
    truncate: bool = False,
    source: str = "",
    ctx: _Context | None = None,
) -> str:
    """Compact JSON text of ``value`` built iteratively (no recursion limit, no blow-up).

    Shared sub-lists are written out in full, so the text can be far longer than the
    value's memory; the walk therefore stops as soon as the text passes ``limit``.

    Args:
        value: a JSON value.
        limit: most characters allowed.
        truncate: cut the text with ``...`` at the limit and render unsupported values
            as ``?`` (for messages) instead of raising.
        source: expression text for errors.
        ctx: evaluation context charged for the items written.

    Raises:
        ExpressionLimitError: the text would exceed ``limit`` (unless ``truncate``).
        ExpressionTypeError: a value is not JSON (unless ``truncate``).
    """
    out: list[str] = []
    size = 0
    count = 0
    stack: list[list[Any]] = []  # [iterator, closer, is_object, first]

    def emit(piece: str) -> None:
        nonlocal size
        out.append(piece)
        size += len(piece)
        if size > limit:
            raise _Overflow

    current = value
    try:
        while True:
            count += 1
            if ctx is not None and count % _ITEMS_PER_STEP == 0:
                ctx.charge(1)
            if isinstance(current, str):
                emit(json.dumps(current, ensure_ascii=False))
            elif current is None:
                emit("null")
            elif isinstance(current, bool):
                emit("true" if current else "false")
            elif isinstance(current, int):
                if current.bit_length() > MAX_INT_BITS:
                    if not truncate:
                        raise ExpressionLimitError(source, f"cannot format an integer of more than {MAX_INT_BITS} bits")
                    emit(f"<{current.bit_length()}-bit integer>")
                else:
                    emit(str(current))
            elif isinstance(current, float):
                emit(_float_text(current))
            elif isinstance(current, list):
                emit("[")
                stack.append([iter(current), "]", False, True])
            elif isinstance(current, dict):
                emit("{")
                stack.append([iter(current.items()), "}", True, True])
            elif truncate:
                emit("?")
            else:
                raise ExpressionTypeError(source, "cannot format an unsupported (non-JSON) value")
            while stack:
                top = stack[-1]
                nxt = next(top[0], _END)
                if nxt is _END:
                    emit(top[1])
                    stack.pop()
                    continue
                if not top[3]:
                    emit(",")
                top[3] = False
                if top[2]:
                    key, current = nxt
                    if not isinstance(key, str):
                        if not truncate:
                            raise ExpressionTypeError(source, "cannot format an object whose keys are not all strings")
                        key = "?"
                    emit(json.dumps(key, ensure_ascii=False) + ":")
                else:
                    current = nxt
                break
            else:
                break
    except _Overflow:
        if truncate:
            return "".join(out)[: max(limit - 3, 0)] + "..."
        raise ExpressionLimitError(source, f"text of the value would be longer than {limit} characters") from None
    return "".join(out)


def format_value(value: Any, *, source: str = "", max_chars: int = MAX_STRING_LENGTH) -> str:
    """Text of a value as a template writes it: strings as is, anything else as compact JSON.

    ``null`` → ``"null"``, ``true`` → ``"true"``, ``12`` → ``"12"``, ``1.5`` → ``"1.5"``,
    ``[1,"a"]`` → ``'[1,"a"]'`` (JSON with ``separators=(",", ":")``, non-ASCII kept).

    Args:
        value: a JSON value.
        source: the expression text, for errors.
        max_chars: longest text allowed, in characters.

    Raises:
        ExpressionLimitError: the text would be longer than ``max_chars`` (checked while
            writing, so a value with shared sub-lists cannot blow up), or an integer has
            more than :data:`MAX_INT_BITS` bits.
        ExpressionTypeError: the value is not JSON.
    """
    if isinstance(value, str):
        if len(value) > max_chars:
            raise ExpressionLimitError(source, f"text of the value would be longer than {max_chars} characters")
        return value
    return _dump(value, max_chars, source=source)


# --- evaluation -------------------------------------------------------------------------------


class _Missing:
    """Sentinel: a path ``defined()`` looked up does not exist."""


_MISSING = _Missing()


class _Context:
    """State of one evaluate call: scope, source text, steps spent."""

    __slots__ = ("scope", "source", "steps", "limit")

    def __init__(self, scope: Mapping[str, Any], source: str, limit: int) -> None:
        self.scope = scope
        self.source = source
        self.steps = 0
        self.limit = limit

    def charge(self, steps: int) -> None:
        self.steps += steps
        if self.steps > self.limit:
            raise ExpressionLimitError(self.source, f"evaluation exceeded its budget of {self.limit} steps")

    def charge_items(self, count: int) -> None:
        if count > 0:
            self.charge((count + _ITEMS_PER_STEP - 1) // _ITEMS_PER_STEP)

    def charge_chars(self, count: int) -> None:
        if count > 0:
            self.charge((count + _CHARS_PER_STEP - 1) // _CHARS_PER_STEP)

    def text(self, node: _Node | None) -> str | None:
        """Source text of ``node``; None for literals, whose value already says it all."""
        if node is None or isinstance(node, _Literal):
            return None
        return _clip(self.source[node.start : node.end], 80)

    def what(self, value: Any, node: _Node | None) -> str:
        text = self.text(node)
        return f"{_describe(value)} ({text})" if text else _describe(value)

    def type_error(self, detail: str, node: _Node | None = None) -> ExpressionTypeError:
        return ExpressionTypeError(self.source, detail, node.start if node is not None else None)

    def limit_error(self, detail: str, node: _Node | None = None) -> ExpressionLimitError:
        return ExpressionLimitError(self.source, detail, node.start if node is not None else None)

    def number_result(self, value: Any, node: _Node | None) -> Any:
        """Check a computed number against the limits."""
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise self.limit_error(f"integer result exceeds {MAX_INT_BITS} bits", node)
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.limit_error("number result is out of range (not finite)", node)
            return value
        raise self.type_error("result is not a real number", node)  # e.g. a complex power

    def check_operand(self, value: Any, node: _Node | None) -> None:
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.limit_error(f"integer operand exceeds {MAX_INT_BITS} bits", node)

    def check_string(self, length: int, node: _Node | None) -> None:
        if length > MAX_STRING_LENGTH:
            raise self.limit_error(f"string result would be longer than {MAX_STRING_LENGTH} characters", node)
        self.charge_chars(length)

    def check_list(self, length: int, node: _Node | None) -> None:
        if length > MAX_COLLECTION_LENGTH:
            raise self.limit_error(f"list result would have more than {MAX_COLLECTION_LENGTH} items", node)
        self.charge_items(length)


def _eval(node: _Node, ctx: _Context) -> Any:
    ctx.steps += 1
    if ctx.steps > ctx.limit:
        raise ExpressionLimitError(ctx.source, f"evaluation exceeded its budget of {ctx.limit} steps")
    return _EVALUATORS[type(node)](node, ctx)


def _eval_literal(node: _Literal, ctx: _Context) -> Any:
    return node.value


def _eval_name(node: _Name, ctx: _Context) -> Any:
    if node.name in ctx.scope:
        return ctx.scope[node.name]
    raise UnknownNameError(ctx.source, f"name '{node.name}' is not defined", node.start)


def _eval_path(node: _Path, ctx: _Context, soft: bool = False) -> Any:
    base = node.base
    if isinstance(base, _Name):
        if base.name not in ctx.scope:
            if soft:
                return _MISSING
            raise UnknownNameError(ctx.source, f"name '{base.name}' is not defined", base.start)
        value = ctx.scope[base.name]
    else:
        value = _eval(base, ctx)
    parent_end = base.end
    for access in node.accesses:
        ctx.charge(1)
        key = access.key if access.index is None else _eval(access.index, ctx)
        value = _access(ctx, node, value, key, access, parent_end, soft)
        if value is _MISSING:
            return _MISSING
        parent_end = access.end
    return value


def _access(ctx: _Context, node: _Path, value: Any, key: Any, access: _Access, parent_end: int, soft: bool) -> Any:
    path = _clip(ctx.source[node.start : access.end], 80)
    parent = _clip(ctx.source[node.start : parent_end], 80)
    if value is None:
        if soft:
            return _MISSING
        raise UnknownNameError(ctx.source, f"{path} is not defined ({parent} is null)", node.start)
    if isinstance(value, dict):
        if not isinstance(key, str):
            raise ctx.type_error(f"{path}: keys of an object are strings, got {_describe(key)}", node)
        if key in value:
            return value[key]
        if soft:
            return _MISSING
        hint = ""
        if access.dotted and "-" in key:
            hint = "; to subtract, put spaces around '-'"
        raise UnknownNameError(
            ctx.source, f"{path} is not defined ({parent} has no key {_short(key)}{hint})", node.start
        )
    if isinstance(value, (list, str)) and not access.dotted:
        if not isinstance(key, int) or isinstance(key, bool):
            raise ctx.type_error(
                f"{path}: index of a {_type_name(value)} must be an integer, got {_describe(key)}", node
            )
        if -len(value) <= key < len(value):
            return value[key]
        if soft:
            return _MISSING
        unit = "items" if isinstance(value, list) else "characters"
        raise UnknownNameError(ctx.source, f"{path} is not defined ({parent} has {len(value)} {unit})", node.start)
    raise ctx.type_error(
        f"cannot read {_short(key)} of {parent}: it is {_describe(value)}, not an object"
        + ("" if access.dotted else " or list"),
        node,
    )


def _eval_list(node: _ListLit, ctx: _Context) -> Any:
    return [_eval(item, ctx) for item in node.items]


def _eval_map(node: _MapLit, ctx: _Context) -> Any:
    return {key: _eval(value, ctx) for key, value in zip(node.keys, node.values)}


def _require_bool(ctx: _Context, value: Any, node: _Node, role: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ctx.type_error(
        f"`{ctx.text(node) or _short(value)}` is {_describe(value)}, expected a boolean ({role})", node
    )


def _eval_not(node: _Not, ctx: _Context) -> Any:
    return not _require_bool(ctx, _eval(node.operand, ctx), node.operand, "operand of not")


def _eval_logical(node: _Logical, ctx: _Context) -> Any:
    stop = node.op == "or"  # the value that decides the result early
    for operand in node.operands:
        if _require_bool(ctx, _eval(operand, ctx), operand, f"operand of {node.op}") is stop:
            return stop
    return not stop


def _eval_conditional(node: _Conditional, ctx: _Context) -> Any:
    if _require_bool(ctx, _eval(node.condition, ctx), node.condition, "condition of '?:'"):
        return _eval(node.then, ctx)
    return _eval(node.otherwise, ctx)


def _eval_unary(node: _Unary, ctx: _Context) -> Any:
    value = _eval(node.operand, ctx)
    if not _is_number(value):
        raise ctx.type_error(f"unary {node.op} needs a number, got {ctx.what(value, node.operand)}", node)
    return -value if node.op == "-" else value


def _equal(a: Any, b: Any, ctx: _Context) -> bool:
    """Deep JSON equality: booleans are not numbers, 1 == 1.0; iterative and budgeted."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if isinstance(x, bool) or isinstance(y, bool):
            if not (isinstance(x, bool) and isinstance(y, bool) and x == y):
                return False
        elif _is_number(x) or _is_number(y):
            if not (_is_number(x) and _is_number(y) and x == y):
                return False
        elif isinstance(x, str) or isinstance(y, str):
            if not (isinstance(x, str) and isinstance(y, str) and x == y):
                return False
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            ctx.charge_items(len(x))
            stack.extend(zip(x, y))
        elif isinstance(x, dict) and isinstance(y, dict):
            if len(x) != len(y):
                return False
            ctx.charge_items(len(x))
            for key, item in x.items():
                if key not in y:
                    return False
                stack.append((item, y[key]))
        else:
            return False  # different kinds (null vs list...) or unsupported values
    return True


def _contains(ctx: _Context, container: Any, needle: Any, cnode: _Node | None, nnode: _Node | None, op: str) -> bool:
    if isinstance(container, str):
        if not isinstance(needle, str):
            raise ctx.type_error(
                f"{op}: can only look for a string in a string, "
                f"got {ctx.what(needle, nnode)} in {ctx.what(container, cnode)}",
                nnode,
            )
        return needle in container
    if isinstance(container, list):
        ctx.charge_items(len(container))
        return any(_equal(needle, item, ctx) for item in container)
    if isinstance(container, dict):
        if not isinstance(needle, str):
            raise ctx.type_error(
                f"{op}: keys of an object are strings, got {ctx.what(needle, nnode)} in {ctx.what(container, cnode)}",
                nnode,
            )
        return needle in container
    raise ctx.type_error(f"{op}: needs a string, list or object on the right, got {ctx.what(container, cnode)}", cnode)


def _order(ctx: _Context, op: str, a: Any, b: Any, anode: _Node, bnode: _Node) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise ctx.type_error(f"cannot compare {ctx.what(a, anode)} with {ctx.what(b, bnode)} using {op}", anode)
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _eval_compare(node: _Compare, ctx: _Context) -> Any:
    left_node = node.operands[0]
    left = _eval(left_node, ctx)
    for op, right_node in zip(node.ops, node.operands[1:]):
        right = _eval(right_node, ctx)
        if op == "==":
            ok = _equal(left, right, ctx)
        elif op == "!=":
            ok = not _equal(left, right, ctx)
        elif op == "in":
            ok = _contains(ctx, right, left, right_node, left_node, "in")
        elif op == "not in":
            ok = not _contains(ctx, right, left, right_node, left_node, "not in")
        else:
            ok = _order(ctx, op, left, right, left_node, right_node)
        if not ok:
            return False  # like Python, a failed link stops the chain
        left, left_node = right, right_node
    return True


def _numeric(ctx: _Context, op: str, a: Any, b: Any, node: _Node) -> Any:
    ctx.check_operand(a, node)
    ctx.check_operand(b, node)
    if op in ("/", "//", "%") and b == 0:
        raise ctx.type_error("division by zero", node)
    try:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = a / b
        elif op == "//":
            result = a // b
        else:
            result = a % b
    except OverflowError:
        raise ctx.limit_error("number result is out of range", node) from None
    except ZeroDivisionError:
        raise ctx.type_error("division by zero", node) from None
    return ctx.number_result(result, node)


def _arith(ctx: _Context, op: str, a: Any, a_text: str | None, b: Any, bnode: _Node, node: _Node) -> Any:
    """``a op b`` for one link of a chain; ``a_text`` is the source of the left operand."""
    if _is_number(a) and _is_number(b):
        return _numeric(ctx, op, a, b, node)

    def what_left() -> str:
        return f"{_describe(a)} ({a_text})" if a_text else _describe(a)

    if op == "+":
        if isinstance(a, str) and isinstance(b, str):
            ctx.check_string(len(a) + len(b), node)
            return a + b
        if isinstance(a, list) and isinstance(b, list):
            ctx.check_list(len(a) + len(b), node)
            return a + b
        hint = "; use string() to turn a value into text" if isinstance(a, str) or isinstance(b, str) else ""
        raise ctx.type_error(f"cannot add {what_left()} and {ctx.what(b, bnode)}{hint}", node)
    if op == "*":
        seq, count = (a, b) if isinstance(a, (str, list)) else (b, a)
        if isinstance(seq, (str, list)) and isinstance(count, int) and not isinstance(count, bool):
            if count < 0:
                raise ctx.type_error(f"cannot repeat a {_type_name(seq)} a negative number ({count}) of times", node)
            size = len(seq) * count
            if isinstance(seq, str):
                ctx.check_string(size, node)
            else:
                ctx.check_list(size, node)
            return seq[:0] if size == 0 else seq * count
    raise ctx.type_error(f"cannot apply {op} to {what_left()} and {ctx.what(b, bnode)}", node)


def _eval_arith(node: _Arith, ctx: _Context) -> Any:
    value = _eval(node.first, ctx)
    left_text = ctx.text(node.first)
    for op, operand in node.rest:
        right = _eval(operand, ctx)
        value = _arith(ctx, op, value, left_text, right, operand, node)
        left_text = _clip(ctx.source[node.start : operand.end], 80)
    return value


def _eval_power(node: _Power, ctx: _Context) -> Any:
    base = _eval(node.base, ctx)
    exponent = _eval(node.exponent, ctx)
    if not (_is_number(base) and _is_number(exponent)):
        raise ctx.type_error(
            f"cannot apply ** to {ctx.what(base, node.base)} and {ctx.what(exponent, node.exponent)}", node
        )
    ctx.check_operand(base, node)
    ctx.check_operand(exponent, node)
    if base == 0 and exponent < 0:
        raise ctx.type_error("division by zero (0 to a negative power)", node)
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise ctx.type_error("a negative number to a fractional power is not a real number", node)
    magnitude = abs(base)
    if magnitude != 0 and magnitude != 1:
        # Size of the result in bits, estimated before computing it: 9 ** 9 ** 9 fails here.
        scale = math.log2(magnitude)  # exact enough for ints of any size
        try:
            growth = float(exponent) * scale
        except OverflowError:  # an exponent beyond the float range
            growth = math.inf if (exponent > 0) == (scale > 0) else -math.inf
        if growth > MAX_INT_BITS:
            raise ctx.limit_error(f"result of ** would exceed {MAX_INT_BITS} bits", node)
    try:
        result = base**exponent
    except OverflowError:
        raise ctx.limit_error("result of ** is out of range", node) from None
    except ZeroDivisionError:
        raise ctx.type_error("division by zero (0 to a negative power)", node) from None
    return ctx.number_result(result, node)


def _eval_call(node: _Call, ctx: _Context) -> Any:
    if node.name == "coalesce":
        # Lazy: later arguments are only evaluated while the earlier ones are null.
        for arg in node.args:
            value = _eval(arg, ctx)
            if value is not None:
                return value
        return None
    args = [_eval(arg, ctx) for arg in node.args]
    return _IMPLEMENTATIONS[node.name](ctx, node, args)


def _eval_defined(node: _Defined, ctx: _Context) -> Any:
    target = node.target
    if isinstance(target, _Name):
        return target.name in ctx.scope
    assert isinstance(target, _Path)
    return _eval_path(target, ctx, soft=True) is not _MISSING


_EVALUATORS: dict[type, Callable[[Any, _Context], Any]] = {
    _Literal: _eval_literal,
    _Name: _eval_name,
    _Path: _eval_path,
    _ListLit: _eval_list,
    _MapLit: _eval_map,
    _Not: _eval_not,
    _Logical: _eval_logical,
    _Conditional: _eval_conditional,
    _Unary: _eval_unary,
    _Compare: _eval_compare,
    _Arith: _eval_arith,
    _Power: _eval_power,
    _Call: _eval_call,
    _Defined: _eval_defined,
}


# --- functions --------------------------------------------------------------------------------


def _bad_arg(ctx: _Context, call: _Call, args: list[Any], i: int, expected: str) -> ExpressionTypeError:
    return ctx.type_error(f"{call.name}(): expected {expected}, got {ctx.what(args[i], call.args[i])}", call)


def _string_arg(ctx: _Context, call: _Call, args: list[Any], i: int) -> str:
    if not isinstance(args[i], str):
        raise _bad_arg(ctx, call, args, i, "a string")
    return args[i]


def _number_arg(ctx: _Context, call: _Call, args: list[Any], i: int) -> int | float:
    if not _is_number(args[i]):
        raise _bad_arg(ctx, call, args, i, "a number")
    return args[i]


def _int_arg(ctx: _Context, call: _Call, args: list[Any], i: int) -> int:
    value = args[i]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad_arg(ctx, call, args, i, "an integer")
    ctx.check_operand(value, call)
    return value


def _fn_length(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    if isinstance(args[0], (str, list, dict)):
        return len(args[0])
    raise _bad_arg(ctx, call, args, 0, "a string, list or object")


def _fn_lower(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    text = _string_arg(ctx, call, args, 0)
    ctx.charge_chars(len(text))
    result = text.lower()
    ctx.check_string(len(result), call)  # some characters lengthen when case changes
    return result


def _fn_upper(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    text = _string_arg(ctx, call, args, 0)
    ctx.charge_chars(len(text))
    result = text.upper()
    ctx.check_string(len(result), call)
    return result


def _fn_trim(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    text = _string_arg(ctx, call, args, 0)
    ctx.charge_chars(len(text))
    return text.strip()


def _fn_startswith(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return _string_arg(ctx, call, args, 0).startswith(_string_arg(ctx, call, args, 1))


def _fn_endswith(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return _string_arg(ctx, call, args, 0).endswith(_string_arg(ctx, call, args, 1))


def _fn_split(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    text = _string_arg(ctx, call, args, 0)
    sep = _string_arg(ctx, call, args, 1)
    if not sep:
        raise ctx.type_error("split(): the separator must not be empty", call)
    ctx.check_list(text.count(sep) + 1, call)
    ctx.charge_chars(len(text))
    return text.split(sep)


def _fn_join(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    items = args[0]
    if not isinstance(items, list):
        raise _bad_arg(ctx, call, args, 0, "a list of strings")
    sep = _string_arg(ctx, call, args, 1)
    ctx.charge_items(len(items))
    total = len(sep) * max(len(items) - 1, 0)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ctx.type_error(f"join(): item {i} is {_describe(item)}, expected a string", call)
        total += len(item)
    ctx.check_string(total, call)
    return sep.join(items)


def _extreme(ctx: _Context, call: _Call, args: list[Any], pick: Callable[[list[Any]], Any]) -> Any:
    if len(args) == 1:
        items = args[0]
        if not isinstance(items, list):
            raise _bad_arg(ctx, call, args, 0, "a list (or several numbers or strings)")
        if not items:
            raise ctx.type_error(f"{call.name}() of an empty list", call)
    else:
        items = args
    ctx.charge_items(len(items))
    numbers = _is_number(items[0])
    if not numbers and not isinstance(items[0], str):
        raise ctx.type_error(f"{call.name}(): expected numbers or strings, got {_describe(items[0])}", call)
    for item in items:
        if (_is_number(item) if numbers else isinstance(item, str)) is False:
            raise ctx.type_error(
                f"{call.name}(): cannot mix {_type_name(items[0])}s with {_describe(item)}", call
            )
    return pick(items)


def _fn_min(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return _extreme(ctx, call, args, min)


def _fn_max(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return _extreme(ctx, call, args, max)


def _fn_sum(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    items = args[0]
    if not isinstance(items, list):
        raise _bad_arg(ctx, call, args, 0, "a list of numbers")
    ctx.charge_items(len(items))
    for i, item in enumerate(items):
        if not _is_number(item):
            raise ctx.type_error(f"sum(): item {i} is {_describe(item)}, expected a number", call)
        ctx.check_operand(item, call)
    try:
        total = sum(items)
    except OverflowError:
        raise ctx.limit_error("sum() result is out of range", call) from None
    return ctx.number_result(total, call)


def _fn_abs(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return abs(_number_arg(ctx, call, args, 0))


# Enough precision for any float (at most 309 integral digits) rounded to 100 places.
_ROUND_CONTEXT = Context(prec=1000, rounding=ROUND_HALF_UP)


def _fn_round(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    value = _number_arg(ctx, call, args, 0)
    ctx.check_operand(value, call)
    digits = _int_arg(ctx, call, args, 1) if len(args) > 1 else None
    places = 0 if digits is None else digits
    if not -100 <= places <= 100:
        raise ctx.type_error(f"round(): digits must be between -100 and 100, got {_short(places)}", call)
    if isinstance(value, int):
        if places >= 0:
            return value
        unit = 10**-places
        rounded = (abs(value) + unit // 2) // unit * unit  # half away from zero
        return ctx.number_result(rounded if value >= 0 else -rounded, call)
    if not math.isfinite(value):
        raise ctx.type_error(f"round(): cannot round {_short(value)}", call)
    try:
        # repr() is the shortest text of the float, so 2.675 rounds as written, to 2.68.
        exact = Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), context=_ROUND_CONTEXT)
    except InvalidOperation:
        raise ctx.limit_error("round(): result is out of range", call) from None
    result: int | float = int(exact) if digits is None else float(exact)
    return ctx.number_result(result, call)


_NUMERIC_TEXT = re.compile(r"[ \t\r\n]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\r\n]*")


def _parse_numeric(ctx: _Context, call: _Call, text: str) -> int | float | None:
    """Value of a numeric string (int when integral text, else float); None if not numeric."""
    if len(text) > MAX_SOURCE_LENGTH:
        raise ctx.limit_error(f"{call.name}(): numeric text longer than {MAX_SOURCE_LENGTH} characters", call)
    if _NUMERIC_TEXT.fullmatch(text) is None:
        return None
    body = text.strip(" \t\r\n")
    if "." in body or "e" in body or "E" in body:
        number = float(body)
        if not math.isfinite(number):
            raise ctx.limit_error(f"{call.name}(): {_short_str(text)} is out of range", call)
        return number
    integer = int(body)  # at most MAX_SOURCE_LENGTH digits, within Python's conversion limit
    if integer.bit_length() > MAX_INT_BITS:
        raise ctx.limit_error(f"{call.name}(): {_short_str(text, 40)} exceeds {MAX_INT_BITS} bits", call)
    return integer


def _not_a_number(ctx: _Context, call: _Call, args: list[Any]) -> ExpressionTypeError:
    text = ctx.text(call.args[0])
    where = f" ({text})" if text else ""
    return ctx.type_error(f"{call.name}(): {_describe(args[0])}{where} is not a number", call)


def _fn_number(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    value = args[0]
    if _is_number(value):
        return value
    if isinstance(value, str):
        parsed = _parse_numeric(ctx, call, value)
        if parsed is not None:
            return parsed
    raise _not_a_number(ctx, call, args)


def _fn_int(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    value = _fn_number(ctx, call, args)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ctx.type_error(f"int(): cannot convert {_short(value)} to an integer", call)
        return int(value)  # truncates toward zero; a finite float has at most 1024 bits
    return value


def _fn_float(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    value = _fn_number(ctx, call, args)
    try:
        return float(value)
    except OverflowError:
        raise ctx.limit_error("float(): number is out of range", call) from None


def _fn_string(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    value = args[0]
    if isinstance(value, str):
        return value
    text = _dump(value, MAX_STRING_LENGTH, source=ctx.source, ctx=ctx)
    ctx.charge_chars(len(text))
    return text


def _fn_keys(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    if not isinstance(args[0], dict):
        raise _bad_arg(ctx, call, args, 0, "an object")
    ctx.charge_items(len(args[0]))
    return list(args[0].keys())


def _fn_values(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    if not isinstance(args[0], dict):
        raise _bad_arg(ctx, call, args, 0, "an object")
    ctx.charge_items(len(args[0]))
    return list(args[0].values())


def _fn_contains(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    return _contains(ctx, args[0], args[1], call.args[0], call.args[1], "contains()")


def _fn_range(ctx: _Context, call: _Call, args: list[Any]) -> Any:
    if len(args) == 1:
        start, stop = 0, _int_arg(ctx, call, args, 0)
    else:
        start, stop = _int_arg(ctx, call, args, 0), _int_arg(ctx, call, args, 1)
    ctx.check_list(max(stop - start, 0), call)
    return list(range(start, stop))


_FUNCTION_TABLE: dict[str, tuple[int, int | None, Callable[[_Context, _Call, list[Any]], Any] | None, str]] = {
    "length": (1, 1, _fn_length, "length(x): characters of a string, items of a list or keys of an object"),
    "lower": (1, 1, _fn_lower, "lower(s): the string in lower case"),
    "upper": (1, 1, _fn_upper, "upper(s): the string in upper case"),
    "trim": (1, 1, _fn_trim, "trim(s): the string without leading and trailing whitespace"),
    "startswith": (2, 2, _fn_startswith, "startswith(s, prefix): whether s starts with prefix"),
    "endswith": (2, 2, _fn_endswith, "endswith(s, suffix): whether s ends with suffix"),
    "split": (2, 2, _fn_split, "split(s, sep): list of the parts of s between occurrences of sep (not empty)"),
    "join": (2, 2, _fn_join, "join(list_of_strings, sep): the strings joined with sep between them"),
    "min": (1, None, _fn_min, "min(a, b, ...) or min(list): smallest of several numbers or strings"),
    "max": (1, None, _fn_max, "max(a, b, ...) or max(list): largest of several numbers or strings"),
    "sum": (1, 1, _fn_sum, "sum(list_of_numbers): total; 0 for an empty list"),
    "abs": (1, 1, _fn_abs, "abs(n): absolute value"),
    "round": (1, 2, _fn_round, "round(n, digits?): n rounded half away from zero; an int without digits"),
    "int": (1, 1, _fn_int, "int(x): integer from a number (truncated toward zero) or numeric string"),
    "float": (1, 1, _fn_float, "float(x): float from a number or numeric string"),
    "number": (1, 1, _fn_number, "number(x): a number as is, or a numeric string as int (integral text) or float"),
    "string": (1, 1, _fn_string, "string(x): a string as is, anything else as compact JSON text (null -> 'null')"),
    "keys": (1, 1, _fn_keys, "keys(obj): list of the object's keys in order"),
    "values": (1, 1, _fn_values, "values(obj): list of the object's values in order"),
    "contains": (2, 2, _fn_contains, "contains(container, x): same as `x in container`"),
    "coalesce": (1, None, None, "coalesce(a, b, ...): first argument that is not null (later ones are not evaluated)"),
    "range": (1, 2, _fn_range, "range(n) or range(a, b): list of the integers from 0 (or a) up to n (or b) excluded"),
    "defined": (1, 1, None, "defined(path): false when the path is missing or crosses a null, else true"),
}

FUNCTIONS: Mapping[str, str] = MappingProxyType({name: row[3] for name, row in _FUNCTION_TABLE.items()})
"""The callable functions, name → one-line description (read-only; for docs and validators)."""

_ARITY: dict[str, tuple[int, int | None]] = {name: (row[0], row[1]) for name, row in _FUNCTION_TABLE.items()}
_IMPLEMENTATIONS = {name: row[2] for name, row in _FUNCTION_TABLE.items() if row[2] is not None}


# --- public API -------------------------------------------------------------------------------


class Expression:
    """A parsed expression: immutable, hashable (by source text), picklable.

    Build one with :func:`parse_expression` (``Expression(text)`` is the same, without the
    cache). Pickling stores only the source text; unpickling parses it again.

    Attributes:
        source: the expression text as given.
    """

    __slots__ = ("source", "_root", "_names", "_steps")

    source: str
    _root: _Node
    _names: frozenset[str]
    _steps: frozenset[str]

    def __init__(self, source: str) -> None:
        """Parse ``source``.

        Raises:
            ExpressionSyntaxError: not valid (``offset`` is 0-based into ``source``).
            ForbiddenConstructError: a refused construct (``_`` names, unknown calls...).
            ExpressionLimitError: longer than :data:`MAX_SOURCE_LENGTH` characters or nested
                deeper than :data:`MAX_DEPTH` levels, or a number literal out of range.
        """
        if not isinstance(source, str):
            detail = f"an expression must be a string, got {_type_name(source)}"
            raise ExpressionSyntaxError(_clip(_short(source)), detail)
        if len(source) > MAX_SOURCE_LENGTH:
            raise ExpressionLimitError(
                _clip(source), f"expression is {len(source)} characters long; at most {MAX_SOURCE_LENGTH} are allowed"
            )
        if not source.strip(" \t\r\n"):
            raise ExpressionSyntaxError(source, "empty expression", 0)
        try:
            root = _Parser(source).parse()
        except RecursionError:  # only when the caller already used most of the stack
            raise ExpressionLimitError(source, "expression is nested too deeply") from None
        names: set[str] = set()
        steps: set[str] = set()
        for node in _walk(root):
            if isinstance(node, _Name):
                names.add(node.name)
            elif isinstance(node, _Path) and isinstance(node.base, _Name):
                first = node.accesses[0]
                if node.base.name == "steps" and first.index is None and isinstance(first.key, str):
                    steps.add(first.key)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_steps", frozenset(steps))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expression is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Expression is immutable")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Expression, (self.source,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash((Expression, self.source))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def root_names(self) -> frozenset[str]:
        """Root names the expression reads, e.g. ``{"inputs", "steps"}`` (not function names)."""
        return self._names

    def step_references(self) -> frozenset[str]:
        """Every ``X`` in ``steps.X``, ``steps['X']`` or ``steps["X"]`` with a literal key."""
        return self._steps

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Evaluate against ``scope``.

        Args:
            scope: root name → JSON value, e.g. ``{"inputs": {...}, "steps": {"fetch":
                {"outputs": {...}}}, "item": ..., "index": 0}``. Not modified.

        Returns:
            A JSON value. It may share sub-values with ``scope``: treat it as read-only.

        Raises:
            UnknownNameError: a name, key or index the scope does not hold.
            ExpressionTypeError: operands of the wrong type (no implicit coercion), a
                function misused, division by zero.
            ExpressionLimitError: the step budget, or a size limit, was exceeded.
            ForbiddenConstructError: never at evaluation (parse-time only), listed for
                completeness of the ExpressionError family.
        """
        if not isinstance(scope, Mapping):
            detail = f"scope must be a mapping of names to values, got {_type_name(scope)}"
            raise ExpressionTypeError(self.source, detail)
        ctx = _Context(scope, self.source, MAX_STEPS)
        try:
            return _eval(self._root, ctx)
        except RecursionError:  # only when the caller already used most of the stack
            raise ExpressionLimitError(self.source, "expression is nested too deeply to evaluate") from None
        except MemoryError:
            raise ExpressionLimitError(self.source, "evaluation ran out of memory") from None


@functools.lru_cache(maxsize=2048)
def _parse_cached(text: str) -> Expression:
    return Expression(text)


def parse_expression(text: str) -> Expression:
    """Parse ``text`` once into an :class:`Expression` (results are cached; they are immutable).

    Args:
        text: the expression, at most :data:`MAX_SOURCE_LENGTH` characters.

    Returns:
        The parsed expression.

    Raises:
        ExpressionSyntaxError: empty or invalid text; ``offset`` is 0-based into ``text``.
        ForbiddenConstructError: a name or key starting with ``_``, a call of anything but
            a built-in function, a Python keyword used as a name.
        ExpressionLimitError: text too long, nesting deeper than :data:`MAX_DEPTH`, or a
            number literal beyond :data:`MAX_INT_BITS` bits / the float range.
    """
    if not isinstance(text, str):
        return Expression(text)  # raises ExpressionSyntaxError; an unhashable key would not reach it
    if len(text) > MAX_SOURCE_LENGTH:
        return Expression(text)  # raises; do not let huge texts into the cache
    return _parse_cached(text)

