"""What string customer ids cost a bucket's features: the same jobs on the same rows with the
ids as text (as the contract has them) and as whole numbers, measured before building it.

    python experiments/id_types.py --work DIR [--repeat 3]

Reads bucket 0 of the bench shop that `experiments/bench_score.py --work DIR` left in DIR
(`large-16`) into memory, once as it is and once with every table's `customer_id` turned into
an Int64 (`c0148957` -> 148957), then collects what a bucket's snapshot collects from it first
(activity hours, customer features, the purchase matrix), alternating, `--repeat` times each.
Wall and CPU seconds of this process. Writes experiments/results/id_types.md.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from bench_features import write_results
from child import work_env

AS_OF = datetime(2026, 5, 31, tzinfo=UTC)
CUSTOMER_TABLES = ("orders", "customers", "events", "email_events", "assignments")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_score.py's --work.")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(work_env(args.work))
    from sendwise.features import builders
    from sendwise.features.shop import Shop, bucket_dirs, read_bucket

    bucket = bucket_dirs(args.work / "large-16")[0]
    as_read = read_bucket(bucket, validate=False)
    timezone = builders.shop_timezone(as_read)

    def in_memory(shop: Shop, ids: pl.Expr) -> Shop:
        tables = {
            name: shop.table(name).with_columns(ids).collect().lazy() for name in CUSTOMER_TABLES
        }
        return replace(shop, **tables)

    def features(shop: Shop) -> tuple[float, float]:
        # `hour_profile` declares String ids; this throw-away process declares the tables' own
        builders.PROFILE_SCHEMA["customer_id"] = shop.orders.collect_schema()["customer_id"]
        started, cpu_started = time.perf_counter(), time.process_time()
        hours = builders.activity_hours(shop, AS_OF, timezone).collect()
        builders.customer_features(shop, AS_OF, hours.lazy(), timezone).collect()
        builders.interactions(shop, AS_OF).collect()
        return time.perf_counter() - started, time.process_time() - cpu_started

    shops = {
        "String (as the contract has them)": in_memory(as_read, pl.col("customer_id")),
        "Int64": in_memory(as_read, pl.col("customer_id").str.slice(1).cast(pl.Int64)),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in shops}
    for _ in range(args.repeat):
        for name, shop in shops.items():
            runs[name].append(features(shop))
    md = [
        "# What string customer ids cost a bucket's features",
        "",
        f"Command: `python experiments/id_types.py --work DIR --repeat {args.repeat}` (bucket 0 "
        "of the 1,000,000-customer bench shop, in memory; activity hours, customer features "
        "and the purchase matrix collected, the two kinds of id alternating).",
        "",
        "| customer_id | wall (s), each run | CPU (s), each run |",
        "|---|---|---|",
        *[
            f"| {name} | {', '.join(f'{w:.2f}' for w, _ in times)} | "
            f"{', '.join(f'{c:.2f}' for _, c in times)} |"
            for name, times in runs.items()
        ],
    ]
    write_results("id_types", md)


if __name__ == "__main__":
    main()
