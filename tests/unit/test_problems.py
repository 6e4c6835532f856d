"""``serve_app.problems``: exceptions the API meets, as problem+json answers (RFC 9457)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError

from serve_app.problems import register_problem_handler


def _app(exc: Exception) -> FastAPI:
    app = FastAPI()
    register_problem_handler(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


def _get(app: FastAPI) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/boom")

    return asyncio.run(get())


def test_a_ray_actor_that_died_under_the_request_is_a_503_to_retry_not_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cortx"):
        answer = _get(_app(ActorDiedError()))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/engine_unavailable")
    records = [r for r in caplog.records if "Ray actor died" in r.getMessage()]
    assert records and records[0].levelno == logging.WARNING and records[0].exc_info is None


def test_any_other_unexpected_error_stays_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="cortx"):
        answer = _get(_app(KeyError("x")))
    assert answer.status_code == 500 and answer.json()["type"].endswith("/internal_error")
    assert any(r.exc_info for r in caplog.records if "internal error answering" in r.getMessage())


def test_the_api_limits_are_read_from_the_environment_and_bad_values_name_their_variable() -> None:
    from dsl.errors import ConfigurationError
    from serve_app.auth import ApiSettings

    defaults = ApiSettings.from_env({})
    assert (defaults.body_timeout_s, defaults.max_event_streams) == (10.0, 100)
    given = ApiSettings.from_env({"CORTX_API_BODY_TIMEOUT_SECONDS": "2.5", "CORTX_API_MAX_EVENT_STREAMS": "7"})
    assert (given.body_timeout_s, given.max_event_streams) == (2.5, 7)
    for name, value in (("CORTX_API_BODY_TIMEOUT_SECONDS", "0"), ("CORTX_API_BODY_TIMEOUT_SECONDS", "nan"),
                        ("CORTX_API_BODY_TIMEOUT_SECONDS", "ten"), ("CORTX_API_BODY_TIMEOUT_SECONDS", "1e400"),
                        ("CORTX_API_BODY_TIMEOUT_SECONDS", "-1"), ("CORTX_API_MAX_EVENT_STREAMS", "0"),
                        ("CORTX_API_MAX_EVENT_STREAMS", "1.5"), ("CORTX_API_MAX_EVENT_STREAMS", "1_0"),
                        ("CORTX_API_MAX_EVENT_STREAMS", "\u0663"), ("CORTX_API_MAX_EVENT_STREAMS", "+5")):
        with pytest.raises(ConfigurationError) as caught:
            ApiSettings.from_env({name: value})
        kind = "a whole number" if name.endswith("STREAMS") else "a number"
        assert caught.value.message().startswith(f"{name}={value!r}: must be {kind} from"), caught.value.message()
