"""WorkflowPack models: the pack, its steps and their error handlers (FDD §5, §7, §8).

One pydantic class per step type, joined in the :data:`Step` union discriminated by
``type``. Models are frozen and refuse unknown fields; durations keep the FDD's unit
suffixes (``initial_delay_ms``, ``timeout_seconds``).

Step types (FDD §5.2, §7):

* ``service_call`` (:class:`ServiceCallStep`): call a service from the service registry.
* ``http`` (:class:`HttpStep`): call any URL the deployment's host allowlist permits.
* ``webhook`` (:class:`WebhookStep`): send a signed notification (Standard Webhooks style).
* ``emit`` (:class:`EmitStep`): publish a custom event into the run's event outbox.
* ``task`` (:class:`TaskStep`): run an allowlisted Python function as a Ray task.
* ``condition`` (:class:`ConditionStep`): evaluate ``condition``; run ``then`` or ``else``.
* ``switch`` (:class:`SwitchStep`): run the first case whose ``when`` is true, else ``default``.
* ``loop`` (:class:`LoopStep`): run ``steps`` per item of ``collection``, or while ``condition``.
* ``parallel`` (:class:`ParallelStep`): run ``steps`` as a group, concurrently where their
  dependencies allow.

Structural rules that need the whole pack (unique ids, dependencies, cycles, expressions)
live in :mod:`dsl.validation`; these models only check the shape of each object.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from dsl import http_spec, task_spec
from dsl.secrets import SECRET_NAME_PATTERN

__all__ = [
    "ConditionStep",
    "EmitStep",
    "ErrorHandler",
    "ExecutionOptions",
    "HttpStep",
    "PackErrorHandler",
    "LoopStep",
    "ParallelStep",
    "RetryPolicy",
    "ServiceCallStep",
    "Step",
    "SwitchCase",
    "SwitchStep",
    "TaskStep",
    "WebhookStep",
    "WorkflowPack",
    "all_steps",
    "iter_steps",
    "DEFAULT_RETRY_ON",
    "STEP_TYPES",
]

STEP_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,99}$"
PACK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"

StepId = Annotated[str, StringConstraints(pattern=STEP_ID_PATTERN)]

# RFC 9110 token characters (the same rule as the service registry's headers).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

#: Error kinds retried when a policy does not say otherwise (FDD §8.1; 4xx answers are not).
DEFAULT_RETRY_ON: tuple[str, ...] = ("timeout", "connection", "http_5xx", "http_429", "task_error")

RetryOn = Literal["timeout", "connection", "http_5xx", "http_429", "http_4xx", "task_error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Model):
    """How a failing step is attempted again (FDD §8.1).

    ``max_attempts`` counts every attempt, the first included. The delay before attempt
    ``n + 1`` after attempt ``n`` failed is, for ``exponential``,
    ``initial_delay_ms * multiplier ** (n - 1)``; for ``linear``, ``initial_delay_ms * n``;
    for ``fixed``, ``initial_delay_ms``; always capped at ``max_delay_ms`` and then spread by
    ``jitter`` (a fraction, 0 to 1, of the delay taken off at random).
    """

    max_attempts: int = Field(3, ge=1, le=10_000, description="Total attempts, the first included.")
    backoff: Literal["exponential", "fixed", "linear"] = Field("exponential", description="Growth of the delay.")
    initial_delay_ms: int = Field(1000, ge=0, le=86_400_000, description="Delay after the first failure, in ms.")
    multiplier: float = Field(2.0, ge=1.0, le=100.0, description="Growth factor for exponential backoff.")
    max_delay_ms: int = Field(60_000, ge=0, le=86_400_000, description="Cap on any one delay, in ms.")
    jitter: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of each delay removed at random (0 to 1).")
    retry_on: tuple[RetryOn, ...] = Field(DEFAULT_RETRY_ON, description="Error kinds that are retried.")
    non_retryable_status: tuple[int, ...] = Field((), description="HTTP statuses never retried.")

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> RetryPolicy:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError(
                f"max_delay_ms ({self.max_delay_ms}) must be at least initial_delay_ms ({self.initial_delay_ms})"
            )
        return self

    def delay_ms(self, attempt: int) -> int:
        """Delay in ms to wait after attempt ``attempt`` (1-based) failed, before jitter.

        Computed without overflow for any attempt number: the exponent is applied only
        while the result is below the cap.
        """
        if self.backoff == "fixed":
            delay = float(self.initial_delay_ms)
        elif self.backoff == "linear":
            delay = float(self.initial_delay_ms) * max(attempt, 1)
        else:
            delay = float(self.initial_delay_ms)
            for _ in range(max(attempt - 1, 0)):
                if delay >= self.max_delay_ms:
                    break
                delay *= self.multiplier
        return int(min(delay, self.max_delay_ms))


class ErrorHandler(_Model):
    """What happens when a step fails (FDD §2.3, §8): retry, then fallback, then compensate.

    * ``retry``: attempts of the step itself, with backoff.
    * ``fallback``: steps run when the step has failed for good. If they complete, the step
      counts as completed, with the outputs of the last fallback step.
    * ``compensate``: steps run (one at a time) when the step has failed for good and no
      fallback recovered it, to undo work that completed. An entry with ``compensates: X``
      runs only if step ``X`` completed; those run in the reverse order of their targets'
      completion, then the entries without ``compensates`` in the order written. A failing
      compensation step does not stop the others; the run records every error.
    * ``propagate``: true (the default) fails the enclosing group and so the run; false
      handles the failure locally: the step is recorded ``failed`` and the run goes on
      (dependents see ``steps.<id>.status == 'failed'`` and ``steps.<id>.error``).
    """

    retry: RetryPolicy | None = Field(None, description="Retry policy; without one the run's default applies.")
    fallback: list[Step] = Field(default_factory=list, description="Steps run when the step has failed for good.")
    compensate: list[Step] = Field(default_factory=list, description="Steps that undo completed work on failure.")
    propagate: bool = Field(True, description="False: record the failure and let the run go on.")


class PackErrorHandler(_Model):
    """Pack-level error handling: ``compensate`` steps run when the run fails (FDD §8.3)."""

    compensate: list[Step] = Field(default_factory=list, description="Steps that undo completed work.")


class _StepBase(_Model):
    id: StepId = Field(description="Unique across the whole pack, nested steps included.")
    name: str | None = Field(None, description="Human-readable name.")
    description: str | None = None
    dependencies: list[StepId] = Field(default_factory=list, description="Ids of sibling steps that must finish first.")
    outputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Named outputs computed from the step's raw `result` with ${ } templates.",
    )
    on_error: ErrorHandler | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=86_400, description="Limit on the step, in s.")
    set_context: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], Any] = Field(
        default_factory=dict,
        description="Execution context variables this step sets when it completes (FDD §2.2), as ${ } "
        "templates that may read the step's `outputs`; later steps read them as `context.<name>`.",
    )
    compensates: StepId | None = Field(
        None, description="In a compensate list: the step this one undoes; it runs only if that step completed."
    )

    def children(self) -> Iterator[tuple[str, list[Step]]]:
        """``(field, steps)`` for each list of nested steps this step owns (not error handlers)."""
        return iter(())


class ServiceCallStep(_StepBase):
    """Call a service named in the service registry (FDD §2.4, §4.1).

    The request body is the rendered ``inputs``; the raw ``result`` is the answer's JSON body.
    """

    type: Literal["service_call"]
    service: str = Field(min_length=1, description="Service name in the service registry.")
    endpoint: str | None = Field(None, description="Path below the service's base URL; the registry default otherwise.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = Field(None, description="HTTP method.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (templates allowed).")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Request body; values may use ${ } templates.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def _status_entry(value: int | str) -> int | str:
    http_spec.parse_status_spec(value)  # raises ValueError with the accepted forms
    return value


class HttpStep(_StepBase):
    """Call any URL: a third-party API (FDD §2.4 "External APIs", §4.1).

    ``url``, ``headers``, ``query`` and ``body`` are ``${ }`` templates. The URL's host must
    be allowed by the deployment (``CORTX_HTTP_ALLOWED_HOSTS``; private and link-local
    addresses are refused unless enabled, see ``actors.egress``); a refusal fails the step
    at once (kind ``egress_refused``, never retried). An answer whose status is not in
    ``expected_status`` fails the attempt like a ``service_call`` error (kind
    ``http_status`` with ``status`` and ``body_excerpt``), so ``on_error.retry`` and
    ``fallback`` apply the same way. Redirects are followed (each hop checked again) unless
    their status is expected.

    The raw ``result`` is ``{"status": int, "headers": {name: value}, "body": JSON | text |
    null}`` (a subset of response headers, names lower-case); ``outputs`` map it as for
    ``service_call``.
    """

    type: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = Field(
        "GET", description="HTTP method (any case in the pack)."
    )
    url: str = Field(
        min_length=1, max_length=8192,
        description="Absolute http:// or https:// URL (${ } templates allowed); its host must be allowlisted.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers; values may use ${ } templates.")
    query: dict[str, Any] = Field(
        default_factory=dict,
        description="Query parameters appended to the URL (templates allowed); a list repeats the parameter, "
        "null leaves it out.",
    )
    body: Any = Field(None, description="JSON request body (templates allowed); not allowed with GET or HEAD.")
    expected_status: tuple[Annotated[int | str, AfterValidator(_status_entry)], ...] = Field(
        http_spec.DEFAULT_EXPECTED_STATUS,
        min_length=1,
        description="HTTP statuses that count as success: numbers (404), classes ('2xx') or ranges ('200-299').",
    )
    timeout_seconds: float | None = Field(
        None, gt=0, le=86_400, description="Limit on each attempt, in s (connect, send, each read); 10 s if unset."
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if name.lower() in http_spec.RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the HTTP client, not by a pack")
        return value

    @model_validator(mode="after")
    def _no_body_without_one(self) -> HttpStep:
        if self.body is not None and self.method in http_spec.METHODS_WITHOUT_BODY:
            raise ValueError(f"a {self.method} request sends no body; remove 'body' or use POST/PUT/PATCH")
        return self


class WebhookStep(_StepBase):
    """Send a signed notification to an external system (FDD §2.4 "Webhooks").

    A ``POST`` of ``body`` (compact JSON) to ``url``, signed in the Standard Webhooks style:
    headers ``webhook-id`` (stable across retries and resumes of the step execution, from
    its idempotency key), ``webhook-timestamp`` (Unix s) and ``webhook-signature``
    (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``) with the named secret
    ``signing_secret`` as key, read in the step task (see ``actors.webhooks``). The URL goes
    through the egress guard before anything is sent. Retries, timeouts and outputs work as
    for ``service_call``; the raw ``result`` is the receiver's answer body.
    """

    type: Literal["webhook"]
    url: str = Field(
        min_length=1, max_length=8192, description="Absolute http:// or https:// URL (${ } templates allowed)."
    )
    signing_secret: Annotated[str, StringConstraints(pattern=SECRET_NAME_PATTERN)] = Field(
        description="Name of the secret that signs the delivery (read in the step task, like ${ secrets.NAME })."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (templates allowed).")
    body: Any = Field(default_factory=dict, description="The JSON payload; values may use ${ } templates.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if "${" not in value and not value.lower().startswith(("http://", "https://")):
            raise ValueError("url must be an absolute http:// or https:// URL")
        return value


class TaskStep(_StepBase):
    """Run a Python function as a Ray task, spreading CPU work over the cluster ("Integrations").

    ``function`` is ``package.module:function`` (a module allowed by the deployment's
    ``CORTX_TASK_MODULES``) or a name a driver registered (``dsl.task_spec``). The rendered
    ``inputs`` mapping is passed as keyword arguments: ``function(**inputs)``. Each attempt is
    one Ray task asking for ``num_cpus``, ``num_gpus`` and ``memory`` (bytes); retries,
    ``timeout_seconds``, fallback and compensation work as for every step. The function's
    return value (any JSON value) is the raw ``result``; an exception fails the attempt with
    kind ``task_error`` (retried per ``on_error.retry``), recorded with its type and message.
    """

    type: Literal["task"]
    function: str = Field(
        min_length=1, max_length=300,
        description="'package.module:function' from an allowlisted module, or a driver-registered name.",
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the function (names are Python identifiers); values may use ${ } templates.",
    )
    num_cpus: float = Field(1.0, ge=0, le=1024, allow_inf_nan=False, description="CPUs Ray reserves per attempt.")
    num_gpus: float = Field(0.0, ge=0, le=64, allow_inf_nan=False, description="GPUs Ray reserves per attempt.")
    memory: int | None = Field(
        None, ge=1, le=2**50, description="Memory Ray reserves per attempt, in bytes; none reserved if unset."
    )

    @field_validator("function")
    @classmethod
    def _function_ref(cls, value: str) -> str:
        task_spec.parse_function_ref(value)  # raises ValueError naming both accepted forms
        return value

    @field_validator("inputs")
    @classmethod
    def _keyword_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"input {name!r} is passed as a keyword argument, so it must be a Python identifier")
        return value


#: Custom event types: lower-case dot-separated words; ``execution.*`` and ``step.*`` are the engine's.
EMIT_EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$"
_RESERVED_EVENT_PREFIXES = ("execution.", "step.")


class EmitStep(_StepBase):
    """Publish a custom event (FDD §2.4 "Events: Publish workflow events").

    The event ``{"type": event_type, "data": <rendered data>}`` is written to the run's
    event outbox in the same transaction as the step's checkpoint, and delivered to the
    event subscriptions like the engine's own events (``docs/events.md``). It runs in the
    ExecutionActor like a control step (no Ray task) and writes one checkpoint; on resume a
    completed emit step is not written again, so its event is stored once. The raw
    ``result`` is ``{"event_type", "data"}``. ``data`` may not read secrets.
    """

    type: Literal["emit"]
    event_type: Annotated[str, StringConstraints(pattern=EMIT_EVENT_TYPE_PATTERN, max_length=100)] = Field(
        description="The event's type, e.g. `order.approved`: lower-case dot-separated words, at most 100 "
        "characters; `execution.` and `step.` are reserved for the engine."
    )
    data: Any = Field(default_factory=dict, description="The event's JSON data; values may use ${ } templates.")

    @field_validator("event_type")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(_RESERVED_EVENT_PREFIXES):
            raise ValueError(f"event_type {value!r} is reserved: types starting with execution. or step. are the engine's")
        return value


class ConditionStep(_StepBase):
    """Run ``then`` when ``condition`` is true, else ``else`` (FDD §7.3).

    The condition must evaluate to a boolean; anything else fails the step (no truthiness).
    The steps of the branch not taken are recorded as ``skipped``.
    """

    type: Literal["condition"]
    condition: str = Field(min_length=1, description="Expression that evaluates to true or false.")
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")

    def children(self) -> Iterator[tuple[str, list[Step]]]:
        yield "then", self.then
        yield "else", self.else_


class LoopStep(_StepBase):
    """Run ``steps`` once per item of ``collection``, or while ``condition`` holds (FDD §1.2, §7.4).

    Exactly one of ``collection`` (for-each) and ``condition`` (while) is given.

    * For-each: each iteration sees the item and its index under the names ``item`` and
      ``index`` (changeable with ``item_var`` / ``index_var``). Iterations run in order, or
      up to ``max_concurrency`` at once. An empty collection completes at once.
    * While: ``condition`` is evaluated before each iteration, with ``index`` the number of
      iterations done and ``steps.<body id>`` the results of the previous iteration (absent
      before the first: use ``defined()``). Iterations run one at a time.

    ``max_iterations`` bounds both forms (the engine's ``CORTX_MAX_LOOP_ITERATIONS`` when
    unset); exceeding it fails the step. The step's raw ``result`` is the list of the
    iterations' results, each a mapping of body step id to that step's outputs.
    """

    type: Literal["loop"]
    collection: str | None = Field(None, min_length=1, description="For-each: expression giving a list.")
    condition: str | None = Field(None, min_length=1, description="While: expression giving true or false.")
    item_var: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")] = "item"
    index_var: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")] = "index"
    max_iterations: int | None = Field(None, ge=0, le=1_000_000, description="Fail the step past this many iterations.")
    max_concurrency: int | None = Field(None, ge=1, le=10_000, description="For-each iterations run at once; 1 if unset.")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> LoopStep:
        reserved = {"inputs", "steps", "context", "error", "result", "response", "outputs"}
        for name in (self.item_var, self.index_var):
            if name in reserved:
                raise ValueError(f"{name!r} is a name the expressions already use; choose another loop variable name")
        if self.item_var == self.index_var:
            raise ValueError(f"item_var and index_var are both {self.item_var!r}; they need different names")
        if (self.collection is None) == (self.condition is None):
            raise ValueError("a loop needs exactly one of 'collection' (for-each) and 'condition' (while)")
        if self.condition is not None and self.max_concurrency not in (None, 1):
            raise ValueError("max_concurrency applies to for-each loops only; while iterations run one at a time")
        return self

    def children(self) -> Iterator[tuple[str, list[Step]]]:
        yield "steps", self.steps


class SwitchCase(_Model):
    """One case of a switch: ``steps`` run when ``when`` is the first case that is true."""

    when: str = Field(min_length=1, description="Expression that evaluates to true or false.")
    steps: list[Step] = Field(default_factory=list)


class SwitchStep(_StepBase):
    """Run the steps of the first case whose ``when`` is true, else ``default`` (FDD §1.2).

    Cases are evaluated in order; each ``when`` must give a boolean. The steps of the other
    cases are recorded ``skipped``. The raw ``result`` is ``{"case": <index or "default">}``.
    """

    type: Literal["switch"]
    cases: list[SwitchCase] = Field(min_length=1)
    default: list[Step] = Field(default_factory=list)

    def children(self) -> Iterator[tuple[str, list[Step]]]:
        for index, case in enumerate(self.cases):
            yield f"cases/{index}/steps", case.steps
        yield "default", self.default


class ParallelStep(_StepBase):
    """Run ``steps`` as one group, concurrently where their dependencies allow (FDD §7.2).

    The raw ``result`` is a mapping of member id to that member's outputs.
    """

    type: Literal["parallel"]
    steps: list[Step] = Field(min_length=1)

    def children(self) -> Iterator[tuple[str, list[Step]]]:
        yield "steps", self.steps


Step = Annotated[
    Union[ServiceCallStep, HttpStep, WebhookStep, TaskStep, EmitStep, ConditionStep, SwitchStep, LoopStep, ParallelStep],
    Field(discriminator="type"),
]

STEP_TYPES: tuple[str, ...] = ("service_call", "http", "webhook", "task", "emit", "condition", "switch", "loop", "parallel")


class WorkflowPack(_Model):
    """A deployable workflow definition (FDD §5.1).

    ``inputs`` is a JSON Schema for the run inputs: either a full schema (an object with
    ``type``/``properties``/``$schema``) or the shorthand ``{name: schema}``, read as the
    properties of an object whose keys are all optional. ``outputs`` maps output names to
    ``${ }`` templates evaluated when the run completes.
    """

    id: Annotated[str, StringConstraints(pattern=PACK_ID_PATTERN)] = Field(description="Pack id (a UUID or a slug).")
    name: str = Field(min_length=1)
    version: str = Field(min_length=1, max_length=64, description="Version string, e.g. \"1.0.0\".")
    description: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict, description="JSON Schema of the run inputs.")
    outputs: dict[str, Any] = Field(default_factory=dict, description="Run outputs as ${ } templates.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    isolation: Literal["shared", "dedicated"] = Field(
        "shared", description="`dedicated` runs each execution in an ExecutionHost of its own."
    )
    steps: list[Step] = Field(min_length=1)
    on_error: PackErrorHandler | None = Field(None, description="Compensation when the run fails.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f'version must be a string; quote it in YAML: "{value}"')
        return value

    def input_schema(self) -> dict[str, Any]:
        """The inputs as a full JSON Schema (shorthand expanded)."""
        schema_keys = {"type", "properties", "$schema", "required", "additionalProperties", "$ref", "allOf", "anyOf"}
        if not self.inputs:
            return {"type": "object"}
        if schema_keys & set(self.inputs):
            return dict(self.inputs)
        return {"type": "object", "properties": dict(self.inputs)}


class ExecutionOptions(_Model):
    """The ``options`` of an execute request (FDD §3.1)."""

    timeout_seconds: float | None = Field(
        None, gt=0, le=30 * 86_400, allow_inf_nan=False, description="Run timeout in s; WORKFLOW_TIMEOUT_SECONDS if unset."
    )
    max_retries: int | None = Field(
        None, ge=0, le=9_999, description="Retries for steps without their own policy; DEFAULT_RETRY_COUNT if unset."
    )
    isolation: Literal["shared", "dedicated"] | None = Field(None, description="`dedicated`: a host of its own.")


def all_steps(pack: WorkflowPack) -> Iterator[tuple[str, Step, tuple[str, ...]]]:
    """:func:`iter_steps` over the pack's steps and its pack-level compensation steps."""
    yield from iter_steps(pack.steps)
    if pack.on_error is not None:
        yield from iter_steps(pack.on_error.compensate, "/on_error/compensate")


