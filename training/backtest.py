"""Backtests: fit on what was known at T, judge on (T, T+H], each model beside its baselines.

`train` reuses these functions with T - H as the cut-off, so a model's logged validation
metrics are a backtest on the latest window that ends by its own training cut-off.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from sendwise.features import builders
from sendwise.features.shop import Shop
from sendwise.models.base import ModelFitError
from sendwise.models.baselines import BGNBD, ColumnScore
from sendwise.models.metrics import hour_hits, propensity_metrics, ranking_metrics
from sendwise.models.products import ProductRanker
from sendwise.models.propensity import PurchasePropensity
from sendwise.models.sendtime import PersonalHistogram, SendTimeModel, ShopBestHours

from .datasets import (
    CUTOFF_STRIDE_DAYS,
    TRAINING_CUTOFFS,
    feature_columns,
    labelled,
    training_cutoffs,
)

log = logging.getLogger(__name__)

RFM_FEATURES = [
    "recency_days",
    "orders_total",
    "revenue_total",
    "first_order_days",
    "avg_order_value",
]
PRODUCT_CUTOFFS = 3
SENDTIME_GRID = {
    "prior_strength": [3.0, 10.0, 30.0, 100.0],
    "kernel_width": [0.6, 1.0, 1.5],
    "half_life_days": [None, 90.0, 180.0],
}
PRIMARY_METRIC = {
    "propensity": "roc_auc",
    "crosssell": "ndcg@10",
    "sendtime": "hit@3",
    "offer": "qini_auc",
}


@dataclass
class Section:
    """One task's rows: model name -> metrics, the sendwise model first."""

    task: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)


def propensity_features(frame: pl.DataFrame) -> list[str]:
    """Model inputs for propensity: the hour-profile columns add noise, not signal (measured)."""
    return [f for f in feature_columns(frame) if not f.startswith(("hod_", "dow_", "peak_"))]


def fit_propensity(
    shop: Shop, as_of: datetime, horizon_days: int, **params
) -> tuple[PurchasePropensity, pl.DataFrame]:
    """The propensity model trained on cut-offs whose outcome windows end by `as_of`."""
    cutoffs = training_cutoffs(as_of, horizon_days, TRAINING_CUTOFFS, CUTOFF_STRIDE_DAYS)
    train = labelled(shop, cutoffs, horizon_days, buyers_only=True).frame
    features = propensity_features(train)
    model = PurchasePropensity(**params).fit(
        train.select(features),
        train["purchased"].to_numpy(),
        calibration=(train["cutoff"] == cutoffs[0]).to_numpy(),
    )
    return model, train


PropensityFit = Callable[..., tuple[PurchasePropensity, pl.DataFrame]]


def backtest_propensity(
    shop: Shop, as_of: datetime, horizon_days: int, fit: PropensityFit | None = None, **params
) -> Section:
    """sendwise's propensity against its baselines at `as_of`; `fit` as `fit_propensity`
    (another learner: the RFM baseline reads only RFM_FEATURES and `purchased` of the
    training rows it returns)."""
    model, train = (fit or fit_propensity)(shop, as_of, horizon_days, **params)
    test = labelled(shop, [as_of], horizon_days, buyers_only=True).frame
    y = test["purchased"].to_numpy()
    if len(np.unique(y)) < 2:  # every metric would be NaN, and NaN never loses a promotion
        raise ModelFitError(
            f"the {horizon_days} days after {as_of:%Y-%m-%d} need both buyers and non-buyers "
            "to validate purchase propensity on"
        )
    section = Section("propensity")
    section.rows["sendwise"] = propensity_metrics(y, model.predict_proba(test))
    rfm = PurchasePropensity().fit(train.select(RFM_FEATURES), train["purchased"].to_numpy())
    section.rows["rfm_lightgbm"] = propensity_metrics(y, rfm.predict_proba(test))
    section.rows["bgnbd"] = propensity_metrics(
        y, BGNBD(horizon_days=horizon_days).fit(test).predict_proba(test)
    )
    section.rows["recency"] = propensity_metrics(
        y, ColumnScore(column="recency_days", ascending=True).fit(test).predict_proba(test)
    )
    section.rows["frequency"] = propensity_metrics(
        y, ColumnScore(column="orders_total").fit(test).predict_proba(test)
    )
    return section


def product_cutoffs(as_of: datetime, horizon_days: int) -> list[datetime]:
    """The product ranker's training cut-offs, the latest first, every horizon ending by
    `as_of`."""
    return training_cutoffs(as_of, horizon_days, PRODUCT_CUTOFFS, CUTOFF_STRIDE_DAYS)


