"""Products: one ranked list per customer, mixing what is due again with cross-sell.

Candidates per customer come from their own history (re-purchase), item-to-item co-purchase
neighbours of what they bought (cross-sell) and what is trending (cold start). Each
(customer, product) pair gets features: how often and how lately the customer bought it, how
due it is against the product's typical re-purchase interval, co-purchase strength, popularity
and its trend, and the customer's share of purchases (orders per product, summed) in the
product's category (people keep to what they like: a tea drinker's next product is more likely
tea than the shop's best seller).
LightGBM's LambdaRank, learned on past cut-offs, ranks the candidates.

Histories are long frames `customer_id, product_id, orders, quantity, first_ordered_at,
last_ordered_at` and, where the catalogue has one, `category` (see
`features.builders.interactions`); the model reads nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import lightgbm as lgb
import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from scipy.linalg import lapack

from . import _kernels
from .base import (
    THREADS,
    ModelFitError,
    Settings,
    check_is_fitted,
    compile_trees,
    lightgbm_params,
    load_arrays,
    matrix,
    positions,
    save_arrays,
    tree_predictor,
)

T = TypeVar("T")
COMPILE_CUSTOMERS = 50_000  # from about this many customers (5M pairs) compiled trees pay off
BM25_K1, BM25_B = 100, 0.8
# co-purchase weights cover the most bought products up to this many: the inverse they need
# is dense (8,000 products: 256 MB a copy, about 8 s on one core)
CO_PURCHASE_PRODUCTS = 8_000
DENSE_CELLS = 3_000_000  # customers x products scored at once (see `_chunks`)
ALS_REGULARIZATION = 0.01  # the fit's and the fold-in's
NOTHING_BOUGHT = "the product ranker needs candidates that were then bought"

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
    "category_share",  # last: models fitted before it read the columns before it
]


@dataclass
class _Index:
    """Sorted customer and product ids, as Polars strings: ids stay in Polars from the
    history to the ranked lists (a numpy array of strings went back to Polars one Python
    object at a time: 1 s per bucket of the 1M bench shop's 62,500 customers)."""

    customers: pl.Series
    products: pl.Series

    def customer_codes(self, values: pl.Series) -> np.ndarray:
        return positions(self.customers, values)

    def product_codes(self, values: pl.Series) -> np.ndarray:
        return positions(self.products, values)

    def pair_matrix(self, pairs: pl.DataFrame) -> sp.csr_matrix:
        """Customers x products, True at each known (customer_id, product_id) of `pairs`."""
        u = self.customer_codes(pairs["customer_id"])
        i = self.product_codes(pairs["product_id"])
        known = (u >= 0) & (i >= 0)
        shape = (len(self.customers), len(self.products))
        return sp.csr_matrix((np.ones(known.sum(), dtype=bool), (u[known], i[known])), shape)

    def frame(self, customers: np.ndarray, products: np.ndarray) -> pl.DataFrame:
        """`customer_id` and `product_id` of pairs given by their codes."""
        return pl.DataFrame(
            {
                "customer_id": self.customers.gather(customers),
                "product_id": self.products.gather(products),
            }
        )


def _int64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


def _csr_arrays(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CSR matrix's arrays as the C kernels read them: int64 indices, float32 values."""
    return _int64(matrix.indptr), _int64(matrix.indices), matrix.data.astype(np.float32)


def _dense_product(
    query: sp.csr_matrix,
    start: int,
    stop: int,
    right: tuple[np.ndarray, np.ndarray, np.ndarray],
    width: int,
) -> np.ndarray:
    """Rows [start, stop) of `query` times the CSR matrix of `right` (`_csr_arrays`), as a
    dense float32 array: the sums scipy's sparse product gives (in double, in the same
    order), written straight into the dense rows: 9.6 ms for a 500-customer chunk of the 1M
    bench shop (20.7 ms while the kernel noted which products a row touched; scipy's product
    and a scatter took 17.1 ms on an earlier day)."""
    lo, hi = query.indptr[start], query.indptr[stop]
    out = np.empty((stop - start, width), dtype=np.float32)
    _kernels.sparse_product_rows(
        _int64(query.indptr[start : stop + 1] - lo),
        _int64(query.indices[lo:hi]),
        np.ascontiguousarray(query.data[lo:hi], dtype=np.float64),
        *right,
        stop - start,
        width,
        out,
    )
    return out


DOT_ROWS, DOT_COLUMNS = 4, 16  # `_kernels.dot_rows`' block


def _panels(matrix: np.ndarray) -> np.ndarray:
    """`matrix` (columns x depth) transposed and packed as `_kernels.dot_rows` reads it:
    panels of DOT_COLUMNS columns, each depth x DOT_COLUMNS, zero-padded."""
    columns, depth = matrix.shape
    padded = np.zeros((-(-columns // DOT_COLUMNS) * DOT_COLUMNS, depth), np.float32)
    padded[:columns] = matrix
    return np.ascontiguousarray(padded.reshape(-1, DOT_COLUMNS, depth).transpose(0, 2, 1))


def _dot_rows(rows: np.ndarray, panels: np.ndarray, columns: int) -> np.ndarray:
    """`rows @ matrix.T` for the `matrix` packed in `panels`, float32, each entry's products
    added in one order: a customer's scores are the same bits whichever chunk holds it."""
    n, depth = rows.shape
    padded = np.zeros((-(-n // DOT_ROWS) * DOT_ROWS, depth), np.float32)
    padded[:n] = rows
    out = np.empty((len(padded), columns), np.float32)
    _kernels.dot_rows(
        padded, panels, len(padded), depth, panels.shape[0] * DOT_COLUMNS, columns, out
    )
    return out[:n]


def _sorted_ids(column: pl.Series) -> pl.Series:
    """A column's distinct ids as sorted strings (UTF-8 byte order, numpy's code-point order)."""
    return column.cast(pl.String).unique().sort().rename("id")


@dataclass(frozen=True)
class Ranking:
    """One list to rank (see `ProductRanker.rank`)."""

    n: int = 10
    exclude: pl.DataFrame | None = None
    new_only: bool = False


@dataclass
class _Layout:
    """A history's rows in CSR order (customer, then product), with their codes: every pair
    matrix shares one layout, so a chunk of customers' bought pairs is a slice of it."""

    history: pl.DataFrame
    products: np.ndarray  # each row's product code
    indptr: np.ndarray
    shape: tuple[int, int]

    def matrix(self, values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((values, self.products, self.indptr), shape=self.shape)


def _layout(index: _Index, history: pl.DataFrame) -> _Layout:
    shape = (len(index.customers), len(index.products))
    u = index.customer_codes(history["customer_id"])
    i = index.product_codes(history["product_id"])
    indptr = np.r_[0, np.cumsum(np.bincount(u, minlength=shape[0]))]
    keys = u * (shape[1] + 1) + (i + 1)  # unknown products (-1) included, in order
    if np.all(keys[1:] >= keys[:-1]):  # `interactions` comes sorted so: no copy
        return _Layout(history, i, indptr, shape)
    order = np.lexsort((i, u))
    return _Layout(history[order], i[order], indptr, shape)


def _category_codes(history: pl.DataFrame, products: np.ndarray, n_items: int) -> np.ndarray:
    """Each product's category as a code (-1 where the history gives none)."""
    codes = np.full(n_items, -1, np.int64)
    if "category" not in history.columns:
        return codes
    named = (  # one row per product first: a catalogue gives each product one category
        pl.DataFrame({"product": products, "category": history["category"]})
        .drop_nulls("category")
        .unique("product", keep="last")
    )
    _, code = np.unique(named["category"].to_numpy().astype(str), return_inverse=True)
    codes[named["product"].to_numpy()] = code
    return codes


def _one_hot(codes: np.ndarray) -> sp.csr_matrix:
    """Products x categories: 1 where the product is of the category."""
    known = np.flatnonzero(codes >= 0)
    width = int(codes.max()) + 1 if len(known) else 1
    return sp.csr_matrix(
        (np.ones(len(known), np.float32), (known, codes[known])), shape=(len(codes), width)
    )


def _bm25(counts: sp.csr_matrix, idf: np.ndarray, average_length: np.floating) -> sp.csr_matrix:
    """implicit's `bm25_weight` (K1 100, B 0.8), float32, with the shop-wide terms given: the
    same numbers for a customer's row whether the matrix holds the whole shop or a part."""
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    row_sums = np.ravel(counts.sum(axis=1))
    length_norm = (1.0 - BM25_B) + BM25_B * row_sums / average_length
    data = counts.data
    weighted = data * (BM25_K1 + 1.0) / (BM25_K1 * length_norm[rows] + data) * idf[counts.indices]
    return sp.csr_matrix(
        (weighted.astype(np.float32), counts.indices, counts.indptr), shape=counts.shape
    )


def _top_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Where each row of `scores` holds one of its `k` largest values (ties included)."""
    return _mark_top(scores, k, positive=False, exact=False)


def _top_positive(scores: np.ndarray, k: int) -> np.ndarray:
    """Where each row of `scores` holds one of its `k` largest positive values: exactly k
    where it has as many, ties at the k-th value going to the first columns."""
    return _mark_top(scores, k, positive=True, exact=True)


def _mark_top(scores: np.ndarray, k: int, positive: bool, exact: bool) -> np.ndarray:
    """Each row's `k` largest (`positive`: positive) values of `scores`, compared as float32,
    NaN never among them; `exact`: exactly k, else ties at the k-th value too. Compiled
    (`_kernels.mark_top`): one pass over each row for its blocks' maxima, then only the
    blocks that can hold its k largest are searched, twice as fast as numpy's sort of a
    sample of every row."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    mark = np.zeros(scores.shape, dtype=np.uint8)
    rows, width = scores.shape
    _kernels.mark_top(scores, rows, width, k, positive, exact, mark)
    return mark.view(bool)


def _co_purchase(bought: sp.csr_matrix, l2: float, k: int) -> sp.csr_matrix:
    """Products x products: how strongly buying each (row) points to each other (column).

    EASE (Steck, 2019): the closed-form ridge regression of each product's buyers on every
    other product's, whose weights, unlike cosine's, discount products that are merely bought
    together with everything. On Online Retail (DESIGN protocol, as of 2011-09-09) the new-item
    head reaches recall@10 0.049 with them, 0.047 with cosine neighbours, and served cross_sell
    lists 0.048, 0.045 before (experiments/served_quality.py). `l2` 2,000 was the best of 100,
    500 and 2,000 on the window before (as of 2011-06-11: 0.0709, 0.0710, 0.0719). The `k`
    strongest positive weights into each product are kept; only the CO_PURCHASE_PRODUCTS most
    bought products take part.
    """
    n = bought.shape[1]
    buyers = np.asarray(bought.sum(axis=0)).ravel()
    kept = np.sort(np.argsort(-buyers, kind="stable")[:CO_PURCHASE_PRODUCTS])
    columns = bought[:, kept].astype(np.float32)
    gram = (columns.T @ columns).toarray()
    gram[np.diag_indices_from(gram)] += l2
    # inverted in place from its Cholesky factor: a symmetric matrix is its own transpose,
    # which is in the Fortran order LAPACK overwrites; it fills the lower triangle. On one
    # core: on two it took 0.95 s, not 1.85 s, for 6,000 products, but its sums came in
    # another order, and the last bits that changed moved the new-item head's NDCG@10 on
    # Online Retail (as of 2011-06-11) from 0.147 to 0.138
    factor, info = lapack.spotrf(gram.T, lower=True, overwrite_a=True)
    inverse, inverted = lapack.spotri(factor, lower=True, overwrite_c=True)
    if info or inverted:
        raise ModelFitError("co-purchase weights: the Gram matrix is not positive definite")
    into = np.tril(inverse)
    into += np.tril(inverse, -1).T
    del gram, factor, inverse
    # the weight of product a for product b is -inverse[a, b] / inverse[b, b]: row b of
    # `into` lists the weights into b
    into /= -np.diag(into).copy()[:, None]
    np.fill_diagonal(into, 0)
    top = _top_mask(into, k) & (into > 0)
    to, source = np.nonzero(top)
    return sp.csr_matrix((into[to, source], (kept[source], kept[to])), shape=(n, n))


def fold_in(weighted: sp.csr_matrix, item_factors: np.ndarray, regularization: float) -> np.ndarray:
    """Each customer's (row's) ALS factors against fixed item factors Y: the least squares
    implicit's `recalculate_user` solves, (YᵀY + λI + Y_uᵀ(C_u - I)Y_u) x = Y_uᵀc_u, for the
    confidences c_u of the customer's n products, by the Woodbury identity. With B = YᵀY + λI
    and Z = YB⁻¹ shared, x = Z_uᵀw where (I + (C_u - I)Y_uZ_uᵀ)w = c_u: an n x n system, not
    a factors x factors one, so a bucket of the 1M bench shop (eight products a customer)
    folds in in 0.2 s, not 0.53 s. A customer with more products than factors solves the
    factors' own system. Each customer's answer is its own, whatever the others in the call:
    a bucket's customers get what the whole shop's would."""
    factors = item_factors.astype(np.float64)
    width = factors.shape[1]
    shared = factors.T @ factors + regularization * np.eye(width)
    solved = factors @ np.linalg.inv(shared)
    users = np.zeros((weighted.shape[0], width), np.float32)
    sizes = np.diff(weighted.indptr)

    def solve(rows: np.ndarray) -> None:
        """Customers of one size n at a time: their systems side by side."""
        order = rows[np.argsort(sizes[rows], kind="stable")]
        ends = np.flatnonzero(np.diff(sizes[order])) + 1
        for same in np.split(order, ends):
            n = sizes[same[0]] if len(same) else 0
            if n == 0:
                continue
            at = weighted.indptr[same][:, None] + np.arange(n)
            items, c = weighted.indices[at], weighted.data[at].astype(np.float64)
            y = factors[items]
            if n > width:
                system = shared + np.einsum("uni,un,unj->uij", y, c - 1, y)
                aims = np.einsum("uni,un->ui", y, c)[..., None]
                users[same] = np.linalg.solve(system, aims)[..., 0]
                continue
            z = solved[items]
            system = (y @ z.transpose(0, 2, 1)) * (c - 1)[..., None]
            system[:, np.arange(n), np.arange(n)] += 1.0
            w = np.linalg.solve(system, c[..., None])
            users[same] = (w.transpose(0, 2, 1) @ z)[:, 0]

    halves = np.array_split(np.arange(weighted.shape[0]), THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(solve, halves))
    return users


@dataclass
class _Pairs:
    """Candidate (customer, product) pairs by code, with features in PAIR_FEATURES order."""

    customers: np.ndarray
    products: np.ndarray
    features: np.ndarray  # float32, one row per pair

    def __getitem__(self, rows: np.ndarray) -> _Pairs:
        return _Pairs(self.customers[rows], self.products[rows], self.features[rows])

    @staticmethod
    def concat(parts: list[_Pairs]) -> _Pairs:
        return _Pairs(
            np.concatenate([p.customers for p in parts]),
            np.concatenate([p.products for p in parts]),
            np.concatenate([p.features for p in parts]),
        )


@dataclass(frozen=True)
class Items:
    """What ranking needs from the whole shop at one cut-off, computed once (`items`): the
    product index, co-purchase neighbours, item statistics, ALS item factors and the BM25
    weights' shop-wide terms. With it, each customer's candidates and scores depend on that
    customer's history alone, so customers ranked apart (bucket by bucket) rank as together.
    Arrays and Polars series: it travels to Dask workers by pickle."""

    products: pl.Series  # sorted product ids
    similar: sp.csr_matrix  # products x products: co-purchase weights (see `_co_purchase`)
    items: dict[str, np.ndarray]
    popular: np.ndarray
    item_factors: np.ndarray
    idf: np.ndarray  # BM25 per product: log(buyers in the shop) - log1p(its buyers)
    average_length: np.floating  # BM25: mean orders per customer over the shop (float32)
    customers: pl.Series  # sorted ids whose factors the ALS fit itself gave (small shops)
    user_factors: np.ndarray  # their factors; others are solved against the item factors
    categories: np.ndarray  # per product its category's code, -1 where unknown
    compiled: bool  # rank with compiled trees: decided by the shop's size, not a part's


@dataclass
class _Context:
    """One cut-off's candidates for a set of customers: their own purchases, with the shop's
    `Items`; candidate pairs are then built per customer chunk."""

    index: _Index
    orders: sp.csr_matrix  # customers x products: orders of each product, indices sorted
    own: dict[str, np.ndarray]  # own_* features per bought pair, aligned with `orders.data`
    decayed: sp.csr_matrix  # log orders, decayed by age: the co-purchase query
    user_factors: np.ndarray
    category_orders: sp.csr_matrix  # customers x categories: orders of each category's products
    shop: Items

    @property
    def similar(self) -> sp.csr_matrix:
        return self.shop.similar

    @cached_property
    def item_panels(self) -> np.ndarray:
        """The ALS item factors packed for `_dot_rows`."""
        return _panels(self.shop.item_factors)

    @cached_property
    def _similar_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _csr_arrays(self.similar)

    def co_purchase(self, start: int, stop: int) -> np.ndarray:
        """Customers [start, stop) x products, dense: their decayed purchases times the
        co-purchase weights."""
        return _dense_product(self.decayed, start, stop, self._similar_arrays, self.n_items)

    @property
    def items(self) -> dict[str, np.ndarray]:
        return self.shop.items

    @property
    def popular(self) -> np.ndarray:
        return self.shop.popular

    @property
    def item_factors(self) -> np.ndarray:
        return self.shop.item_factors

    @property
    def n_users(self) -> int:
        return len(self.index.customers)

    @property
    def n_items(self) -> int:
        return len(self.index.products)


class ProductRanker(Settings):
    def __init__(
        self,
        *,
        cf_candidates: int = 30,
        popular_candidates: int = 10,
        als_candidates: int = 20,  # 40: the same figures, a quarter more ranking (see README)
        als_factors: int = 64,
        neighbours: int = 50,
        co_purchase_l2: float = 2000.0,
        n_estimators: int = 100,  # 200 at 0.05: the same served figures, twice the scoring
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_child_samples: int = 500,  # 50: all-items NDCG@10 0.4345, not 0.4374 (OR, 2011-06-11)
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
        self.co_purchase_l2 = co_purchase_l2
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    # --- candidates and their features ----------------------------------------------------

    def items(self, history: pl.DataFrame, as_of: datetime) -> Items:
        """The shop-wide part of candidate generation at `as_of`, from every customer's
        `history`: neighbours, item statistics, ALS item factors, BM25 terms."""
        products = _sorted_ids(history["product_id"])
        customers = _sorted_ids(history["customer_id"])
        layout = _layout(_Index(customers, products), history)
        shape, i = layout.shape, layout.products
        bought = layout.matrix(np.ones(len(i)))
        counts = layout.matrix(layout.history["orders"].to_numpy().astype(np.float32))
        # BM25 as implicit's `bm25_weight` computes it over the whole matrix, kept by parts
        idf = np.log(float(shape[0])) - np.log1p(np.bincount(i, minlength=shape[1]))
        average_length = np.ravel(counts.sum(axis=1)).mean()
        weighted = _bm25(counts, idf, average_length)
        # the co-purchase inverse runs on one core (see `_co_purchase`) beside the ALS fit,
        # which takes both: `items` of the 1M bench shop took 16.8-18.4 s, now 13.4-14.3 s
        with ThreadPoolExecutor(1) as beside:
            co_purchase = beside.submit(_co_purchase, bought, self.co_purchase_l2, self.neighbours)
            als = self._als_model()
            joint = shape[0] <= self.als_sample
            if joint:
                als.fit(weighted, show_progress=False)
            else:  # item factors from a sample of customers; everyone's are solved from them
                rng = np.random.default_rng(self.random_state)
                sample = np.sort(rng.choice(shape[0], self.als_sample, replace=False))
                als.fit(weighted[sample], show_progress=False)
            items = self._item_stats(layout.history, i, shape[1], as_of)
            popular = np.argsort(-items["pop_30d"] - 1e-3 * items["pop_orders"])
        return Items(
            products=products,
            similar=co_purchase.result(),
            items=items,
            popular=popular[: self.popular_candidates],
            item_factors=als.item_factors,
            idf=idf,
            average_length=average_length,
            customers=customers if joint else customers[:0],
            user_factors=als.user_factors if joint else np.zeros((0, self.als_factors)),
            categories=_category_codes(layout.history, i, shape[1]),
            compiled=shape[0] >= COMPILE_CUSTOMERS,
        )

    def candidate_context(
        self, history: pl.DataFrame, as_of: datetime, items: Items | None = None
    ) -> _Context:
        """Candidate generation for the customers of `history`, against the shop's `items`
        (default: those of `history` itself, a whole shop)."""
        shop = self.items(history, as_of) if items is None else items
        index = _Index(_sorted_ids(history["customer_id"]), shop.products)
        layout = _layout(index, history)
        history = layout.history

        def days_before(column: str) -> np.ndarray:
            age = (pl.lit(as_of) - pl.col(column)).dt.total_hours() / 24
            return history.select(age).to_series().to_numpy()

        days_since = days_before("last_ordered_at")
        orders = history["orders"].to_numpy().astype(np.float32)
        counts = layout.matrix(orders)
        return _Context(
            index=index,
            orders=counts,
            own={
                "own_orders": orders,
                "own_quantity": history["quantity"].to_numpy().astype(np.float32),
                "own_days_since": days_since + 1e-3,
                "own_days_since_first": days_before("first_ordered_at") + 1e-3,
            },
            decayed=layout.matrix(np.log1p(orders) * np.exp(-days_since / 180)),
            user_factors=self._user_factors(index.customers, counts, shop),
            category_orders=counts @ _one_hot(shop.categories),
            shop=shop,
        )

    def _als_model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=self.als_factors,
            iterations=15,
            regularization=ALS_REGULARIZATION,
            random_state=self.random_state,
            num_threads=THREADS,
        )

    def _user_factors(self, customers: pl.Series, counts: sp.csr_matrix, shop: Items):
        """The customers' ALS factors: the fit's own where it had them all (a small shop),
        else each solved against the item factors (an exact fold-in, one customer at a time
        whatever the chunk, so parts of a shop get what the whole would)."""
        if len(shop.customers):
            return shop.user_factors[positions(shop.customers, customers)]
        weighted = _bm25(counts, shop.idf, shop.average_length)
        return fold_in(weighted, shop.item_factors, ALS_REGULARIZATION)

    def _pairs(self, context: _Context, start: int, stop: int) -> _Pairs:
        """Candidate pairs, with their features, for the customers at codes [start, stop).

        Candidates are marked in a dense chunk of customers x products, so the union of the
        sources comes out unique and sorted by customer, then product, with no sort; the
        sources' scores are dense chunks too, read at each candidate.
        """
        n, n_items = stop - start, context.n_items
        lo, hi = context.orders.indptr[start], context.orders.indptr[stop]
        bought_per_user = np.diff(context.orders.indptr[start : stop + 1])
        own_rows = np.repeat(np.arange(n), bought_per_user)
        own_cols = context.orders.indices[lo:hi]
        own_keys = own_rows * n_items + own_cols  # sorted: CSR order
        own = {name: values[lo:hi] for name, values in context.own.items()}

        als = _dot_rows(context.user_factors[start:stop], context.item_panels, n_items)
        als_own = als[own_rows, own_cols]
        als[own_rows, own_cols] = -np.inf  # ALS proposes only products new to the customer
        candidate = _top_mask(als, self.als_candidates)
        als[own_rows, own_cols] = als_own
        cf = context.co_purchase(start, stop)
        cf_own = cf[own_rows, own_cols]
        cf[own_rows, own_cols] = 0.0  # as ALS, co-purchase proposes only new products
        candidate |= _top_positive(cf, self.cf_candidates)
        cf[own_rows, own_cols] = cf_own
        candidate[own_rows, own_cols] = True
        candidate[:, context.popular] = True
        keys = np.flatnonzero(candidate)  # customer row x products + product, sorted
        pu, pi = np.divmod(keys, n_items)

        bought_at = np.searchsorted(keys, own_keys)  # every bought product is a candidate
        features: dict[str, np.ndarray] = {}
        for name, values in own.items():
            features[name] = np.full(len(keys), np.nan if "days" in name else 0.0)
            features[name][bought_at] = values
        first_bought = context.orders.indptr[start:stop] - lo  # every customer here bought
        user_orders = np.add.reduceat(own["own_orders"], first_bought)
        user_since = np.minimum.reduceat(own["own_days_since"], first_bought)
        own_days = features["own_days_since"]
        category = context.shop.categories[pi]
        in_category = context.category_orders[start:stop].toarray()[pu, np.maximum(category, 0)]
        cf_pair = cf[pu, pi]
        als_pair = als[pu, pi]
        features |= {
            "own_share": features["own_orders"] / np.maximum(user_orders[pu], 1),
            "due_ratio": own_days / np.maximum(context.items["repeat_interval_days"][pi], 1.0),
            "cf_score": cf_pair,
            "cf_rank": _rank_within(pu, -cf_pair),
            "als_score": als_pair,
            "als_rank": _rank_within(pu, -als_pair),
            "user_orders": user_orders[pu],
            "user_products": bought_per_user[pu],
            "user_days_since": user_since[pu],
            "category_share": np.where(
                category >= 0, in_category / np.maximum(user_orders[pu], 1), np.nan
            ),
        }
        for name in ITEM_FEATURES:
            features[name] = context.items[name][pi]
        table = np.empty((len(pu), len(PAIR_FEATURES)), dtype=np.float32)
        for column, name in enumerate(PAIR_FEATURES):
            table[:, column] = features[name]
        return _Pairs(pu + start, pi, table)

    def _chunks(self, context: _Context, then: Callable[[_Pairs], T]) -> list[T]:
        """`then` applied to the candidate pairs of each chunk of the customers of `context`,
        chunks side by side on every core (numpy, scipy and the trees let go of the GIL)."""
        # a chunk's dense scores (customers x products, float32) stay near 12 MB: small blocks
        # are reused by the allocator where large ones are mapped afresh, page by page, and
        # the chunk's few dense arrays stay in cache (on 6,000 products, 500 customers a
        # chunk ranked 20% faster than 1,000)
        step = max(1, min(self.chunk_size, DENSE_CELLS // max(context.n_items, 1)))

        def chunk(start: int) -> T:
            return then(self._pairs(context, start, min(start + step, context.n_users)))

        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(chunk, range(0, context.n_users, step)))

    def candidates(
        self, history: pl.DataFrame, as_of: datetime, items: Items | None = None
    ) -> pl.DataFrame:
        """Every candidate (customer, product) pair with its features, for one cut-off
        (`items`: the shop's, where `history` is a part of it)."""
        context = self.candidate_context(history, as_of, items)
        pairs = _Pairs.concat(self._chunks(context, lambda pairs: pairs))
        return pl.concat(
            [
                context.index.frame(pairs.customers, pairs.products),
                pl.from_numpy(pairs.features, schema=PAIR_FEATURES, orient="row"),
            ],
            how="horizontal",
        )

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
        train = self.stack([self.labelled_pairs(*example) for example in examples])
        return self.adopt(self._learn(train), self._learn(train, new_only=True))

    def _learn(self, train: pl.DataFrame, new_only: bool = False) -> lgb.Booster:
        features, bought, groups = self.teaching(train, new_only)
        if not len(groups):
            raise ModelFitError(NOTHING_BOUGHT)
        data = lgb.Dataset(features, bought, group=groups)
        return lgb.train(self.booster_params(), data, self.n_estimators)

    def labelled_pairs(
        self,
        history: pl.DataFrame,
        cutoff: datetime,
        bought: pl.DataFrame,
        items: Items | None = None,
    ) -> pl.DataFrame:
        """One cut-off's candidates (`candidates`), each `bought` or not in the horizon."""
        target = bought.select("customer_id", "product_id").unique().with_columns(bought=True)
        return (
            self.candidates(history, cutoff, items)
            .join(target, on=["customer_id", "product_id"], how="left")
            .with_columns(pl.col("bought").fill_null(False))
        )

    @staticmethod
    def stack(frames: list[pl.DataFrame]) -> pl.DataFrame:
        """Every cut-off's labelled pairs, customer by customer: one customer's candidates
        at every cut-off make one group (`teaching`)."""
        return pl.concat(frames).sort("customer_id", maintain_order=True)

    def teaching(
        self, train: pl.DataFrame, new_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LambdaRank's examples of `stack`ed pairs: (features, bought, group sizes), a group
        being one customer's candidates (only products new to the customer, for the
        cross-sell head). Only customers who then bought a candidate teach; none: empty."""
        if new_only:
            train = train.filter(pl.col("own_orders") == 0)
        train = train.filter(pl.col("bought").any().over("customer_id"))
        return (
            matrix(train, PAIR_FEATURES),
            train["bought"].to_numpy().astype(np.float32),
            train.group_by("customer_id", maintain_order=True)
            .len()["len"]
            .cast(pl.Int64)
            .to_numpy(),
        )

    def booster_params(self) -> dict:
        """The LightGBM parameters of both boosters (a learner elsewhere, such as
        `lightgbm.dask`, fits with the same ones)."""
        return lightgbm_params(
            "lambdarank",
            self.random_state,
            lambdarank_truncation_level=20,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            feature_fraction=0.9,
            bagging_fraction=0.8,
        )

    def adopt(self, booster: lgb.Booster, booster_new: lgb.Booster) -> ProductRanker:
        """Take the boosters fitted with `booster_params` on `teaching`'s sets (all products,
        new products), here or elsewhere (on a cluster, by `lightgbm.dask`)."""
        self.booster_, self.booster_new_ = booster, booster_new
        return self

    def precompile(self) -> None:
        """Start compiling the trees that ranking many customers runs (see compile_trees)."""
        check_is_fitted(self, "booster_")
        compile_trees(self.booster_)
        compile_trees(self.booster_new_)

    def rank(
        self,
        history: pl.DataFrame,
        as_of: datetime,
        n: int = 10,
        exclude: pl.DataFrame | None = None,
        new_only: bool = False,
        unavailable: Collection[str] = (),
        items: Items | None = None,
    ) -> pl.DataFrame:
        """Top-`n` products per customer in `history`: `customer_id`, `products`, `scores`.

        `exclude` lists (customer_id, product_id) pairs never to recommend (business rules);
        `new_only` keeps only products the customer has not bought; `unavailable` products
        (out of stock) are offered to no one. `items`: the shop's (see `items`), where
        `history` is a part of it; by default `history` is the whole shop.
        """
        check_is_fitted(self, "booster_")
        context = self.candidate_context(history, as_of, items)
        return self.rank_lists(context, [Ranking(n, exclude, new_only)], unavailable)[0]

    def rank_lists(
        self, context: _Context, rankings: list[Ranking], unavailable: Collection[str] = ()
    ) -> list[pl.DataFrame]:
        """`rank` for each of `rankings` over candidates generated once (`candidate_context`):
        a batch's two lists share each chunk's candidate pairs, the costlier half."""
        check_is_fitted(self, "booster_")
        offered = ~context.index.products.is_in(list(unavailable)).to_numpy()
        rankers = [
            (
                ranking,
                self._predictor(
                    self.booster_new_ if ranking.new_only else self.booster_,
                    compiled=context.shop.compiled,
                ),
                None if ranking.exclude is None else context.index.pair_matrix(ranking.exclude),
            )
            for ranking in rankings
        ]

        def best(pairs: _Pairs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            """Per ranking: the customers, products and scores of each customer's top n."""
            found = []
            for ranking, predict, blocked in rankers:
                keep = offered[pairs.products]
                if ranking.new_only:
                    keep &= pairs.features[:, PAIR_FEATURES.index("own_orders")] == 0
                if blocked is not None:
                    keep &= ~np.asarray(blocked[pairs.customers, pairs.products]).ravel()
                kept = pairs[keep]
                score = predict(kept.features)
                top = _top_within(kept.customers, score, ranking.n)
                found.append((kept.customers[top], kept.products[top], score[top]))
            return found

        chunks = self._chunks(context, best)
        lists = []
        for k in range(len(rankings)):
            customers, products, scores = (
                np.concatenate([chunk[k][part] for chunk in chunks]) for part in range(3)
            )
            ranked = (
                pl.DataFrame({"code": customers, "score": scores})
                .with_columns(product_id=context.index.products.gather(products))
                .group_by("code", maintain_order=True)  # codes group faster than ids
                .agg(products=pl.col("product_id"), scores=pl.col("score"))
            )
            codes = ranked.drop_in_place("code").to_numpy()
            customer_id = context.index.customers.gather(codes).alias("customer_id")
            lists.append(ranked.insert_column(0, customer_id))
        return lists

    @staticmethod
    def _predictor(booster: lgb.Booster, compiled: bool) -> Callable[[np.ndarray], np.ndarray]:
        """The booster's predictions on the first of PAIR_FEATURES it was fitted on (a model
        saved before a feature was added reads the columns it knew), on one thread: chunks
        run side by side already (with a pool of threads per chunk, a bucket of the 1M bench
        shop took 3.8 s to rank, not 3.4 s)."""
        predict = tree_predictor(booster, compiled, threads=1)
        width = booster.num_feature()
        return lambda features: predict(features[:, :width])

    @property
    def feature_importances_(self) -> dict[str, float]:
        check_is_fitted(self, "booster_")
        gain = self.booster_.feature_importance("gain")
        known = PAIR_FEATURES[: len(gain)]  # a model saved before a feature was added
        return dict(zip(known, (gain / gain.sum()).round(4), strict=True))

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


def _order_within(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For entries sorted by group: their indices group by group, each group's by ascending
    key (stable, NaN last), and each index's place within its group.

    Compiled (`_kernels.sort_within`): each customer's few dozen candidates are sorted on
    their own; ranking 500 customers' 27,000 candidates took 0.9 ms, where an argsort of
    padded rows took 1.6 ms.
    """
    indptr = _int64(np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1, len(groups)])
    order = np.empty(len(groups), dtype=np.int64)
    keys = np.ascontiguousarray(keys, dtype=np.float64)
    _kernels.sort_within(indptr, keys, len(indptr) - 1, order)
    place = np.arange(len(groups)) - np.repeat(indptr[:-1], np.diff(indptr))
    return order, place


def _rank_within(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """1-based rank of each key (ascending) within its group; groups must be sorted."""
    order, place = _order_within(groups, keys)
    ranks = np.empty(len(keys), dtype=np.float32)
    ranks[order] = place + 1
    return ranks


def _top_within(groups: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of each group's `n` highest scores, group by group, best first; groups must
    be sorted."""
    order, place = _order_within(groups, -scores)
    return order[place < n]
