"""The ``cortx-workflow`` CLI as a user runs it: new processes, real HTTP, both databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
_SCRIPT = Path(sys.executable).parent / "cortx-workflow"
# The installed console script, as a user runs it (the module form when not installed).
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "serve_app.cli"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ}
    merged.pop("RAY_ADDRESS", None)
    merged.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=merged, timeout=timeout, cwd=ROOT)


@pytest.fixture
def registry_file(tmp_path: Path, demo_services: Any) -> Path:
    path = tmp_path / "services.yaml"
    services = {name: {"base_url": f"{demo_services.url}/{name}"} for name in ("validation", "compliance", "ledger")}
    path.write_text(yaml.safe_dump({"services": services}))
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cli_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.timeout(300)
def test_run_json_then_status_in_a_new_process(registry_file: Path, cli_database_url: str) -> None:
    env = {"DATABASE_URL": cli_database_url}
    run = cli(
        "run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
        "--json", "--services", str(registry_file), env=env,
    )
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)  # stdout holds the record only
    assert record["status"] == "completed"
    assert set(record) >= {"execution_id", "status", "current_step", "completed_steps", "outputs", "duration_ms", "error"}
    assert record["outputs"]["items_checked"] == 3 and record["error"] is None

    status = cli("status", record["execution_id"], "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == record


@pytest.mark.timeout(300)
def test_run_shows_each_step_as_it_starts_and_ends(registry_file: Path, tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'steps.db'}"}
    run = cli("run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
              "--services", str(registry_file), env=env)
    assert run.returncode == 0, run.stderr
    for line in ("-> identity-check started", "ok identity-check completed", "ok check-items[2]/validate-item completed",
                 "ok record-decision completed"):
        assert line in run.stdout
    assert ": completed in" in run.stdout


@pytest.mark.timeout(300)
def test_run_starts_its_own_ray_when_a_started_cluster_is_recorded_on_the_machine(registry_file: Path) -> None:
    # `ray start` records its cluster in <RAY_TMPDIR>/ray/ray_current_cluster, and a plain
    # ray.init() joins whatever is recorded there (here: nothing listens, as after a crash).
    # With no RAY_ADDRESS the command must start a local Ray of its own, as documented.
    import socket
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        recorded = f"127.0.0.1:{sock.getsockname()[1]}"
    temp = tempfile.mkdtemp(prefix="cxrc")  # short: Ray's socket paths live below it
    try:
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text(recorded)
        run = cli("run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json", "--json",
                  "--services", str(registry_file),
                  env={"RAY_TMPDIR": temp, "DATABASE_URL": f"sqlite+aiosqlite:///{temp}/rc.db"})
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["status"] == "completed"
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_validate_accepts_the_example() -> None:
    result = cli("validate", "examples/loan-approval.yaml")
    assert result.returncode == 0 and "valid" in result.stdout
    assert "not checked" not in result.stderr  # examples/services.yaml is beside it


def test_validate_says_when_it_could_not_check_service_names(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"  # no services.yaml beside it
    path.write_text("id: p\nname: P\nversion: '1'\nsteps:\n  - {id: a, type: service_call, service: complianse}\n")
    no_registry = {"CORTX_SERVICE_REGISTRY": ""}
    result = cli("validate", str(path), env=no_registry)
    assert result.returncode == 0 and "valid" in result.stdout
    assert "service names not checked: no service registry" in result.stderr
    assert json.loads(cli("validate", str(path), "--json", env=no_registry).stdout)["services_checked"] is False
    (tmp_path / "services.yaml").write_text("services:\n  compliance: {base_url: 'http://127.0.0.1:1'}\n")
    checked = cli("validate", str(path), env=no_registry)
    assert checked.returncode == 1 and "unknown_service" in checked.stderr


@pytest.mark.parametrize(
    ("pack", "needles"),
    [
        ("steps:\n  - {id: a, type: service_call, service: s, dependencies: [b]}\n"
         "  - {id: b, type: service_call, service: s, dependencies: [a]}\n", ["cycle", "a -> b", "dependency_cycle"]),
        ("steps:\n  - {id: a, type: service_call, service: s}\n  - {id: a, type: service_call, service: s}\n",
         ["duplicate", "'a'", "/steps/1/id"]),
        ("steps:\n  - {id: a, type: service_call, service: s, dependencies: [missing]}\n",
         ["unknown step 'missing'", "/steps/0/dependencies/0"]),
    ],
    ids=["cycle", "duplicate-id", "missing-dependency"],
)
def test_validate_rejects_with_one_line_per_error(tmp_path: Path, pack: str, needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: bad\nname: Bad\nversion: '1'\n" + pack)
    result = cli("validate", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert all(line.startswith(str(path) + ":") for line in result.stderr.strip().splitlines())


def test_validate_json_lists_every_issue(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: bad\nversion: '1'\nsteps:\n  - {id: a, type: nope}\n")
    result = cli("validate", str(path), "--json")
    assert result.returncode == 1
    issues = json.loads(result.stdout)["issues"]
    assert {i["code"] for i in issues} == {"missing_field", "unknown_step_type"}
    assert all(i["line"] for i in issues)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["validate", "no/such/pack.yaml"], "no/such/pack.yaml: no such file"),
        (["run", "no/such/pack.yaml"], "no such file"),
        (["run", "examples/loan-approval.yaml", "--inputs", "{not json"], "not valid JSON"),
        (["run", "examples/loan-approval.yaml", "--inputs", "nothing-here.json"], "nothing-here.json: no such file"),
        (["run", "examples/loan-approval.yaml", "--inputs", '{"amount": "x"}'], "inputs/amount"),
        (["status", "00000000-0000-0000-0000-000000000000"], "no execution with id"),
        (["status", "not-a-uuid"], "no execution with id"),
        (["run", "examples/loan-approval.yaml", "--inputs", '{"a": NaN}'], "NaN is not valid JSON"),
        (["run", "examples/loan-approval.yaml", "--inputs", '{"a": 1, "a": 2}'], "appears twice"),
        (["run", "examples/loan-approval.yaml", "--inputs", "[" * 5000 + "]" * 5000], "inputs"),
        (["run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
          "--max-retries", "-1"], "options/max_retries"),
        (["run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
          "--timeout", "nan"], "options/timeout_seconds"),
        (["validate", "/dev/zero"], "larger than the limit"),
    ],
    ids=["missing-pack", "run-missing-pack", "inputs-not-json", "inputs-file-missing", "inputs-schema",
         "unknown-id", "malformed-id", "inputs-nan", "inputs-duplicate-key", "inputs-deep", "bad-max-retries",
         "bad-timeout", "endless-file"],
)
def test_bad_input_gets_one_line_and_exit_1(args: list[str], needle: str, tmp_path: Path) -> None:
    result = cli(*args, env={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_pack_that_is_not_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\nsteps:\n  - id: a\n    type: [service_call\n")
    result = cli("validate", str(path))
    assert result.returncode == 1
    assert f"{path}:" in result.stderr and "not valid YAML" in result.stderr


def test_status_does_not_create_a_database(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    result = cli("status", "00000000-0000-0000-0000-000000000000", env={"DATABASE_URL": f"sqlite+aiosqlite:///{path}"})
    assert result.returncode == 1 and "there is no database at" in result.stderr
    assert not path.exists()


def test_serve_with_direct_ingress_refuses_a_port_held_by_closed_connections() -> None:
    # Ray binds a direct-ingress replica without SO_REUSEADDR: a port whose server side
    # still holds connections in TIME_WAIT would fail the deployment after Ray started.
    # The command's probe binds the same way and says so at once.
    import socket

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: it is the one left in TIME_WAIT
            client.recv(1)
    result = cli("serve", "--port", str(port), "--ingress", "direct", env={"CORTX_API_KEYS": ""}, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"--port={port}" in result.stderr and "up to a minute for --ingress direct" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(demo_services: Any) -> None:
    result = cli("demo-services", "--port", str(demo_services.port), timeout=60)
    assert result.returncode == 1
    assert f"--port={demo_services.port}" in result.stderr and "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_line_before_ray_starts(tmp_path: Path) -> None:
    result = cli("run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
                 env={"DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") <= 2 and "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_ray_address_is_one_line_at_once(tmp_path: Path) -> None:
    # ray.init alone would keep trying for minutes: the subprocess timeout catches a hang.
    result = cli("run", "examples/loan-approval.yaml", "--inputs", "examples/loan-approval.inputs.json",
                 env={"RAY_ADDRESS": "127.0.0.1:1", "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "RAY_ADDRESS" in result.stderr and "127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") <= 2


def test_demo_services_refuse_a_port_out_of_range() -> None:
    result = cli("demo-services", "--port", "99999", timeout=30)
    assert result.returncode == 2 and "not a port number" in result.stderr


def test_run_refuses_a_task_function_off_the_allowlist_before_starting(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}", "CORTX_TASK_MODULES": ""}
    result = cli("run", "examples/batch-scoring.yaml", "--inputs", "examples/batch-scoring.inputs.json", env=env,
                 timeout=60)
    assert result.returncode == 1, result.stderr
    assert "examples.tasks" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.db").exists()  # refused before anything was stored


def test_recover_without_the_runs_registry_refuses_instead_of_failing_them(tmp_path: Path) -> None:
    import asyncio
    import uuid

    import yaml as _yaml

    from persistence.store import open_store

    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    pack = _yaml.safe_load((ROOT / "examples" / "loan-approval.yaml").read_text())

    async def unfinished() -> str:
        store = await open_store(url)
        try:
            record = await store.create_execution(
                execution_id=str(uuid.uuid4()), workflow_pack_id=pack["id"], version=pack["version"],
                pack_document=pack, inputs={}, options={}, status="running",
            )
            return record.execution_id
        finally:
            await store.close()

    execution_id = asyncio.run(unfinished())
    result = cli("recover", env={"DATABASE_URL": url, "CORTX_SERVICE_REGISTRY": ""}, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "CORTX_SERVICE_REGISTRY" in result.stderr and "compliance" in result.stderr
    assert "--services" in result.stderr and "Traceback" not in result.stderr
    record = asyncio.run(_status_of(url, execution_id))
    assert record == "running"  # untouched: it can still be recovered with the right registry


async def _status_of(url: str, execution_id: str) -> str:
    from persistence.store import open_store

    store = await open_store(url)
    try:
        return (await store.get_execution(execution_id)).status
    finally:
        await store.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_to_run_leaves_the_run_resumable_with_one_message(tmp_path: Path, signum: int) -> None:
    """SIGTERM (a container stop) ends `run` as Ctrl-C does: exit 130, one line saying how to
    resume, no traceback; the run stays `running` in the database for `recover`. So does
    SIGINT to a `run` started as a script's background job (SIGINT ignored at start)."""
    from serve_app.demo_services import Fault, start_in_thread

    demo = start_in_thread()
    demo.set_faults([Fault(path="/validation/v1/identity", delay_ms=30_000)])
    registry = tmp_path / "services.yaml"
    services = {name: {"base_url": f"{demo.url}/{name}"} for name in ("validation", "compliance", "ledger")}
    registry.write_text(yaml.safe_dump({"services": services}))
    db = f"sqlite+aiosqlite:///{tmp_path / 'term.db'}"
    env = {**os.environ, "DATABASE_URL": db, "CORTX_SERVICE_REGISTRY": str(registry)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "run", str(EXAMPLES / "sequential.yaml"),
         "--inputs", str(EXAMPLES / "sequential.inputs.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()  # "execution <id> started (...)"
        assert "started" in started, started
        execution_id = started.split()[1]
        step = proc.stdout.readline()  # "  -> step1 started": its call now waits 30 s upstream
        assert "step1 started" in step, step
        time.sleep(1.0)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        demo.stop()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if "Token authentication" not in line]
    assert lines == [line for line in lines if "Traceback" not in line] and len(lines) == 1, err
    assert f"execution {execution_id} is left unfinished" in lines[0] and "cortx-workflow recover" in lines[0]
    status = subprocess.run([sys.executable, "-m", "serve_app.cli", "status", execution_id, "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["status"] == "running"
