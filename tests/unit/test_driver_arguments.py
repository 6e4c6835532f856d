"""The driver API's argument checks, before anything touches Ray or a database."""

from __future__ import annotations

import pytest

from actors.driver import WorkflowClient
from actors.registry import ServiceRegistry
from actors.settings import Settings


@pytest.mark.parametrize("method", ["status", "steps", "cancel", "wait", "events", "host_info"])
def test_a_record_passed_for_an_execution_id_is_a_type_error_that_says_so(method: str) -> None:
    client = WorkflowClient(Settings(database_url="memory://"), ServiceRegistry.from_mapping({"services": {}}))
    with pytest.raises(TypeError) as caught:
        getattr(client, method)({"execution_id": "959c7605-23f7-4a81-a477-957e4348961e", "status": "completed"})
    assert str(caught.value) == "execution_id must be a str, got dict (pass record['execution_id'], not the record)"
    with pytest.raises(TypeError, match="got int"):
        getattr(client, method)(7)
