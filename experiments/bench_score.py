"""Benchmark: `sendwise score` on a large simulated shop (target: 1,000,000 customers < 2 min).

    python experiments/bench_score.py [--customers 1000000] [--work DIR] [--repeat N]

Champions are trained on a 20,000-customer shop from the same simulator (what is measured
here is scoring, not training), in a throw-away MLflow home; then the real CLI scores the
large shop in a child process, `--repeat` times (this shared machine's timings vary by 10-20%
from run to run). Writes experiments/results/score.json and score.md. With `--work DIR`, shops
and champions already in DIR (from an earlier run) are reused. The yardstick (`yardstick.py`:
read the large shop's tables and group each by customer) is timed just before and just after
the scoring runs, and every figure is also given as a multiple of it.
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendwise-score-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        small, large = work / "small", work / "large"
        trained = None  # reused from an earlier run in --work
        if not small.is_dir():
            simulate = ["simulate", "--customers", "20000", "--seed", "1", "--name", "bench"]
            run_cli([*simulate, "--out", str(small)], env)
            train = ["train", "all", "--shop", str(small), "--as-of", AS_OF, "--horizon-days", "30"]
            trained = run_cli(train, env)
            run_cli(["promote", "all", "--shop", str(small)], env)
        if not large.is_dir():
            customers = str(args.customers)
            # the same shop at scale: its name (shop.toml) finds the champions trained on `small`
            simulate = ["simulate", "--customers", customers, "--seed", "0", "--name", "bench"]
            run_cli([*simulate, "--out", str(large)], env)
        score = ["score", "--shop", str(large), "--as-of", AS_OF, "--out"]
        before = yardstick(large)
        runs = [run_cli([*score, str(work / "decisions.parquet")], env) for _ in range(args.repeat)]
        after = yardstick(large)
    unit = yardstick_of(before, after)
    for run in runs:
        run["yardsticks"] = multiple(run["wall_s"], unit)
    result = {
        "customers": args.customers,
        "train_20k": trained,
        "score": runs,
        "yardstick": {**unit, "before": before, "after": after},
        "cpu_count": os.cpu_count(),
    }
    md = [
        "# Batch scoring benchmark",
        "",
        f"Machine: {os.cpu_count()} cores. Command: `python experiments/bench_score.py "
        f"--customers {args.customers} --repeat {args.repeat}`.",
        "",
        f"Yardstick (read the {args.customers:,}-customer shop's tables and group each by "
        f"customer; median of {len(unit['runs_s'])} runs before and after scoring): "
        f"{unit['median_s']} s (before {before['median_s']} s, after {after['median_s']} s).",
        "",
        "| step | wall (s) | yardsticks | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
        "| `sendwise train all` on 20,000 customers (horizon 30 d) | "
        + (
            f"{trained['wall_s']} | {multiple(trained['wall_s'], unit)} | "
            f"{trained['peak_rss_mib']:,} |"
            if trained
            else "reused | - | - |"
        ),
        *[
            f"| `sendwise score` on {args.customers:,} customers (target < 120 s), run {k} "
            f"| {run['wall_s']} | {run['yardsticks']} | {run['peak_rss_mib']:,} |"
            for k, run in enumerate(runs, 1)
        ],
        "",
        f"Output: {runs[-1]['stdout']}",
    ]
    write_results("score", md, result)


def yardstick_of(before: dict, after: dict) -> dict:
    """One yardstick from the runs before and after scoring: the median of them all."""
    runs = before["runs_s"] + after["runs_s"]
    return {"median_s": round(statistics.median(runs), 3), "runs_s": runs}


if __name__ == "__main__":
    main()
