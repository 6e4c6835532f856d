"""The ``task`` step's function references and the module allowlist (pure; no Ray).

A ``task`` step names the Python function it runs in one of two forms:

* ``package.module:function``: a function importable in the Ray workers, from a module the
  deployment allows (``CORTX_TASK_MODULES``). The allowlist is configuration, never part of
  a pack: a pack can only name functions the operator has already agreed to run.
* ``name`` (no colon): a function a driver registered under that name
  (``WorkflowClient.register_task``). Registering is an act of the deployment's own code, so
  registered names are not subject to the module allowlist; they must be registered when a
  run starts.

An allowlist entry is a module name (``examples.tasks``) or a package prefix: the entry
``mycompany.tasks`` allows ``mycompany.tasks`` itself and every module below it
(``mycompany.tasks.scoring``), never ``mycompany.tasks_old``. The same check runs twice
(defence in depth): when a pack is validated against the settings (deploy, start) and in the
worker, before anything is imported (``actors.task_call``).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FunctionRef",
    "TaskPolicy",
    "module_allowed",
    "parse_function_ref",
    "parse_task_modules",
    "task_function_issues",
]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})*$")
_MODULE_REF = re.compile(rf"^(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<name>[A-Za-z][A-Za-z0-9_]*)$")
#: A registered name: letters, digits, ``_ . -``, starting with a letter, at most 128.
REGISTERED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")

FORMS = "'package.module:function' (a public function of an allowlisted module) or a registered name"


@dataclass(frozen=True)
class FunctionRef:
    """A parsed ``function`` field: ``module`` is None for a registered name."""

    text: str
    module: str | None
    name: str

    @property
    def registered(self) -> bool:
        """True for a driver-registered name, False for ``module:function``."""
        return self.module is None


def parse_function_ref(text: str) -> FunctionRef:
    """Parse a ``task`` step's ``function``.

    Args:
        text: ``"package.module:function"`` or a registered name (``score-item``).

    Returns:
        The :class:`FunctionRef`.

    Raises:
        ValueError: the text is neither form (the message names both); a function name
            starting with ``_`` (private) is refused, as are Python keywords as parts.
    """
    if ":" in text:
        match = _MODULE_REF.match(text)
        if match is None or any(keyword.iskeyword(p) for p in match["module"].split(".") + [match["name"]]):
            raise ValueError(f"function {text!r} must be {FORMS}; the function name may not start with '_'")
        return FunctionRef(text, match["module"], match["name"])
    if not REGISTERED_NAME.match(text):
        raise ValueError(f"function {text!r} must be {FORMS} (letters, digits, '_', '.', '-', at most 128)")
    return FunctionRef(text, None, text)


def parse_task_modules(raw: str) -> tuple[str, ...]:
    """``CORTX_TASK_MODULES`` as its entries (comma-separated module names or package prefixes).

    Raises:
        ValueError: an entry is not a dotted Python module name.
    """
    entries = tuple(part.strip() for part in raw.split(",") if part.strip())
    for entry in entries:
        if not _MODULE.match(entry) or any(keyword.iskeyword(p) for p in entry.split(".")):
            raise ValueError(f"{entry!r} is not a module name (dotted Python identifiers, e.g. examples.tasks)")
    return entries


def module_allowed(module: str, allowlist: Iterable[str]) -> bool:
    """Whether ``module`` is an allowlist entry or lies below one (``a.b`` allows ``a.b.c``, not ``a.bc``)."""
    return any(module == entry or module.startswith(entry + ".") for entry in allowlist)


@dataclass(frozen=True)
class TaskPolicy:
    """Which functions ``task`` steps may name, for validation against the settings.

    Attributes:
        modules: the allowlist (``Settings.task_modules``); empty allows no module.
        registered: names registered by drivers, or None when they cannot be known here
            (an HTTP deploy: drivers register at run time); None skips that check.
    """

    modules: tuple[str, ...] = ()
    registered: frozenset[str] | None = None

    def refusal(self, text: str) -> tuple[str, str] | None:
        """``(rule, sentence)`` why ``text`` may not run, or None if it may.

        Rules: ``module_not_allowed`` (outside ``CORTX_TASK_MODULES``) and
        ``not_registered`` (a registered name no driver registered).
        """
        ref = parse_function_ref(text)
        if ref.module is not None:
            if module_allowed(ref.module, self.modules):
                return None
            allowed = f"it allows {', '.join(self.modules)}" if self.modules else "it is empty, so no module is allowed"
            return (
                "module_not_allowed",
                f"function {text!r} is in module {ref.module!r}, which CORTX_TASK_MODULES does not allow ({allowed})",
            )
        if self.registered is None or text in self.registered:
            return None
        known = ", ".join(sorted(self.registered)) or "none"
        return (
            "not_registered",
            f"function {text!r} is not a registered task function (registered: {known}); register it with "
            "WorkflowClient.register_task before starting the run, or name it as 'package.module:function'",
        )


def task_function_issues(steps: Iterable[tuple[str, Any, Any]], policy: TaskPolicy | None) -> list[Any]:
    """Validation issues for ``task`` steps whose function ``policy`` refuses.

    Args:
        steps: ``(pointer, step, ancestors)`` of every step (:func:`dsl.models.all_steps`).
        policy: the deployment's policy; None skips the check (a pack validated alone).

    Returns:
        :class:`~dsl.errors.ValidationIssue` items with code ``task_not_allowed`` (rule
        ``module_not_allowed``) or ``task_not_registered``, pointing at ``/steps/N/function``.
    """
    from dsl.errors import ValidationIssue

    if policy is None:
        return []
    issues = []
    for pointer, step, _ in steps:
        if getattr(step, "type", None) != "task":
            continue
        refused = policy.refusal(step.function)
        if refused is not None:
            rule, message = refused
            code = "task_not_allowed" if rule == "module_not_allowed" else "task_not_registered"
            issues.append(ValidationIssue(code, pointer + "/function", f"step {step.id!r}: {message}"))
    return issues

