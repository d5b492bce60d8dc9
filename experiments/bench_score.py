"""Benchmark: `sendwise score` on a large simulated shop (target: 1,000,000 customers in
60 s and 4 GiB with `--engine local` on a bucketed shop).

    python experiments/bench_score.py [--customers 1000000] [--buckets 16] [--work DIR] [--repeat N]

Champions are trained on a 20,000-customer shop from the same simulator (what is measured
here is scoring, not training), in a throw-away MLflow home; the large shop is split into
`--buckets` customer-hash buckets (`sendwise shop partition`, timed too); then the real CLI
scores it bucket by bucket in a child process, `--repeat` times. Writes
experiments/results/score.json and score.md. With `--work DIR`, shops and champions already
in DIR (from an earlier run) are reused. The yardstick (`yardstick.py`: read the large shop's
tables and group each by customer) is timed just before and just after the scoring runs, and
every figure is also given as a multiple of it; the machine's load average is noted beside
each run, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench_features import write_results
from child import run_cli, work_env
from yardstick import multiple, yardstick

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-05-31"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, help="Keep (and reuse) shops and models here.")
    parser.add_argument("--repeat", type=int, default=1, help="Score this many times.")
    parser.add_argument("--buckets", type=int, default=16, help="Customer-hash buckets.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendwise-score-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        trained = train_champions(work, env)
        large = work / "large"
        simulate_shop(large, args.customers, env)
        bucketed = work / f"large-{args.buckets}"
        partitioned = partition(large, args.buckets, bucketed, env)
        score = ["score", "--shop", str(bucketed), "--as-of", AS_OF, "--engine", "local", "--out"]
        before = yardstick(large)
        runs = []
        for _ in range(args.repeat):
            load = load_now()
            run = run_cli([*score, str(work / "decisions.parquet")], env)
            runs.append({**run, "load_before": load, "load_after": load_now()})
        after = yardstick(large)
    unit = yardstick_of(before, after)
    for run in runs:
        run["yardsticks"] = multiple(run["wall_s"], unit)
    walls = [run["wall_s"] for run in runs]
    peaks = [run["peak_rss_mib"] for run in runs]
    median = {"wall_s": statistics.median(walls), "peak_rss_mib": statistics.median(peaks)}
    result = {
        "customers": args.customers,
        "buckets": args.buckets,
        "train_20k": trained,
        "partition": partitioned,
        "score": runs,
        "median": {**median, "yardsticks": multiple(median["wall_s"], unit)},
        "yardstick": {**unit, "before": before, "after": after},
        "cpu_count": os.cpu_count(),
    }
    md = [
        "# Batch scoring benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, shared (1-minute load average beside each run). "
        f"Command: `python experiments/bench_score.py --customers {args.customers} "
        f"--buckets {args.buckets} --repeat {args.repeat}`.",
        "",
        f"Yardstick (read the {args.customers:,}-customer shop's tables and group each by "
        f"customer; median of {len(unit['runs_s'])} runs before and after scoring): "
        f"{unit['median_s']} s (before {before['median_s']} s, after {after['median_s']} s).",
        "",
        "| step | wall (s) | yardsticks | peak RSS (MiB) | load before / after |",
        "|---|---:|---:|---:|---:|",
        row("`sendwise train all` on 20,000 customers (horizon 30 d)", trained, unit),
        row(f"`sendwise shop partition` into {args.buckets} buckets", partitioned, unit),
        *[
            f"| `sendwise score --engine local` on {args.customers:,} customers, {args.buckets} "
            f"buckets (target 60 s, 4,096 MiB), run {k} | {run['wall_s']} | "
            f"{run['yardsticks']} | {run['peak_rss_mib']:,} | "
            f"{run['load_before']} / {run['load_after']} |"
            for k, run in enumerate(runs, 1)
        ],
        f"| median of {len(runs)} | {median['wall_s']} | {multiple(median['wall_s'], unit)} | "
        f"{median['peak_rss_mib']:,} | |",
        "",
        f"Output: {runs[-1]['stdout']}",
    ]
    write_results("score", md, result)


def train_champions(work: Path, env: dict) -> dict | None:
    """Champions of the shop `bench` trained on 20,000 of its customers (the shop at any
    scale finds them by its name), unless `work` has them: then None."""
    small = work / "small"
    if small.is_dir():
        return None
    simulate_shop(small, 20_000, env, seed=1)
    train = ["train", "all", "--shop", str(small), "--as-of", AS_OF, "--horizon-days", "30"]
    trained = run_cli(train, env)
    run_cli(["promote", "all", "--shop", str(small)], env)
    return trained


def simulate_shop(out: Path, customers: int, env: dict, seed: int = 0) -> dict | None:
    """`sendwise simulate` of the shop `bench` into `out`, unless it is there: then None."""
    if out.is_dir():
        return None
    simulate = ["simulate", "--customers", str(customers), "--seed", str(seed)]
    return run_cli([*simulate, "--name", "bench", "--out", str(out)], env)


def partition(shop: Path, buckets: int, out: Path, env: dict) -> dict | None:
    """`sendwise shop partition` of `shop` into `out`, unless it is there: then None."""
    if out.is_dir():
        return None
    return run_cli(
        ["shop", "partition", "--shop", str(shop), "--buckets", str(buckets), "--out", str(out)],
        env,
    )


def row(label: str, run: dict | None, unit: dict) -> str:
    """A table row of a step run here, or `reused` from an earlier run in --work."""
    if run is None:
        return f"| {label} | reused | - | - | |"
    wall = run["wall_s"]
    return f"| {label} | {wall} | {multiple(wall, unit)} | {run['peak_rss_mib']:,} | |"


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def yardstick_of(before: dict, after: dict) -> dict:
    """One yardstick from the runs before and after scoring: the median of them all."""
    runs = before["runs_s"] + after["runs_s"]
    return {"median_s": round(statistics.median(runs), 3), "runs_s": runs}


if __name__ == "__main__":
    main()
