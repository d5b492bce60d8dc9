"""Training, promotion and scoring against a real MLflow store (SQLite in a temporary home)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from champions import fitted  # tests/champions.py: one fit a session for the same inputs

from sendwise.features import builders
from sendwise.features.clock import parse_as_of
from sendwise.models.products import ProductRanker
from sendwise.models.propensity import PurchasePropensity
from sendwise.models.sendtime import SendTimeModel
from sendwise.policy.segments import SEGMENTS
from sendwise.serving.engine import Champions, score_batch
from sendwise.store import registry
from sendwise.training.backtest import backtest_propensity, popular_lists, sendtime_inputs
from sendwise.training.promote import promote
from sendwise.training.train import train

AS_OF = parse_as_of("2026-05-31")
HORIZON = 30
QUICK_SENDTIME = {"prior_strength": 3.0, "kernel_width": 1.0, "half_life_days": 90.0}


def test_promotion_only_when_the_challenger_is_better_and_score_decides_from_champions(
    simulated_shop, mlflow_home
):
    """One store, the propensity model trained once: promotion keeps the better model as
    champion, then the three champions decide for every known customer."""
    first = train("propensity", simulated_shop, AS_OF, HORIZON)
    shop = simulated_shop.name
    assert (
        str(registry.alias_version(shop, "propensity", "challenger").version)
        == first.registered.version
    )
    assert promote("propensity", shop, simulated_shop).promoted
    # a deliberately weak challenger: one tiny tree
    weak = train(
        "propensity", simulated_shop, AS_OF, HORIZON, params={"n_estimators": 1, "num_leaves": 2}
    )
    assert weak.metrics["roc_auc"] < first.metrics["roc_auc"]
    refused = promote("propensity", shop, simulated_shop)
    assert not refused.promoted and refused.message.startswith("refused")
    assert (
        str(registry.alias_version(shop, "propensity", "champion").version)
        == first.registered.version
    )
    run = registry.client().get_run(first.registered.run_id)
    assert run.data.tags["as_of"] == AS_OF.isoformat() and "code_version" in run.data.tags
    assert run.data.metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"])

    # score: the champions decide for every known customer (propensity: v1, promoted above).
    # The product ranker with few trees: what is checked of it here is that its lists reach
    # the decisions (its quality against the bars: test_quality_online_retail)
    train("crosssell", simulated_shop, AS_OF, HORIZON, params={"n_estimators": 20})
    train("sendtime", simulated_shop, AS_OF, HORIZON, params=QUICK_SENDTIME)
    for task in ("crosssell", "sendtime"):
        assert promote(task, simulated_shop.name, simulated_shop).promoted
    decisions = score_batch(Champions.load(simulated_shop.name), simulated_shop, AS_OF)
    known = builders.customer_features(simulated_shop, AS_OF).collect()
    assert decisions["customer_id"].to_list() == known["customer_id"].to_list()
    assert set(decisions["segment"].unique()) <= set(SEGMENTS)
    assert decisions["best_hours"].list.len().eq(3).all()
    assert decisions["products"].list.len().min() > 0
    wait = (decisions["send_at"] - AS_OF).dt.total_hours()
    assert wait.min() >= 0 and wait.max() <= 24
    assert decisions["purchase_propensity"].is_between(0, 1).all()
    assert decisions["model_versions"][0] == "crosssell:1,propensity:1,sendtime:1"
    assert decisions["decision_id"].is_unique().all()
    # the highest-propensity decile really buys more in the next 30 days
    labels = builders.purchase_labels(simulated_shop, AS_OF, HORIZON).collect()
    joined = decisions.join(labels, on="customer_id")
    top = joined.filter(
        pl.col("purchase_propensity") >= pl.col("purchase_propensity").quantile(0.9)
    )
    assert top["purchased"].mean() > 2 * joined["purchased"].mean()


def test_send_time_recovers_the_planted_hour(simulated, simulated_shop):
    activity, groups = sendtime_inputs(simulated_shop, AS_OF)
    model = SendTimeModel(**QUICK_SENDTIME).fit(activity, groups)
    truth = simulated[2]
    signals = activity.group_by("customer_id").len()
    rich = groups.join(signals.filter(pl.col("len") >= 10), on="customer_id").join(
        truth, on="customer_id"
    )
    best = np.array(
        [hours[0] for hours in model.best_hours(activity, rich.select("customer_id", "group"))]
    )
    gap = np.abs(best - rich["preferred_hour"].to_numpy())
    within_an_hour = (np.minimum(gap, 24 - gap) <= 1).mean()
    exact = (gap == 0).mean()
    print(
        f"planted hour recovered: {within_an_hour:.1%} within 1h, {exact:.1%} exactly, of {len(rich)}"
    )
    assert len(rich) > 1_500
    assert within_an_hour > 0.9 and exact > 0.5


def test_propensity_beats_its_baselines_on_the_simulated_shop(simulated_shop):
    rows = backtest_propensity(simulated_shop, AS_OF, HORIZON).rows
    best_baseline = max(rows[name]["roc_auc"] for name in rows if name != "sendwise")
    assert rows["sendwise"]["roc_auc"] > best_baseline


def test_personal_products_follow_the_planted_taste(simulated, simulated_shop):
    """Each customer's first three products come from the categories the simulator draws
    their purchases from, far more than the shop's best sellers do: the planted affinity
    (a category's share of the customer's draws over their top category's, 1 at the top)."""
    truth = simulated[2]
    shares = [c for c in truth.columns if c.startswith("affinity_")]
    affinity = truth.select(
        "customer_id", *(pl.col(c) / pl.max_horizontal(shares) for c in shares)
    ).unpivot(index="customer_id", variable_name="category", value_name="affinity")
    catalogue = simulated_shop.products.select(
        "product_id", category=pl.concat_str(pl.lit("affinity_"), "category")
    ).collect()
    history = builders.interactions(simulated_shop, AS_OF).collect()
    ranker = fitted("crosssell", simulated_shop, AS_OF)
    ranked = ranker.rank(history, AS_OF)
    popular = (
        history.group_by("product_id")
        .agg(pl.col("orders").sum())
        .sort("orders", "product_id", descending=[True, False])["product_id"]
        .head(10)
    )

    def taste(lists: pl.DataFrame) -> float:
        first = lists.select("customer_id", product_id=pl.col("products").list.head(3))
        return (
            first.explode("product_id")
            .join(catalogue, on="product_id")
            .join(affinity, on=["customer_id", "category"])["affinity"]
            .mean()
        )

    personal = taste(ranked)
    best_sellers = taste(ranked.with_columns(products=pl.lit(popular.to_list())))
    print(
        f"planted affinity of the first three: personal {personal:.3f}, best sellers {best_sellers:.3f}"
    )
    assert personal > 0.45 and personal > 2 * best_sellers
    # the customer's share of purchases in a product's category is one of the ranker's cues
    assert ranker.feature_importances_["category_share"] > 0.01  # 0.034 here, sixth of 21


def test_models_load_back_identical(simulated_shop, tmp_path):
    history = builders.interactions(simulated_shop, AS_OF).collect()
    products = fitted("crosssell", simulated_shop, AS_OF, n_estimators=20)  # fit_products, H 30
    products.save(tmp_path / "products")
    again = ProductRanker.load(tmp_path / "products")
    assert products.rank(history, AS_OF).equals(again.rank(history, AS_OF))
    features = builders.customer_features(simulated_shop, AS_OF).collect()
    X = features.select("orders_total", "recency_days", "revenue_total")
    y = (features["orders_30d"] > 0).to_numpy()
    model = PurchasePropensity(n_estimators=20).fit(X, y, calibration=np.arange(len(y)) % 3 == 0)
    model.save(tmp_path / "propensity")
    np.testing.assert_allclose(
        PurchasePropensity.load(tmp_path / "propensity").predict_proba(X), model.predict_proba(X)
    )
    activity, groups = sendtime_inputs(simulated_shop, AS_OF)
    sendtime = SendTimeModel().fit(activity, groups)
    sendtime.save(tmp_path / "sendtime")
    assert np.array_equal(
        SendTimeModel.load(tmp_path / "sendtime").best_hours(activity, groups),
        sendtime.best_hours(activity, groups),
    )


def test_unfitted_models_say_so():
    from sendwise.models.base import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        PurchasePropensity().predict_proba(pl.DataFrame({"a": [1.0]}))


def test_the_popularity_baseline_lists_the_most_popular_products_not_yet_bought():
    """Each customer's first n of the `top` most popular products, skipping (new only) those
    the customer bought, checked against the definition written out customer by customer."""
    rng = np.random.default_rng(3)
    history = (
        pl.DataFrame(
            {
                "customer_id": rng.integers(0, 300, 4_000).astype(str),
                "product": rng.zipf(1.3, 4_000),
            }
        )
        .select("customer_id", product_id=pl.format("p{}", pl.col("product") % 60))
        .unique()
    )
    popularity = pl.DataFrame({"product_id": [f"p{k}" for k in range(60)]}).with_columns(
        pop=pl.int_range(60, 0, -1)
    )
    customers = history.select("customer_id").unique().sort("customer_id")
    owned = history.group_by("customer_id").agg("product_id")
    owned = dict(zip(owned["customer_id"], owned["product_id"].to_list(), strict=True))
    ranked = popularity["product_id"].head(25).to_list()
    for new_only in (False, True):
        lists = popular_lists(history, customers, popularity, new_only, n=10, top=25)
        expected = {
            c: [p for p in ranked if not (new_only and p in owned[c])][:10]
            for c in customers["customer_id"]
        }
        assert dict(zip(lists["customer_id"], lists["products"].to_list(), strict=True)) == expected
    assert max(len(set(ranked[:10]) & set(owned[c])) for c in owned) >= 5  # many skipped
