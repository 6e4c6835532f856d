"""HTTP API latency under concurrent clients: execute (request to 202) and status.

Usage::

    .venv/bin/python benchmarks/api_latency.py [--clients 100] [--requests 20] [--rate R ...]
        [--saturate] [--database-url URL] [--ingress direct|proxy]

What it starts, as a deployment would run: the demo services in-process (the pack is one
trivial ``echo`` call), then ``cortx-workflow serve`` in a child process (a local Ray,
one API replica behind Ray Serve's proxy, the default, or answering on its own port with
``--ingress direct``; the ExecutionHosts) on PostgreSQL (a fresh database on
127.0.0.1:5432 unless ``--database-url`` is given), with API keys on.

For each ``--rate`` (requests per second per client; default 0.25, 0.5 and 1, that is 25,
50 and 100 requests a second from 100 clients), two phases, each with ``--clients``
clients, every client on its own HTTP connection, paced open loop (a client sends on
schedule, not when its previous answer came):

* ``execute``: each client sends ``--requests`` ``POST /v1/workflows/execute``; every
  request starts a run, so the engine runs those runs on the same cores meanwhile;
* ``status``: the same pattern of ``GET /v1/workflows/executions/{id}`` on those runs,
  after the runs have finished (``GET /v1/workflows/queue`` shows none in flight), so it
  measures the API alone;
* with ``--saturate``: both again in a closed loop (each client sends its next request as
  soon as the last one is answered), which shows the most the service answers per second
  and the latency at that load.

Latency is measured in the client from just before the request is sent to the end of the
answer, in ms; it prints p50/p90/p99/max and the rate achieved, and for each execute phase
the CPU time every process on the machine spent from the phase's first request until its
last run ended, per run, by group (hosts, service callers, API replica, Serve proxy,
PostgreSQL, Ray's own processes, this process...; from ``psutil``), and writes them as JSON to
``benchmarks/results/api_latency.json``. The load generator shares the machine's cores
with the service. Figures, not assertions: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACK_ID = "bench-echo"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summary(name: str, latencies_ms: list[float], errors: Counter[str], wall_s: float) -> dict[str, Any]:
    """One phase's figures; ``errors`` counts failed requests by kind (``"503 database_unavailable"``)."""
    return {
        "phase": name,
        "requests": len(latencies_ms),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": round(percentile(latencies_ms, 0.50), 2),
        "p90_ms": round(percentile(latencies_ms, 0.90), 2),
        "p99_ms": round(percentile(latencies_ms, 0.99), 2),
        "max_ms": round(max(latencies_ms, default=float("nan")), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2) if latencies_ms else None,
        "rate_per_s": round(len(latencies_ms) / wall_s, 1) if wall_s > 0 else None,
    }


def error_kind(answer: Any) -> str:
    """``"<status> <problem type>"`` of a failed answer (``"503 database_unavailable"``), or the status alone."""
    try:
        problem = answer.json()
    except ValueError:
        problem = None
    kind = problem.get("type") if isinstance(problem, dict) else None
    return f"{answer.status_code} {kind}" if kind else str(answer.status_code)


async def load(
    base_url: str, key: str, clients: int, requests: int, rate: float | None, make_request: Any
) -> tuple[list[float], Counter[str], float, list[Any]]:
    """Run ``clients`` clients of ``requests`` requests each; rate None = closed loop.

    Returns (latencies in ms, failed requests by kind: the status and the problem's
    ``type`` or the exception's class, wall time in s, answers' JSON bodies).
    """
    import httpx

    latencies: list[float] = []
    bodies: list[Any] = []
    errors: Counter[str] = Counter()

    # Every client is built before the clock starts: building an httpx client takes about
    # 25 ms of CPU here (its SSL context), and 100 of them built while the first requests
    # were in flight blocked this process's event loop for seconds, which the first
    # requests' latencies counted as the service's.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    https = [
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60)
        for _ in range(clients)
    ]
    began = time.monotonic()

    async def client(index: int) -> None:
        async with https[index] as http:
            start = began + (random.random() / rate if rate else 0.0)
            for i in range(requests):
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                method, path, body = make_request(index, i)
                sent = time.perf_counter()
                try:
                    answer = await http.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                if answer.status_code >= 400:
                    errors[error_kind(answer)] += 1
                else:
                    bodies.append(answer.json())

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors, time.monotonic() - began, bodies


