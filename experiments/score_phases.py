"""Where batch scoring's time goes: each step of `sendwise score`, timed alone.

    python experiments/score_phases.py --work DIR [--buckets 2]

Reads the bucketed bench shop and its champions that `experiments/bench_score.py --work DIR`
left in DIR (`large-16`, MLflow store, artifacts). Times, in this process: the champions'
load, the shop-wide context and two of its parts (the purchase matrix; the product ranker's
shop-wide part: ALS fit, co-purchase weights, item statistics), then, for the first
`--buckets` buckets, each step a bucket's snapshot takes (features, propensity and its
reasons, best hours, product candidates and lists, offer values), the bucket's snapshot as
scoring builds it (those steps, the lists ranked beside the rest) and the policy's decisions
from it, each in wall and CPU seconds. The product lists here rank without the
recently-bought exclusion scoring applies. Writes experiments/results/score_phases.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from bench_features import write_results
from child import work_env

AS_OF = datetime(2026, 5, 31, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_score.py's --work.")
    parser.add_argument("--buckets", type=int, default=2, help="Buckets to time.")
    args = parser.parse_args()
    os.environ.update(work_env(args.work))
    from sendwise.features import builders
    from sendwise.features.shop import bucket_dirs, read_bucket, read_shop
    from sendwise.models.base import part_of_batch
    from sendwise.models.products import Ranking
    from sendwise.policy.config import load_settings
    from sendwise.serving import engine

    shop_dir = args.work / "large-16"
    seconds: dict[str, float] = defaultdict(float)
    cpu_seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def timer(name: str) -> Iterator[None]:
        started, cpu_started = time.perf_counter(), time.process_time()
        yield
        seconds[name] += time.perf_counter() - started
        cpu_seconds[name] += time.process_time() - cpu_started

    with timer("load champions"):
        champions = engine.Champions.load("bench")
    shop, settings = read_shop(shop_dir, validate=False), load_settings()
    with timer("shop context (all of it)"):
        context = engine.shop_context(champions, shop, AS_OF, settings)
    with timer("  purchase matrix (interactions)"):
        history = builders.interactions(shop, AS_OF).collect()
    model, rules = champions.products, settings.products
    with timer("  product ranker's shop-wide part (ALS, co-purchase)"):
        model.items(history, AS_OF)
    for bucket in bucket_dirs(shop_dir)[: args.buckets]:
        part = read_bucket(bucket, validate=False)
        with part_of_batch(context.rows):
            with timer("activity hours"):
                hours = builders.activity_hours(part, AS_OF, context.timezone).collect()
            with timer("customer features"):
                features = builders.customer_features(
                    part, AS_OF, hours.lazy(), context.timezone
                ).collect()
            with timer("propensity"):
                champions.propensity.predict_proba(features)
            with timer("propensity reasons"):
                champions.propensity.top_reasons(features, k=1, trees=engine.REASON_TREES)
            with timer("best hours"):
                groups = features.select("customer_id", group=pl.col("timezone"))
                champions.sendtime.best_hours(hours, groups, k=3)
            with timer("purchase matrix"):
                bought = builders.interactions(part, AS_OF).collect()
            with timer("product candidates"):
                candidates = model.candidate_context(bought, AS_OF, context.items)
            with timer("product lists (ranked)"):
                lists = [Ranking(rules.count), Ranking(rules.cross_sell, new_only=True)]
                model.rank_lists(candidates, lists, context.out_of_stock)
            if champions.offer is not None:
                with timer("offer values"):
                    columns = features.select(champions.offer.feature_names)
                    settings.offers.policy("snapshot").expected_values(champions.offer, columns)
            with timer("a bucket's snapshot (all of the above, the lists beside the rest)"):
                snapshot = engine.snapshot_of(champions, part, context)
        with timer("the policy, from that snapshot"):
            job = engine.ScoreJob(context, "bench", {}, "default", "phases", None)
            engine.decide_snapshot(snapshot, job)
    md = [
        "# Where batch scoring's time goes",
        "",
        f"Command: `python experiments/score_phases.py --work DIR --buckets {args.buckets}` on "
        f"the bench shop of `experiments/bench_score.py` ({context.rows:,} customers, 16 "
        f"buckets; each bucket step summed over the first {args.buckets}). Single runs, one "
        "process; CPU seconds are the process's, every thread's together.",
        "",
        "| step | wall (s) | CPU (s) |",
        "|---|---:|---:|",
        *[f"| {name} | {value:.2f} | {cpu_seconds[name]:.2f} |" for name, value in seconds.items()],
    ]
    write_results("score_phases", md)


if __name__ == "__main__":
    main()
