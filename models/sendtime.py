"""Send time: each customer's best local hours, shrunk toward their group's and the shop's profile.

A Dirichlet-multinomial reading of hourly activity: the customer's own hour counts (recent
signals weigh more, neighbouring hours share a little through a circular kernel) are added to
`prior_strength` pseudo-counts spread like their group's profile (e.g. their time zone), which
is itself shrunk toward the shop's. Thin histories fall back to the group; rich ones speak for
themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from .base import (
    ModelFitError,
    Settings,
    check_is_fitted,
    load_arrays,
    positions,
    save_arrays,
)

HOURS = 24


def circular_smooth(counts: np.ndarray, width: float) -> np.ndarray:
    """Spread each hour's counts to its neighbours with a wrapped Gaussian kernel."""
    if width <= 0:
        return counts
    offsets = np.arange(-3, 4)
    kernel = np.exp(-0.5 * (offsets / width) ** 2)
    kernel /= kernel.sum()
    return sum(w * np.roll(counts, k, axis=-1) for k, w in zip(offsets, kernel, strict=True))


def hour_counts(activity: pl.DataFrame, customers: np.ndarray, half_life_days: float | None):
    """Customers x 24 weighted counts from `customer_id, local_hour, age_days` rows, each
    cell's weights added in row order (a `bincount`: 0.2 s for the 1.9 million rows of a
    bench bucket, where `np.add.at` took 0.3-0.4 s for the same sums)."""
    rows = positions(pl.Series(customers, dtype=pl.String), activity["customer_id"])
    keep = rows >= 0
    weight = np.ones(len(activity))
    if half_life_days:
        weight = 0.5 ** (activity["age_days"].to_numpy() / half_life_days)
    cells = rows[keep] * HOURS + activity["local_hour"].to_numpy()[keep]
    counts = np.bincount(cells, weight[keep], len(customers) * HOURS)
    return counts.reshape(len(customers), HOURS)


class SendTimeModel(Settings):
    def __init__(
        self,
        *,
        prior_strength: float = 3.0,
        group_strength: float = 50.0,
        kernel_width: float = 0.6,
        half_life_days: float | None = 180.0,
        fallback_hour: int = 10,
    ):
        self.prior_strength = prior_strength
        self.group_strength = group_strength
        self.kernel_width = kernel_width
        self.half_life_days = half_life_days
        self.fallback_hour = fallback_hour

    def fit(self, activity: pl.DataFrame, groups: pl.DataFrame) -> SendTimeModel:
        """`activity`: customer_id, local_hour, age_days; `groups`: customer_id, group."""
        if activity.is_empty():
            raise ModelFitError("send time needs some dated activity to learn from")
        customers = groups["customer_id"].to_numpy().astype(str)
        counts = hour_counts(activity, customers, self.half_life_days)
        shop = counts.sum(0) + 1e-9
        self.shop_profile_ = shop / shop.sum()
        names = groups["group"].fill_null("").to_numpy().astype(str)
        self.group_names_ = np.unique(names)
        profiles = []
        for name in self.group_names_:
            total = counts[names == name].sum(0)
            shrunk = total + self.group_strength * self.shop_profile_
            profiles.append(shrunk / shrunk.sum())
        self.group_profiles_ = np.array(profiles)
        return self

    def profile(self, activity: pl.DataFrame, groups: pl.DataFrame) -> np.ndarray:
        """Posterior mean hour distribution per customer in `groups` (rows in its order)."""
        check_is_fitted(self, "shop_profile_")
        customers = groups["customer_id"].to_numpy().astype(str)
        own = circular_smooth(
            hour_counts(activity, customers, self.half_life_days), self.kernel_width
        )
        names = groups["group"].fill_null("").to_numpy().astype(str)
        where = np.searchsorted(self.group_names_, names)
        where = np.clip(where, 0, len(self.group_names_) - 1)
        known = self.group_names_[where] == names
        prior = np.where(known[:, None], self.group_profiles_[where], self.shop_profile_)
        posterior = own + self.prior_strength * prior
        return posterior / posterior.sum(1, keepdims=True)

    def best_hours(self, activity: pl.DataFrame, groups: pl.DataFrame, k: int = 3) -> np.ndarray:
        """(customers, k): the k most likely local hours per customer, best first."""
        return np.argsort(-self.profile(activity, groups), axis=1, kind="stable")[:, :k]

    def save(self, path: str | Path) -> None:
        check_is_fitted(self, "shop_profile_")
        save_arrays(
            path,
            {"params": self.get_params(), "groups": self.group_names_.tolist()},
            shop_profile=self.shop_profile_,
            group_profiles=self.group_profiles_,
        )

    @classmethod
    def load(cls, path: str | Path) -> SendTimeModel:
        settings, arrays = load_arrays(path)
        model = cls(**settings["params"])
        model.group_names_ = np.array(settings["groups"], dtype=str)
        model.shop_profile_ = arrays["shop_profile"]
        model.group_profiles_ = arrays["group_profiles"]
        return model


class ShopBestHours(SendTimeModel):
    """Baseline: everyone gets the shop's busiest hours."""

    def __init__(self):
        super().__init__(
            prior_strength=1.0, group_strength=0.0, kernel_width=0.0, half_life_days=None
        )

    def profile(self, activity: pl.DataFrame, groups: pl.DataFrame) -> np.ndarray:
        check_is_fitted(self, "shop_profile_")
        return np.tile(self.shop_profile_, (len(groups), 1))


class PersonalHistogram(SendTimeModel):
    """Baseline: the customer's own hour counts, ties and empty histories broken by the shop's."""

    def __init__(self):
        super().__init__(
            prior_strength=1e-3, group_strength=0.0, kernel_width=0.0, half_life_days=None
        )

    def fit(self, activity: pl.DataFrame, groups: pl.DataFrame) -> PersonalHistogram:
        super().fit(activity, groups.with_columns(group=pl.lit("")))
        return self

    def profile(self, activity: pl.DataFrame, groups: pl.DataFrame) -> np.ndarray:
        return super().profile(activity, groups.with_columns(group=pl.lit("")))
