"""The ``cortx-workflow`` command line.

Commands::

    cortx-workflow validate PACK [--json] [--services FILE]
    cortx-workflow run PACK --inputs FILE_OR_JSON [--json] [--services FILE]
    cortx-workflow status EXECUTION_ID [--json]
    cortx-workflow schema
    cortx-workflow graph PACK
    cortx-workflow recover
    cortx-workflow demo-services [--port PORT] [--latency-ms MS] [--fail FAULT]...
    cortx-workflow serve [--host 127.0.0.1] [--port 8000] [--address RAY_ADDRESS] [--services FILE]

``serve`` runs the HTTP API (docs/api.md) on Ray Serve until Ctrl-C; API keys come from
``CORTX_API_KEYS``, and without keys it binds only a loopback address.

``demo-services`` takes ``--fault`` as another spelling of ``--fail``; FAULT is
``PATH=N[:STATUS][:delay=MS][:retry_after=S][:hang]`` (see ``cortx-workflow demo-services -h``).

``DATABASE_URL`` selects the database for all of them (a SQLite file in the working folder
by default). The service registry is ``--services``, else ``CORTX_SERVICE_REGISTRY``, else a
``services.yaml`` beside the pack.

Exit codes: 0 success (a run that completed); 1 bad input (unreadable or invalid pack,
bad inputs, unknown execution id, bad configuration, a busy port); 2 wrong usage; 3 a run
that ended ``failed`` or ``cancelled``; 69 ``serve`` stopped because the Ray under it went
away (its GCS or raylet exited, or it stopped answering); 70 an internal error (a bug: please report it). Errors are one line on stderr, never a traceback (set
``CORTX_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsl.errors import ConfigurationError, InputValidationError, PackLoadError, PackValidationError, WorkflowError

__all__ = ["main"]

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3
#: ``serve`` ended because the Ray under it went away (sysexits' EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortx-workflow", description="Run durable WorkflowPacks on Ray (CORTX Workflow Service)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a pack; print every problem with its place")
    validate.add_argument("pack", help="pack file (YAML or JSON)")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.add_argument("--services", help="service registry YAML (default: services.yaml beside the pack)")

    run = sub.add_parser("run", help="run a pack on Ray and wait for it")
    run.add_argument("pack", help="pack file (YAML or JSON)")
    run.add_argument("--inputs", default="{}", help="inputs: a JSON file or JSON text (default {})")
    run.add_argument("--json", action="store_true", help="print only the final execution record as JSON")
    run.add_argument("--services", help="service registry YAML (default: services.yaml beside the pack)")
    run.add_argument("--timeout", type=float, help="run timeout in s (options.timeout_seconds)")
    run.add_argument("--max-retries", type=int, help="retries for steps without a policy (options.max_retries)")
    run.add_argument("--isolation", choices=["shared", "dedicated"], help="host the run on a host of its own")

    status = sub.add_parser("status", help="print an execution's record from the database")
    status.add_argument("execution_id")
    status.add_argument("--json", action="store_true", help="print the record as JSON")

    sub.add_parser("schema", help="print the JSON Schema of the pack format (for editors and the Designer)")

    graph = sub.add_parser("graph", help="print a pack's step graph as Mermaid flowchart text")
    graph.add_argument("pack", help="pack file (YAML or JSON)")

    recover = sub.add_parser("recover", help="host again every run left unfinished (after a crash) and wait")
    recover.add_argument("--services", help="service registry YAML")
    recover.add_argument("--no-wait", action="store_true", help="hand the runs to hosts and exit")

    demo = sub.add_parser("demo-services", help="serve the demo Validation/Compliance/Ledger services")
    demo.add_argument("--port", type=_port, default=8700, help="port on 127.0.0.1 (default 8700)")
    demo.add_argument("--latency-ms", type=int, default=0, help="delay every business call by this many ms")
    demo.add_argument(
        "--fail",
        "--fault",
        dest="fail",
        action="append",
        default=[],
        metavar="FAULT",
        help=FAULT_HELP,
    )

    serve = sub.add_parser("serve", help="serve the HTTP API on Ray Serve until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local Ray)")
    serve.add_argument("--services", help="service registry YAML (default: CORTX_SERVICE_REGISTRY)")
    serve.add_argument("--namespace", default="cortx", help="Ray namespace of the ExecutionHosts (default cortx)")
    serve.add_argument(
        "--ingress", choices=["direct", "proxy"],
        default="proxy",
        help="who listens on --port: Serve's HTTP proxy (proxy, the default) or, with the local Ray this command "
             "starts, the API replica itself (direct: lower latency, experimental in Ray); see docs/api.md",
    )
    return parser


#: Help of the demo services' fault option, shared with ``python -m serve_app.demo_services``.
FAULT_HELP = (
    "inject a fault; repeatable; --fail and --fault are the same option. "
    "FAULT is PATH=N[:STATUS][:delay=MS][:retry_after=S][:hang] (options after STATUS in any order): "
    "the first N calls to PATH answer STATUS (default 503); delay=MS makes every call to PATH "
    "wait MS ms more; retry_after=S adds 'Retry-After: S' to the failures; hang makes calls to "
    "PATH never answer. E.g. /validation/v1/income=2:503, /validation/v1/item=0:200:delay=1000"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cortx-workflow`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        handler = {
            "validate": _validate,
            "run": _run,
            "status": _status,
            "schema": _schema,
            "graph": _graph,
            "recover": _recover,
            "demo-services": _demo,
            "serve": _serve,
        }[args.command]
        return handler(args)
    except PackValidationError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_INPUT
    except InputValidationError as exc:
        for issue in exc.issues:
            label = "" if issue.pointer.startswith("/options") else "inputs"
            print(f"{label}{issue.pointer or ''}: {issue.message}".lstrip("/"), file=sys.stderr)
        return EXIT_INPUT
    except WorkflowError as exc:
        print(f"error: {_unwrap(exc).message()}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cortx-workflow schema | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        cause = _unwrap(exc)
        if isinstance(cause, WorkflowError):
            print(f"error: {cause.message()}", file=sys.stderr)
            return EXIT_INPUT
        if os.environ.get("CORTX_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set CORTX_DEBUG=1 for details)", file=sys.stderr)
        return 70


# --- commands -------------------------------------------------------------------------------


def _unwrap(exc: BaseException) -> BaseException:
    """The error raised inside a Ray actor, without Ray's wrapper (and its long traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1 to 65535)")
    return value


