"""What customers actually receive, judged on Online Retail: the decisions file of `sendwise
score`, not the backtest's separate heads.

    python experiments/served_quality.py [--work DIR]

DESIGN.md protocol: as of 2011-09-09, horizon 90 days, customers with a purchase on or before
that day. The real CLI imports the file, trains and promotes every model, and scores; the
`products` lists are judged on every item bought in the window (NDCG@10, recall@10), the
`cross_sell` lists on items new to the customer, `purchase_propensity` on whether they bought.
Writes experiments/results/served.json and served.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
from bench_features import machine, write_results
from child import run_cli, work_env
from sklearn.metrics import roc_auc_score

from sendwise.features import builders
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop
from sendwise.models.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail_2010_2011.csv.gz"
AS_OF, HORIZON = "2011-09-09", 90
BARS = {"products_ndcg@10": 0.346, "cross_sell_recall@10": 0.046, "roc_auc": 0.729}


def judge(shop_dir: Path, decisions: pl.DataFrame) -> dict[str, float]:
    shop, as_of = read_shop(shop_dir), parse_as_of(AS_OF)
    history = builders.interactions(shop, as_of).collect()
    buyers = history.select("customer_id").unique()
    window = builders.purchases_between(shop, as_of, as_of + timedelta(days=HORIZON)).collect()
    truth = window.join(buyers, on="customer_id", how="semi")
    new_truth = truth.join(history, on=["customer_id", "product_id"], how="anti")
    judged = decisions.join(buyers, on="customer_id", how="semi")
    products = ranking_metrics(judged.select("customer_id", "products"), truth)
    cross_sell = ranking_metrics(
        judged.select("customer_id", products=pl.col("cross_sell")), new_truth
    )
    bought = judged.select(
        "purchase_propensity",
        bought=pl.col("customer_id").is_in(truth["customer_id"].unique().implode()),
    )
    return {
        "customers": len(judged),
        "products_ndcg@10": products["ndcg@10"],
        "products_recall@10": products["recall@10"],
        "cross_sell_ndcg@10": cross_sell["ndcg@10"],
        "cross_sell_recall@10": cross_sell["recall@10"],
        "roc_auc": float(roc_auc_score(bought["bought"], bought["purchase_propensity"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="Keep the shop, registry and files here.")
    work = parser.parse_args().work or Path(tempfile.mkdtemp(prefix="served-"))
    env, shop = work_env(work), work / "online_retail"
    steps = [
        ["import", "online-retail", str(ONLINE_RETAIL), "--out", str(shop)],
        ["train", "all", "--shop", str(shop), "--as-of", AS_OF, "--horizon-days", str(HORIZON)],
        ["promote", "all", "--shop", str(shop)],
        ["score", "--shop", str(shop), "--as-of", AS_OF, "--out", str(work / "decisions.parquet")],
    ]
    timings = {}
    for args in steps if not (work / "decisions.parquet").exists() else steps[-1:]:
        timings[" ".join(args[:2])] = run_cli(args, env)["wall_s"]
    started = time.perf_counter()
    figures = judge(shop, pl.read_parquet(work / "decisions.parquet"))
    result = {
        "machine": machine(),
        "protocol": f"Online Retail, as of {AS_OF}, horizon {HORIZON} days",
        "figures": figures,
        "bars": BARS,
        "cli_seconds": timings,
        "judge_seconds": round(time.perf_counter() - started, 1),
    }
    lines = [
        "# Served decisions on Online Retail",
        "",
        f"`python experiments/served_quality.py` at {result['machine']['commit']}: {result['protocol']}, judged from "
        f"the decisions file of `sendwise score` ({figures['customers']:,} customers).",
        "",
        "| figure | from `score` | DESIGN.md bar |",
        "|---|---:|---:|",
    ]
    for name, value in figures.items():
        if name != "customers":
            bar = BARS.get(name)
            lines.append(f"| {name} | {value:.4f} | {'' if bar is None else f'{bar:.3f}'} |")
    write_results("served", lines, result)


if __name__ == "__main__":
    main()
