"""The engine: ExecutionActors in ExecutionHosts on Ray, the scheduler, the driver API.

Public surface for driver scripts and notebooks: :class:`WorkflowClient` (deploy packs;
start, watch, wait for, read, list and cancel runs; read step histories; ``docs/driver.md``)
and :class:`Settings`. The Ray-facing modules
(``actors.host``, ``actors.tasks``) are imported lazily, so importing this package does not
start or require Ray.
"""

from actors.driver import WorkflowClient, coerce_pack, read_record
from actors.registry import ResolvedCall, ServiceEndpoint, ServiceRegistry
from actors.scheduler import RunOutcome, Scheduler, ServiceRequest
from actors.settings import Settings

__all__ = [
    "ResolvedCall",
    "RunOutcome",
    "Scheduler",
    "ServiceEndpoint",
    "ServiceRegistry",
    "ServiceRequest",
    "Settings",
    "WorkflowClient",
    "coerce_pack",
    "read_record",
]
