"""Structured logs carry the run's ids on every line."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from actors.logs import JsonFormatter, attempt_var, execution_id_var, step_key_var


def test_lines_are_json_with_execution_step_and_attempt() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cortx.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def step(key: str, attempt: int) -> None:
        step_key_var.set(key)
        attempt_var.set(attempt)
        logger.info("step.completed", extra={"duration_ms": 7})

    async def run() -> None:
        execution_id_var.set("exec-1")
        await asyncio.gather(step("a", 1), step("each[2]/b", 3))  # concurrent steps keep their own keys

    asyncio.run(run())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {(l["execution_id"], l["step_key"], l["attempt"]) for l in lines} == {("exec-1", "a", 1), ("exec-1", "each[2]/b", 3)}
    assert all(l["message"] == "step.completed" and l["duration_ms"] == 7 and l["ts"].endswith("Z") for l in lines)
