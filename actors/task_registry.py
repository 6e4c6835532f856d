"""Functions registered by drivers for ``task`` steps, and how they reach the Ray workers.

A driver script (or a test, or a notebook) registers a plain Python function under a name::

    def score(item: dict) -> float:
        return item["weight"] * 0.5

    client = WorkflowClient.from_env()
    client.register_task("score-item", score)
    client.run("pack.yaml", {...})      # a step with `function: score-item` calls score(**inputs)

Ray workers are other processes (on other nodes), and the ExecutionHost that runs the step
outlives the driver, so the function travels **by value**: it is pickled with cloudpickle,
its own module included by value (so a function defined in ``__main__``, a test module or a
notebook cell needs no importable module on the workers; what it imports by name, such as
``numpy``, must be installed there). The bytes are kept by a detached actor of the
deployment's Ray namespace, ``cortx-task-registry``; a host fetches them when a step names
the function and hands them to the step's Ray task, which unpickles and calls the function.

Rules:

* Registered names are not subject to ``CORTX_TASK_MODULES``: registering is the
  deployment's own code deciding to run the function; a pack can only name it.
* Registering a name again replaces the function for steps that start afterwards.
* The registry lives as long as the Ray cluster (namespace): after a whole-cluster restart
  a driver registers again before resuming runs; a step that names a function nobody
  registered fails at once with kind ``task_not_registered`` (never retried), and
  :meth:`WorkflowClient.start` refuses such a pack beforehand.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from dsl.task_spec import REGISTERED_NAME

__all__ = ["REGISTRY_ACTOR_NAME", "TaskRegistryActor", "fetch", "pickle_function", "register", "registered_names"]

REGISTRY_ACTOR_NAME = "cortx-task-registry"


class TaskRegistryActor:
    """The Ray actor holding registered functions as pickled bytes, by name."""

    def __init__(self) -> None:
        self._functions: dict[str, bytes] = {}

    def register(self, name: str, blob: bytes) -> None:
        """Keep ``blob`` (a cloudpickled function) under ``name``, replacing any earlier one."""
        self._functions[name] = blob

    def get(self, name: str) -> bytes | None:
        """The pickled function registered as ``name``, or None."""
        return self._functions.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._functions)


def pickle_function(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled by value (its module too, unless it is a builtin), for another process.

    Raises:
        TypeError: ``fn`` is not callable, or cannot be pickled (the message says why).
    """
    from ray import cloudpickle

    if not callable(fn):
        raise TypeError(f"a task function must be callable, got {type(fn).__name__}")
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = (
        inspect.isfunction(fn) and module is not None and module.__name__ != "__main__"
        and module.__name__ not in sys.builtin_module_names
    )
    try:
        if by_value:
            # By value: the workers need not import the driver's module (a test file, a notebook).
            cloudpickle.register_pickle_by_value(module)
        try:
            return bytes(cloudpickle.dumps(fn))
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)
    except Exception as exc:  # noqa: BLE001 - reported with the reason
        raise TypeError(f"the function cannot be pickled for the Ray workers: {type(exc).__name__}: {exc}") from None


def _actor(namespace: str | None, create: bool) -> Any:
    import ray

    if not create:
        try:
            return ray.get_actor(REGISTRY_ACTOR_NAME, namespace=namespace)
        except ValueError:
            return None
    return (
        ray.remote(TaskRegistryActor)
        .options(
            name=REGISTRY_ACTOR_NAME,
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",  # the hosts that run the steps outlive the driver
            num_cpus=0,
            max_concurrency=1000,
        )
        .remote()
    )


def register(name: str, fn: Callable[..., Any], *, namespace: str | None = None) -> None:
    """Register ``fn`` as ``name`` in the namespace's registry (created on first use).

    Must be called in a process connected to Ray.

    Raises:
        ValueError: ``name`` is not a valid registered name (letters, digits, ``_ . -``,
            starting with a letter, at most 128; no ``:``, which marks ``module:function``).
        TypeError: ``fn`` is not callable or cannot be pickled.
    """
    import ray

    if not isinstance(name, str) or not REGISTERED_NAME.match(name):
        raise ValueError(
            f"task name {name!r} must be letters, digits, '_', '.' or '-', start with a letter and have at most "
            "128 characters (no ':', which marks 'package.module:function')"
        )
    blob = pickle_function(fn)
    ray.get(_actor(namespace, create=True).register.remote(name, blob))


def registered_names(namespace: str | None = None) -> frozenset[str]:
    """Names registered in the namespace (empty when nothing was ever registered)."""
    import ray

    actor = _actor(namespace, create=False)
    return frozenset() if actor is None else frozenset(ray.get(actor.names.remote()))


async def fetch(name: str, namespace: str | None = None) -> bytes | None:
    """The pickled function ``name`` from the namespace's registry, or None (in a host).

    Inside an actor, pass the namespace explicitly: there ``None`` means the namespace of
    the job that created the actor, not the actor's own.
    """
    actor = _actor(namespace, create=False)
    if actor is None:
        return None
    blob = await actor.get.remote(name)
    return blob if isinstance(blob, bytes) else None
