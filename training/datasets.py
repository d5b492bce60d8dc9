"""Training and evaluation sets under the point-in-time rule.

For a cut-off T and horizon H, evaluation reads features at T and outcomes in (T, T+H];
training stacks features and outcomes from earlier cut-offs T-H, T-2H, ... whose outcome
windows end by T, so nothing after T is ever read for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from sendwise.features import builders
from sendwise.features.shop import Shop

NOT_FEATURES = {"customer_id", "as_of", "cutoff", "timezone", "country"}
TRAINING_CUTOFFS = 10
CUTOFF_STRIDE_DAYS = 14  # measured on Online Retail: denser cut-offs than every H days help
LABELS = {"orders_next", "revenue_next", "first_order_next_at", "purchased", "horizon_days"}


def training_cutoffs(
    as_of: datetime, horizon_days: int, count: int, stride_days: int | None = None
):
    """T-H, T-H-stride, ...: every label window (c, c+H] ends by T."""
    stride = timedelta(days=stride_days or horizon_days)
    first = as_of - timedelta(days=horizon_days)
    return [first - k * stride for k in range(count)]


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The numeric model inputs: identifiers, labels and free text left out."""
    return [
        name
        for name, dtype in frame.schema.items()
        if name not in NOT_FEATURES | LABELS and (dtype.is_numeric() or dtype == pl.Boolean)
    ]


@dataclass(frozen=True)
class LabelledSet:
    frame: pl.DataFrame  # features + labels, with a `cutoff` column

    @property
    def features(self) -> list[str]:
        return feature_columns(self.frame)


def labelled(
    shop: Shop,
    cutoffs: list[datetime],
    horizon_days: int,
    buyers_only: bool = False,
    timezones: dict[datetime, str] | None = None,
) -> LabelledSet:
    """Features at each cut-off joined with what happened in the horizon after it.
    `timezones`: each cut-off's fallback zone, where `shop` is a bucket of the shop whose
    zones they are (see `builders.FeatureContext`)."""
    queries = []
    for cutoff in cutoffs:
        zone = None if timezones is None else timezones[cutoff]
        features = builders.customer_features(shop, cutoff, timezone=zone)
        labels = builders.purchase_labels(shop, cutoff, horizon_days).drop("as_of")
        query = features.join(labels, on="customer_id", how="left").with_columns(
            cutoff=pl.lit(cutoff)
        )
        if buyers_only:
            query = query.filter(pl.col("orders_total") > 0)
        queries.append(query)
    frame = pl.concat(pl.collect_all(queries), how="vertical_relaxed")
    # one row order for one shop: bagging picks rows by position, so a refit (a promotion
    # re-scoring a champion, a tuning trial) gets the figure its training run got
    return LabelledSet(frame.sort("cutoff", "customer_id", descending=[True, False]))
