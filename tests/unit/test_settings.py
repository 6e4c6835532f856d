"""Engine settings from the environment: numbers are ASCII digits, out of range is named."""

from __future__ import annotations

import pytest

from actors.settings import Settings
from dsl.errors import ConfigurationError


def test_service_callers_are_opt_in_and_bounded_in_code_too() -> None:
    assert (Settings.from_env({}).service_callers, Settings.from_env({}).service_call_concurrency) == (0, 64)
    settings = Settings.from_env({"CORTX_SERVICE_CALLERS": "2", "CORTX_SERVICE_CALL_CONCURRENCY": "256"})
    assert (settings.service_callers, settings.service_call_concurrency) == (2, 256)
    # Built in code (the driver API), the same bounds: -1 callers used to fail every run
    # with a ZeroDivisionError, 0 threads to start a caller that never answers.
    for field, value in (("service_callers", -1), ("service_callers", 17), ("service_call_concurrency", 0),
                         ("service_call_concurrency", 1001), ("service_callers", True)):
        with pytest.raises(ConfigurationError) as caught:
            Settings(database_url="memory://", **{field: value})
        assert caught.value.name == field


def test_numbers_are_read_with_their_fraction_and_exponent() -> None:
    settings = Settings.from_env({"MAX_PARALLEL_STEPS": " 12 ", "WORKFLOW_TIMEOUT_SECONDS": "1.5e2",
                                  "CORTX_STEP_TASK_NUM_CPUS": ".5"})
    assert (settings.max_parallel_steps, settings.workflow_timeout_seconds, settings.step_task_num_cpus) == (12, 150.0, 0.5)


@pytest.mark.parametrize(("name", "raw"), [
    ("MAX_PARALLEL_STEPS", "1_0"),          # int() reads 10
    ("MAX_PARALLEL_STEPS", "\u0663"),       # int() reads 3 (an Arabic-Indic digit)
    ("MAX_PARALLEL_STEPS", "+5"),
    ("MAX_PARALLEL_STEPS", "5.0"),
    ("DEFAULT_RETRY_COUNT", "-1"),
    ("WORKFLOW_TIMEOUT_SECONDS", "inf"),    # float() reads an endless timeout
    ("WORKFLOW_TIMEOUT_SECONDS", "1e400"),
    ("WORKFLOW_TIMEOUT_SECONDS", "nan"),
    ("WORKFLOW_TIMEOUT_SECONDS", "0"),
    ("CORTX_STEP_TASK_NUM_CPUS", "0x1"),
    ("CORTX_SERVICE_CALLERS", "17"),
    ("CORTX_SERVICE_CALLERS", "-1"),
    ("CORTX_SERVICE_CALL_CONCURRENCY", "0"),
    ("CORTX_SERVICE_CALL_CONCURRENCY", "1001"),
])
def test_a_number_written_any_other_way_is_refused_naming_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: raw})
    assert caught.value.name == name and caught.value.message().startswith(f"{name}={raw!r}: must be")
