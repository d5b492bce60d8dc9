"""The decision engine: champion models and business rules, callable without HTTP.

`Champions.load()` resolves the `champion` alias of each model through the registry room;
`score_batch` turns a shop known at T into one decision row per customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from sendwise.features import builders
from sendwise.features.clock import with_local_time
from sendwise.features.shop import Shop
from sendwise.models.base import COMPILE_ROWS
from sendwise.models.products import ProductRanker
from sendwise.models.propensity import PurchasePropensity
from sendwise.models.sendtime import SendTimeModel
from sendwise.models.uplift import OfferModel
from sendwise.policy.offers import OfferPolicy
from sendwise.policy.segments import SegmentOffers, SegmentRules
from sendwise.store import registry

from .decide import quiet_hour

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champions:
    propensity: PurchasePropensity
    products: ProductRanker
    sendtime: SendTimeModel
    versions: dict[str, str]
    offer: OfferModel | None = None  # until one is champion, offers follow segment rules

    @property
    def version_label(self) -> str:
        """`task:version` of every champion, as decisions carry it (`model_versions`)."""
        return ",".join(f"{k}:{v}" for k, v in sorted(self.versions.items()))

    def precompile(self) -> None:
        """Start compiling the trees a large batch runs, while its features are being built."""
        for model in (self.propensity, self.products, self.offer):
            if model is not None:
                model.precompile()

    @classmethod
    def load(cls) -> Champions:
        paths, versions = {}, {}
        for task in ("propensity", "crosssell", "sendtime"):
            paths[task], versions[task] = registry.download(task)
        offer = None
        if registry.alias_version("offer", registry.CHAMPION) is not None:
            path, versions["offer"] = registry.download("offer")
            offer = OfferModel.load(path)
        return cls(
            PurchasePropensity.load(paths["propensity"]),
            ProductRanker.load(paths["crosssell"]),
            SendTimeModel.load(paths["sendtime"]),
            versions,
            offer,
        )


@dataclass(frozen=True)
class Policy:
    """Business rules of a batch; every field documented where it acts."""

    products: int = 10
    recently_bought_days: float = 14.0  # not re-offered so soon unless due for replenishment
    due_ratio: float = 0.8  # "due": at least this share of the product's re-purchase interval
    quiet_start: int = 21  # local quiet hours [quiet_start, quiet_end): no sends
    quiet_end: int = 8
    fallback_hour: int = 10  # local hour for recipients with no usable signal
    reason_trees: int | None = 20  # propensity reasons from the first trees' SHAP values
    bounce_limit: int = 2  # suppressed after this many bounces (one may be a soft bounce)
    segments: SegmentRules = field(default_factory=SegmentRules)
    segment_offers: SegmentOffers = field(default_factory=SegmentOffers)
    offers: OfferPolicy = field(default_factory=OfferPolicy)  # with a champion offer model


def send_hours(best_hours: np.ndarray, policy: Policy) -> np.ndarray:
    """Per row of best hours, the first outside quiet hours, else the fallback hour."""
    quiet = np.array([quiet_hour(h, policy.quiet_start, policy.quiet_end) for h in range(24)])
    allowed = ~quiet[best_hours]
    first = best_hours[np.arange(len(best_hours)), allowed.argmax(axis=1)]
    return np.where(allowed.any(axis=1), first, policy.fallback_hour)


def next_local_time(frame: pl.DataFrame, now: datetime, zones: list[str]) -> pl.Series:
    """UTC time of the next `send_hour` o'clock after `now`, in each row's `timezone`."""
    located = with_local_time(
        frame.lazy().with_columns(occurred_at=pl.lit(now)), zones, stamp="occurred_at"
    )
    candidate = pl.col("local_at").dt.truncate("1d") + pl.duration(hours=pl.col("send_hour"))
    parts = []
    for zone in zones:
        part = located.filter(pl.col("timezone") == zone).with_columns(
            local_send=pl.when(candidate > pl.col("local_at"))
            .then(candidate)
            .otherwise(candidate + pl.duration(days=1))
        )
        parts.append(
            part.with_columns(
                send_at=pl.col("local_send")
                .dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
                .dt.convert_time_zone("UTC")
            ).select("row", "send_at")
        )
    joined = pl.concat(parts).collect().sort("row")
    return joined["send_at"]


def _products(
    champions: Champions, shop: Shop, as_of: datetime, policy: Policy
) -> tuple[pl.DataFrame, list[str]]:
    """Ranked products per known buyer, and the trending list for customers without history."""
    history = builders.interactions(shop, as_of).collect()
    recent = history.filter(
        pl.col("last_ordered_at") > as_of - timedelta(days=policy.recently_bought_days)
    ).select("customer_id", "product_id")
    out_of_stock = (
        shop.products.filter(~pl.col("in_stock").fill_null(True)).collect()["product_id"].to_list()
    )
    ranked = champions.products.rank(
        history, as_of, n=policy.products, exclude=recent, unavailable=out_of_stock
    )
    popular = (
        history.filter(~pl.col("product_id").is_in(out_of_stock))
        .filter(pl.col("last_ordered_at") > as_of - timedelta(days=30))
        .group_by("product_id")
        .agg(pl.col("orders").sum())
        .sort(["orders", "product_id"], descending=[True, False])
        .head(policy.products)["product_id"]
        .to_list()
    )
    return ranked.select("customer_id", "products"), popular


def _offers(
    champions: Champions, features: pl.DataFrame, segments: pl.DataFrame, policy: Policy
) -> pl.DataFrame:
    """`offer`, `offer_value`, `holdout` and `offer_reason` per customer: the champion offer
    model's value-aware choice where one exists, else the segment rules."""
    if champions.offer is None:
        return segments.select(
            "customer_id",
            policy.segment_offers.expression(),
            offer_value=pl.lit(0.0),
            holdout=pl.lit(False),
            offer_probability=pl.lit(1.0),
            offer_reason=pl.concat_str(pl.lit("offer_rule_"), "segment"),
        )
    model = champions.offer
    decided = policy.offers.decide(
        model, features.select(model.feature_names), features["customer_id"].to_list()
    )
    return decided.select(
        "customer_id",
        "offer",
        offer_value="expected_value",
        holdout="holdout",
        offer_probability="probability",
        offer_reason=pl.when("holdout")
        .then(pl.lit("offer_holdout"))
        .when("exploring")
        .then(pl.lit("offer_explore"))
        .otherwise(pl.concat_str(pl.lit("uplift_"), "offer")),
    )


