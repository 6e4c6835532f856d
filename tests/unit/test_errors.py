"""Every WorkflowError pickles (they cross Ray process boundaries) and has a stable code."""

from __future__ import annotations

import pickle

import pytest

import dsl.errors as errors
from dsl.state import IllegalTransitionError

SAMPLES = [
    errors.WorkflowError("boom"),
    errors.PackValidationError([errors.ValidationIssue("duplicate_id", "/steps/1/id", "dup", 3, 5)], "p.yaml"),
    errors.PackLoadError("p.yaml", "not valid YAML", 2, 7),
    errors.InputValidationError([errors.ValidationIssue("input_schema", "/amount", "bad")]),
    errors.ExpressionError("a", "generic"),
    errors.ExpressionSyntaxError("a +", "unexpected end", 3),
    errors.UnknownNameError("inputs.x", "inputs.x is not defined"),
    errors.ForbiddenConstructError("__class__", "no"),
    errors.ExpressionTypeError("a > 1", "cannot compare"),
    errors.ExpressionLimitError("9 ** 9 ** 9", "too big"),
    errors.ConfigurationError("MAX_PARALLEL_STEPS", "x", "must be a whole number"),
    errors.ExecutionNotFoundError("abc"),
    errors.FencedError("abc", 3),
    errors.PackConflictError("p", "1"),
    errors.PackNotFoundError("p", "1"),
    errors.UnstorableValueError("/steps/0/id"),
    errors.SecretNotFoundError("API_KEY", "environment variable CORTX_SECRET_API_KEY"),
    IllegalTransitionError("completed", "running"),
]


def test_every_error_class_has_a_sample() -> None:
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.WorkflowError)}
    assert classes <= {type(s) for s in SAMPLES}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trips_through_pickle(error: errors.WorkflowError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.code == error.code
    assert vars(copy) == vars(error)


def test_codes_are_unique() -> None:
    codes = [type(s).code for s in SAMPLES if type(s) is not errors.WorkflowError]
    assert len(codes) == len(set(codes))


def test_issue_format_names_file_line_pointer_and_code() -> None:
    issue = errors.ValidationIssue("duplicate_id", "/steps/1/id", "duplicate step id 'a'", 12, 9)
    assert issue.format("pack.yaml") == "pack.yaml:12:9: /steps/1/id: duplicate step id 'a' [duplicate_id]"
