"""A bucket's snapshot, policy and file, timed in wall and CPU seconds: the figure to compare
two revisions by, run after run.

    python experiments/snapshot_times.py --work DIR [--buckets 0 3]

Reads the bucketed bench shop and its champions that `experiments/bench_score.py --work DIR`
left in DIR. Computes the shop's context once, then for each bucket named: its snapshot as
scoring builds it (`snapshot_of`), the policy's decisions from it, and their Parquet file.
Prints one line per bucket; CPU seconds are the process's, every thread's together. To
compare revisions, run it from a worktree of each in turn, alternating, since this shared
machine's speed drifts from one minute to the next.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from child import work_env

AS_OF = datetime(2026, 5, 31, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_score.py's --work.")
    parser.add_argument("--buckets", type=int, nargs="+", default=[0, 3], help="Buckets to time.")
    args = parser.parse_args()
    os.environ.update(work_env(args.work))
    from sendwise.features.shop import bucket_dirs, read_bucket, read_shop
    from sendwise.serving import engine

    shop_dir = args.work / "large-16"
    champions = engine.Champions.load("bench")
    context = engine.shop_context(champions, read_shop(shop_dir, validate=False), AS_OF)
    buckets = bucket_dirs(shop_dir)
    job = engine.ScoreJob(context, "bench", {}, "default", "times", None)  # no caps
    with tempfile.TemporaryDirectory() as tmp:
        for number in args.buckets:
            part = read_bucket(buckets[number], validate=False)
            marks = [clock()]
            snapshot = engine.snapshot_of(champions, part, context)
            marks.append(clock())
            decisions = engine.decide_snapshot(snapshot, job)
            marks.append(clock())
            decisions.write_parquet(Path(tmp, "part.parquet"))
            marks.append(clock())
            laps = [
                f"{name} {end[0] - start[0]:.2f} s ({end[1] - start[1]:.2f} CPU-s)"
                for name, start, end in zip(
                    ("snapshot", "policy", "file"), marks, marks[1:], strict=False
                )
            ]
            print(f"bucket {number}: " + ", ".join(laps), flush=True)


def clock() -> tuple[float, float]:
    """Wall and CPU seconds now."""
    return time.perf_counter(), time.process_time()


if __name__ == "__main__":
    main()