def suppression(policy: Policy) -> pl.Expr:
    """Why a customer gets no marketing mail at all (null: eligible)."""
    return (
        pl.when((pl.col("unsubscribes_total") > 0) | (pl.col("complaints_total") > 0))
        .then(pl.lit("suppressed_unsubscribed"))
        .when(pl.col("bounces_total") >= policy.bounce_limit)
        .then(pl.lit("suppressed_bounced"))
        .alias("suppression")
    )


DECISION_COLUMNS = (
    "decision_id",
    "customer_id",
    "segment",
    "send",
    "holdout",
    "offer",
    "offer_value",
    "products",
    "send_at",
    "best_hours",
    "purchase_propensity",
    "reasons",
    "model_versions",
    "as_of",
)


def score_batch(
    champions: Champions, shop: Shop, as_of: datetime, policy: Policy | None = None
) -> pl.DataFrame:
    """One decision per customer known at `as_of` (the DESIGN's decision columns)."""
    return decision_frame(champions, shop, as_of, policy)[0].select(DECISION_COLUMNS)


def decision_frame(
    champions: Champions, shop: Shop, as_of: datetime, policy: Policy | None = None
) -> tuple[pl.DataFrame, list[str]]:
    """Decisions at `as_of` with what the API adds context to (time zone, suppression, the
    offer's randomisation probability, whether products are personal), and the trending
    products cold-start recipients get."""
    policy = policy or Policy()
    if shop.customers.select(pl.len()).collect().item() >= COMPILE_ROWS:
        champions.precompile()
    activity = builders.activity_hours(shop, as_of).collect()
    features = builders.customer_features(shop, as_of, activity.lazy()).collect()
    propensity = champions.propensity.predict_proba(features)
    reasons_top = champions.propensity.top_reasons(features, k=1, trees=policy.reason_trees)
    groups = features.select("customer_id", group=pl.col("timezone"))
    best = champions.sendtime.best_hours(activity, groups, k=3)
    ranked, popular = _products(champions, shop, as_of, policy)
    decisions = (
        features.select(
            "customer_id",
            "timezone",
            "activity_total",
            policy.segments.expression(),
            suppression(policy),
            pl.Series("purchase_propensity", propensity),
            pl.Series("best_hours", best).cast(pl.List(pl.Int64)),
            pl.Series("send_hour", send_hours(best, policy)),
        )
        .join(ranked, on="customer_id", how="left")
        .with_row_index("row")
    )
    decisions = decisions.join(
        _offers(champions, features, decisions.select("customer_id", "segment"), policy),
        on="customer_id",
        how="left",
    )
    zones = sorted(decisions["timezone"].unique().to_list())
    send_at = next_local_time(decisions, as_of, zones)
    cold = decisions["products"].is_null()
    driver = "propensity_" + pl.Series(reasons_top[:, 0], dtype=pl.String).fill_null("base")
    versions = champions.version_label
    reasons = pl.concat_list(
        pl.concat_str(pl.lit("segment_"), pl.col("segment")),
        pl.when(cold).then(pl.lit("cold_start_popular")).otherwise(pl.lit("personal_products")),
        pl.when(pl.col("activity_total") > 0)
        .then(pl.lit("sendtime_personal"))
        .otherwise(pl.lit("sendtime_fallback")),
        driver,
        "offer_reason",
        pl.col("suppression"),
    ).list.drop_nulls()
    frame = decisions.with_columns(
        send_at=send_at,
        products=pl.when(cold)
        .then(pl.lit(popular, dtype=pl.List(pl.String)))
        .otherwise("products"),
        reasons=reasons,
        send=pl.col("suppression").is_null(),  # an offer holdout still gets the email
        personal_products=~cold,
        model_versions=pl.lit(versions),
        as_of=pl.lit(as_of),
    ).with_columns(
        decision_id=pl.concat_str("customer_id", pl.lit(as_of.isoformat()), "model_versions")
        .hash(seed=0)
        .cast(pl.String)
    )
    return frame, popular
