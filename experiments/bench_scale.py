"""Benchmark: simulate, partition and score 100,000, 1,000,000 and 10,000,000 customers on a
local 2-worker Dask cluster, and how wall time and memory grow with the shop.

    python experiments/bench_scale.py [--customers 100000 1000000 10000000] [--work DIR]

Champions are trained on 20,000 customers of the same simulated shop (as in
bench_score.py). Each size is simulated (part by part), partitioned into buckets of about
62,500 customers, and scored by the real CLI, `sendwise score --engine dask --scheduler
ADDRESS`, against a cluster started as a real one is: `dask scheduler` and two `dask
worker` processes of one thread each (this machine's cores), without nannies, so each
worker's peak RSS is its own (read from /proc before it stops); the client's peak is the
CLI's. Writes experiments/results/scale.json and scale.md. The yardstick
(`yardstick.py`) is timed on the largest shop up to 1,000,000 customers before and after
the runs. With `--work DIR`, shops and champions already in DIR are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_features import write_results
from bench_score import AS_OF, partition, simulate_shop, train_champions
from child import run_cli, work_env
from yardstick import multiple, yardstick

BUCKET_CUSTOMERS = 62_500  # per bucket: the 1M local benchmark's 16 buckets
WORKERS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--work", type=Path, help="Keep (and reuse) shops and models here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendwise-scale-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        train_champions(work, env)
        reference = work / f"shop-{max(n for n in args.customers if n <= 1_000_000)}"
        sizes = []
        before = None
        for customers in sorted(args.customers):
            shop = work / f"shop-{customers}"
            simulated = recorded(shop, simulate_shop(shop, customers, env))
            if shop == reference:
                before = yardstick(shop)
            buckets = max(1, round(customers / BUCKET_CUSTOMERS))
            bucketed = work / f"shop-{customers}-{buckets}"
            partitioned = recorded(bucketed, partition(shop, buckets, bucketed, env))
            # each size logs its decisions apart: no earlier run's sends count in its caps
            log = {"SENDWISE_DECISION_LOG_URL": f"sqlite:///{work / f'decisions-{customers}.db'}"}
            scored, workers = score_on_cluster(bucketed, work / "decisions.parquet", env | log)
            sizes.append(
                {
                    "customers": customers,
                    "buckets": buckets,
                    "simulate": simulated,
                    "partition": partitioned,
                    "score": scored,
                    "worker_peak_rss_mib": workers,
                    "load_after": round(os.getloadavg()[0], 2),
                }
            )
            print(json.dumps(sizes[-1]), flush=True)
        after = yardstick(reference)
    runs = before["runs_s"] + after["runs_s"]
    unit = {"median_s": round(statistics.median(runs), 3), "runs_s": runs}
    result = {"sizes": sizes, "yardstick": unit, "cpu_count": os.cpu_count()}
    command = " ".join(f"{n}" for n in args.customers)
    md = [
        "# Scale: simulate, partition and score on a local 2-worker Dask cluster",
        "",
        f"Machine: {os.cpu_count()} cores, shared. Command: `python "
        f"experiments/bench_scale.py --customers {command}`. Scoring is `sendwise score "
        "--engine dask --scheduler ADDRESS` against `dask scheduler` and two single-threaded "
        "`dask worker` processes on this machine; champions trained on 20,000 customers.",
        "",
        f"Yardstick ({reference.name}: read its tables, group each by customer; median of "
        f"{len(runs)} runs before and after): {unit['median_s']} s.",
        "",
        "| customers | buckets | step | wall (s) | yardsticks | peak RSS (MiB) |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for size in sizes:
        lead = f"| {size['customers']:,} | {size['buckets']} |"
        for step, command in (("simulate", "simulate"), ("partition", "shop partition")):
            md.append(f"{lead} `sendwise {command}` | {cells(size[step], unit)} |")
        workers = " / ".join(f"{w:,}" for w in size["worker_peak_rss_mib"])
        md.append(
            f"{lead} `sendwise score --engine dask` | {cells(size['score'], unit)} "
            f"(client); {workers} (workers) |"
        )
    md += ["", "Outputs:", *(f"- {size['score']['stdout']}" for size in sizes)]
    write_results("scale", md, result)


def recorded(made: Path, run: dict | None) -> dict | None:
    """A step's run (None: `made` was there already), kept beside what it made: a directory
    reused from an earlier run in --work reports the figures of the run that made it."""
    record = made.with_name(f"{made.name}.run.json")
    if run is not None:
        record.write_text(json.dumps(run))
    elif record.is_file():
        run = json.loads(record.read_text())
    return run


def cells(run: dict | None, unit: dict) -> str:
    """Wall, yardsticks and peak RSS of a step run here, or `reused`."""
    if run is None:
        return "reused | - | -"
    return f"{run['wall_s']} | {multiple(run['wall_s'], unit)} | {run['peak_rss_mib']:,}"


def score_on_cluster(shop: Path, out: Path, env: dict) -> tuple[dict, list[int]]:
    """`sendwise score` of `shop` on a fresh cluster: the CLI's run, each worker's peak RSS."""
    with cluster(env) as (address, workers):
        score = ["score", "--shop", str(shop), "--as-of", AS_OF, "--engine", "dask"]
        run = run_cli([*score, "--scheduler", address, "--out", str(out)], env)
        return run, [peak_rss_mib(worker.pid) for worker in workers]


@contextmanager
def cluster(env: dict) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """`dask scheduler` and WORKERS `dask worker` processes: the address and the workers."""
    dask = str(Path(sys.executable).with_name("dask"))
    with tempfile.TemporaryDirectory(prefix="sendwise-dask-") as tmp:
        file = Path(tmp, "scheduler.json")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        started = [
            subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--scheduler-file",
                    str(file),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                ],
                **quiet,
            )
        ]
        try:
            address = json.loads(wait_for(file).read_text())["address"]
            for k in range(WORKERS):
                started.append(
                    subprocess.Popen(
                        [
                            dask,
                            "worker",
                            address,
                            "--nthreads",
                            "1",
                            "--no-nanny",
                            "--memory-limit",
                            "0",
                            "--no-dashboard",
                            "--name",
                            f"w{k}",
                        ],
                        **quiet,
                    )
                )
            from distributed import Client

            with Client(address, timeout="30s") as client:
                client.wait_for_workers(WORKERS, timeout=120)
            yield address, started[1:]
        finally:
            for process in reversed(started):
                process.terminate()
                process.wait(timeout=60)


def wait_for(file: Path, seconds: float = 60) -> Path:
    deadline = time.monotonic() + seconds
    while not file.is_file() or not file.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Dask scheduler wrote no {file} in {seconds:.0f} s")
        time.sleep(0.2)
    return file


def peak_rss_mib(pid: int) -> int:
    """A running process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"no VmHWM for process {pid}")


if __name__ == "__main__":
    main()
