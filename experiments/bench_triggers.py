"""Benchmark: real-time triggers, live and replayed.

    python experiments/bench_triggers.py [--customers 3000] [--seconds 15] [--workers 2]
                                         [--day-customers 1000000] [--work DIR]

- latency: at a steady 2,000 events/s (batches of 100, twenty a second) with a sign-up in
  each, the time from a sign-up's batch being acknowledged to its `welcome` firing showing on
  `GET /triggers` (polled every 50 ms);
- ingest: then `sendwise serve` (2 workers, embedded SQLite event store, synchronous FULL)
  takes `POST /events` batches of 1,000 from an aiohttp load generator on the same cores;
- memory: each worker's resident set after the run;
- a day replayed: `simulate_stream` for `--day-customers` customers over one day, through
  the engine alone (`TriggerEngine.run`), wall time and peak memory, in a child process.
Writes experiments/results/triggers.json and triggers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from bench_api import prepare
from bench_features import machine, write_results
from child import serving, work_env, worker_rss_mib

KEY = "bench-key"
START = datetime(2026, 7, 1, tzinfo=UTC)


def stream_records(shop: Path, days: int, seed: int) -> list[dict]:
    import polars as pl

    from sendwise.features.event_stream import StreamSettings, api_events, simulate_stream

    customers = pl.read_parquet(shop / "customers.parquet")["customer_id"].to_list()
    products = pl.read_parquet(shop / "products.parquet")
    events, _ = simulate_stream(customers, products, StreamSettings(START, days, seed))
    return api_events(events)


async def ingest(url: str, records: list[dict], seconds: float, concurrency: int = 4) -> dict:
    """Batches of 1,000 new events, `concurrency` in flight, for `seconds`."""
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    # encoded before the clock starts: the load generator shares the server's cores
    batches = [
        json.dumps({"events": records[k : k + 1000]}).encode()
        for k in range(0, len(records) - 999, 1000)
    ]
    sent, failures, latencies = 0, 0, []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker(k: int) -> None:
            nonlocal sent, failures
            while time.perf_counter() < deadline and k < len(batches):
                body = batches[k]
                k += concurrency
                t = time.perf_counter()
                async with session.post(f"{url}/events", data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        failures += 1
                        continue
                latencies.append(time.perf_counter() - t)
                sent += 1000

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "events": sent,
        "failures": failures,
        "events_per_s": round(sent / wall),
        "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "batch_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
    }


async def welcome_latency(url: str, records: list[dict], seconds: float, rate: int) -> dict:
    """Steady `rate` events/s with a sign-up in each batch of 100; latency of each sign-up's
    welcome from its batch's acknowledgement to its showing on `GET /triggers`."""
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    acknowledged: dict[str, float] = {}
    seen: dict[str, float] = {}
    cursor = 0
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/triggers", params={"after": 0, "limit": 1000}, headers=headers
        ) as page:
            cursor = (await page.json())["next"]
            while True:  # skip what earlier phases fired
                async with session.get(
                    f"{url}/triggers", params={"after": cursor, "limit": 1000}, headers=headers
                ) as more:
                    body = await more.json()
                if not body["triggers"]:
                    break
                cursor = body["next"]
        stop = asyncio.Event()

        async def poll() -> None:
            nonlocal cursor
            while not stop.is_set() or len(seen) < len(acknowledged):
                async with session.get(
                    f"{url}/triggers", params={"after": cursor, "limit": 1000}, headers=headers
                ) as page:
                    body = await page.json()
                now = time.perf_counter()
                for firing in body["triggers"]:
                    if firing["trigger"] == "welcome" and firing["customer_id"].startswith("lat-"):
                        seen.setdefault(firing["customer_id"], now)
                cursor = body["next"]
                if stop.is_set() and time.perf_counter() - stopped > 30:
                    break
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        per_batch, interval = 100, 100 / rate
        started, k = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            due = started + k * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            # the simulated week's behaviour, happening now: timers start, none falls due yet
            now = datetime.now(UTC).isoformat()
            batch = records[(k * per_batch) % len(records) :][: per_batch - 1]
            batch = [
                {**e, "message_id": f"lat-{k}-{n}", "timestamp": now} for n, e in enumerate(batch)
            ]
            who = f"lat-{k}"
            batch.append(
                {
                    "message_id": f"lat-signup-{k}",
                    "type": "signed_up",
                    "customer_id": who,
                    "timestamp": now,
                }
            )
            async with session.post(
                f"{url}/events", data=json.dumps({"events": batch}), headers=headers
            ) as answer:
                await answer.read()
                if answer.status == 200:
                    acknowledged[who] = time.perf_counter()
            k += 1
        stopped = time.perf_counter()
        stop.set()
        await poller
    delays = sorted(seen[w] - acknowledged[w] for w in acknowledged if w in seen)
    return {
        "events_per_s": round(k * per_batch / (stopped - started)),
        "welcomes": len(acknowledged),
        "seen": len(delays),
        "p50_s": round(delays[len(delays) // 2], 3),
        "p99_s": round(delays[int(0.99 * (len(delays) - 1))], 3),
        "max_s": round(delays[-1], 3),
    }


def live(shop: Path, seconds: float, workers: int, env: dict) -> dict:
    records = stream_records(shop, 7, 5)
    # ingest: new events enough for `seconds` at 25,000/s, so the rate is a sustained one
    backlog = stream_records(shop, 7 * max(1, round(seconds * 25_000 / len(records))), 6)
    with serving(shop, 3797, workers, {**env, "SENDWISE_API_KEYS": KEY}) as (url, _):
        # latency first, on an empty store: the ingest phase leaves a week of events
        # whose firings the engine then works through for a while
        found = {"welcome": asyncio.run(welcome_latency(url, records, seconds, 2000))}
        found["ingest"] = asyncio.run(ingest(url, backlog, seconds))
        found["worker_rss_mib"] = worker_rss_mib()
    return found


def day_replayed(customers: int) -> dict:
    """One simulated day of `customers` through the engine, in this (child) process."""
    import numpy as np
    import polars as pl

    from sendwise.features.event_stream import StreamSettings, simulate_stream
    from sendwise.policy.config import Settings
    from sendwise.policy.triggers import TriggerEngine
    from sendwise.serving.triggers import stream

    ids = [f"c{k:07d}" for k in range(customers)]
    rng = np.random.default_rng(0)
    products = pl.DataFrame(
        {
            "product_id": [f"p{k:05d}" for k in range(2000)],
            "category": [f"cat{k % 40}" for k in range(2000)],
            "price": rng.uniform(5, 100, 2000).round(2),
        }
    )
    t = time.perf_counter()
    events, catalog = simulate_stream(ids, products, StreamSettings(START, 1, 7))
    simulated = time.perf_counter() - t
    t = time.perf_counter()
    firings = TriggerEngine(Settings().triggers).run(
        stream(events, catalog), int((START.timestamp() + 86400) * 1e6)
    )
    wall = time.perf_counter() - t
    return {
        "customers": customers,
        "events": len(events),
        "catalog_updates": len(catalog),
        "firings": len(firings),
        "simulate_s": round(simulated, 1),
        "engine_s": round(wall, 1),
        "events_per_s": round(len(events) / wall),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--day-customers", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, help="Keep (and reuse) the shop and models here.")
    parser.add_argument("--day-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.day_only:  # the child process of `day_replayed`
        print(json.dumps(day_replayed(args.day_customers)))
        return
    with tempfile.TemporaryDirectory(prefix="sendwise-triggers-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        shop = prepare(work, args.customers, env)
        for old in (work / "home").glob("events.db*"):  # each run starts with an empty store
            old.unlink()
        found = live(shop, args.seconds, args.workers, env)
    child = [sys.executable, __file__, "--day-only", "--day-customers", str(args.day_customers)]
    day = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    result = {"machine": machine(), "workers": args.workers, **found, "day": day}
    i, w = found["ingest"], found["welcome"]
    md = [
        "# Trigger benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, commit {result['machine']['commit']}. Command: "
        f"`python experiments/bench_triggers.py --customers {args.customers} --seconds {args.seconds:g} "
        f"--workers {args.workers} --day-customers {args.day_customers}`.",
        "",
        "| measure | figure | target (issue 14) |",
        "|---|---:|---|",
        f"| ingest, batches of 1,000, 4 in flight, SQLite FULL | {i['events_per_s']:,} events/s (batch p50 {i['batch_p50_ms']} ms, p99 {i['batch_p99_ms']} ms, {i['failures']} failures) | >= 20,000 events/s |",
        f"| `welcome` on `GET /triggers` after its event is acknowledged, at {w['events_per_s']:,} events/s | p50 {w['p50_s']} s, p99 {w['p99_s']} s, max {w['max_s']} s ({w['seen']:,} of {w['welcomes']:,} seen) | p99 <= 2 s at 2,000 events/s |",
        f"| worker RSS after the run | {found['worker_rss_mib']} MiB | |",
        f"| a day of {day['customers']:,} customers through the engine | {day['events']:,} events + {day['catalog_updates']:,} catalog updates in {day['engine_s']} s ({day['events_per_s']:,} events/s), {day['firings']:,} firings, peak RSS {day['peak_rss_mib']:,} MiB (simulating it: {day['simulate_s']} s) | |",
        "",
        f"`sendwise serve --workers {args.workers}` on loopback with the load generator (aiohttp) on the same cores.",
    ]
    write_results("triggers", md, result)
    print("\n".join(md))


if __name__ == "__main__":
    main()
