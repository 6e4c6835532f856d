"""Settings: environment variables read once, at the entry points, into a frozen object.

Variables (FDD §6, plus the service's own):

===============================  ===============================  ==========================================
variable                         default                          meaning
===============================  ===============================  ==========================================
``DATABASE_URL``                 ``sqlite+aiosqlite:///<cwd>/``   where executions and checkpoints live;
                                 ``cortx-workflow.db``            ``postgresql+asyncpg://…`` for PostgreSQL
``WORKFLOW_TIMEOUT_SECONDS``     300                              default run timeout, in s
``MAX_PARALLEL_STEPS``           10                               step tasks in flight at once, per run
``DEFAULT_RETRY_COUNT``          3                                retries (beyond the first attempt) of a
                                                                  step without its own retry policy
``STATE_PERSISTENCE_ENABLED``    true                             false keeps state in memory only
``CORTX_SERVICE_REGISTRY``       (none)                           path of the service registry YAML
``CORTX_SECRETS_FILE``           (none)                           YAML/JSON file of named secrets, read by
                                                                  step tasks (``docs/security.md``)
``CORTX_EXECUTION_HOSTS``        2                                shared ExecutionHosts started
``CORTX_MAX_CONCURRENT_EXECUTIONS`` 100                            runs ``running`` at once per deployment
                                                                  (FDD §9.2); more wait ``queued``
``CORTX_STEP_TASK_NUM_CPUS``     0.25                             Ray CPUs reserved by one step task
``CORTX_SERVICE_CALLERS``        0                                service caller actors per shared host
                                                                  (``actors.callers``, opt-in); 0: a Ray
                                                                  task per service call
``CORTX_SERVICE_CALL_CONCURRENCY`` 64                             service calls one caller runs at once
``CORTX_DB_POOL_SIZE``           5                                connections per ExecutionHost
``CORTX_MAX_LOOP_ITERATIONS``    100000                           bound of loops without max_iterations
``CORTX_HTTP_ALLOWED_HOSTS``     (none: all refused)              hosts ``http`` steps may call, comma-
                                                                  separated (``actors.egress``)
``CORTX_HTTP_ALLOW_PRIVATE``     false                            true lets them reach loopback/private IPs
``CORTX_HTTP_MAX_REDIRECTS``     5                                redirect hops an ``http`` step follows
``CORTX_TASK_MODULES``           (none: no module allowed)        modules ``task`` steps may import, comma-
                                                                  separated names or package prefixes
                                                                  (``examples.tasks,mycompany.tasks``)
``CORTX_EVENT_SUBSCRIPTIONS``    (none)                           YAML/JSON file of event subscriptions
                                                                  (webhooks; ``actors.events_delivery``)
``CORTX_LEDGER_AUDIT``           true                             with a ``ledger`` service in the registry,
                                                                  send every event to its audit log
===============================  ===============================  ==========================================

The FDD marks ``DATABASE_URL`` as required; the design card asks for an embedded default,
so without it the service uses a SQLite file in the working folder (absolute path, because
Ray workers run in other folders). Bad values fail at start with the variable, the value
and the rule (:class:`~dsl.errors.ConfigurationError`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from dsl.errors import ConfigurationError

__all__ = ["Settings", "default_database_url"]

T = TypeVar("T")

#: Most service callers per shared host, and calls per caller. Ray creates a threaded
#: actor's threads when it starts (a caller of 10,000 held 10,022 threads and 90 GB of
#: address space after one call), so these bound the threads a host's callers can take:
#: 16 x 1,000 per host.
MAX_SERVICE_CALLERS = 16
MAX_SERVICE_CALL_CONCURRENCY = 1000


def default_database_url(cwd: str | Path | None = None) -> str:
    """The embedded default: a SQLite file ``cortx-workflow.db`` in ``cwd`` (absolute)."""
    base = Path(cwd or os.getcwd()).resolve()
    return f"sqlite+aiosqlite:///{base / 'cortx-workflow.db'}"


@dataclass(frozen=True)
class Settings:
    """Everything the engine reads from its environment, checked.

    Attributes:
        database_url: SQLAlchemy async URL, or ``memory://`` when persistence is off.
        workflow_timeout_seconds: default run timeout in s (FDD §6).
        max_parallel_steps: step tasks in flight at once per run (FDD §6).
        default_retry_count: retries after the first attempt for steps without a policy.
        state_persistence_enabled: False keeps runs in memory only (nothing survives a crash).
        service_registry_path: registry YAML path, or None.
        secrets_file: absolute path of the secrets file (``CORTX_SECRETS_FILE``), or None;
            step tasks read named secrets from it (``actors.secrets``).
        execution_hosts: number of shared ExecutionHosts.
        max_concurrent_executions: runs ``running`` at once in the deployment (all hosts and
            replicas on one database); more are stored ``queued`` (FDD §9.2,
            :mod:`persistence.admission`).
        step_task_num_cpus: CPUs Ray reserves for one step task (I/O-bound work: a fraction).
        service_callers: service caller actors each shared host starts for its service calls
            (:mod:`actors.callers`, opt-in: see its limits there); 0, the default, makes
            every service call a Ray task, as dedicated hosts always do.
        service_call_concurrency: service calls one caller runs at once (a thread each,
            all created when the caller starts).
        db_pool_size: database connections per ExecutionHost.
        max_loop_iterations: bound of loops that set no ``max_iterations``.
        http_allowed_hosts: allowlist entries for URLs from packs (``actors.egress``).
        http_allow_private: allowlisted hosts may be loopback or private addresses.
        http_max_redirects: redirect hops an ``http`` step follows, each checked.
        task_modules: the ``task`` step allowlist (``CORTX_TASK_MODULES``): module names, each
            allowing itself and the modules below it (``dsl.task_spec``). A pack naming a
            function elsewhere is refused when it is deployed or started, and again in the
            worker before anything is imported. Empty (the default) allows no module;
            driver-registered functions need no entry.
        event_subscriptions: webhook subscriptions to the run events (``CORTX_EVENT_SUBSCRIPTIONS``,
            :class:`actors.events_delivery.Subscription`), checked at start.
        ledger_audit: deliver every event to the registry's ``ledger`` service as an audit
            record (FDD §4.1), when it has one.

    Raises:
        ConfigurationError: (when built in code) ``service_callers`` or
            ``service_call_concurrency`` out of range; :meth:`from_env` checks every field.
    """

    database_url: str
    workflow_timeout_seconds: float = 300.0
    max_parallel_steps: int = 10
    default_retry_count: int = 3
    state_persistence_enabled: bool = True
    service_registry_path: str | None = None
    secrets_file: str | None = None
    execution_hosts: int = 2
    max_concurrent_executions: int = 100
    step_task_num_cpus: float = 0.25
    service_callers: int = 0
    service_call_concurrency: int = 64
    db_pool_size: int = 5
    max_loop_iterations: int = 100_000
    http_allowed_hosts: tuple[str, ...] = ()
    http_allow_private: bool = False
    http_max_redirects: int = 5
    task_modules: tuple[str, ...] = ()
    event_subscriptions: tuple[Any, ...] = ()
    ledger_audit: bool = True

    def __post_init__(self) -> None:
        # The fields a host divides by or sizes thread pools with are checked here too, for
        # Settings built in code (the driver API), not only from the environment.
        for name, value, low, high in (
            ("service_callers", self.service_callers, 0, MAX_SERVICE_CALLERS),
            ("service_call_concurrency", self.service_call_concurrency, 1, MAX_SERVICE_CALL_CONCURRENCY),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigurationError(name, value, f"must be a whole number from {low} to {high}")

    @property
    def store_url(self) -> str:
        """The URL the store opens: ``memory://`` when persistence is disabled."""
        return self.database_url if self.state_persistence_enabled else "memory://"

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, cwd: str | Path | None = None) -> Settings:
        """Read the variables in the module docstring.

        Raises:
            ConfigurationError: a value is malformed or out of range.
        """
        env = os.environ if environ is None else environ

        def get(name: str, parse: Callable[[str], T], default: T, rule: str, ok: Callable[[T], bool]) -> T:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = parse(raw.strip())
            except ValueError:
                raise ConfigurationError(name, raw, rule) from None
            if not ok(value):
                raise ConfigurationError(name, raw, rule)
            return value

        database_url = env.get("DATABASE_URL", "").strip() or default_database_url(cwd)
        if not database_url.startswith(("postgresql", "sqlite", "memory://")):
            raise ConfigurationError(
                "DATABASE_URL", database_url, "must be a postgresql+asyncpg:// or sqlite+aiosqlite:/// URL"
            )
        registry = env.get("CORTX_SERVICE_REGISTRY", "").strip() or None
        return cls(
            database_url=database_url,
            workflow_timeout_seconds=get(
                "WORKFLOW_TIMEOUT_SECONDS", parse_decimal, 300.0, "must be a number of seconds above 0", lambda v: v > 0
            ),
            max_parallel_steps=get(
                "MAX_PARALLEL_STEPS", parse_whole, 10, "must be a whole number from 1 to 10000", lambda v: 1 <= v <= 10_000
            ),
            default_retry_count=get(
                "DEFAULT_RETRY_COUNT", parse_whole, 3, "must be a whole number from 0 to 1000", lambda v: 0 <= v <= 1000
            ),
            state_persistence_enabled=get(
                "STATE_PERSISTENCE_ENABLED", _parse_bool, True, "must be true or false", lambda v: True
            ),
            service_registry_path=str(Path(registry).resolve()) if registry else None,
            secrets_file=_secrets_file(env.get("CORTX_SECRETS_FILE", "")),
            execution_hosts=get(
                "CORTX_EXECUTION_HOSTS", parse_whole, 2, "must be a whole number from 1 to 64", lambda v: 1 <= v <= 64
            ),
            step_task_num_cpus=get(
                "CORTX_STEP_TASK_NUM_CPUS", parse_decimal, 0.25, "must be a number from 0 to 64", lambda v: 0 <= v <= 64
            ),
            service_callers=get(
                "CORTX_SERVICE_CALLERS", parse_whole, 0, f"must be a whole number from 0 to {MAX_SERVICE_CALLERS}",
                lambda v: 0 <= v <= MAX_SERVICE_CALLERS,
            ),
            service_call_concurrency=get(
                "CORTX_SERVICE_CALL_CONCURRENCY", parse_whole, 64,
                f"must be a whole number from 1 to {MAX_SERVICE_CALL_CONCURRENCY}",
                lambda v: 1 <= v <= MAX_SERVICE_CALL_CONCURRENCY,
            ),
            max_concurrent_executions=get(
                "CORTX_MAX_CONCURRENT_EXECUTIONS", parse_whole, 100, "must be a whole number from 1 to 1000000",
                lambda v: 1 <= v <= 1_000_000,
            ),
            db_pool_size=get("CORTX_DB_POOL_SIZE", parse_whole, 5, "must be a whole number from 1 to 50", lambda v: 1 <= v <= 50),
            http_allowed_hosts=_allowed_hosts(env.get("CORTX_HTTP_ALLOWED_HOSTS", "")),
            http_allow_private=get(
                "CORTX_HTTP_ALLOW_PRIVATE", _parse_bool, False, "must be true or false", lambda v: True
            ),
            http_max_redirects=get(
                "CORTX_HTTP_MAX_REDIRECTS", parse_whole, 5, "must be a whole number from 0 to 20", lambda v: 0 <= v <= 20
            ),
            task_modules=_task_modules(env.get("CORTX_TASK_MODULES", "")),
            event_subscriptions=_event_subscriptions(env.get("CORTX_EVENT_SUBSCRIPTIONS", "")),
            ledger_audit=get("CORTX_LEDGER_AUDIT", _parse_bool, True, "must be true or false", lambda v: True),
            max_loop_iterations=get(
                "CORTX_MAX_LOOP_ITERATIONS", parse_whole, 100_000, "must be a whole number from 1 to 1000000",
                lambda v: 1 <= v <= 1_000_000,
            ),
        )


