"""The synthetic shop: deterministic, valid, and carrying the truth it claims to plant."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from sendwise.features import builders
from sendwise.features.contract import TABLES
from sendwise.features.shop import read_shop, write_shop_parts
from sendwise.features.simulate import (
    ARM_PROBABILITIES,
    ARMS,
    SimulationSettings,
    simulate,
    simulate_parts,
)


def test_same_seed_same_shop_other_seed_other_shop():
    first, truth = simulate(SimulationSettings(customers=300, seed=5))
    again, truth_again = simulate(SimulationSettings(customers=300, seed=5))
    other, _ = simulate(SimulationSettings(customers=300, seed=6))
    for name in first:
        assert first[name].equals(again[name]), name
    assert truth.equals(truth_again)
    assert not first["orders"].equals(other["orders"])


def test_a_large_shop_is_simulated_and_written_part_by_part(tmp_path):
    settings = SimulationSettings(customers=2_500, seed=5)
    parts = list(simulate_parts(settings, part_customers=1_000))
    assert len(parts) == 3
    # the first part is drawn as a shop of its own; the catalogue comes with it alone
    first, _ = simulate(SimulationSettings(customers=1_000, seed=5))
    assert ["products" in tables for tables, _ in parts] == [True, False, False]
    assert parts[0][0]["assignments"].equals(first["assignments"])
    assert not parts[1][0]["orders"].equals(parts[2][0]["orders"])
    write_shop_parts(({**t, "ground_truth/customers": g} for t, g in parts), tmp_path / "shop")
    shop = read_shop(tmp_path / "shop").collect()  # checked against the contract
    assert shop["customers"]["customer_id"].n_unique() == 2_500
    assert shop["products"].equals(first["products"])
    orders, events = shop["orders"], shop["events"]
    # order and session numbers go on from part to part: each stays one customer's
    for frame, key in ((orders, "order_id"), (events, "session_id")):
        owners = frame.group_by(key).agg(pl.col("customer_id").n_unique())["customer_id"]
        assert owners.max() == 1, key
    for tables, _ in parts:  # every part has its buyers (1,000, 1,000, 500 customers)
        buyers = tables["orders"]["customer_id"].n_unique()
        assert buyers > 0.7 * tables["customers"].height
    truth = pl.read_parquet(tmp_path / "shop" / "ground_truth" / "customers.parquet")
    assert truth["customer_id"].to_list() == shop["customers"]["customer_id"].to_list()


def test_all_six_tables_pass_the_contract(simulated, simulated_shop):
    assert simulated_shop.present == set(TABLES)  # all six
    tables = simulated[1]
    assert (tables["orders"]["quantity"] < 0).any()  # returns
    assert tables["email_events"]["machine_open"].any()
    assert set(tables["events"]["event_type"]) == {"view", "add_to_cart", "search", "checkout"}


def test_busiest_local_hour_is_the_planted_one(simulated, simulated_shop):
    _, tables, truth = simulated
    as_of = tables["orders"]["ordered_at"].max()
    features = builders.customer_features(simulated_shop, as_of).collect()
    joined = features.join(truth, on="customer_id").filter(pl.col("activity_total") >= 10)
    gap = (joined["peak_local_hour"] - joined["preferred_hour"]).abs()
    within_an_hour = (np.minimum(gap, 24 - gap) <= 1).mean()
    assert len(joined) > 1_500
    assert within_an_hour > 0.85  # measured 0.93 on seed 11


def test_regular_buyers_show_their_planted_rhythm(simulated, simulated_shop):
    _, tables, truth = simulated
    as_of = tables["orders"]["ordered_at"].max()
    features = builders.customer_features(simulated_shop, as_of).collect()
    regular = features.join(truth, on="customer_id").filter(
        (pl.col("orders_total") >= 6) & pl.col("staple_product_id").is_null()
    )
    rho = regular.select(pl.corr("ipi_mean_days", "mean_interval_days", method="spearman")).item()
    assert rho > 0.6


def test_staples_are_bought_again_on_their_cycle(simulated):
    _, tables, truth = simulated
    staple = (
        tables["orders"]
        .filter(pl.col("quantity") > 0)
        .join(
            truth.select("customer_id", "staple_product_id", "staple_cycle_days"), on="customer_id"
        )
        .filter(pl.col("product_id") == pl.col("staple_product_id"))
        .sort("ordered_at")
        .group_by("customer_id")
        .agg(
            gap=pl.col("ordered_at").diff().dt.total_hours().drop_nulls().median() / 24,
            cycle=pl.col("staple_cycle_days").first(),
            n=pl.len(),
        )
        .filter(pl.col("n") >= 4)
    )
    ratio = (staple["gap"] / staple["cycle"]).median()
    assert len(staple) > 200
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_abandoners_abandon_and_openers_open(simulated, simulated_shop):
    _, tables, truth = simulated
    as_of = tables["orders"]["ordered_at"].max()
    features = (
        builders.customer_features(simulated_shop, as_of).collect().join(truth, on="customer_id")
    )
    active = features.filter(pl.col("carts_total") >= 3)
    abandon_rho = active.select(
        pl.corr(
            pl.col("abandoned_carts_total") / pl.col("carts_total"),
            "cart_abandon_prob",
            method="spearman",
        )
    ).item()
    mailed = features.filter(pl.col("sends_total") >= 8)
    open_rho = mailed.select(pl.corr("open_rate_90d", "open_prob", method="spearman")).item()
    assert abandon_rho > 0.3 and open_rho > 0.5


def test_offer_campaign_is_randomised_with_logged_propensities_and_planted_uplift(simulated):
    _, tables, truth = simulated
    assignments = tables["assignments"]
    shares = assignments["arm"].value_counts(normalize=True).sort("arm")
    expected = dict(zip(ARMS, ARM_PROBABILITIES, strict=True))
    for arm, share in shares.iter_rows():
        assert share == pytest.approx(expected[arm], abs=0.04)
    assert (assignments["propensity"] == assignments["arm"].replace_strict(expected)).all()
    # conversion in the 14 days after assignment rises by about the planted mean uplift
    start = assignments["assigned_at"][0]
    buyers = (
        tables["orders"]
        .filter(
            (pl.col("ordered_at") > start) & (pl.col("ordered_at") <= start + timedelta(days=14))
        )
        .filter(pl.col("quantity") > 0)
        .select("customer_id")
        .unique()
        .with_columns(converted=pl.lit(True))
    )
    outcome = assignments.join(buyers, on="customer_id", how="left").join(truth, on="customer_id")
    rate = outcome.group_by("arm").agg(pl.col("converted").fill_null(False).mean()).sort("arm")
    rates = dict(rate.iter_rows())
    planted = outcome.select(pl.col("true_uplift_10_off").mean()).item()
    assert rates["10_off"] - rates["none"] == pytest.approx(planted, abs=0.035)
    assert rates["10_off"] > rates["none"] and rates["free_shipping"] > rates["none"]
