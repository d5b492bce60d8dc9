"""`sendwise demo`: every step that exists, end to end, on a small simulated shop."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sendwise.features import builders
from sendwise.features.experiment import campaign_experiment
from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.reports.uplift import render, summarise
from sendwise.serving.engine import Champions, score_batch
from sendwise.store import registry
from sendwise.store.files import atomic_path, write_frame
from sendwise.training.backtest import PRIMARY_METRIC
from sendwise.training.offers import train_offer
from sendwise.training.train import MODELS, train

HORIZON_DAYS = 30


def planted_hour_recovery(features: pl.DataFrame, truth: pl.DataFrame, min_activity: int = 10):
    """Share of customers with enough activity whose busiest local hour is the planted one (±1)."""
    joined = features.join(truth, on="customer_id").filter(pl.col("activity_total") >= min_activity)
    gap = (pl.col("peak_local_hour") - pl.col("preferred_hour")).abs()
    hit = pl.min_horizontal(gap, 24 - gap) <= 1
    return joined.select(hit.mean()).item(), len(joined)


def frame_table(frame: pl.DataFrame, title: str) -> Table:
    table = Table(*frame.columns, title=title, title_justify="left")
    for row in frame.iter_rows():
        table.add_row(
            *("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v) for v in row)
        )
    return table


def run_demo(workdir: Path, customers: int, out: Console) -> None:
    settings = SimulationSettings(customers=customers, seed=7)
    as_of = settings.end - timedelta(days=HORIZON_DAYS)
    shop_dir, started = workdir / "shop", time.perf_counter()
    columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    with Progress(*columns, console=out, transient=True) as progress:
        step = progress.add_task(f"Simulating {customers:,} customers", total=None)
        tables, truth = simulate(settings)
        write_shop({**tables, "ground_truth/customers": truth}, shop_dir)
        progress.update(step, description="Reading and checking the shop")
        shop = read_shop(shop_dir)
        progress.update(step, description=f"Building features as of {as_of:%Y-%m-%d}")
        features, labels = pl.collect_all(
            [
                builders.customer_features(shop, as_of),
                builders.purchase_labels(shop, as_of, HORIZON_DAYS),
            ]
        )
        write_frame(features, workdir / "features.parquet")
        write_frame(labels, workdir / "labels.parquet")
        trained = []
        for task in MODELS:
            progress.update(
                step, description=f"Training {task} (MLflow: {registry.tracking_uri()})"
            )
            trained.append(train(task, shop, as_of, HORIZON_DAYS))
            registry.promote(task, PRIMARY_METRIC[task])
        progress.update(step, description="Learning offer uplift from the randomised campaign")
        campaign = campaign_experiment(shop)
        offer = train_offer(campaign)
        registry.promote("offer", PRIMARY_METRIC["offer"])
        progress.update(step, description="Scoring every customer with the champions")
        decisions = score_batch(Champions.load(), shop, as_of)
        write_frame(decisions, workdir / "decisions.parquet")
        progress.update(step, description="Writing the uplift report")
        summary = summarise(campaign, title=f"Uplift report: the demo shop's {campaign.source}")
        report = workdir / "uplift_report.html"
        with atomic_path(report) as staging:
            staging.write_text(render(summary), encoding="utf-8")
    share, eligible = planted_hour_recovery(features, truth)
    rows = ", ".join(f"{name} {len(frame):,}" for name, frame in tables.items())
    out.print(f"[bold]Shop[/bold] {shop_dir}: {rows}")
    out.print(
        f"[bold]Features[/bold] {len(features):,} customers x {features.width - 1} columns "
        f"as of {as_of:%Y-%m-%d} -> {workdir / 'features.parquet'}"
    )
    out.print(
        f"[bold]Labels[/bold] {labels['purchased'].mean():.1%} bought in the next "
        f"{HORIZON_DAYS} days -> {workdir / 'labels.parquet'}"
    )
    out.print(
        f"[bold]Planted truth[/bold] busiest local hour within ±1h of the planted hour for "
        f"{share:.1%} of {eligible:,} customers with 10+ signals"
    )
    for result in trained:
        shown = ", ".join(
            f"{k} {v:.3f}"
            for k, v in result.metrics.items()
            if k in ("roc_auc", "ndcg@10", "hit@3")
        )
        out.print(
            f"[bold]Model[/bold] {result.registered.name} v{result.registered.version} ({shown}; "
            f"validated on the {HORIZON_DAYS} days before the cut-off)"
        )
    out.print(
        f"[bold]Decisions[/bold] {len(decisions):,} -> {workdir / 'decisions.parquet'}; segments: "
        + ", ".join(f"{s} {n}" for s, n in decisions["segment"].value_counts(sort=True).iter_rows())
    )
    out.print(
        frame_table(
            decisions.select(
                "customer_id",
                "segment",
                "purchase_propensity",
                "offer",
                pl.col("products").list.head(3).list.join(" "),
                pl.col("best_hours").list.eval(pl.element().cast(pl.String)).list.join(" "),
                "send_at",
            ).head(5),
            "Sample decisions",
        )
    )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in offer.metrics.items() if k == "qini_auc")
    out.print(
        f"[bold]Model[/bold] {offer.registered.name} v{offer.registered.version} (arms "
        f"{', '.join(offer.model.arms)}; {shown} on a held-out 30% of the campaign)"
    )
    out.print(
        "[bold]Offers[/bold] "
        + ", ".join(f"{o} {n}" for o, n in decisions["offer"].value_counts(sort=True).iter_rows())
        + f"; holdout {decisions['holdout'].mean():.1%}"
    )
    out.print(f"[bold]Uplift report[/bold] {report}")
    out.print(summary.headline())
    out.print(f"Done in {time.perf_counter() - started:.1f}s")
    out.print(
        "Next: the decision API on this shop: "
        "[bold]SENDWISE_API_KEYS=change-me sendwise serve[/bold] (see the README)"
    )
