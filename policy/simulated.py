"""A snapshot for a simulated shop without trained models: the policy's inputs read from the
shop's own data and its planted truth, so decisions (and what they earned) can be studied
quickly and reproducibly."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.features import builders
from sendwise.features.shop import Shop, read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.store.decisions import DecisionLog

from .config import Settings
from .decide import SNAPSHOT_SCHEMA, Context, Snapshot, decide
from .segments import SegmentRules

ARMS = ("none", "free_shipping", "10_off")
# holdouts and exploration large enough that every comparison of a small simulated campaign
# has both sides (studies of the report, not defaults for a shop)
STUDY_SETTINGS = Settings.model_validate(
    {
        "holdouts": {
            "global": 0.15,
            "campaign": 0.05,
            "products": 0.25,
            "sendtime": 0.25,
            "offer": 0.10,
        },
        "offers": {"exploration": 0.5},
    }
)


def simulated_snapshot(
    shop: Shop, as_of: datetime, truth: pl.DataFrame, arms: tuple[str, ...] = ARMS, seed: int = 0
) -> Snapshot:
    """What models would say of a simulated shop, read from what the shop shows (segment,
    favourite category's best sellers, busiest local hour), except the offer values: a noisy
    reading of the planted uplift, so the offer policy is neither perfect nor useless. For
    deciding on a simulated shop without training anything (tests, coverage experiments)."""
    features = builders.customer_features(shop, as_of).collect()
    lines = shop.orders.join(shop.products.select("product_id", "category"), on="product_id")
    lines = lines.filter(pl.col("quantity") > 0).collect()
    popular = lines.group_by("product_id").len().sort("len", "product_id", descending=True)
    in_category = (
        lines.group_by("category", "product_id")
        .len()
        .sort("len", "product_id", descending=True)
        .group_by("category", maintain_order=True)
        .agg(personal=pl.col("product_id").head(10))
    )
    favourite = (
        lines.group_by("customer_id", "category")
        .len()
        .sort("len", "category", descending=True)
        .group_by("customer_id", maintain_order=True)
        .agg(pl.col("category").first())
        .join(in_category, on="category")
    )
    unsubscribed = (
        shop.email_events.filter(pl.col("event_type").is_in(["unsubscribe", "complaint"]))
        .select("customer_id")
        .unique()
        .collect()
        .with_columns(unsubscribed=pl.lit(True))
    )
    frame = (
        features.with_columns(SegmentRules().expression())
        .join(favourite, on="customer_id", how="left")
        .join(unsubscribed, on="customer_id", how="left")
        .join(
            truth.select("customer_id", *(f"true_uplift_{a}" for a in arms[1:])),
            on="customer_id",
            how="left",
        )
        .select(
            "customer_id",
            "timezone",
            "segment",
            pl.col("unsubscribed").fill_null(False),
            pl.col("bounces_total").alias("bounces"),
            pl.lit(0.1).alias("purchase_propensity"),
            pl.lit("base").alias("propensity_reason"),
            pl.col("personal").alias("products"),
            pl.lit(None, pl.List(pl.String)).alias("cross_sell"),
            pl.when(pl.col("activity_total") >= 5)
            .then(pl.concat_list(pl.col("peak_local_hour").cast(pl.Int64)))
            .otherwise(pl.lit([], pl.List(pl.Int64)))
            .alias("best_hours"),
            pl.lit(0.0).alias("value_none"),
            pl.lit(0.0).alias("cost_none"),
            *((pl.col(f"true_uplift_{a}") * 40 - 1.5).alias(f"value_{a}") for a in arms[1:]),
            *(pl.lit(0.0).alias(f"cost_{a}") for a in arms[1:]),
        )
        .cast(dict(SNAPSHOT_SCHEMA))
    )
    rng = np.random.default_rng(seed)
    noise = {f"value_{a}": frame[f"value_{a}"] + rng.normal(0, 0.5, frame.height) for a in arms[1:]}
    top = popular["product_id"].head(10).to_list()
    return Snapshot(frame.with_columns(**noise), top, top, "offer:1,products:1,sendtime:1", arms)


def logged_campaigns(
    directory: Path,
    customers: int,
    seed: int,
    settings: Settings,
    log: DecisionLog,
    campaigns: tuple[str, ...] = ("june",),
) -> tuple[Shop, pl.DataFrame, pl.DataFrame]:
    """A simulated shop written to `directory`, and each campaign decided for every customer
    by the one policy on `simulated_snapshot` and logged as one batch (decided at the shop's
    last activity): (the shop, its truth, the logged decisions)."""
    tables, truth = simulate(SimulationSettings(customers=customers, seed=seed))
    write_shop({**tables, "ground_truth/customers": truth}, directory)
    shop = read_shop(directory)
    as_of = shop.latest()
    snapshot = simulated_snapshot(shop, as_of, truth)
    recipients = (
        shop.customers.select("customer_id", opted_out=~pl.col("email_opt_in"))
        .collect()
        .sort("customer_id")
    )
    for name in campaigns:  # each campaign its own holdout draws
        rows = decide(snapshot, recipients, Context(campaign=name), settings, as_of, batch_id=name)
        log.append(name, as_of, rows)
    return shop, truth, log.read()
