"""W1 (first cut): one run of N sequential trivial steps; ms per step beyond the steps' own work.

Usage::

    .venv/bin/python benchmarks/chain.py [--steps 50] [--database-url URL]

Starts the demo services in-process (their echo endpoint is the "trivial step"), a local
Ray, and runs a pack of N dependent ``service_call`` steps on one ExecutionHost. It prints
the figures and writes them as JSON to ``benchmarks/results/chain.json``. It also measures
the floor on the same machine: N dependent plain Ray tasks making the same HTTP call with no
checkpoint. Figures, not assertions: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chain_pack(steps: int) -> dict:
    body = [{"id": "s0", "type": "service_call", "service": "echo", "endpoint": "/step", "inputs": {"n": 0}}]
    for i in range(1, steps):
        body.append({
            "id": f"s{i}", "type": "service_call", "service": "echo", "endpoint": "/step",
            "dependencies": [f"s{i - 1}"], "inputs": {"n": f"${{ steps.s{i - 1}.outputs.body.n + 1 }}"},
        })
    return {"id": "bench-chain", "name": "chain", "version": "1", "steps": body,
            "outputs": {"n": f"${{ steps.s{steps - 1}.outputs.body.n }}"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=f"sqlite+aiosqlite:///{ROOT / 'benchmarks' / 'results' / 'bench.db'}")
    args = parser.parse_args()
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)

    import ray

    from actors import ServiceRegistry, Settings, WorkflowClient
    from actors.http_call import call_http
    from serve_app.demo_services import start_in_thread

    demo = start_in_thread(port=0)
    registry = ServiceRegistry.from_mapping({"services": {"echo": {"base_url": f"{demo.url}/echo"}}})
    client = WorkflowClient(Settings(database_url=args.database_url, execution_hosts=1), registry, namespace="bench")
    client.connect()

    @ray.remote(num_cpus=0.25)
    def plain(n: int) -> int:
        return call_http(method="POST", url=f"{demo.url}/echo/step", json_body={"n": n})["body"]["body"]["n"] + 1

    ray.get(plain.remote(0))  # warm a worker
    floor = []
    for _ in range(args.runs):
        started = time.perf_counter()
        value = 0
        for _ in range(args.steps):
            value = ray.get(plain.remote(value))
        floor.append((time.perf_counter() - started) * 1000 / args.steps)

    pack = chain_pack(args.steps)
    client.run(pack, {}, timeout_s=600)  # warm the host and its workers
    engine = []
    for _ in range(args.runs):
        started = time.perf_counter()
        record = client.run(pack, {}, timeout_s=600)
        assert record["status"] == "completed", record
        engine.append((time.perf_counter() - started) * 1000 / args.steps)

    result = {
        "workload": "W1 chain", "steps": args.steps, "runs": args.runs, "database": args.database_url.split(":")[0],
        "engine_ms_per_step_median": round(statistics.median(engine), 2),
        "floor_ms_per_step_median": round(statistics.median(floor), 2),
        "overhead_ms_per_step": round(statistics.median(engine) - statistics.median(floor), 2),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "benchmarks" / "results" / "chain.json").write_text(json.dumps(result, indent=2))
    ray.shutdown()
    demo.stop()


if __name__ == "__main__":
    main()