def product_example(
    shop: Shop, cutoff: datetime, horizon_days: int
) -> tuple[pl.DataFrame, datetime, pl.DataFrame]:
    """What the ranker learns from at one cut-off (`ProductRanker.fit`): the purchase
    history up to it, it, and what was bought in the horizon after it."""
    bought = builders.purchases_between(shop, cutoff, cutoff + timedelta(days=horizon_days))
    return builders.interactions(shop, cutoff).collect(), cutoff, bought.collect()


def product_examples(shop: Shop, as_of: datetime, horizon_days: int):
    return [product_example(shop, c, horizon_days) for c in product_cutoffs(as_of, horizon_days)]


def fit_products(shop: Shop, as_of: datetime, horizon_days: int, **params) -> ProductRanker:
    return ProductRanker(**params).fit(product_examples(shop, as_of, horizon_days))


def _baseline_lists(history: pl.DataFrame, new_only: bool, n: int = 10) -> dict[str, pl.DataFrame]:
    """Popularity, the customer's own most-bought items, and plain ALS, as ranked lists."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares

    popularity = (
        history.group_by("product_id")
        .agg(pl.col("orders").sum().alias("pop"))
        .sort(["pop", "product_id"], descending=[True, False])  # ties in one order every run
    )
    customers = history.select("customer_id").unique().sort("customer_id")
    ranks = {"popularity": popular_lists(history, customers, popularity, new_only, n)}
    if not new_only:
        ranks["own_most_bought"] = (
            history.join(popularity, on="product_id")
            .sort(["customer_id", "orders", "pop"], descending=[False, True, True])
            .group_by("customer_id", maintain_order=True)
            .agg(pl.col("product_id").head(n).alias("products"))
        )
    users = customers["customer_id"].to_numpy().astype(str)
    items = np.sort(history["product_id"].unique().to_numpy().astype(str))
    u = np.searchsorted(users, history["customer_id"].to_numpy().astype(str))
    i = np.searchsorted(items, history["product_id"].to_numpy().astype(str))
    matrix = sp.csr_matrix(
        (history["orders"].to_numpy().astype(np.float32), (u, i)), shape=(len(users), len(items))
    )
    als = AlternatingLeastSquares(
        factors=64, iterations=15, regularization=0.01, random_state=0, num_threads=2
    )
    als.fit(matrix, show_progress=False)
    ids, _ = als.recommend(np.arange(len(users)), matrix, N=n, filter_already_liked_items=new_only)
    ranks["als"] = pl.DataFrame(
        {"customer_id": users, "products": [list(items[row[row >= 0]]) for row in ids]}
    )
    return ranks


ProductsFit = Callable[..., ProductRanker]


def popular_lists(
    history: pl.DataFrame,
    customers: pl.DataFrame,
    popularity: pl.DataFrame,
    new_only: bool,
    n: int,
    top: int = 200,
) -> pl.DataFrame:
    """Each customer's `n` most popular of the shop's `top` products (`new_only`: of those
    the customer has not bought). A customer who bought k of them needs only the first n + k
    as candidates, not all `top` (a cross join of a million customers would be 200 million)."""
    ranked = popularity.head(top).with_row_index("rank")
    owned = pl.lit(0, pl.UInt32)
    if new_only:
        bought = history.join(ranked, on="product_id").group_by("customer_id").len("owned")
        customers = customers.join(bought, on="customer_id", how="left")
        owned = pl.col("owned").fill_null(0)
    candidates = (
        customers.select("customer_id", rank=pl.int_ranges(0, pl.min_horizontal(n + owned, top)))
        .explode("rank")
        .join(ranked, on="rank")
    )
    if new_only:
        candidates = candidates.join(history, on=["customer_id", "product_id"], how="anti")
    return (
        candidates.sort("customer_id", "rank")
        .group_by("customer_id", maintain_order=True)
        .agg(pl.col("product_id").head(n).alias("products"))
    )


def backtest_products(
    shop: Shop, as_of: datetime, horizon_days: int, fit: ProductsFit | None = None, **params
) -> list[Section]:
    """sendwise's product lists (all products, and new ones only) against baselines at
    `as_of`; `fit` as `fit_products`."""
    model = (fit or fit_products)(shop, as_of, horizon_days, **params)
    history = builders.interactions(shop, as_of).collect()
    truth = builders.purchases_between(shop, as_of, as_of + timedelta(days=horizon_days)).collect()
    truth = truth.join(history.select("customer_id").unique(), on="customer_id", how="semi")
    new_truth = truth.join(history, on=["customer_id", "product_id"], how="anti")
    sections = []
    for task, new_only, wanted in (
        ("products_all", False, truth),
        ("products_new", True, new_truth),
    ):
        section = Section(task)
        section.rows["sendwise"] = ranking_metrics(
            model.rank(history, as_of, new_only=new_only), wanted
        )
        for name, lists in _baseline_lists(history, new_only).items():
            section.rows[name] = ranking_metrics(lists, wanted)
        sections.append(section)
    return sections


def sendtime_inputs(shop: Shop, as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(activity hours, customer groups) known at `as_of`; the group is the time zone."""
    activity = builders.activity_hours(shop, as_of).collect()
    groups = (
        builders.customer_features(shop, as_of, activity.lazy())
        .select("customer_id", group=pl.col("timezone"))
        .collect()
    )
    return activity, groups


