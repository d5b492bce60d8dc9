"""`sendwise demo`: every step that exists, end to end, on a small simulated shop.

Each step is announced as it starts: a spinner on a terminal, and a line with the time since
the start in a pipe or a log, where a spinner would show nothing until the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sendwise.features import builders
from sendwise.features.experiment import campaign_experiment
from sendwise.features.respond import append_responses, respond
from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.reports.campaign import render_campaign, summarise_campaign
from sendwise.reports.outcomes import outcomes
from sendwise.reports.uplift import render, summarise
from sendwise.serving.engine import Champions, export_decisions
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog
from sendwise.store.files import atomic_path, write_frame
from sendwise.training.offers import train_offer
from sendwise.training.promote import promote
from sendwise.training.train import MODELS, train

HORIZON_DAYS = 30
CAMPAIGN = "demo"  # the demo's decisions are logged under this campaign
REPORT_DAYS = 14  # what the campaign earned is counted over the days after each send
# Fewer boosting rounds than `sendwise train` uses, for the slowest model: on the default
# 2,000 customers its validation metrics stay the same (roc_auc 0.90 either way) and training
# takes seconds less. The send-time search stays: 2s, and 3 points of hit@1.
DEMO_SETTINGS = {"propensity": {"n_estimators": 250, "learning_rate": 0.04}}
SAMPLE_ROWS, SAMPLE_PRODUCTS = 6, 2  # what fits one line a row in 80 columns


@contextmanager
def stages(out: Console, started: float) -> Iterator[Callable[[str], None]]:
    """`stage(description)` announces the step that starts now: a spinner with the step on a
    terminal, otherwise a line `[ 12.3s] description` (seconds since `started`)."""
    if out.is_terminal:
        columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
        with Progress(*columns, console=out, transient=True) as progress:
            task = progress.add_task("", total=None)
            yield lambda description: progress.update(task, description=description)
    else:
        yield lambda description: out.print(
            f"[{time.perf_counter() - started:5.1f}s] {description}", markup=False, highlight=False
        )


def planted_hour_recovery(features: pl.DataFrame, truth: pl.DataFrame, min_activity: int = 10):
    """Share of customers with enough activity whose busiest local hour is the planted one (±1)."""
    joined = features.join(truth, on="customer_id").filter(pl.col("activity_total") >= min_activity)
    gap = (pl.col("peak_local_hour") - pl.col("preferred_hour")).abs()
    hit = pl.min_horizontal(gap, 24 - gap) <= 1
    return joined.select(hit.mean()).item(), len(joined)


def sample_decisions(decisions: pl.DataFrame, timezones: pl.DataFrame) -> Table:
    """The first decision of each segment, one line each in 80 columns: the send time in UTC
    and on the recipient's clock, the first products; holdouts and unsent emails in a note."""
    sample = (
        decisions.group_by("segment", maintain_order=True)
        .head(1)
        .head(SAMPLE_ROWS)
        .join(timezones, on="customer_id", how="left", maintain_order="left")
        .select(
            "customer_id",
            "segment",
            "offer",
            "send_at",
            "timezone",
            "holdout_kind",
            pl.col("reasons").list.last().alias("last_reason"),
            pl.col("products").list.head(SAMPLE_PRODUCTS).list.join(" ").fill_null("-"),
        )
    )
    table = Table(
        title="Sample decisions (the first of each segment)",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in ("customer", "segment", "offer", "send (UTC)", "local"):
        table.add_column(header, no_wrap=True)
    table.add_column("products", overflow="fold")  # wraps, never cut
    notes = []
    for row in sample.iter_rows(named=True):
        sent, zone = row["send_at"], row["timezone"]
        when, local = "not sent", "-"
        if sent is not None:
            when = f"{sent:%b %d %H:%M}"
            local = f"{sent.astimezone(ZoneInfo(zone)):%H:%M}" if zone else "-"
        if row["holdout_kind"]:
            notes.append(f"{row['customer_id']} is in the {row['holdout_kind']} holdout")
        elif sent is None:
            notes.append(f"{row['customer_id']} gets no email: {row['last_reason']}")
        table.add_row(
            row["customer_id"], row["segment"], row["offer"], when, local, row["products"]
        )
    table.caption = "; ".join(notes) or None
    return table


def run_demo(workdir: Path, customers: int, out: Console) -> None:
    settings = SimulationSettings(customers=customers, seed=7)
    as_of = settings.end - timedelta(days=HORIZON_DAYS)
    shop_dir, started = workdir / "shop", time.perf_counter()
    with stages(out, started) as stage:
        stage(f"Simulating {customers:,} customers")
        tables, truth = simulate(settings)
        write_shop({**tables, "ground_truth/customers": truth}, shop_dir)
        stage("Reading and checking the shop")
        shop = read_shop(shop_dir)
        stage(f"Building features as of {as_of:%Y-%m-%d}")
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
            stage(f"Training {task} (MLflow: {registry.tracking_uri()})")
            trained.append(train(task, shop, as_of, HORIZON_DAYS, DEMO_SETTINGS.get(task)))
            promote(task, shop.name, shop)
        stage("Learning offer uplift from the randomised campaign")
        campaign = campaign_experiment(shop)
        offer = train_offer(campaign)
        promote("offer", shop.name, shop)
        stage(f"Scoring every customer with the champions (campaign {CAMPAIGN!r})")
        decision_log = DecisionLog()
        decisions = export_decisions(
            Champions.load(shop.name),
            shop,
            as_of,
            workdir / "decisions.parquet",
            campaign=CAMPAIGN,
            decision_log=decision_log,
        )
        stage("Writing the uplift report")
        summary = summarise(campaign, title=f"Uplift report: the demo shop's {campaign.source}")
        report = workdir / "uplift_report.html"
        with atomic_path(report) as staging:
            staging.write_text(render(summary), encoding="utf-8")
        stage(f"Customers respond to campaign {CAMPAIGN!r} (planted truth); the campaign report")
        logged = decision_log.read(campaign=CAMPAIGN).join(
            decisions.select("decision_id"), on="decision_id", how="semi"
        )
        append_responses(shop_dir, respond(shop, truth, logged, REPORT_DAYS))
        attributed = outcomes(logged, read_shop(shop_dir), REPORT_DAYS)
        earned = summarise_campaign(attributed, REPORT_DAYS, CAMPAIGN)
        campaign_report = workdir / "campaign_report.html"
        with atomic_path(campaign_report) as staging:
            staging.write_text(render_campaign(earned), encoding="utf-8")
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
        lighter = ", ".join(f"{k}={v}" for k, v in DEMO_SETTINGS.get(result.task, {}).items())
        out.print(
            f"[bold]Model[/bold] {result.registered.name} v{result.registered.version} ({shown}; "
            f"validated on the {HORIZON_DAYS} days before the cut-off"
            + (f"; demo settings {lighter})" if lighter else ")")
        )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in offer.metrics.items() if k == "qini_auc")
    out.print(
        f"[bold]Model[/bold] {offer.registered.name} v{offer.registered.version} (arms "
        f"{', '.join(offer.model.arms)}; {shown} on a held-out 30% of the campaign)"
    )
    sent, held = decisions["send"].sum(), decisions["holdout"].sum()
    out.print(
        f"[bold]Decisions[/bold] {len(decisions):,} ({sent:,} to send, {held:,} held out) -> "
        f"{workdir / 'decisions.parquet'}; segments: "
        + ", ".join(f"{s} {n}" for s, n in decisions["segment"].value_counts(sort=True).iter_rows())
    )
    out.print(
        "[bold]Offers[/bold] "
        + ", ".join(f"{o} {n}" for o, n in decisions["offer"].value_counts(sort=True).iter_rows())
        + f"; holdout {decisions['holdout'].mean():.1%}"
    )
    out.print(
        f"[bold]Decision log[/bold] {decision_log.address}"
        f": these {len(decisions):,} as campaign {CAMPAIGN!r} "
        f"(read them back: sendwise decisions export --campaign {CAMPAIGN} --out FILE)",
        highlight=False,
    )
    out.print(
        sample_decisions(decisions, shop.customers.select("customer_id", "timezone").collect())
    )
    out.print(f"[bold]Uplift report[/bold] {report}")
    out.print(summary.headline())
    out.print(f"[bold]Campaign report[/bold] {campaign_report}")
    out.print(earned.headline())
    out.print(f"Done in {time.perf_counter() - started:.1f}s")
    out.print(
        "Next: the decision API on this shop: "
        "[bold]SENDWISE_API_KEYS=change-me sendwise serve[/bold] (see the README)"
    )
