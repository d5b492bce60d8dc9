"""Benchmark: the decision API over HTTP against the same engine in process.

    python experiments/bench_api.py [--customers 5000] [--seconds 15] [--workers 2] [--work DIR]

Trains champions on a simulated shop (or reuses them from `--work`), then measures:
- in process: `Runtime.serve` (decide, log the batch whole in SQLite, caps from the log), the
  exact path one `/decide` call takes minus HTTP and JSON;
- over HTTP: `sendwise serve` on loopback, driven by a bounded aiohttp load generator in this
  process: single-recipient latency p50/p99 at concurrency 1 and 8, and decisions per second
  for batches of 100 and 1,000;
- memory: the resident set of each server worker after the run.
Writes experiments/results/api_workers<N>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from bench_features import machine
from child import run_cli, serving, work_env, worker_rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
AS_OF = "2026-05-31"
KEY = "bench-key"


def prepare(work: Path, customers: int, env: dict) -> Path:
    shop = work / "shop"
    if not shop.is_dir():
        run_cli(["simulate", "--customers", str(customers), "--seed", "5", "--out", str(shop)], env)
        run_cli(
            ["train", "all", "--shop", str(shop), "--as-of", AS_OF, "--horizon-days", "30"], env
        )
        run_cli(["promote", "all", "--shop", str(shop)], env)
    return shop


def recipients(ids: list[str], n: int, rng: random.Random) -> list[dict]:
    """Mostly known customers, one in ten unknown (cold start)."""
    return [
        {"customer_id": rng.choice(ids) if rng.random() < 0.9 else f"new-{rng.random()}"}
        for _ in range(n)
    ]


def in_process(shop: Path, ids: list[str], seconds: float, env: dict) -> dict:
    os.environ.update(env)
    from sendwise.serving.decide import DecideRequest
    from sendwise.serving.runtime import Runtime, ServeSettings
    from sendwise.store.decisions import DecisionLog

    log = DecisionLog(f"sqlite:///{Path(env['SENDWISE_HOME']) / 'inprocess.db'}")
    runtime = Runtime(ServeSettings(shop), decision_log=log)
    rng = random.Random(0)
    found = {}
    for size in (1, 100, 1000):
        requests = [DecideRequest.model_validate({"recipients": recipients(ids, size, rng)}) for _ in range(50)]  # fmt: skip
        done, times, started = 0, [], time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            t = time.perf_counter()
            runtime.serve(requests[done % len(requests)])
            times.append(time.perf_counter() - t)
            done += 1
        found[size] = {
            "decisions_per_s": round(size * done / sum(times)),
            "p50_ms": round(1000 * statistics.median(times), 2),
            "p99_ms": round(1000 * sorted(times)[int(0.99 * (len(times) - 1))], 2),
        }
    runtime.close()
    return found


async def load(url: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """Keep `concurrency` requests in flight for `seconds`; latency and decisions per second."""
    latencies: list[float] = []
    decisions, failures = 0, 0
    headers = {"X-API-Key": KEY}
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(k: int) -> None:
            nonlocal decisions, failures
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                t = time.perf_counter()
                async with session.post(f"{url}/decide", json=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        failures += 1
                        continue
                latencies.append(time.perf_counter() - t)
                decisions += len(body["recipients"])

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "decisions_per_s": round(decisions / wall),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
    }


def over_http(shop: Path, ids: list[str], seconds: float, workers: int, env: dict) -> dict:
    with serving(shop, 3789, workers, {**env, "SENDWISE_API_KEYS": KEY}) as (url, ready_s):
        rng = random.Random(1)
        found = {"ready_s": round(ready_s, 1)}
        asyncio.run(load(url, [{"recipients": recipients(ids, 10, rng)}], 2, 3))  # warm-up
        for concurrency in (1, 8):
            bodies = [{"recipients": recipients(ids, 1, rng)} for _ in range(500)]
            found[f"single_c{concurrency}"] = asyncio.run(load(url, bodies, concurrency, seconds))
        for size in (100, 1000):
            bodies = [{"recipients": recipients(ids, size, rng)} for _ in range(50)]
            found[f"batch_{size}"] = asyncio.run(load(url, bodies, 4, seconds))
        found["worker_rss_mib"] = worker_rss_mib()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, help="Keep (and reuse) the shop and models here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendwise-api-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        shop = prepare(work, args.customers, env)
        for old in (work / "home").glob("*.db*"):  # each run starts with an empty decision log
            old.unlink()
        import polars as pl

        ids = pl.read_parquet(shop / "customers.parquet")["customer_id"].to_list()
        local = in_process(shop, ids, args.seconds, env)
        http = over_http(shop, ids, args.seconds, args.workers, env)
    result = {"machine": machine(), "customers": args.customers, "workers": args.workers, "in_process": local, "http": http}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"api_workers{args.workers}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = []
    for size, key in ((1, "single_c1"), (1, "single_c8"), (100, "batch_100"), (1000, "batch_1000")):
        h, p = http[key], local[size]
        concurrency = {"single_c1": 1, "single_c8": 8}.get(key, 4)
        rows.append(
            f"| {size:,} | {concurrency} | {h['decisions_per_s']:,} | {h['p50_ms']} | {h['p99_ms']} | "
            f"{h['failures']} | {p['decisions_per_s']:,} | {p['decisions_per_s'] / h['decisions_per_s']:.2f}x |"
        )
    md = [
        "# Decision API benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, commit {result['machine']['commit']}. "
        f"Command: `python experiments/bench_api.py --customers {args.customers} --seconds {args.seconds:g} --workers {args.workers}`.",
        "",
        f"`sendwise serve` with {args.workers} workers on loopback, load from aiohttp in one process on the same "
        f"2 cores; every batch is logged whole in SQLite before it is answered. In process: `Runtime.serve`, "
        f"the same path minus HTTP and JSON, one thread.",
        "",
        "| recipients per request | concurrency | HTTP decisions/s | p50 ms | p99 ms | failures | in-process decisions/s | HTTP overhead |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Targets (issue 11): batches of 1,000 at >= 20,000 decisions/s over HTTP with 2 workers; single-recipient p99 <= 10 ms at concurrency 1.",
        f"Server ready in {http['ready_s']} s; worker RSS (MiB) after the run: {http['worker_rss_mib']}.",
    ]
    (RESULTS / f"api_workers{args.workers}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
