"""Products: one ranked list per customer, mixing what is due again with cross-sell.

Candidates per customer come from their own history (re-purchase), item-to-item co-purchase
neighbours of what they bought (cross-sell) and what is trending (cold start). Each
(customer, product) pair gets features: how often and how lately the customer bought it, how
due it is against the product's typical re-purchase interval, co-purchase strength, popularity
and its trend. A LightGBM classifier learned on past cut-offs ranks the candidates.

Histories are long frames `customer_id, product_id, orders, quantity, first_ordered_at,
last_ordered_at` (see `features.builders.interactions`); the model reads nothing else.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.nearest_neighbours import bm25_weight

from .base import (
    ModelFitError,
    Settings,
    check_is_fitted,
    lightgbm_params,
    load_arrays,
    matrix,
    save_arrays,
)

ITEM_FEATURES = [
    "pop_orders",
    "pop_buyers",
    "pop_30d",
    "pop_90d",
    "pop_trend",
    "pop_rank",
    "repeat_rate",
    "repeat_interval_days",
]
PAIR_FEATURES = [
    "own_orders",
    "own_quantity",
    "own_days_since",
    "own_days_since_first",
    "own_share",
    "due_ratio",
    "cf_score",
    "cf_rank",
    *ITEM_FEATURES,
    "user_orders",
    "user_products",
    "user_days_since",
    "als_score",
    "als_rank",
]


@dataclass
class _Index:
    customers: np.ndarray
    products: np.ndarray

    def customer_codes(self, values: pl.Series) -> np.ndarray:
        return _codes(self.customers, values)

    def product_codes(self, values: pl.Series) -> np.ndarray:
        return _codes(self.products, values)


def _codes(sorted_values: np.ndarray, values: pl.Series) -> np.ndarray:
    """Position of each value in a sorted array, -1 where absent."""
    values = values.to_numpy().astype(str)
    pos = np.searchsorted(sorted_values, values)
    pos = np.clip(pos, 0, len(sorted_values) - 1)
    return np.where(sorted_values[pos] == values, pos, -1)


def _top_k(scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a sparse score matrix, its k largest entries: (row, column, value)."""
    scores = scores.tocsr()
    scores.eliminate_zeros()
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr))
    order = np.lexsort((-scores.data, rows))
    position = np.arange(rows.size) - np.repeat(scores.indptr[:-1], np.diff(scores.indptr))
    keep = order[position < k]
    return rows[keep], scores.indices[keep], scores.data[keep]


@dataclass
class _Context:
    """Everything shop-wide about one cut-off; candidate pairs are then built per customer chunk."""

    index: _Index
    orders: sp.csr_matrix  # customers x products: orders of each product
    quantity: sp.csr_matrix
    days_since: sp.csr_matrix  # days since the last order of the product (+ epsilon)
    days_since_first: sp.csr_matrix
    decayed: sp.csr_matrix  # log orders, decayed by age: the co-purchase query
    similar: sp.csr_matrix  # products x products, top neighbours by cosine over buyers
    items: dict[str, np.ndarray]
    popular: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.index.customers)