def iter_steps(steps: list[Step], pointer: str = "/steps") -> Iterator[tuple[str, Step, tuple[str, ...]]]:
    """Every step in ``steps``, depth first, with its JSON pointer and the ids of its ancestors.

    Yields ``(pointer, step, ancestors)``; nested lists (``then``, ``else``, ``steps``) and
    error handlers (``on_error/fallback``, ``on_error/compensate``) are included.
    """
    for index, step in enumerate(steps):
        yield from _iter_one(step, f"{pointer}/{index}", ())


def _iter_one(step: Step, pointer: str, ancestors: tuple[str, ...]) -> Iterator[tuple[str, Step, tuple[str, ...]]]:
    yield pointer, step, ancestors
    inner = ancestors + (step.id,)
    for field, children in step.children():
        for index, child in enumerate(children):
            yield from _iter_one(child, f"{pointer}/{field}/{index}", inner)
    if step.on_error is not None:
        for field in ("fallback", "compensate"):
            for index, child in enumerate(getattr(step.on_error, field)):
                yield from _iter_one(child, f"{pointer}/on_error/{field}/{index}", inner)


for _model in (
    ErrorHandler, PackErrorHandler, ServiceCallStep, HttpStep, WebhookStep, TaskStep, EmitStep, ConditionStep, SwitchCase, SwitchStep, LoopStep, ParallelStep,
    WorkflowPack,
):
    _model.model_rebuild()