def _task_modules(raw: str) -> tuple[str, ...]:
    """``CORTX_TASK_MODULES`` as its entries, each a dotted module name (``dsl.task_spec``)."""
    from dsl.task_spec import parse_task_modules

    try:
        return parse_task_modules(raw)
    except ValueError as exc:
        raise ConfigurationError("CORTX_TASK_MODULES", raw, f"{exc}; separate entries with commas") from None


def _allowed_hosts(raw: str) -> tuple[str, ...]:
    """``CORTX_HTTP_ALLOWED_HOSTS`` as its entries, each checked (forms: ``actors.egress``)."""
    from actors.egress import parse_allowed_hosts

    try:
        return tuple(pattern.text for pattern in parse_allowed_hosts(raw))
    except ValueError as exc:
        raise ConfigurationError(
            "CORTX_HTTP_ALLOWED_HOSTS", raw, f"{exc}; entries are host, host:port, *.domain, * or an IP address"
        ) from None


_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_whole(raw: str) -> int:
    """A setting's whole number: ASCII digits only.

    Python's ``int()`` also takes ``1_0``, other scripts' digits (``٣``) and a sign; a
    setting written so is a typo more often than a number.

    Raises:
        ValueError: anything else.
    """
    if not _WHOLE.fullmatch(raw):
        raise ValueError(raw)
    return int(raw)


def parse_decimal(raw: str) -> float:
    """A setting's number: ASCII digits, an optional fraction and exponent; finite.

    Raises:
        ValueError: anything else (``nan``, ``inf``, ``1e400``, a sign, ``1_0``).
    """
    if not _DECIMAL.fullmatch(raw):
        raise ValueError(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _secrets_file(raw: str) -> str | None:
    """The secrets file as an absolute path (step tasks run in other folders); it must exist."""
    if not raw.strip():
        return None
    path = Path(raw.strip()).resolve()
    if not path.is_file():
        raise ConfigurationError("CORTX_SECRETS_FILE", raw, "must name an existing file")
    return str(path)


def _event_subscriptions(raw: str) -> tuple[Any, ...]:
    """``CORTX_EVENT_SUBSCRIPTIONS``: the subscriptions file, read and checked now (``actors.events_delivery``)."""
    if not raw.strip():
        return ()
    from actors.events_delivery import load_subscriptions

    return load_subscriptions(Path(raw.strip()).resolve())
