"""Property tests: random nested packs run each step the expected number of times; the
validator never crashes, whatever it is given."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.execution import ExecutionActor
from actors.runners import ThreadStepRunner
from actors.settings import Settings
from dsl.errors import PackLoadError, PackValidationError
from dsl.validation import load_pack, validate_document
from persistence.store import MemoryStore
from serve_app.demo_services import start_in_thread
from tests.conftest import demo_registry


@pytest.fixture(scope="module")
def demo() -> Iterator[Any]:
    server = start_in_thread(port=0)
    yield server
    server.stop()


# A tree is ("leaf",) | ("parallel", [trees]) | ("condition", flag, [then], [else]) | ("loop", n, [trees]).
trees = st.recursive(
    st.just(("leaf",)),
    lambda children: st.one_of(
        st.tuples(st.just("parallel"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("condition"), st.booleans(), st.lists(children, max_size=2), st.lists(children, max_size=2)),
        st.tuples(st.just("loop"), st.integers(0, 3), st.lists(children, min_size=1, max_size=2)),
    ),
    max_leaves=8,
)


class Builder:
    """Turns trees into a pack document and the expected number of calls per leaf id."""

    def __init__(self) -> None:
        self.ids = itertools.count()
        self.inputs: dict[str, Any] = {}
        self.expected: Counter[str] = Counter()

    def steps(self, forest: list[Any], times: int, deps: list[list[int]]) -> list[dict[str, Any]]:
        out = []
        for index, tree in enumerate(forest):
            step = self.step(tree, times)
            step["dependencies"] = sorted({out[d]["id"] for d in deps[index] if d < index}) if deps else []
            out.append(step)
        return out

    def step(self, tree: Any, times: int) -> dict[str, Any]:
        step_id = f"s{next(self.ids)}"
        kind = tree[0]
        if kind == "leaf":
            self.expected[step_id] += times
            return {"id": step_id, "type": "service_call", "service": "echo", "endpoint": f"/{step_id}",
                    "inputs": {"id": step_id}}
        if kind == "parallel":
            return {"id": step_id, "type": "parallel", "steps": self.steps(tree[1], times, [])}
        if kind == "condition":
            flag = f"flag_{step_id}"
            self.inputs[flag] = tree[1]
            then = self.steps(tree[2], times if tree[1] else 0, [])
            other = self.steps(tree[3], 0 if tree[1] else times, [])
            return {"id": step_id, "type": "condition", "condition": f"inputs.{flag}", "then": then, "else": other}
        items = f"items_{step_id}"
        self.inputs[items] = list(range(tree[1]))
        return {"id": step_id, "type": "loop", "collection": f"inputs.{items}", "max_concurrency": 2,
                "steps": self.steps(tree[2], times * tree[1], [])}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forest=st.lists(trees, min_size=1, max_size=4), data=st.data())
def test_every_step_runs_the_expected_number_of_times(demo: Any, forest: list[Any], data: st.DataObject) -> None:
    builder = Builder()
    deps = [data.draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=2)) for i in range(len(forest))]
    document = {"id": "prop", "name": "prop", "version": "1", "steps": builder.steps(forest, 1, deps)}
    validate_document(document)

    async def run() -> dict[str, Any]:
        store = MemoryStore()
        execution_id = str(uuid.uuid4())
        await store.create_execution(execution_id=execution_id, workflow_pack_id="prop", version="1",
                                     pack_document=document, inputs=builder.inputs, options={"max_retries": 0})
        actor = ExecutionActor(execution_id, store=store, registry=demo_registry(demo.url),
                               settings=Settings(database_url="memory://"), runner=ThreadStepRunner())
        return await actor.run()

    before = demo.calls()["by_idempotency_key"]
    record = asyncio.run(run())
    assert record["status"] == "completed", record["error"]
    after = demo.calls()["by_idempotency_key"]
    mine = {k: v - before.get(k, 0) for k, v in after.items() if k.startswith(record["execution_id"])}
    assert all(count == 1 for count in mine.values())  # each step execution called once
    per_leaf = Counter(key.rsplit("/", 1)[-1] for key in mine)
    assert per_leaf == +builder.expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
step_like = st.fixed_dictionaries(
    {"id": st.text(max_size=8) | st.just("a"), "type": st.sampled_from(["service_call", "condition", "loop", "parallel", "x"])},
    optional={"service": st.text(max_size=5), "steps": st.lists(json_values, max_size=3),
              "dependencies": st.lists(st.text(max_size=3), max_size=3), "condition": st.text(max_size=30),
              "collection": st.text(max_size=30), "inputs": json_values, "then": st.lists(json_values, max_size=2)},
)


@settings(max_examples=300, deadline=None)
@given(document=st.fixed_dictionaries({"id": st.text(max_size=10), "name": st.text(max_size=5),
                                       "version": json_values, "steps": st.lists(step_like, max_size=4)},
                                      optional={"outputs": json_values, "inputs": json_values}) | json_values)
def test_validation_never_crashes_on_random_documents(document: Any) -> None:
    try:
        validate_document(document)
    except PackValidationError as exc:
        assert exc.issues and all(issue.message for issue in exc.issues)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_loading_never_crashes_on_random_text(text: str) -> None:
    try:
        load_pack(text, "random.yaml")
    except (PackLoadError, PackValidationError):
        pass