def _registry_path(args: argparse.Namespace) -> str | None:
    if args.services:
        return args.services
    if os.environ.get("CORTX_SERVICE_REGISTRY"):
        return os.environ["CORTX_SERVICE_REGISTRY"]
    beside = Path(args.pack).resolve().parent / "services.yaml"
    return str(beside) if beside.is_file() else None


def _validate(args: argparse.Namespace) -> int:
    from actors.registry import ServiceRegistry
    from dsl.loader import read_text
    from dsl.validation import load_pack

    registry_path = _registry_path(args)
    services = ServiceRegistry.load(registry_path).names() if registry_path else None
    try:
        loaded = load_pack(read_text(args.pack), args.pack, services=services)
    except PackValidationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "issues": [i.to_dict() for i in exc.issues]}, indent=2))
            return EXIT_INPUT
        raise
    except PackLoadError as exc:
        if args.json:
            issue = {"code": exc.code, "pointer": "", "message": exc.reason, "line": exc.line, "column": exc.column}
            print(json.dumps({"valid": False, "issues": [issue]}, indent=2))
            return EXIT_INPUT
        raise
    from dsl.models import all_steps

    count = sum(1 for _ in all_steps(loaded.pack))
    warnings = [w.to_dict() for w in loaded.warnings]
    # Without a registry the service names cannot be checked; "valid" must not hide that.
    unchecked = services is None and any(step.type == "service_call" for _, step, _ in all_steps(loaded.pack))
    if args.json:
        print(json.dumps({"valid": True, "id": loaded.pack.id, "version": loaded.pack.version, "steps": count,
                          "services_checked": not unchecked, "issues": warnings}))
    else:
        for warning in loaded.warnings:
            print(warning.format(args.pack), file=sys.stderr)
        if unchecked:
            print(f"{args.pack}: note: service names not checked: no service registry (--services, "
                  "CORTX_SERVICE_REGISTRY, or services.yaml beside the pack)", file=sys.stderr)
        print(f"{args.pack}: valid ({loaded.pack.id} {loaded.pack.version}, {count} steps)")
    return EXIT_OK


