"""Tests of dsl.templates: compiling, rendering, pointers, escapes, limits, property tests."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsl.errors import (
    ExpressionError,
    ExpressionLimitError,
    ExpressionSyntaxError,
    ExpressionTypeError,
    ForbiddenConstructError,
    UnknownNameError,
)
from dsl.expressions import MAX_STRING_LENGTH, Expression
from dsl.templates import MAX_TEMPLATE_NODES, Template, compile_template

SCOPE: dict[str, Any] = {
    "inputs": {
        "amount": 12000,
        "ratio": 0.25,
        "name": "Ada",
        "items": [1, "two", None],
        "customer": {"id": 7, "tags": ["vip"]},
        "missing_value": None,
        "ok": True,
    },
    "steps": {"fetch-price": {"outputs": {"price": 99.5}}, "quote": {"outputs": {"total": 3}}},
    "item": {"sku": "X1"},
    "index": 2,
}


def render(value: Any, scope: dict[str, Any] | None = None) -> Any:
    return compile_template(value).render(SCOPE if scope is None else scope)


# --- whole-value and interpolated strings -----------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${ inputs.amount }", 12000),
        ("${inputs.amount}", 12000),
        ("${  inputs.ratio\n}", 0.25),
        ("${ inputs.items }", [1, "two", None]),
        ("${ inputs.customer }", {"id": 7, "tags": ["vip"]}),
        ("${ inputs.missing_value }", None),
        ("${ inputs.ok }", True),
        ("${ inputs.amount > 100 }", True),
        ("${ steps.fetch-price.outputs.price }", 99.5),
        ("${ {'a': 1} }", {"a": 1}),
        ("${ {'close': '}'} }", {"close": "}"}),
        ("${ '}' }", "}"),
    ],
)
def test_whole_string_expression_keeps_its_type(template: str, expected: Any) -> None:
    result = render(template)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Amount: ${ inputs.amount }", "Amount: 12000"),
        (" ${ inputs.amount }", " 12000"),
        ("${ inputs.amount } ", "12000 "),
        ("${ inputs.name }${ index }", "Ada2"),
        ("ratio=${inputs.ratio}", "ratio=0.25"),
        ("big=${ 10.0 ** 16 }", "big=1e+16"),
        ("${ inputs.ok }!", "true!"),
        ("v=${ inputs.missing_value }", "v=null"),
        ("items=${ inputs.items }", 'items=[1,"two",null]'),
        ("c=${ inputs.customer }", 'c={"id":7,"tags":["vip"]}'),
        ("q=${ 'é' + \"\\u00e9\" }", "q=éé"),
        ("${ 'a' }-${ 'b' }-${ 'c' }", "a-b-c"),
        ("sku ${ item.sku } #${ index + 1 }", "sku X1 #3"),
        ("total ${ steps['quote'].outputs.total * 2 }", "total 6"),
        ("cond ${ inputs.amount > 10 ? 'high' : 'low' }", "cond high"),
    ],
)
def test_interpolation_formats_values(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$${ inputs.amount }", "${ inputs.amount }"),
        ("cost: $${x} and ${ inputs.amount }", "cost: ${x} and 12000"),
        ("$$${ index }", "$${ index }"),  # a `${` with a `$` in front is always literal
        ("price $5 and {braces}", "price $5 and {braces}"),
        ("a } b", "a } b"),
        ("$", "$"),
        ("$ {not} ${ index }", "$ {not} 2"),
    ],
)
def test_escapes_and_plain_text(template: str, expected: str) -> None:
    assert render(template) == expected


def test_plain_strings_and_scalars_are_static() -> None:
    for value in ["hello", "", 12, 1.5, None, True, [1, "a"], {"a": {"b": [None]}}, "$${ x }"]:
        template = compile_template(value)
        assert template.is_static
        assert template.expressions() == []
        rendered = template.render({})
        assert rendered == (value if value != "$${ x }" else "${ x }")


# --- structures -------------------------------------------------------------------------------


def test_nested_structures_render_and_keep_keys_literally() -> None:
    template = compile_template(
        {
            "customer": "${ inputs.customer.id }",
            "lines": [{"sku": "${ item.sku }", "qty": 1}, "static", "${ inputs.items[1] }"],
            "${ not.a.key }": "kept",
            "note": "Dear ${ inputs.name }",
            "n": 5,
            "empty": {},
        }
    )
    assert not template.is_static
    assert template.render(SCOPE) == {
        "customer": 7,
        "lines": [{"sku": "X1", "qty": 1}, "static", "two"],
        "${ not.a.key }": "kept",
        "note": "Dear Ada",
        "n": 5,
        "empty": {},
    }


def test_render_returns_fresh_values() -> None:
    source = {"static": {"list": [1, 2]}, "copy": "${ inputs.items }"}
    template = compile_template(source)
    scope = copy.deepcopy(SCOPE)
    first = template.render(scope)
    first["static"]["list"].append(3)
    first["copy"].append("mutated")
    second = template.render(scope)
    assert second == {"static": {"list": [1, 2]}, "copy": [1, "two", None]}
    assert scope == SCOPE
    source["static"]["list"].append(99)  # the template holds its own copy
    assert template.render(scope)["static"]["list"] == [1, 2]


def test_expressions_pointers() -> None:
    template = compile_template(
        {
            "customer": "${ inputs.customer }",
            "items": ["${ item }", "x", {"a/b": "${ steps.quote.outputs.total }", "c~d": "${ index } ${ index }"}],
            "plain": "no expressions",
        }
    )
    found = [(pointer, expr.source) for pointer, expr in template.expressions()]
    assert found == [
        ("/customer", "inputs.customer"),
        ("/items/0", "item"),
        ("/items/2/a~1b", "steps.quote.outputs.total"),
        ("/items/2/c~0d", "index"),
        ("/items/2/c~0d", "index"),
    ]
    assert all(isinstance(expr, Expression) for _, expr in template.expressions())


def test_root_string_pointer_is_empty() -> None:
    template = compile_template("hello ${ inputs.name }")
    assert [(p, e.source) for p, e in template.expressions()] == [("", "inputs.name")]


def test_step_references_union() -> None:
    template = compile_template(
        {
            "a": "${ steps.fetch-price.outputs.price }",
            "b": ["${ steps['quote'].outputs.total + steps.x.y }"],
            "c": "${ inputs.n }",
        }
    )
    assert template.step_references() == frozenset({"fetch-price", "quote", "x"})
    assert compile_template("static").step_references() == frozenset()


def test_template_pickles() -> None:
    template = compile_template({"a": "${ inputs.amount }", "b": ["x ${ index }", 3], "c": {"d": "static"}})
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(template, protocol))
        assert isinstance(restored, Template)
        assert restored.render(SCOPE) == template.render(SCOPE) == {"a": 12000, "b": ["x 2", 3], "c": {"d": "static"}}
        assert [p for p, _ in restored.expressions()] == ["/a", "/b/0"]
        assert restored.is_static is False
    with pytest.raises(AttributeError):
        template.is_static = True  # type: ignore[misc]


def test_deep_documents_do_not_hit_the_recursion_limit() -> None:
    value: Any = "${ index }"
    for _ in range(3000):
        value = {"k": [value]}
    template = compile_template(value)
    rendered = template.render(SCOPE)
    for _ in range(3000):
        rendered = rendered["k"][0]
    assert rendered == 2
    assert template.expressions()[0][0] == "/k/0" * 3000


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "offset"),
    [
        ("${ inputs.amount", 0),
        ("abc ${", 4),
        ("abc ${ 'x }", 7),  # the quote runs to the end
        ("${}", 0),
        ("x ${   }", 2),
        ("x ${ 1 + }", 8),
        ("x ${ inputs. }", 13),
        ("${ a } ${ b ? }", 13),
        ("ok ${ a @ b }", 8),
    ],
)
def test_syntax_errors_point_into_the_string(template: str, offset: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        compile_template({"field": [template]})
    assert info.value.offset == offset
    assert info.value.expression == template


def test_forbidden_construct_in_template() -> None:
    with pytest.raises(ForbiddenConstructError) as info:
        compile_template("x ${ inputs.__class__ }")
    assert info.value.offset == 12
    with pytest.raises(ForbiddenConstructError):
        compile_template(["${ open('f') }"])


def test_expression_too_long_in_template() -> None:
    with pytest.raises(ExpressionLimitError):
        compile_template("${ " + "1 + " * 1100 + "1 }")


def test_render_errors_are_unchanged_expression_errors() -> None:
    template = compile_template({"a": "${ inputs.nope }"})
    with pytest.raises(UnknownNameError) as info:
        template.render(SCOPE)
    assert info.value.expression == "inputs.nope"
    assert "inputs.nope" in str(info.value)
    with pytest.raises(ExpressionTypeError):
        compile_template("total ${ inputs.name + 1 }").render(SCOPE)


def test_render_stops_at_the_first_failing_expression_in_document_order() -> None:
    template = compile_template(["${ first.missing }", "${ second.missing }"])
    with pytest.raises(UnknownNameError, match="first"):
        template.render({})


# --- limits -----------------------------------------------------------------------------------


def test_total_interpolated_text_is_capped() -> None:
    scope = {"inputs": {"text": "a" * 600_000}}
    assert len(compile_template("x ${ inputs.text }").render(scope)) == 600_002
    with pytest.raises(ExpressionLimitError):
        compile_template({"a": "x ${ inputs.text }", "b": "y ${ inputs.text }"}).render(scope)
    with pytest.raises(ExpressionLimitError):
        compile_template("${ inputs.text }${ inputs.text }").render(scope)
    assert MAX_STRING_LENGTH == 1_000_000


def test_shared_structure_blowup_is_stopped() -> None:
    with pytest.raises(ExpressionLimitError):
        compile_template("${ [range(100000)] * 100000 }").render({})
    with pytest.raises(ExpressionLimitError):
        compile_template("text ${ [range(100000)] * 100000 }").render({})
    shared = list(range(1000))
    with pytest.raises(ExpressionLimitError):
        compile_template("${ inputs.rows }").render({"inputs": {"rows": [shared] * 2000}})


def test_cyclic_template_is_refused() -> None:
    loop: list[Any] = ["${ index }"]
    loop.append(loop)
    with pytest.raises(ExpressionLimitError, match="contains itself"):
        compile_template(loop)


def test_cyclic_scope_value_is_stopped() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ExpressionLimitError):
        compile_template("${ inputs }").render({"inputs": loop})


def test_alias_bomb_is_stopped() -> None:
    value: Any = ["x"]
    for _ in range(30):
        value = [value, value]  # 2**30 leaves when walked, a few objects in memory
    with pytest.raises(ExpressionLimitError):
        compile_template(value)
    assert MAX_TEMPLATE_NODES == 1_000_000


# --- property tests ---------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    ["${", "}", "$${", "{", "'", '"', "inputs.a", " ", "x", "+", "1", "\\", "${ inputs.a }", "[", "]", "$", ":",
     "${ index }", "inputs", ".", "_", "}}", "${{", "not", "(", ")", "9 ** 9 ** 9", "'a' * 10 ** 9"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=14))
def test_random_template_strings_raise_only_expression_errors(fragments: list[str]) -> None:
    text = "".join(fragments)
    try:
        template = compile_template({"k": text})
    except ExpressionError as exc:
        assert exc.offset is None or 0 <= exc.offset <= len(text)
        return
    if "${" not in text:
        assert template.is_static and template.render({}) == {"k": text}
    try:
        result = template.render({"inputs": {"a": [1, "x"]}, "index": 3})
    except ExpressionError:
        return
    assert isinstance(result, dict) and set(result) == {"k"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_random_text_templates(text: str) -> None:
    try:
        template = compile_template(text)
    except ExpressionError:
        return
    try:
        template.render({})
    except ExpressionError:
        return


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab {}$'\\", max_size=30))
def test_text_without_dollar_brace_renders_to_itself(text: str) -> None:
    if "${" in text:
        return
    assert compile_template(text).render({}) == text