def _sendtime_target(shop: Shop, as_of: datetime, horizon_days: int, groups: pl.DataFrame):
    truth = builders.first_purchase_hours(shop, as_of, horizon_days).collect()
    judged = groups.join(truth, on="customer_id")
    return judged.select("customer_id", "group"), judged["local_hour"].to_numpy()


def select_sendtime(shop: Shop, as_of: datetime, horizon_days: int) -> dict:
    """Settings with the best mean hit@1 + hit@3 over the windows ending by `as_of`."""
    windows = []
    for cutoff in training_cutoffs(as_of, horizon_days, PRODUCT_CUTOFFS, CUTOFF_STRIDE_DAYS):
        activity, groups = sendtime_inputs(shop, cutoff)
        judged, actual = _sendtime_target(shop, cutoff, horizon_days, groups)
        if len(actual) and not activity.is_empty():
            windows.append((activity, groups, judged, actual))
    if not windows:
        return {}
    scores = {}
    for values in itertools.product(*SENDTIME_GRID.values()):
        params = dict(zip(SENDTIME_GRID, values, strict=True))
        total = 0.0
        for activity, groups, judged, actual in windows:
            model = SendTimeModel(**params).fit(activity, groups)
            hits = hour_hits(model.best_hours(activity, judged), actual)
            total += hits["hit@1"] + hits["hit@3"]
        scores[values] = total
    best = max(scores, key=scores.get)
    return dict(zip(SENDTIME_GRID, best, strict=True))


def fit_sendtime(shop: Shop, as_of: datetime, horizon_days: int, **params) -> SendTimeModel:
    settings = params or select_sendtime(shop, as_of, horizon_days)
    activity, groups = sendtime_inputs(shop, as_of)
    return SendTimeModel(**settings).fit(activity, groups)


def backtest_sendtime(shop: Shop, as_of: datetime, horizon_days: int, **params) -> Section:
    model = fit_sendtime(shop, as_of, horizon_days, **params)
    activity, groups = sendtime_inputs(shop, as_of)
    judged, actual = _sendtime_target(shop, as_of, horizon_days, groups)
    if not len(actual):  # every metric would be NaN, and NaN never loses a promotion
        raise ModelFitError(
            f"no one bought in the {horizon_days} days after {as_of:%Y-%m-%d} "
            "to validate send times on"
        )
    section = Section("sendtime")
    section.rows["sendwise"] = hour_hits(model.best_hours(activity, judged), actual)
    for name, baseline in (
        ("shop_best_hours", ShopBestHours()),
        ("personal_histogram", PersonalHistogram()),
    ):
        section.rows[name] = hour_hits(
            baseline.fit(activity, groups).best_hours(activity, judged), actual
        )
    return section


TASKS = {
    "propensity": lambda shop, t, h: [backtest_propensity(shop, t, h)],
    "crosssell": backtest_products,
    "sendtime": lambda shop, t, h: [backtest_sendtime(shop, t, h)],
}


def backtest(
    shop: Shop, as_of: datetime, horizon_days: int, tasks: list[str] | None = None, progress=None
) -> list[Section]:
    """Every model and its baselines on (as_of, as_of + horizon].

    A task the shop cannot support (one product, no buyers in the window) is left out with a
    warning, so the others are still judged; it fails only when none is left.
    """
    sections, failures = [], []
    for task in tasks or list(TASKS):
        if progress:
            progress(task)
        try:
            sections += TASKS[task](shop, as_of, horizon_days)
        except ModelFitError as error:
            log.warning("skipped %s: %s", task, error)
            failures.append(error)
    if failures and not sections:
        raise failures[0]
    return sections