class ProductRanker(Settings):
    def __init__(
        self,
        *,
        cf_candidates: int = 30,
        popular_candidates: int = 20,
        als_candidates: int = 30,
        als_factors: int = 64,
        neighbours: int = 50,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        als_sample: int = 100_000,
        chunk_size: int = 50_000,
        random_state: int = 0,
    ):
        self.als_sample = als_sample
        self.chunk_size = chunk_size
        self.cf_candidates = cf_candidates
        self.popular_candidates = popular_candidates
        self.als_candidates = als_candidates
        self.als_factors = als_factors
        self.neighbours = neighbours
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    # --- candidates and their features ----------------------------------------------------

    def _context(self, history: pl.DataFrame, as_of: datetime) -> _Context:
        """The shop-wide part of candidate generation: matrices, neighbours, ALS, item stats."""
        index = _Index(
            np.sort(history["customer_id"].unique().to_numpy().astype(str)),
            np.sort(history["product_id"].unique().to_numpy().astype(str)),
        )
        shape = (len(index.customers), len(index.products))
        u = index.customer_codes(history["customer_id"])
        i = index.product_codes(history["product_id"])

        def by_pair(values: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix((values, (u, i)), shape=shape)

        def days_before(column: str) -> np.ndarray:
            age = (pl.lit(as_of) - pl.col(column)).dt.total_hours() / 24
            return history.select(age).to_series().to_numpy()

        days_since = days_before("last_ordered_at")
        orders = history["orders"].to_numpy().astype(np.float32)
        bought = by_pair(np.ones(len(u)))
        # co-purchase: cosine between products over their buyers, top neighbours kept
        norm = 1 / np.sqrt(np.maximum(np.asarray(bought.sum(axis=0)).ravel(), 1))
        scaled = bought @ sp.diags(norm)
        similar = (scaled.T @ scaled).tocsr()
        similar.setdiag(0)
        r, c, v = _top_k(similar, self.neighbours)
        counts = by_pair(orders)
        user_factors, item_factors = self._als(counts)
        items = self._item_stats(history, i, shape[1], as_of)
        popular = np.argsort(-items["pop_30d"] - 1e-3 * items["pop_orders"])
        return _Context(
            index=index,
            orders=counts,
            quantity=by_pair(history["quantity"].to_numpy().astype(np.float32)),
            days_since=by_pair(days_since + 1e-3),
            days_since_first=by_pair(days_before("first_ordered_at") + 1e-3),
            decayed=by_pair(np.log1p(orders) * np.exp(-days_since / 180)),
            similar=sp.csr_matrix((v, (r, c)), shape=(shape[1], shape[1])),
            items=items,
            popular=popular[: self.popular_candidates],
            user_factors=user_factors,
            item_factors=item_factors,
        )

    def _als(self, counts: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """BM25-weighted ALS factors; on large shops item factors come from a sample of
        customers and everyone's factors are then solved against them (exact fold-in)."""
        als = AlternatingLeastSquares(
            factors=self.als_factors,
            iterations=15,
            regularization=0.01,
            random_state=self.random_state,
            num_threads=2,
        )
        weighted = bm25_weight(counts, K1=100, B=0.8).tocsr().astype(np.float32)
        n_users = weighted.shape[0]
        if n_users <= self.als_sample:
            als.fit(weighted, show_progress=False)
            return als.user_factors, als.item_factors
        rng = np.random.default_rng(self.random_state)
        sample = np.sort(rng.choice(n_users, self.als_sample, replace=False))
        als.fit(weighted[sample], show_progress=False)
        users = np.empty((n_users, self.als_factors), np.float32)
        for start in range(0, n_users, self.chunk_size):
            rows = np.arange(start, min(start + self.chunk_size, n_users))
            users[rows] = als.recalculate_user(rows, weighted[rows])
        return users, als.item_factors

    def _pairs(self, context: _Context, users: np.ndarray) -> pl.DataFrame:
        """Candidate pairs, with their features, for the customers at codes `users`."""
        orders = context.orders[users]
        bought = orders.copy()
        bought.data[:] = 1
        cf = (context.decayed[users] @ context.similar).tocsr()
        cf_rows, cf_cols, _ = _top_k(cf - cf.multiply(bought), self.cf_candidates)
        user_factors = context.user_factors[users]
        als_scores = user_factors @ context.item_factors.T
        als_scores[bought.nonzero()] = -np.inf
        k = min(self.als_candidates, als_scores.shape[1])
        als_cols = np.argpartition(-als_scores, k - 1, axis=1)[:, :k].ravel()
        als_rows = np.repeat(np.arange(len(users)), k)
        keep = np.isfinite(als_scores[als_rows, als_cols])
        own_rows, own_cols = bought.nonzero()
        popular = context.popular
        pairs = np.unique(
            np.concatenate(
                [
                    np.stack([own_rows, own_cols], 1),
                    np.stack([cf_rows, cf_cols], 1),
                    np.stack([als_rows[keep], als_cols[keep]], 1),
                    np.stack(
                        [
                            np.repeat(np.arange(len(users)), popular.size),
                            np.tile(popular, len(users)),
                        ],
                        1,
                    ),
                ]
            ),
            axis=0,
        )
        pu, pi = pairs[:, 0], pairs[:, 1]

        def at(m: sp.csr_matrix) -> np.ndarray:
            return np.asarray(m[pu, pi]).ravel()

        user_orders = np.asarray(orders.sum(axis=1)).ravel()
        user_since = np.full(len(users), np.inf)
        since = context.days_since[users]
        np.minimum.at(user_since, since.nonzero()[0], since.data)
        own_orders = at(orders)
        own_days = at(since)
        own_days = np.where(own_days > 0, own_days, np.nan)
        cf_pair = at(cf)
        als_pair = np.einsum("ij,ij->i", user_factors[pu], context.item_factors[pi])
        features = {
            "own_orders": own_orders,
            "own_quantity": at(context.quantity[users]),
            "own_days_since": own_days,
            "own_days_since_first": np.where(
                np.isnan(own_days), np.nan, at(context.days_since_first[users])
            ),
            "own_share": own_orders / np.maximum(user_orders[pu], 1),
            "due_ratio": own_days / np.maximum(context.items["repeat_interval_days"][pi], 1.0),
            "cf_score": cf_pair,
            "cf_rank": _rank_within(pu, -cf_pair).astype(float),
            "als_score": als_pair,
            "als_rank": _rank_within(pu, -als_pair).astype(float),
            "user_orders": user_orders[pu],
            "user_products": np.diff(orders.indptr)[pu].astype(float),
            "user_days_since": user_since[pu],
        }
        for name in ITEM_FEATURES:
            features[name] = context.items[name][pi]
        return pl.DataFrame(
            {
                "customer_id": context.index.customers[users[pu]],
                "product_id": context.index.products[pi],
                **{name: features[name].astype(np.float32) for name in PAIR_FEATURES},
            }
        )

    def _chunks(self, history: pl.DataFrame, as_of: datetime) -> Iterator[pl.DataFrame]:
        """Candidate pairs for every customer in `history`, a chunk of customers at a time."""
        context = self._context(history, as_of)
        # a chunk's dense ALS scores (customers x products) stay near 200 MB
        step = max(1, min(self.chunk_size, 50_000_000 // max(len(context.index.products), 1)))
        for start in range(0, context.n_users, step):
            yield self._pairs(context, np.arange(start, min(start + step, context.n_users)))

    def candidates(self, history: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
        """Every candidate (customer, product) pair with its features, for one cut-off."""
        return pl.concat(self._chunks(history, as_of))

    @staticmethod
    def _item_stats(history: pl.DataFrame, i: np.ndarray, n_items: int, as_of: datetime) -> dict:
        orders = history["orders"].to_numpy().astype(float)
        last = history["last_ordered_at"]
        recent_30 = (last > as_of - timedelta(days=30)).to_numpy()
        recent_90 = (last > as_of - timedelta(days=90)).to_numpy()
        span = (history["last_ordered_at"] - history["first_ordered_at"]).dt.total_hours() / 24
        span = span.to_numpy()
        repeat = orders >= 2
        stats = {
            "pop_orders": np.bincount(i, orders, n_items),
            "pop_buyers": np.bincount(i, minlength=n_items).astype(float),
            "pop_30d": np.bincount(i, recent_30.astype(float), n_items),
            "pop_90d": np.bincount(i, recent_90.astype(float), n_items),
        }
        stats["pop_trend"] = stats["pop_30d"] / np.maximum(stats["pop_90d"] / 3, 1)
        stats["pop_rank"] = np.argsort(np.argsort(-stats["pop_orders"])).astype(float)
        stats["repeat_rate"] = np.bincount(i, repeat.astype(float), n_items) / np.maximum(
            stats["pop_buyers"], 1
        )
        gaps = np.where(repeat, span / np.maximum(orders - 1, 1), 0)
        n_repeat = np.bincount(i, repeat.astype(float), n_items)
        stats["repeat_interval_days"] = np.where(
            n_repeat > 0, np.bincount(i, gaps, n_items) / np.maximum(n_repeat, 1), np.nan
        )
        return stats

    # --- learning and ranking -------------------------------------------------------------

    def fit(self, examples: list[tuple[pl.DataFrame, datetime, pl.DataFrame]]) -> ProductRanker:
        """Learn from (history up to a cut-off, the cut-off, pairs bought in the horizon after)."""
        frames = []
        for history, cutoff, bought in examples:
            pairs = self.candidates(history, cutoff)
            target = (
                bought.select("customer_id", "product_id")
                .unique()
                .with_columns(bought=pl.lit(True))
            )
            frames.append(
                pairs.join(target, on=["customer_id", "product_id"], how="left").with_columns(
                    pl.col("bought").fill_null(False)
                )
            )
        train = pl.concat(frames).sort("customer_id", maintain_order=True)
        self.booster_ = self._learn(train)
        self.booster_new_ = self._learn(train.filter(pl.col("own_orders") == 0))
        return self

    def _learn(self, train: pl.DataFrame) -> lgb.Booster:
        """LambdaRank within each customer's candidates (only customers with a purchase teach)."""
        train = train.filter(pl.col("bought").any().over("customer_id"))
        if train.is_empty():
            raise ModelFitError("the product ranker needs candidates that were then bought")
        groups = train.group_by("customer_id", maintain_order=True).len()["len"].to_numpy()
        params = lightgbm_params(
            "lambdarank",
            self.random_state,
            lambdarank_truncation_level=20,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            feature_fraction=0.9,
            bagging_fraction=0.8,
        )
        data = lgb.Dataset(
            matrix(train, PAIR_FEATURES),
            train["bought"].to_numpy().astype(np.float32),
            group=groups,
        )
        return lgb.train(params, data, self.n_estimators)

    def rank(
        self,
        history: pl.DataFrame,
        as_of: datetime,
        n: int = 10,
        exclude: pl.DataFrame | None = None,
        new_only: bool = False,
        unavailable: Collection[str] = (),
    ) -> pl.DataFrame:
        """Top-`n` products per customer in `history`: `customer_id`, `products`, `scores`.

        `exclude` lists (customer_id, product_id) pairs never to recommend (business rules);
        `new_only` keeps only products the customer has not bought; `unavailable` products
        (out of stock) are offered to no one.
        """
        check_is_fitted(self, "booster_")
        booster = self.booster_new_ if new_only else self.booster_
        ranked = []
        for pairs in self._chunks(history, as_of):
            if new_only:
                pairs = pairs.filter(pl.col("own_orders") == 0)
            if exclude is not None:
                pairs = pairs.join(exclude, on=["customer_id", "product_id"], how="anti")
            pairs = pairs.filter(~pl.col("product_id").is_in(list(unavailable)))
            ranked.append(
                pairs.select("customer_id", "product_id")
                .with_columns(score=booster.predict(matrix(pairs, PAIR_FEATURES)))
                .sort(["customer_id", "score"], descending=[False, True])
                .group_by("customer_id", maintain_order=True)
                .agg(
                    pl.col("product_id").head(n).alias("products"),
                    pl.col("score").head(n).alias("scores"),
                )
            )
        return pl.concat(ranked)

    @property
    def feature_importances_(self) -> dict[str, float]:
        check_is_fitted(self, "booster_")
        gain = self.booster_.feature_importance("gain")
        return dict(zip(PAIR_FEATURES, (gain / gain.sum()).round(4), strict=True))

    def save(self, path: str | Path) -> None:
        check_is_fitted(self, "booster_")
        save_arrays(path, {"params": self.get_params()})
        Path(path, "booster.txt").write_text(self.booster_.model_to_string())
        Path(path, "booster_new.txt").write_text(self.booster_new_.model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> ProductRanker:
        settings, _ = load_arrays(path)
        model = cls(**settings["params"])
        model.booster_ = lgb.Booster(model_str=Path(path, "booster.txt").read_text())
        model.booster_new_ = lgb.Booster(model_str=Path(path, "booster_new.txt").read_text())
        return model


def _rank_within(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """1-based rank of each key within its group (groups need not be sorted)."""
    order = np.lexsort((keys, groups))
    ranks = np.empty(len(keys), dtype=np.int64)
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    position = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    ranks[order] = position + 1
    return ranks
