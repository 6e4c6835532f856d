"""WorkflowPack language: models, loading, validation, expressions, the state machine.

Pure: imports neither Ray, nor a database driver, nor the network, so the Designer and
tests can use it alone (``tests/unit/test_layering.py`` checks this).
"""

from dsl.errors import (
    ExpressionError,
    InputValidationError,
    PackLoadError,
    PackValidationError,
    ValidationIssue,
    WorkflowError,
)
from dsl.expressions import Expression, parse_expression
from dsl.models import (
    ConditionStep,
    ErrorHandler,
    HttpStep,
    LoopStep,
    ParallelStep,
    RetryPolicy,
    ServiceCallStep,
    Step,
    TaskStep,
    WorkflowPack,
    iter_steps,
)
from dsl.state import ExecutionStatus, StepStatus, is_terminal, transition
from dsl.templates import Template, compile_template
from dsl.validation import LoadedPack, load_pack, validate_document, validate_inputs

__all__ = [
    "ConditionStep",
    "ErrorHandler",
    "ExecutionStatus",
    "Expression",
    "HttpStep",
    "ExpressionError",
    "InputValidationError",
    "LoadedPack",
    "LoopStep",
    "PackLoadError",
    "PackValidationError",
    "ParallelStep",
    "RetryPolicy",
    "ServiceCallStep",
    "Step",
    "StepStatus",
    "TaskStep",
    "Template",
    "ValidationIssue",
    "WorkflowError",
    "WorkflowPack",
    "compile_template",
    "is_terminal",
    "iter_steps",
    "load_pack",
    "parse_expression",
    "transition",
    "validate_document",
    "validate_inputs",
]
