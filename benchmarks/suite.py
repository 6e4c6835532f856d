"""The benchmark suite: W1..W7 and their floors in one command; prints a table, writes JSON.

Usage::

    .venv/bin/python benchmarks/suite.py [--quick] [--only W1,W3] [--database-url URL]
        [--hosts 2] [--w7-runs 10000] [--profile-dir DIR] [--no-http] [--no-memory-store]

What it does, in one process and one local Ray (started here, without the dashboard):

* a fresh PostgreSQL database on 127.0.0.1:5432 (``cortx_suite_<random>``, dropped at the
  end) unless ``--database-url`` names one;
* the engine with checkpoints on (``WorkflowClient`` on that database) and once more with
  persistence off (``STATE_PERSISTENCE_ENABLED=false``: each host keeps its runs in memory),
  each in its own Ray namespace with ``--hosts`` shared ExecutionHosts;
* the floors, measured in the same run: plain Ray tasks doing the same work with no
  durability, and the same tasks plus one PostgreSQL commit (autocommit ``INSERT`` of a small
  JSONB row over a pool of 10 connections) per step.

The trivial step is the same everywhere: ``examples.tasks:add_one`` (``n + 1``), a ``task``
step with the ``task`` step's default ``num_cpus: 1``; the floors use a Ray task with the same
body and ``num_cpus=1``. Engine settings for the suite:
``CORTX_MAX_CONCURRENT_EXECUTIONS`` 1,000,000 (admission never queues),
``MAX_PARALLEL_STEPS`` 100 (so W2's 20 and W5's 100 can be in flight in one run),
``CORTX_TASK_MODULES=examples.tasks``.

Workloads (``--quick`` sizes in brackets):

* W1 chain: one run of 50 dependent steps, 3 runs after a warm-up; ms per step from the
  run's record (``started_at`` to ``completed_at``) and from the client's wall time.
* W2 fan-out: one run of 20 independent steps and a join step that depends on all of them.
* W3 throughput: 100 runs (each a chain of 10) submitted at once (all ``submit`` calls sent
  before any answer is awaited); aggregate steps per second, p50/p99 run latency (from the
  moment the batch was sent to each run's ``completed_at``), peak RSS of all processes.
* W4 start: ``WorkflowClient.start`` of a one-step pack, one at a time, 200 times [50]; and
  HTTP ``POST /v1/workflows/execute`` with one client (``benchmarks/api_latency.py
  --clients 1``, which starts ``cortx-workflow serve`` in a child process before this
  suite starts its Ray), once through Serve's proxy and once with direct ingress.
* W5 loop: one for-each over 10,000 [1,000] items, ``max_concurrency: 100``, body one step;
  then 100,000 [5,000] items; items per second and peak RSS (all processes, and the host).
  A run still going after ``--w5-limit-s`` s (default 300) is reported with the items it
  completed by then (its checkpoints) and cancelled.
* W6 recovery: 100 runs of a 20-step chain in flight; Ray shut down and started again,
  ``WorkflowClient.resume_unfinished()``; seconds until every run is claimed again (its
  ``owner_epoch`` moved) and until every run completed (outputs checked).
* W7 concurrency: 10,000 [500] runs started at once, each one ``service_call`` to the demo
  services' echo endpoint with a 10 s delay; run in a fresh Ray so that the baseline is
  Ray idle; it samples the runs in flight, the calls the service has received, and RSS for
  ``--w7-seconds`` s, stops early (with a message) when the machine's available memory
  falls under 3 GB, then shuts Ray down (the runs are left in the database, which is dropped).

Memory is the sum of RSS over this process and all its descendants (Ray's GCS, raylet,
workers and the hosts), sampled every 0.2 s during the workload; shared pages are counted
once per process, so the sum overstates what the machine lost. PostgreSQL's own processes
are not counted (a shared server).

With ``--profile-dir DIR``, W1 and W3 (durable) are recorded with ``py-spy record`` on each
ExecutionHost process (collapsed stacks, ``DIR/<workload>-host<n>.txt``); summarise them with
``benchmarks/profile_summary.py``.

Figures, not assertions: nothing here fails on speed. Results go to
``benchmarks/results/suite.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TRIVIAL = "examples.tasks:add_one"
STEP_CPUS = 1.0
"""Ray CPUs of one trivial step, engine and floors alike: the ``task`` step's default (1). With
fractions Ray keeps more workers than CPUs busy and kills the extra ones when idle, so each
burst pays worker start-ups (about 0.5 s each) in the engine and the floors alike."""
GB = 1024**3
MIN_AVAILABLE_BYTES = 3 * GB

# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fresh_database() -> tuple[str, str, Callable[[], None]]:
    """A new database: (SQLAlchemy URL, asyncpg DSN, drop function)."""
    import asyncpg

    name = f"cortx_suite_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    return (
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
        f"postgresql://postgres@127.0.0.1:5432/{name}",
        lambda: asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')),
    )


class MemorySampler:
    """Samples the summed RSS of this process and all its descendants every ``interval`` s."""

    def __init__(self, interval: float = 0.2, extra_pids: Callable[[], list[int]] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.host_peak = 0
        self._host_pids = extra_pids or (lambda: [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def total_rss(self) -> int:
        psutil = self._psutil
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _hosts_rss(self) -> int:
        total = 0
        for pid in self._host_pids():
            try:
                total += self._psutil.Process(pid).memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.total_rss()))
            self.host_peak = max(self.host_peak, self._hosts_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self.baseline = self.total_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max([self.baseline, *(s for _, s in self.samples)])


def gb(value: float) -> float:
    return round(value / GB, 3)


# --------------------------------------------------------------------------- packs


def task_step(step_id: str, n: Any, deps: list[str] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "type": "task", "function": TRIVIAL, "inputs": {"n": n}}  # num_cpus 1
    if deps:
        step["dependencies"] = deps
    return step


def chain_pack(steps: int, pack_id: str = "bench-chain") -> dict[str, Any]:
    body = [task_step("s0", 0)]
    for i in range(1, steps):
        body.append(task_step(f"s{i}", f"${{ steps.s{i - 1}.outputs }}", [f"s{i - 1}"]))
    return {"id": pack_id, "name": "chain", "version": "1", "steps": body,
            "outputs": {"n": f"${{ steps.s{steps - 1}.outputs }}"}}


def fanout_pack(width: int) -> dict[str, Any]:
    body = [task_step(f"p{i}", i) for i in range(width)]
    total = " + ".join(f"steps.p{i}.outputs" for i in range(width))
    body.append(task_step("join", f"${{ {total} }}", [f"p{i}" for i in range(width)]))
    return {"id": "bench-fanout", "name": "fan-out", "version": "1", "steps": body,
            "outputs": {"n": "${ steps.join.outputs }"}}


def loop_pack(items: int, concurrency: int = 100) -> dict[str, Any]:
    return {
        "id": "bench-loop", "name": "loop", "version": "1",
        "steps": [{
            "id": "each", "type": "loop", "collection": f"range({items})", "max_iterations": items,
            "max_concurrency": concurrency, "steps": [task_step("add", "${ item }")],
        }],
        "outputs": {"items": "${ length(steps.each.outputs) }"},
    }


def slow_call_pack(timeout_s: float = 600) -> dict[str, Any]:
    return {
        "id": "bench-slow", "name": "slow call", "version": "1",
        "steps": [{"id": "call", "type": "service_call", "service": "echo", "endpoint": "/slow",
                   "inputs": {"n": 1}, "timeout_seconds": timeout_s,
                   "on_error": {"retry": {"max_attempts": 1}}}],
    }


# --------------------------------------------------------------------------- the engine


class Engine:
    """A ``WorkflowClient`` and helpers to submit many runs at once and wait for them."""

    def __init__(self, settings: Any, registry: Any, namespace: str) -> None:
        from actors import WorkflowClient

        self.client = WorkflowClient(settings, registry, namespace=namespace)
        self.settings = settings
        self._documents: dict[str, dict[str, Any]] = {}

    def document(self, pack: dict[str, Any]) -> dict[str, Any]:
        from actors.driver import coerce_pack
        from dsl.task_spec import TaskPolicy  # noqa: F401 - the client builds it

        key = json.dumps(pack, sort_keys=True)
        if key not in self._documents:
            loaded = coerce_pack(pack, services=self.client.registry.names(), tasks=self.client._task_policy())
            self._documents[key] = loaded.pack.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._documents[key]

    def hosts(self) -> list[Any]:
        import ray

        from actors.host import get_host, shared_host_name

        handles = []
        for index in range(self.settings.execution_hosts):
            # find an execution id that hashes to this host, so get_host creates it
            import zlib

            while True:
                eid = str(uuid.uuid4())
                if zlib.crc32(eid.encode()) % self.settings.execution_hosts == index:
                    break
            handles.append(get_host(self.settings, self.client.registry, execution_id=eid,
                                    namespace=self.client.namespace))
            assert shared_host_name(index)
        ray.get([h.ready.remote() for h in handles])
        return handles

    def host_pids(self) -> list[int]:
        import ray

        return [info["pid"] for info in ray.get([h.info.remote() for h in self.hosts()])]

    def submit_many(self, pack: dict[str, Any], count: int, inputs: dict[str, Any] | None = None) -> tuple[list[str], float]:
        """Send ``count`` submits at once (validated once, as ``start`` would); return ids and the send time."""
        import ray

        document = self.document(pack)
        ids, refs = [], []
        sent_at = time.time()
        for _ in range(count):
            eid = str(uuid.uuid4())
            host = self.client._host(eid, "shared")
            self.client._hosts[eid] = host
            refs.append(host.submit.remote({"pack": document, "inputs": inputs or {}, "options": {},
                                            "execution_id": eid, "isolation": "shared"}))
            ids.append(eid)
        ray.get(refs)
        return ids, sent_at

    def wait_all(self, ids: list[str], timeout_s: float = 1800) -> list[dict[str, Any]]:
        import ray

        # A host answers None early for a run it does not hold yet (an admission pass of
        # another host admitted it and the hand-over is in flight): ask again.
        deadline = time.monotonic() + timeout_s
        finals: dict[str, dict[str, Any]] = {}
        while len(finals) < len(ids):
            left = [eid for eid in ids if eid not in finals]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(left)} runs did not end within {timeout_s} s")
            answers = ray.get([self.client._hosts[eid].wait.remote(eid, min(remaining, 60.0)) for eid in left])
            finals.update({eid: f for eid, f in zip(left, answers, strict=True) if f is not None})
        return [finals[eid] for eid in ids]


def check_completed(records: list[dict[str, Any]], expect: Any = None) -> None:
    bad = [rec for rec in records if rec["status"] != "completed" or (expect is not None and rec["outputs"] != expect)]
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not complete as expected; first: {json.dumps(bad[0])[:800]}")


def engine_ms(record: dict[str, Any]) -> float:
    return (parse_ts(record["completed_at"]) - parse_ts(record["started_at"])) * 1000


# --------------------------------------------------------------------------- floors


def make_plain_task() -> Any:
    import ray

    @ray.remote(num_cpus=STEP_CPUS, max_retries=0)
    def plain_add_one(n: int) -> int:
        return n + 1

    return plain_add_one


class Floor:
    """Plain Ray tasks with the trivial body, optionally one PostgreSQL commit per step."""

    def __init__(self, dsn: str | None) -> None:
        self.task = make_plain_task()
        self.dsn = dsn

    async def _pool(self) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(self.dsn, min_size=10, max_size=10)
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS floor_checkpoints (run text, step text, outputs jsonb,"
                               " ended_at timestamptz DEFAULT now(), PRIMARY KEY (run, step))")
        return pool

    async def _commit(self, pool: Any, run: str, step: str, value: Any) -> None:
        if pool is not None:
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO floor_checkpoints (run, step, outputs) VALUES ($1, $2, $3)"
                                   " ON CONFLICT DO NOTHING", run, step, json.dumps({"n": value}))

    async def _chain(self, pool: Any, steps: int) -> tuple[int, float]:
        run, value = uuid.uuid4().hex, 0
        for i in range(steps):
            value = await self.task.remote(value)
            await self._commit(pool, run, f"s{i}", value)
        return value, time.time()

    def run(self, body: Callable[[Any], Any], durable: bool) -> Any:
        async def main() -> Any:
            pool = await self._pool() if durable else None
            try:
                return await body(pool)
            finally:
                if pool is not None:
                    await pool.close()

        return asyncio.run(main())

    def chain_ms_per_step(self, steps: int, durable: bool, repeats: int = 3) -> float:
        async def body(pool: Any) -> float:
            await self._chain(pool, 5)  # warm
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                value, _ = await self._chain(pool, steps)
                assert value == steps
                times.append((time.perf_counter() - started) * 1000 / steps)
            return statistics.median(times)

        return self.run(body, durable)

    def chain_ray_get_ms(self, steps: int) -> float:
        import ray

        ray.get(self.task.remote(0))
        started = time.perf_counter()
        value = 0
        for _ in range(steps):
            value = ray.get(self.task.remote(value))
        return (time.perf_counter() - started) * 1000 / steps

    def fanout_ms(self, width: int, durable: bool, repeats: int = 3) -> float:
        async def once(pool: Any) -> float:
            run = uuid.uuid4().hex
            started = time.perf_counter()

            async def member(i: int) -> int:
                value = await self.task.remote(i)
                await self._commit(pool, run, f"p{i}", value)
                return value

            values = await asyncio.gather(*(member(i) for i in range(width)))
            value = await self.task.remote(sum(values))
            await self._commit(pool, run, "join", value)
            return (time.perf_counter() - started) * 1000

        async def body(pool: Any) -> float:
            await once(pool)
            return statistics.median([await once(pool) for _ in range(repeats)])

        return self.run(body, durable)

    def throughput(self, runs: int, steps: int, durable: bool) -> dict[str, Any]:
        async def body(pool: Any) -> dict[str, Any]:
            # Warm-up: the same burst once, unmeasured. The first burst makes Ray start its
            # workers (about 2 s here), which a floor measured cold would count as its own cost.
            await asyncio.gather(*(self._chain(pool, steps) for _ in range(runs)))
            started = time.time()
            ends = await asyncio.gather(*(self._chain(pool, steps) for _ in range(runs)))
            latencies = [(end - started) * 1000 for _, end in ends]
            wall = max(end for _, end in ends) - started
            return {"steps_per_s": r(runs * steps / wall, 0), "p50_ms": r(percentile(latencies, 0.5), 0),
                    "p99_ms": r(percentile(latencies, 0.99), 0), "wall_s": r(wall)}

        return self.run(body, durable)

    def loop(self, items: int, concurrency: int, durable: bool) -> dict[str, Any]:
        async def body(pool: Any) -> dict[str, Any]:
            run = uuid.uuid4().hex
            gate = asyncio.Semaphore(concurrency)

            async def item(i: int) -> None:
                async with gate:
                    value = await self.task.remote(i)
                    await self._commit(pool, run, f"each[{i}]/add", value)

            # Warm-up, unmeasured: one burst of `concurrency` tasks makes Ray start its workers.
            await asyncio.gather(*(self.task.remote(i) for i in range(concurrency)))
            started = time.perf_counter()
            # bounded: `concurrency` workers, not one coroutine per item
            queue = iter(range(items))

            async def worker() -> None:
                for i in queue:
                    await item(i)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
            return {"items_per_s": r(items / wall, 0), "wall_s": r(wall)}

        return self.run(body, durable)


# --------------------------------------------------------------------------- profiles


class Profiler:
    """``py-spy record`` on the host processes for the length of a ``with`` block."""

    def __init__(self, directory: Path | None, name: str, pids: list[int]) -> None:
        self.directory, self.name, self.pids = directory, name, pids
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.directory is None or not Path(exe).exists():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        for n, pid in enumerate(self.pids):
            out = self.directory / f"{self.name}-host{n}.txt"
            self.procs.append(subprocess.Popen(
                [exe, "record", "-p", str(pid), "-o", str(out), "--format", "raw", "-r", os.environ.get("SUITE_PYSPY_RATE", "200"), "--nonblocking",
                 *(["--idle"] if os.environ.get("SUITE_PYSPY_IDLE") else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # let py-spy attach
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


# --------------------------------------------------------------------------- workloads


def w1(engines: dict[str, Engine], floor: Floor, quick: bool, profile_dir: Path | None) -> dict[str, Any]:
    steps = 50
    pack = chain_pack(steps)
    out: dict[str, Any] = {"steps": steps}
    out["floor_ray_ms_per_step"] = r(floor.chain_ms_per_step(steps, durable=False))
    out["floor_ray_get_ms_per_step"] = r(floor.chain_ray_get_ms(steps))
    out["floor_ray_pg_ms_per_step"] = r(floor.chain_ms_per_step(steps, durable=True))
    for mode, engine in engines.items():
        client = engine.client
        check_completed([client.run(pack, {}, timeout_s=600)], {"n": steps})  # warm: hosts, workers, pools
        pids = engine.host_pids() if mode == "durable" else []
        walls, engines_ms = [], []
        with Profiler(profile_dir, "w1", pids):
            for _ in range(3 if quick else 5):
                started = time.perf_counter()
                record = client.run(pack, {}, timeout_s=600)
                walls.append((time.perf_counter() - started) * 1000 / steps)
                check_completed([record], {"n": steps})
                engines_ms.append(engine_ms(record) / steps)
        out[mode] = {"ms_per_step": r(statistics.median(engines_ms)), "wall_ms_per_step": r(statistics.median(walls)),
                     "beyond_ray_floor_ms": r(statistics.median(engines_ms) - out["floor_ray_ms_per_step"])}
        log(f"W1 {mode}: {out[mode]}")
    return out


def w2(engines: dict[str, Engine], floor: Floor, quick: bool) -> dict[str, Any]:
    width = 20
    pack = fanout_pack(width)
    expect = {"n": sum(range(1, width + 1)) + 1}
    out: dict[str, Any] = {"width": width}
    out["floor_ray_ms"] = r(floor.fanout_ms(width, durable=False))
    out["floor_ray_pg_ms"] = r(floor.fanout_ms(width, durable=True))
    for mode, engine in engines.items():
        client = engine.client
        check_completed([client.run(pack, {}, timeout_s=600)], expect)
        walls, eng = [], []
        for _ in range(3 if quick else 5):
            started = time.perf_counter()
            record = client.run(pack, {}, timeout_s=600)
            walls.append((time.perf_counter() - started) * 1000)
            check_completed([record], expect)
            eng.append(engine_ms(record))
        out[mode] = {"ms": r(statistics.median(eng)), "wall_ms": r(statistics.median(walls))}
        log(f"W2 {mode}: {out[mode]}")
    return out


def w3(engines: dict[str, Engine], floor: Floor, quick: bool, profile_dir: Path | None) -> dict[str, Any]:
    runs, steps = 100, 10
    pack = chain_pack(steps, "bench-throughput")
    out: dict[str, Any] = {"runs": runs, "steps_per_run": steps}
    for durable in (False, True):
        with MemorySampler() as mem:
            result = floor.throughput(runs, steps, durable)
        result["peak_rss_gb"] = gb(mem.peak)
        result["peak_above_baseline_gb"] = gb(mem.peak - mem.baseline)
        out["floor_ray_pg" if durable else "floor_ray"] = result
        log(f"W3 floor {'ray+pg' if durable else 'ray'}: {result}")
    for mode, engine in engines.items():
        engine.wait_all(engine.submit_many(pack, runs)[0])  # warm, same width as the floor's warm-up
        pids = engine.host_pids()
        with MemorySampler(extra_pids=lambda p=pids: p) as mem, Profiler(
            profile_dir if mode == "durable" else None, "w3", pids
        ):
            ids, sent_at = engine.submit_many(pack, runs)
            submitted = time.time()
            records = engine.wait_all(ids)
        check_completed(records, {"n": steps})
        ends = [parse_ts(rec["completed_at"]) for rec in records]
        latencies = [(end - sent_at) * 1000 for end in ends]
        wall = max(ends) - sent_at
        out[mode] = {
            "steps_per_s": r(runs * steps / wall, 0), "p50_ms": r(percentile(latencies, 0.5), 0),
            "p99_ms": r(percentile(latencies, 0.99), 0), "wall_s": r(wall), "submit_all_s": r(submitted - sent_at),
            "peak_rss_gb": gb(mem.peak), "peak_above_baseline_gb": gb(mem.peak - mem.baseline),
            "hosts_peak_rss_gb": gb(mem.host_peak),
        }
        out[mode]["peak_above_floor_ray_gb"] = r(out[mode]["peak_rss_gb"] - out["floor_ray"]["peak_rss_gb"], 3)
        log(f"W3 {mode}: {out[mode]}")
    return out


def w4(engines: dict[str, Engine], quick: bool) -> dict[str, Any]:
    count = 50 if quick else 200
    pack = chain_pack(1, "bench-start")
    out: dict[str, Any] = {"starts": count}
    for mode, engine in engines.items():
        client = engine.client
        ids = [client.start(pack, {}) for _ in range(10)]  # warm
        times = []
        for _ in range(count):
            started = time.perf_counter()
            ids.append(client.start(pack, {}))
            times.append((time.perf_counter() - started) * 1000)
        engine.wait_all(ids)
        out[mode] = {"p50_ms": r(statistics.median(times)), "p99_ms": r(percentile(times, 0.99))}
        log(f"W4 driver {mode}: {out[mode]}")
    return out


HTTP_INGRESSES = ("proxy", "direct")
"""``cortx-workflow serve --ingress`` values W4 measures over HTTP, each a table row."""


def w4_http(quick: bool, ingress: str) -> dict[str, Any]:
    """HTTP execute, one client, via benchmarks/api_latency.py (its own service and database).

    ``ingress``: ``cortx-workflow serve --ingress`` (``proxy`` or ``direct``).
    """
    target = RESULTS / "api_latency.json"
    backup = target.read_bytes() if target.exists() else None
    # 2 a second: each request is alone in the service (the goal is for one client at a time)
    requests, rate = (40, 2.0) if quick else (100, 2.0)
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "api_latency.py"), "--clients", "1",
             "--requests", str(requests), "--rate", str(rate), "--ingress", ingress],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            return {"error": f"api_latency.py exited {proc.returncode}: {proc.stderr[-800:]}"}
        report = json.loads(target.read_text())
    finally:
        if backup is not None:
            target.write_bytes(backup)
    execute = next(p for p in report["results"] if p["phase"].startswith("execute"))
    status = next(p for p in report["results"] if p["phase"].startswith("status"))
    return {"requests": requests, "rate_per_s": rate, "execute": execute, "status": status}


def w5(engines: dict[str, Engine], floor: Floor, quick: bool, limit_s: float, dsn: str) -> dict[str, Any]:
    """One for-each loop per size; a run not done within ``limit_s`` s is measured so far, then cancelled."""
    import asyncpg

    sizes = (1_000, 5_000) if quick else (10_000, 100_000)
    out: dict[str, Any] = {"sizes": list(sizes), "max_concurrency": 100, "limit_s": limit_s}
    out["floor_ray"] = floor.loop(sizes[0], 100, durable=False)
    out["floor_ray_pg"] = floor.loop(sizes[0], 100, durable=True)
    log(f"W5 floors: {out['floor_ray']} {out['floor_ray_pg']}")

    async def done_items(execution_id: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM step_checkpoints WHERE execution_id = $1 AND status = 'completed'"
                " AND step_key LIKE 'each[%'", execution_id))
        finally:
            await conn.close()

    for mode, engine in engines.items():
        pids = engine.host_pids()
        out[mode] = {}
        for items in sizes:
            if mode != "durable" and items != sizes[0]:
                continue
            client = engine.client
            with MemorySampler(extra_pids=lambda p=pids: p) as mem:
                started = time.perf_counter()
                eid = client.start(loop_pack(items), {})
                record = client.wait(eid, timeout_s=limit_s)
                wall = time.perf_counter() - started
            entry: dict[str, Any] = {"wall_s": r(wall), "peak_rss_gb": gb(mem.peak),
                                     "peak_above_baseline_gb": gb(mem.peak - mem.baseline),
                                     "hosts_peak_rss_gb": gb(mem.host_peak)}
            if record["status"] == "completed":
                check_completed([record], {"items": items})
                entry["items_per_s"] = r(items / wall, 0)
            else:
                done = asyncio.run(done_items(eid)) if mode == "durable" else None
                entry.update(finished=False, items_done=done, items_per_s=r((done or 0) / wall, 0),
                             note=f"not finished within {limit_s:g} s; cancelled")
                client.cancel(eid)
            out[mode][str(items)] = entry
            log(f"W5 {mode} {items}: {entry}")
    return out


def w6(engine: Engine, dsn: str, start_ray: Callable[[], None], quick: bool) -> dict[str, Any]:
    import asyncpg
    import ray

    runs, steps = 100, 20
    pack = chain_pack(steps, "bench-recovery")
    ids, _ = engine.submit_many(pack, runs)

    async def query(sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started_runs = asyncio.run(query(
            "SELECT count(DISTINCT execution_id) FROM step_checkpoints WHERE execution_id = ANY($1::text[])", ids))
        if started_runs >= runs:
            break
        time.sleep(0.1)
    done_before = asyncio.run(query(
        "SELECT count(*) FROM executions WHERE execution_id = ANY($1::text[]) AND status <> 'running'", ids))
    checkpoints_before = asyncio.run(query(
        "SELECT count(*) FROM step_checkpoints WHERE execution_id = ANY($1::text[])", ids))
    log(f"W6: {runs} runs in flight ({done_before} already ended, {checkpoints_before} checkpoints); shutting Ray down")
    ray.shutdown()
    t0 = time.monotonic()
    start_ray()
    t_ray = time.monotonic() - t0
    resumed = engine.client.resume_unfinished()
    t_resume_call = time.monotonic() - t0
    claimed_at = completed_at = None
    while time.monotonic() - t0 < 600:
        claimed = asyncio.run(query(
            "SELECT count(*) FROM executions WHERE execution_id = ANY($1::text[]) AND (owner_epoch >= 2 OR status <> 'running')",
            ids))
        if claimed_at is None and claimed >= runs:
            claimed_at = time.monotonic() - t0
        ended = asyncio.run(query(
            "SELECT count(*) FROM executions WHERE execution_id = ANY($1::text[]) AND status <> 'running'", ids))
        if ended >= runs:
            completed_at = time.monotonic() - t0
            break
        time.sleep(0.05)
    for eid in ids:  # handles from before the restart are stale
        engine.client._hosts[eid] = engine.client._host(eid, "shared")
    records = engine.wait_all(ids)
    check_completed(records, {"n": steps})
    out = {"runs": runs, "steps_per_run": steps, "ended_before_shutdown": done_before,
           "checkpoints_before_shutdown": checkpoints_before, "resumed_by_call": len(resumed),
           "ray_init_s": r(t_ray), "resume_unfinished_returned_s": r(t_resume_call),
           "all_claimed_s": r(claimed_at), "all_completed_s": r(completed_at)}
    log(f"W6: {out}")
    return out


def calls_in_service(samples: list[dict[str, Any]], call_s: float = 10.0) -> list[int]:
    """Calls in progress at the service at each sample: calls received in the last ``call_s`` s.

    Only samples with an earlier sample at least ``call_s`` s before them count (the first
    ones would count every call received since the start).
    """
    out = []
    for s in samples:
        earlier = [p["calls_received"] for p in samples if p["t_s"] <= s["t_s"] - call_s]
        if earlier:
            out.append(s["calls_received"] - earlier[-1])
    return out


def w7(settings: Any, registry: Any, demo: Any, namespace: str, dsn: str, runs: int, seconds: float,
       start_ray: Callable[[], None]) -> dict[str, Any]:
    import asyncpg
    import psutil
    import ray

    ray.shutdown()
    start_ray()
    time.sleep(2.0)
    idle = MemorySampler().total_rss()
    engine = Engine(settings, registry, namespace)
    engine.hosts()
    log(f"W7: Ray idle {gb(idle)} GB; submitting {runs} runs, each a 10 s call")
    pack = slow_call_pack()
    stop_reason = None
    samples: list[dict[str, Any]] = []

    async def query(sql: str) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchrow(sql)
        finally:
            await conn.close()

    sampler = MemorySampler(interval=0.5)
    sampler.baseline = idle
    sampler._thread.start()
    t0 = time.monotonic()
    submitted = 0
    t_submitted = 0.0
    failures: list[dict[str, Any]] = []
    try:
        batch = 200
        while submitted < runs:
            if psutil.virtual_memory().available < MIN_AVAILABLE_BYTES:
                stop_reason = f"stopped submitting at {submitted} runs: available memory under 3 GB"
                break
            n = min(batch, runs - submitted)
            try:
                engine.submit_many(pack, n)
            except ray.exceptions.RayError as exc:  # a host refused (its connection pool timed out...)
                failures.append({"after_s": r(time.monotonic() - t0, 1), "submitted_before": submitted,
                                 "error": str(exc).strip().splitlines()[-1][:300]})
                log(f"W7: a batch of {n} submits failed after {submitted} runs: {failures[-1]['error']}")
                if len(failures) >= 3:
                    stop_reason = f"stopped submitting after {submitted} runs: 3 batches of submits failed"
                    break
                continue
            submitted += n
        t_submitted = time.monotonic() - t0
        log(f"W7: {submitted} submitted in {t_submitted:.1f} s")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            row = asyncio.run(query(
                "SELECT count(*) FILTER (WHERE status = 'running') AS running,"
                " count(*) FILTER (WHERE status = 'running' AND current_step IS NOT NULL) AS step_started,"
                " count(*) FILTER (WHERE status = 'completed') AS completed FROM executions"
                " WHERE workflow_pack_id = 'bench-slow'"))
            calls = demo.calls().get("by_path", {}).get("POST /echo/slow", 0)
            samples.append({"t_s": r(time.monotonic() - t0, 1), "running": row["running"],
                            "step_started": row["step_started"], "completed": row["completed"], "calls_received": calls,
                            "rss_gb": gb(sampler.samples[-1][1]) if sampler.samples else None})
            if psutil.virtual_memory().available < MIN_AVAILABLE_BYTES:
                stop_reason = "stopped early: available memory under 3 GB"
                break
            time.sleep(2.0)
    finally:
        sampler._stop.set()
        sampler._thread.join()
    # calls in progress at the service at time t = calls received in the last 10 s (each lasts 10 s)
    in_service = calls_in_service(samples)
    out = {
        "runs": runs, "submitted": submitted, "submit_s": r(t_submitted), "observed_s": seconds,
        "max_running": max((s["running"] for s in samples), default=0),
        "max_step_started": max((s["step_started"] for s in samples), default=0),
        "max_calls_in_service": max(in_service, default=0),
        "completed_at_end": samples[-1]["completed"] if samples else 0,
        "ray_idle_rss_gb": gb(idle), "peak_rss_gb": gb(sampler.peak), "peak_above_idle_gb": gb(sampler.peak - idle),
        "stop_reason": stop_reason, "submit_failures": failures, "samples": samples,
    }
    log(f"W7: { {k: v for k, v in out.items() if k != 'samples'} }")
    ray.shutdown()
    return out


# --------------------------------------------------------------------------- table


GOALS = {
    "W1": "<= 2.3 ms/step durable", "W2": "(none)", "W3": ">= 1000 steps/s; mem <= floor + 0.7 GB",
    "W4": "driver p50 < 5 ms; HTTP p50 < 15 ms", "W5": ">= 1000 items/s; flat memory",
    "W6": "all resumed < 10 s", "W7": "10,000 in flight; <= idle + 4 GB",
}


def table(results: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    failed = {name: value["error"] for name, value in results.items() if isinstance(value, dict) and "error" in value}
    for name, error in failed.items():
        rows.append((name.split("_")[0], f"FAILED: {error.splitlines()[0][:80]}", "", "", "", "", ""))
    results = {name: value for name, value in results.items() if name not in failed}

    def add(w: str, metric: str, durable: Any, mem: Any, floor_ray: Any, floor_pg: Any, goal: str = "") -> None:
        rows.append((w, metric, *("" if v is None else str(v) for v in (durable, mem, floor_ray, floor_pg)), goal))

    g = lambda d, *keys: _get(d, keys)  # noqa: E731
    if "W1" in results:
        x = results["W1"]
        add("W1", "ms per step (chain of 50)", g(x, "durable", "ms_per_step"), g(x, "memory", "ms_per_step"),
            x["floor_ray_ms_per_step"], x["floor_ray_pg_ms_per_step"], GOALS["W1"])
        add("W1", "ms per step beyond plain Ray", g(x, "durable", "beyond_ray_floor_ms"),
            g(x, "memory", "beyond_ray_floor_ms"), "0", r(x["floor_ray_pg_ms_per_step"] - x["floor_ray_ms_per_step"]))
    if "W2" in results:
        x = results["W2"]
        add("W2", "wall ms (20 parallel + join)", g(x, "durable", "ms"), g(x, "memory", "ms"), x["floor_ray_ms"],
            x["floor_ray_pg_ms"], GOALS["W2"])
    if "W3" in results:
        x = results["W3"]
        for key, label in (("steps_per_s", "steps/s (100 runs x 10)"), ("p50_ms", "run latency p50 ms"),
                           ("p99_ms", "run latency p99 ms"), ("peak_rss_gb", "peak RSS all processes GB")):
            add("W3", label, g(x, "durable", key), g(x, "memory", key), g(x, "floor_ray", key), g(x, "floor_ray_pg", key),
                GOALS["W3"] if key == "steps_per_s" else "")
        add("W3", "peak RSS above plain Ray GB", g(x, "durable", "peak_above_floor_ray_gb"),
            g(x, "memory", "peak_above_floor_ray_gb"), "0", None, "<= 0.7")
    if "W4" in results:
        x = results["W4"]
        add("W4", "driver start p50 ms", g(x, "durable", "p50_ms"), g(x, "memory", "p50_ms"), None, None, "< 5")
        add("W4", "driver start p99 ms", g(x, "durable", "p99_ms"), g(x, "memory", "p99_ms"), None, None)
    for ingress in HTTP_INGRESSES:
        if f"W4_http_{ingress}" in results:
            x = results[f"W4_http_{ingress}"]
            add("W4", f"HTTP execute p50 ms (1 client, {ingress})", g(x, "execute", "p50_ms"), None, None, None, "< 15")
            add("W4", f"HTTP execute p99 ms (1 client, {ingress})", g(x, "execute", "p99_ms"), None, None, None)
    if "W5" in results:
        x = results["W5"]
        small, big = (str(s) for s in x["sizes"])
        add("W5", f"items/s ({small} items, conc 100)", g(x, "durable", small, "items_per_s"),
            g(x, "memory", small, "items_per_s"), g(x, "floor_ray", "items_per_s"), g(x, "floor_ray_pg", "items_per_s"),
            ">= 1000")
        add("W5", f"items/s ({big} items)", g(x, "durable", big, "items_per_s"), None, None, None)
        for size in (small, big):
            add("W5", f"host peak RSS GB ({size} items)", g(x, "durable", size, "hosts_peak_rss_gb"),
                g(x, "memory", size, "hosts_peak_rss_gb"), None, None, "flat" if size == big else "")
            add("W5", f"all peak above start GB ({size})", g(x, "durable", size, "peak_above_baseline_gb"),
                g(x, "memory", size, "peak_above_baseline_gb"), None, None)
    if "W6" in results:
        x = results["W6"]
        add("W6", "s until all 100 claimed (from ray.init)", x.get("all_claimed_s"), None, None, None, "< 10")
        if x.get("all_claimed_s") is not None and x.get("ray_init_s") is not None:
            add("W6", "s until all claimed, after ray.init", r(x["all_claimed_s"] - x["ray_init_s"]), None, None, None)
        add("W6", "s until all 100 completed", x.get("all_completed_s"), None, None, None)
        add("W6", "of which ray.init s", x.get("ray_init_s"), None, None, None)
    if "W7" in results:
        x = results["W7"]
        add("W7", f"runs running at once (of {x['runs']} asked)", x["max_running"], None, None, None, "10000")
        add("W7", "batches of submits that failed", len(x.get("submit_failures") or []), None, None, None, "0")
        add("W7", "calls in progress at the service", x["max_calls_in_service"], None, None, None, "10000")
        add("W7", "peak RSS above Ray idle GB", x["peak_above_idle_gb"], None, None, None, "<= 4")
    return rows


def _get(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def print_table(rows: list[tuple[str, ...]]) -> str:
    header = ("", "metric", "durable PG", "persist. off", "plain Ray", "Ray + PG commit", "goal")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes)")
    parser.add_argument("--only", default="W1,W2,W3,W4,W5,W6,W7", help="comma-separated workloads")
    parser.add_argument("--database-url", help="postgresql+asyncpg://... (default: a fresh database, dropped at the end)")
    parser.add_argument("--hosts", type=int, default=2, help="shared ExecutionHosts (CORTX_EXECUTION_HOSTS)")
    parser.add_argument("--w5-limit-s", type=float, default=300.0,
                        help="W5: a loop run not finished after this many s is measured so far and cancelled")
    parser.add_argument("--w7-runs", type=int, help="W7 runs (default 10000, quick 500)")
    parser.add_argument("--w7-seconds", type=float, default=30.0, help="how long W7 is observed after submitting")
    parser.add_argument("--profile-dir", type=Path, help="py-spy the hosts during W1 and W3 (durable)")
    parser.add_argument("--no-http", action="store_true", help="skip W4 over HTTP")
    parser.add_argument("--no-memory-store", action="store_true", help="skip the persistence-off runs")
    parser.add_argument("--output", type=Path, default=RESULTS / "suite.json")
    args = parser.parse_args()
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    os.chdir(ROOT)  # Ray workers import examples.tasks from the driver's working folder
    RESULTS.mkdir(parents=True, exist_ok=True)

    import psutil

    results: dict[str, Any] = {}
    started = time.time()
    meta = {"started": datetime.now().isoformat(timespec="seconds"), "quick": args.quick, "hosts": args.hosts,
            "cpus": os.cpu_count(), "memory_gb": gb(psutil.virtual_memory().total), "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}
    for ingress in HTTP_INGRESSES if "W4" in only and not args.no_http else ():
        log(f"W4 over HTTP, --ingress {ingress} (api_latency.py --clients 1; its own service and database)")
        try:
            results[f"W4_http_{ingress}"] = w4_http(args.quick, ingress)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the rest still runs
            results[f"W4_http_{ingress}"] = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
        log(f"W4 http {ingress}: {json.dumps(results[f'W4_http_{ingress}'])[:300]}")

    import ray

    from actors import ServiceRegistry, Settings
    from serve_app.demo_services import Fault, start_in_thread

    if args.database_url:
        url, drop = args.database_url, lambda: None
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    else:
        url, dsn, drop = fresh_database()
    demo = start_in_thread(port=0, faults=[Fault("/echo/slow", delay_ms=10_000)])
    registry = ServiceRegistry.from_mapping({"services": {"echo": {"base_url": f"{demo.url}/echo"}}})
    namespace = f"cortx-suite-{uuid.uuid4().hex[:6]}"
    settings = Settings(database_url=url, execution_hosts=args.hosts, max_concurrent_executions=1_000_000,
                        max_parallel_steps=100, workflow_timeout_seconds=3600, task_modules=("examples.tasks",),
                        max_loop_iterations=1_000_000)

    def start_ray() -> None:
        import logging

        from actors.driver import local_ray_system_config

        ray.init(address="local", include_dashboard=False, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                 _system_config=local_ray_system_config(settings.step_task_num_cpus))

    def save() -> None:
        meta["load_average_now"] = os.getloadavg()
        args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    def guarded(name: str, body: Callable[[], Any]) -> None:
        try:
            results[name] = body()
        except Exception as exc:  # noqa: BLE001 - one workload failing must not lose the others
            log(f"{name} failed: {type(exc).__name__}: {str(exc)[:500]}")
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
        save()

    try:
        t = time.monotonic()
        start_ray()
        meta["ray_init_s"] = r(time.monotonic() - t)
        time.sleep(2.0)
        meta["ray_idle_rss_gb"] = gb(MemorySampler().total_rss())
        engines = {"durable": Engine(settings, registry, namespace)}
        if not args.no_memory_store:
            engines["memory"] = Engine(settings.with_changes(state_persistence_enabled=False), registry, namespace + "-mem")
        for engine in engines.values():
            engine.hosts()
        floor = Floor(dsn)
        if "W1" in only:
            log("W1 chain")
            guarded("W1", lambda: w1(engines, floor, args.quick, args.profile_dir))
        if "W2" in only:
            log("W2 fan-out")
            guarded("W2", lambda: w2(engines, floor, args.quick))
        if "W3" in only:
            log("W3 throughput")
            guarded("W3", lambda: w3(engines, floor, args.quick, args.profile_dir))
        if "W4" in only:
            log("W4 start (driver)")
            guarded("W4", lambda: w4(engines, args.quick))
        if "W5" in only:
            log("W5 loop")
            guarded("W5", lambda: w5(engines, floor, args.quick, args.w5_limit_s, dsn))
        if "W6" in only:
            log("W6 recovery")
            guarded("W6", lambda: w6(engines["durable"], dsn, start_ray, args.quick))
        if "W7" in only:
            runs = args.w7_runs or (500 if args.quick else 10_000)
            log(f"W7 concurrency ({runs} runs)")
            guarded("W7", lambda: w7(settings, registry, demo, namespace + "-w7", dsn, runs, args.w7_seconds, start_ray))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        import logging

        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # W7's calls still hanging at stop
        demo.stop()
        drop()
    meta["wall_s"] = r(time.time() - started, 0)
    meta["load_average_at_end"] = os.getloadavg()
    text = print_table(table(results))
    meta["load_average_now"] = os.getloadavg()
    args.output.write_text(json.dumps({"meta": meta, "results": results, "table": text}, indent=2))
    log(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