def _read_inputs(value: str) -> dict[str, Any]:
    from dsl.loader import read_text

    text, label = value, "--inputs"
    if os.path.exists(value) or value.endswith(".json"):
        text, label = read_text(value), value
    elif not value.lstrip().startswith(("{", "[")):
        raise PackLoadError("--inputs", f"{value!r} is neither an existing file nor JSON text")
    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(text, parse_constant=refuse_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise PackLoadError(label, f"inputs are not valid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except ValueError as exc:
        raise PackLoadError(label, f"inputs are not valid JSON: {exc}") from None
    except RecursionError:
        raise PackLoadError(label, "inputs are nested too deeply") from None
    if not isinstance(data, dict):
        raise PackLoadError(label, "inputs must be a JSON object")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


async def _check_database(url: str) -> None:
    """Open (and migrate) the database once, so a bad DATABASE_URL fails before Ray starts."""
    from persistence.store import open_store

    store = await open_store(url, pool_size=1)
    await store.close()


def _run(args: argparse.Namespace) -> int:
    from actors.driver import WorkflowClient, coerce_pack

    client = WorkflowClient.from_env(registry_path=_registry_path(args))
    from dsl.task_spec import TaskPolicy

    # The same checks as WorkflowClient.start: services, and task functions on the allowlist.
    loaded = coerce_pack(args.pack, services=client.registry.names(), tasks=TaskPolicy(client.settings.task_modules))
    inputs = _read_inputs(args.inputs)
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout_seconds"] = args.timeout
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    if args.isolation:
        options["isolation"] = args.isolation
    from dsl.validation import validate_inputs, validate_options

    validate_inputs(loaded.pack, inputs)
    validate_options(options)
    asyncio.run(_check_database(client.settings.store_url))
    import signal

    import ray

    # SIGTERM ends the command like Ctrl-C: with a message, not a dump. Set after Ray is
    # joined: a local Ray's start installs its own SIGTERM handler (stop Ray, exit 1).
    # SIGINT is set again: a shell starts background jobs with it ignored.
    client.connect()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    execution_id = None
    try:
        execution_id = client.start(loaded, inputs, options=options)
        if not args.json:
            print(f"execution {execution_id} started ({loaded.pack.id} {loaded.pack.version})", flush=True)
            for event in client.watch(execution_id):
                line = _event_line(event)
                if line:
                    print(line, flush=True)
        record = client.wait(execution_id)
    except KeyboardInterrupt:
        if execution_id is not None:
            registry = client.settings.service_registry_path
            again = f"cortx-workflow recover --services {registry}" if registry else "cortx-workflow recover"
            print(
                f"interrupted: execution {execution_id} is left unfinished; '{again}' resumes it from its "
                "checkpoints (with the same DATABASE_URL)",
                file=sys.stderr,
            )
            return 130
        raise
    finally:
        ray.shutdown()
    _print_record(record, args.json)
    return EXIT_OK if record["status"] == "completed" else EXIT_RUN_FAILED


def _status(args: argparse.Namespace) -> int:
    from actors.driver import read_record
    from actors.settings import Settings
    from dsl.errors import ExecutionNotFoundError

    settings = Settings.from_env()
    database = settings.database_url
    if database.startswith("sqlite") and not Path(database.split(":///", 1)[-1]).exists():
        # Do not create an empty database just to look in it.
        print(f"error: no execution with id {args.execution_id!r}: there is no database at {database}", file=sys.stderr)
        return EXIT_INPUT
    try:
        record = asyncio.run(read_record(database, args.execution_id))
    except ExecutionNotFoundError as exc:
        print(f"error: {exc} in {_masked(database)}", file=sys.stderr)
        return EXIT_INPUT
    _print_record(record, args.json)
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from dsl.schema import pack_json_schema

    print(json.dumps(pack_json_schema(), indent=2))
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from dsl.graph import to_mermaid
    from dsl.loader import read_text
    from dsl.validation import load_pack

    print(to_mermaid(load_pack(read_text(args.pack), args.pack).pack), end="")
    return EXIT_OK


def _recover(args: argparse.Namespace) -> int:
    from actors.driver import WorkflowClient

    registry = args.services or os.environ.get("CORTX_SERVICE_REGISTRY") or None
    client = WorkflowClient.from_env(registry_path=registry)
    import ray

    try:
        resumed = client.resume_unfinished()
        print(f"resumed {len(resumed)} run(s)", flush=True)
        failed = 0
        if not args.no_wait:
            for execution_id in resumed:
                record = client.wait(execution_id)
                failed += record["status"] != "completed"
                print(f"{execution_id}: {record['status']}", flush=True)
    finally:
        if not args.no_wait:
            ray.shutdown()
    return EXIT_OK if not failed else EXIT_RUN_FAILED


def _demo(args: argparse.Namespace) -> int:
    from serve_app.demo_services import parse_fault, serve

    faults = [parse_fault(text) for text in args.fail]
    try:
        serve(port=args.port, latency_ms=args.latency_ms, faults=faults)
    except OSError as exc:
        raise ConfigurationError("--port", args.port, f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})") from None
    return EXIT_OK


def _free_port(host: str, avoid: int) -> int:
    """A TCP port free on ``host`` now, other than ``avoid`` (for Serve's proxy when the
    replica takes ``--port``: the kernel may hand out the port the command's own probe has
    just released, and the proxy would then take the replica's port)."""
    import socket

    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port != avoid:
            return port


def _serve(args: argparse.Namespace) -> int:
    import socket

    from actors.driver import WorkflowClient, ray_address
    from serve_app.auth import ApiSettings, is_loopback
    from serve_app.ingress import ingress_environment

    api_settings = ApiSettings.from_env()
    if not api_settings.keyring.enabled and not is_loopback(args.host):
        raise ConfigurationError(
            "--host", args.host,
            "CORTX_API_KEYS is not set (development mode, no authentication): the API binds only a loopback "
            "address such as 127.0.0.1; configure API keys to listen on other addresses",
        )
    if not 1 <= args.port <= 65535:
        raise ConfigurationError("--port", args.port, "must be a TCP port from 1 to 65535")
    local_ray = ray_address(args.address) == "local"
    if local_ray:
        # A local Ray: the API binds here, so a busy port is reported now, not as a hang.
        try:
            family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # Bind as the listener will: Serve's proxy sets SO_REUSEADDR, a direct-ingress
                # replica does not, so a port still in TIME_WAIT is refused here, not later.
                if args.ingress != "direct":
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((args.host, args.port))
        except OSError as exc:
            wait = " (closed connections hold it up to a minute for --ingress direct)" if args.ingress == "direct" else ""
            raise ConfigurationError(
                "--port", args.port, f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}){wait}"
            ) from None
        # Set before Ray starts: its processes inherit the environment.
        os.environ.update(ingress_environment(args.port if args.ingress == "direct" else None, os.environ))
    elif args.ingress == "direct":
        raise ConfigurationError(
            "--ingress", "direct",
            "needs the local Ray this command starts (Ray reads its direct-ingress settings when its processes "
            "start); with --address or RAY_ADDRESS use --ingress proxy",
        )
    registry = args.services or os.environ.get("CORTX_SERVICE_REGISTRY")
    client = WorkflowClient.from_env(registry_path=registry, ray_address=args.address, namespace=args.namespace)
    if not client.settings.state_persistence_enabled:
        raise ConfigurationError("STATE_PERSISTENCE_ENABLED", "false", "the HTTP API needs the shared database")
    import ray

    from serve_app.deployment import run_until_interrupted

    client.connect()
    try:
        gone = run_until_interrupted(
            client.settings, client.registry, api_settings, host=args.host, port=args.port,
            proxy_port=_free_port(args.host, avoid=args.port) if args.ingress == "direct" else None,
            namespace=args.namespace, resume=client.resume_unfinished,
            announce=lambda line: print(line, flush=True),
        )
    finally:
        ray.shutdown()
    if gone is not None:
        print(f"error: the API stopped because Ray is gone: {gone}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


# --- output ---------------------------------------------------------------------------------


def _masked(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)



def _event_line(event: dict[str, Any]) -> str | None:
    kind = event.get("type", "")
    key = event.get("step_key", "")
    attempt = event.get("attempt", 1)
    suffix = f" (attempt {attempt})" if attempt and attempt > 1 else ""
    if kind == "step.started":
        return f"  -> {key} started{suffix}"
    if kind == "step.completed":
        return f"  ok {key} completed in {event.get('duration_ms', 0)} ms{suffix}"
    if kind == "step.failed":
        return f"  !! {key} failed{suffix}: {event.get('error', '')}"
    if kind == "step.retrying":
        return f"  .. {key} retrying in {event.get('delay_ms', 0)} ms"
    if kind == "execution.resumed":
        return "  resumed from checkpoints"
    return None


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2, sort_keys=False))
        return
    print(f"execution {record['execution_id']}: {record['status']} in {record.get('duration_ms')} ms")
    print(f"  pack: {record.get('workflow_pack_id')} {record.get('version')}")
    print(f"  completed steps: {', '.join(record.get('completed_steps') or []) or '-'}")
    if record.get("error"):
        print(f"  error: {record['error']}")
    if record.get("outputs") is not None:
        print(f"  outputs: {json.dumps(record['outputs'])}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