def start_service(
    database_url: str, demo_url: str, port: int, key: str, workdir: Path, ingress: str = "proxy"
) -> subprocess.Popen[str]:
    registry = workdir / "services.yaml"
    registry.write_text(f"services:\n  echo:\n    base_url: {demo_url}/echo\n")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CORTX_SERVICE_REGISTRY": str(registry),
        "CORTX_API_KEYS": f"{key}:execute,read,deploy",
    }
    env.pop("RAY_ADDRESS", None)
    log = (workdir / "serve.log").open("w")  # a file, so a chatty server never blocks on a pipe
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port), "--ingress", ingress],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def wait_until_listening(proc: subprocess.Popen[str], log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "listening on" in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"cortx-workflow serve exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("cortx-workflow serve did not start in time")


def drain(base_url: str, key: str, timeout_s: float = 600.0) -> None:
    """Wait until no run is ``running`` or ``queued`` (``GET /v1/workflows/queue``)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        while time.monotonic() < deadline:
            queue = http.get("/v1/workflows/queue").json()
            if queue["running"] == 0 and queue["queued"] == 0:
                return
            time.sleep(0.5)
    raise RuntimeError(f"runs still in flight after {timeout_s:g} s: {queue}")


#: Process groups for the CPU accounting, by a fragment of the process title or name.
CPU_GROUPS = (
    ("ExecutionHost", "execution hosts"),
    ("ServiceCaller", "service callers"),
    ("ServeReplica", "API replica"),
    ("ProxyActor", "Serve proxy"),
    ("ServeController", "Serve controller"),
    ("ray::", "other Ray workers (step tasks, idle)"),
    ("raylet", "Ray's own processes"),
    ("gcs_server", "Ray's own processes"),
    ("postgres", "PostgreSQL"),
)


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every process on the machine: ``{pid: (group, s)}``.

    The group comes from the process title Ray gives its workers (``ray::ExecutionHost``,
    ``ray::ServiceCaller``...) or the executable's name; this process (the load generator
    and the demo services) is ``load generator and demo services``, any other Ray process (dashboard,
    monitors) ``Ray's own processes``, the rest ``other``.
    """
    import psutil

    me = os.getpid()
    snapshot: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        title = " ".join(info.get("cmdline") or []) or (info.get("name") or "")
        if info["pid"] == me:
            group = "load generator and demo services"
        else:
            group = next((label for fragment, label in CPU_GROUPS if fragment in title), None)
            if group is None:
                group = "Ray's own processes" if "/ray/" in title else "other"
        snapshot[info["pid"]] = (group, times.user + times.system)
    return snapshot


def cpu_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    requests: int) -> dict[str, float]:
    """CPU ms per request by process group between two :func:`cpu_snapshot` calls.

    A process that started in between counts whole; one that ended in between is lost.
    """
    spent: Counter[str] = Counter()
    for pid, (group, seconds) in after.items():
        spent[group] += seconds - before.get(pid, (group, 0.0))[1]
    per = {group: round(1000 * seconds / max(1, requests), 2) for group, seconds in spent.most_common()}
    per["total"] = round(sum(per.values()), 2)
    return per


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per phase")
    parser.add_argument("--rate", type=float, action="append",
                        help="requests per second per client (open loop); repeat for several loads (default 0.25, 0.5, 1)")
    parser.add_argument("--saturate", action="store_true", help="also run closed-loop phases")
    parser.add_argument("--database-url", help="default: a fresh PostgreSQL database on 127.0.0.1:5432")
    parser.add_argument("--ingress", choices=["direct", "proxy"], default="proxy",
                        help="cortx-workflow serve --ingress: Serve's proxy (its default) or the replica itself")
    args = parser.parse_args()
    rates = args.rate or [0.25, 0.5, 1.0]

    from serve_app.demo_services import start_in_thread

    from benchmarks.suite import fresh_database  # one helper for every benchmark's database

    if args.database_url:
        database_url, drop = args.database_url, lambda: None
    else:
        database_url, _dsn, drop = fresh_database()
    demo = start_in_thread()
    key = "bench-" + secrets.token_urlsafe(24)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_service(database_url, demo.url, port, key, Path(tmp), args.ingress)
        try:
            wait_until_listening(proc, Path(tmp) / "serve.log")
            import httpx

            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
                pack = {"id": PACK_ID, "name": "Echo", "version": "1.0.0",
                        "steps": [{"id": "ping", "type": "service_call", "service": "echo", "endpoint": "/v1/ping",
                                   "inputs": {"n": 1}}]}
                assert http.post("/v1/packs", json=pack).status_code in (200, 201)
                for _ in range(20):  # warm up: hosts, connection pools, Ray workers
                    assert http.post("/v1/workflows/execute", json={"workflow_pack_id": PACK_ID}).status_code == 202
            time.sleep(2)

            execute = lambda _c, _i: ("POST", "/v1/workflows/execute", {"workflow_pack_id": PACK_ID})  # noqa: E731
            phases: list[tuple[str, float | None]] = [(f"{rate * args.clients:g}/s", rate) for rate in rates]
            if args.saturate:
                phases.append(("closed loop", None))
            for mode, rate in phases:
                drain(base_url, key)
                cpu_before = cpu_snapshot()
                lat, errors, wall, bodies = asyncio.run(load(base_url, key, args.clients, args.requests, rate, execute))
                results.append(summary(f"execute {mode}", lat, errors, wall))
                ids = [b["execution_id"] for b in bodies]

                def status(c: int, i: int, ids: list[str] = ids) -> tuple[str, str, None]:
                    return "GET", f"/v1/workflows/executions/{ids[(c * args.requests + i) % len(ids)]}", None

                # The runs this phase started finish first: the status phase measures the API,
                # not the API sharing 2 cores with hundreds of runs (the execute phase does that).
                drain(base_url, key)
                # CPU from the phase's first request until its last run ended, per run.
                results[-1]["cpu_ms_per_run"] = cpu_per_request(cpu_before, cpu_snapshot(), len(ids))
                lat, errors, wall, _ = asyncio.run(load(base_url, key, args.clients, args.requests, rate, status))
                results.append(summary(f"status {mode}", lat, errors, wall))
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            demo.stop()
            drop()

    report = {
        "benchmark": "api_latency",
        "clients": args.clients,
        "ingress": args.ingress,
        "requests_per_client": args.requests,
        "rates_per_client_per_s": rates,
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(f"ingress: {args.ingress}")
    print(f"{'phase':<24}{'n':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>9}")
    for r in results:
        print(f"{r['phase']:<24}{r['requests']:>7}{r['errors']:>5}{r['p50_ms']:>9}{r['p90_ms']:>9}"
              f"{r['p99_ms']:>9}{r['max_ms']:>9}{r['rate_per_s']:>9}")
        if r["error_kinds"]:
            print(f"  errors by kind: {r['error_kinds']}")
        if r.get("cpu_ms_per_run"):
            print("  CPU ms per run: " + ", ".join(f"{group} {ms:g}" for group, ms in r["cpu_ms_per_run"].items()))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api_latency.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
