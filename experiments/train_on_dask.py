"""Propensity and products trained on one node and on Dask (`lightgbm.dask`): time, memory
and validation.

    python experiments/train_on_dask.py [--customers 20000] [--buckets 4]

On Online Retail (DESIGN protocol: as of 2011-09-09, horizon 90 days) and a simulated shop
(as of 2026-05-31, horizon 30 days), each split into `--buckets` buckets: `sendwise train
propensity` with `--engine local` and with `--engine dask` (a local two-worker cluster started
by the command), each in a child process with its own MLflow store; then `sendwise train
crosssell` (the product ranker) the same two ways. The validation figures
are those the command prints and logs (a backtest at T - H, fitted the same way); the peak is
the largest process's (the CLI, or one worker). Writes experiments/results/train_dask.md.
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
from pathlib import Path

from bench_features import ONLINE_RETAIL, write_results
from child import run_cli, work_env
from yardstick import multiple, yardstick

SHOPS = {"Online Retail": ("2011-09-09", "90"), "simulated": ("2026-05-31", "30")}
FIGURES = {  # what each model's validation is read as, from what the command prints
    "propensity": r"(roc_auc|pr_auc|ece) (-?[\d.]+)",
    "crosssell": r"(ndcg@10|recall@10|new_ndcg@10|new_recall@10) (-?[\d.]+)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000, help="Simulated customers.")
    parser.add_argument("--buckets", type=int, default=4)
    args = parser.parse_args()
    rows, result = [], {}
    with tempfile.TemporaryDirectory(prefix="sendwise-train-dask-") as tmp:
        work = Path(tmp)
        shops = {
            "Online Retail": ["import", "online-retail", str(ONLINE_RETAIL)],
            "simulated": ["simulate", "--customers", str(args.customers), "--seed", "1"],
        }
        for name, make in shops.items():
            plain, bucketed = work / f"{name}-plain", work / f"{name}-buckets"
            run_cli([*make, "--out", str(plain)])
            run_cli(
                ["shop", "partition", "--shop", str(plain), "--buckets", str(args.buckets)]
                + ["--out", str(bucketed)]
            )
            unit = yardstick(plain)
            as_of, horizon = SHOPS[name]
            for task, engine in itertools.product(FIGURES, ("local", "dask")):
                env = work_env(work / f"{name}-{task}-{engine}")
                run = run_cli(
                    ["train", task, "--shop", str(bucketed), "--as-of", as_of]
                    + ["--horizon-days", horizon, "--engine", engine],
                    env,
                )
                figures = dict(re.findall(FIGURES[task], run["stdout"]))
                result[f"{name}/{task}/{engine}"] = {**run, "figures": figures, "yardstick": unit}
                rows.append(
                    f"| {name} | {task} | {engine} | {run['wall_s']} | "
                    f"{multiple(run['wall_s'], unit)} | {run['peak_rss_mib']:,} | "
                    + ", ".join(f"{k} {v}" for k, v in figures.items())
                    + " |"
                )
        sizes = ranker_examples(work / "simulated-plain", *SHOPS["simulated"])
    result["simulated/ranker_examples"] = sizes
    md = [
        "# Propensity and products on one node and on Dask",
        "",
        f"Command: `python experiments/train_on_dask.py --customers {args.customers} "
        f"--buckets {args.buckets}`. `sendwise train propensity` and `crosssell` on a shop "
        f"split into {args.buckets} buckets; validation is the backtest at T - H the command logs "
        "(Online Retail: as of 2011-09-09, 90 days; simulated: as of 2026-05-31, 30 days). "
        "Yardstick: reading the shop's tables and grouping each by customer, on this machine "
        "in the same run.",
        "",
        "| shop | model | engine | wall (s) | yardsticks | peak RSS (MiB) | validation |",
        "|---|---|---|---:|---:|---:|---|",
        *rows,
        "",
        f"The product ranker's examples on the simulated shop (as of {SHOPS['simulated'][0]}, "
        f"its validation cut-off's training set): {sizes['pairs_per_buyer']} candidate pairs "
        f"per buyer and cut-off, {sizes['features']} features each; "
        f"{sizes['teaching_share']:.0%} of the pairs belong to customers who then bought one "
        "and teach the all-products head.",
    ]
    write_results("train_dask", md, result)


def ranker_examples(shop: Path, as_of: str, horizon: str) -> dict:
    """How large the ranker's examples are on one node: candidate pairs per buyer and
    cut-off, and the share of them that teach (customers who then bought a candidate). Sizes
    which shops are too big for one node's memory."""
    from datetime import timedelta

    from sendwise.features.clock import parse_as_of
    from sendwise.features.shop import read_shop
    from sendwise.models.products import PAIR_FEATURES, ProductRanker
    from sendwise.training.backtest import product_examples

    ranker = ProductRanker()
    cutoff = parse_as_of(as_of) - timedelta(days=int(horizon))  # validation's training
    examples = product_examples(read_shop(shop), cutoff, int(horizon))
    train = ranker.stack([ranker.labelled_pairs(*example) for example in examples])
    buyers = sum(history["customer_id"].n_unique() for history, _, _ in examples)
    return {
        "pairs": len(train),
        "pairs_per_buyer": round(len(train) / buyers, 1),
        "features": len(PAIR_FEATURES),
        "teaching_share": round(len(ranker.teaching(train)[1]) / len(train), 3),
    }


if __name__ == "__main__":
    main()
