"""The fast paths of batch scoring give what the plain ones give: compiled trees predict as
LightGBM does, and the vectorised candidate helpers agree with brute force."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
from champions import fitted  # tests/champions.py: one fit a session for the same inputs

from sendwise.features import builders
from sendwise.features.clock import parse_as_of
from sendwise.models import _kernels, base, products
from sendwise.models.base import matrix, tree_predictor

AS_OF = parse_as_of("2026-05-31")
RNG = np.random.default_rng(7)


@pytest.mark.parametrize("objective", ["binary", "regression", "lambdarank"])
def test_compiled_trees_predict_as_lightgbm(simulated_shop, objective):
    features = builders.customer_features(simulated_shop, AS_OF).collect()
    columns = ["orders_total", "recency_days", "revenue_total", "tenure_days", "email_opens_90d"]
    X = matrix(features, [c for c in columns if c in features.columns])
    y = (features["orders_30d"] > 0).to_numpy().astype(float)
    params = {"objective": objective, "verbose": -1, "num_leaves": 15}
    group = {"group": np.full(len(y) // 10, 10)} if objective == "lambdarank" else {}
    rows = len(y) // 10 * 10
    booster = lgb.train(params, lgb.Dataset(X[:rows], y[:rows], **group), 30)
    for raw_score in (False, True):
        expected = booster.predict(X, raw_score=raw_score)
        compiled = tree_predictor(booster, compiled=True, raw_score=raw_score)(X)
        np.testing.assert_allclose(compiled, expected, rtol=1e-9, atol=1e-12)
    assert np.isnan(X).any()  # missing values took their learned branches in both


def test_ranking_with_compiled_trees_matches_lightgbm(simulated_shop, monkeypatch):
    history = builders.interactions(simulated_shop, AS_OF).collect()
    ranker = fitted("crosssell", simulated_shop, AS_OF, n_estimators=20)  # fit_products
    plain = ranker.rank(history, AS_OF)
    monkeypatch.setattr(products, "COMPILE_CUSTOMERS", 0)
    compiled = ranker.rank(history, AS_OF)
    assert compiled["customer_id"].equals(plain["customer_id"])
    assert (compiled["products"] == plain["products"]).mean() > 0.999  # only exact ties differ
    np.testing.assert_allclose(
        compiled["scores"].list.first(), plain["scores"].list.first(), rtol=1e-9
    )


def test_top_mask_marks_each_rows_k_largest():
    scores = RNG.random((50, 40)).astype(np.float32)
    mask = products._top_mask(scores.copy(), 7)
    expected = scores >= np.sort(scores, axis=1)[:, [-7]]
    assert np.array_equal(mask, expected) and (mask.sum(axis=1) == 7).all()
    assert products._top_mask(scores[:, :5], 7).all()  # fewer columns than k: all of them


def test_top_mask_of_wide_rows_samples_and_still_finds_each_rows_k_largest():
    scores = RNG.standard_normal((200, 3_000)).astype(np.float32)
    scores[RNG.random(scores.shape) < 0.02] = -np.inf  # a customer's own products
    scores[7] = np.sort(scores[7])  # the largest all at the end: none in the sample's rows
    scores[9, :100] = 5.0  # ties at the k-th value are all marked
    mask = products._top_mask(scores, 40)
    expected = scores >= np.sort(scores, axis=1)[:, [-40]]
    assert np.array_equal(mask, expected)
    assert mask[9].sum() == 100 and (np.delete(mask.sum(axis=1), 9) == 40).all()


def test_top_masks_never_mark_nan_and_search_every_block_that_can_hold_the_top():
    scores = RNG.standard_normal((3, 1_000)).astype(np.float32)
    scores[0, ::2] = np.nan  # half the row, in every block
    scores[1, 500:] = np.nan  # whole blocks
    scores[2, 17] = 9.0  # the largest, in a block with a NaN beside it
    scores[2, 18] = np.nan
    mask = products._top_mask(scores, 40)
    finite = np.where(np.isnan(scores), -np.inf, scores)
    assert np.array_equal(mask, finite >= np.sort(finite, axis=1)[:, [-40]])
    assert mask[2, 17] and not mask[np.isnan(scores)].any()
    above = np.where(scores > 0, scores, -np.inf)
    expected = (scores > 0) & (above >= np.sort(above, axis=1)[:, [-40]])
    assert np.array_equal(products._top_positive(scores, 40), expected)


def test_top_positive_keeps_each_rows_k_largest_positive_entries():
    dense = np.where(RNG.random((300, 2_000)) < 0.2, RNG.random((300, 2_000)) - 0.1, 0.0)
    dense = dense.astype(np.float32)
    dense[3, :30] = RNG.random(30) + 0.01  # a row with few values
    dense[5] = 0.0  # an empty row
    dense[8] = np.where(dense[8] > 0, -dense[8], 0.0)  # nothing positive
    got = products._top_positive(dense, 5)
    positive = np.where(dense > 0, dense, -np.inf)
    kth = np.sort(positive, axis=1)[:, -5]
    expected = (dense > 0) & (dense >= kth[:, None])
    assert np.array_equal(got, expected)
    assert got[3].sum() == 5 and not got[5].any() and not got[8].any()
    ties = np.array([[0.5] * 8 + [0.9] + [0.0] * 100])
    assert np.flatnonzero(products._top_positive(ties, 3)[0]).tolist() == [0, 1, 8]  # exactly k


def test_dense_product_rows_are_scipys_sums():
    query = sp.random(500, 300, density=0.03, format="csr", dtype=np.float64, rng=RNG)
    similar = sp.random(300, 300, density=0.1, format="csr", dtype=np.float32, rng=RNG)
    arrays = products._csr_arrays(similar)
    for start, stop in [(0, 500), (120, 377), (499, 500), (7, 7)]:
        got = products._dense_product(query, start, stop, arrays, 300)
        expected = (query[start:stop] @ similar).toarray().astype(np.float32)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert products._dense_product(query, 0, 500, arrays, 300).any()


def test_als_scores_are_the_same_bits_in_any_chunk_and_blas_figures():
    """A customer's scores against every product depend on that customer alone, not on
    the chunk they are scored in or their place in it (BLAS kernels add in an order set by
    an entry's place in their tiles), and they are the product BLAS computes."""
    users = RNG.normal(0, 1, (203, 64)).astype(np.float32)
    items = RNG.normal(0, 1, (1_001, 64)).astype(np.float32)
    panels = products._panels(items)
    whole = products._dot_rows(users, panels, len(items))
    assert whole.shape == (203, 1_001) and whole.flags.c_contiguous
    np.testing.assert_allclose(whole, users @ items.T, rtol=1e-5, atol=1e-4)
    for rows in ([5], [202, 0, 17], RNG.permutation(203)[:77]):
        assert np.array_equal(products._dot_rows(users[rows], panels, len(items)), whole[rows])
    assert products._dot_rows(users[:0], panels, len(items)).shape == (0, 1_001)
    with pytest.raises(ValueError, match="padded to whole blocks"):
        _kernels.dot_rows(users, panels, 203, 64, 1_008, 1_001, np.zeros((203, 1_001), np.float32))


@pytest.mark.parametrize("factors", [16, 3])  # 3: most customers hold more products
def test_fold_in_solves_the_least_squares_implicit_solves(factors):
    """The Woodbury fold-in gives each customer the factors implicit's Cholesky solve gives,
    and a part of the customers what the whole gives them."""
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    weighted = sp.random(
        400, 60, density=0.1, format="csr", random_state=1, dtype=np.float32
    ) * np.float32(5)
    weighted.data += 0.1  # confidences below and above one
    items = rng.normal(0, 0.3, (60, factors)).astype(np.float32)
    als = AlternatingLeastSquares(factors=factors, regularization=products.ALS_REGULARIZATION)
    als.item_factors = items
    expected = als.recalculate_user(np.arange(400), weighted)
    got = products.fold_in(weighted, items, products.ALS_REGULARIZATION)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=2e-5)
    part = products.fold_in(weighted[100:250], items, products.ALS_REGULARIZATION)
    assert np.array_equal(part, got[100:250])
    assert not got[np.diff(weighted.indptr) == 0].any()  # no products: no factors


def test_kernels_refuse_arrays_that_do_not_fit_what_they_are_told():
    scores = np.zeros((4, 10), np.float32)
    with pytest.raises(ValueError, match="mark holds 20 bytes, not 40"):
        _kernels.mark_top(scores, 4, 10, 3, False, False, np.zeros(20, np.uint8))
    with pytest.raises(ValueError, match="overflowing"):
        _kernels.mark_top(scores, 2**62, 4, 1, False, False, np.zeros(4, np.uint8))
    query = sp.csr_matrix(np.ones((1, 2)))
    indptr, indices, _ = products._csr_arrays(query)

    def product(similar: sp.csr_matrix, out: np.ndarray, width: int = 2) -> None:
        arrays = products._csr_arrays(similar)
        _kernels.sparse_product_rows(indptr, indices, query.data, *arrays, 1, width, out)

    with pytest.raises(ValueError, match="out holds"):
        product(sp.csr_matrix(np.eye(2, dtype=np.float32)), np.zeros(1, np.float32))
    wide = sp.csr_matrix(([1.0], ([1], [9])), shape=(2, 10), dtype=np.float32)
    out = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="similar: column 9 is not in"):
        product(wide, out[:2])  # its columns would land past `out`
    assert not out.any()
    with pytest.raises(ValueError, match="query: column 1 is not in"):
        product(sp.csr_matrix(np.ones((1, 1), np.float32)), out[:2])  # too few rows
    with pytest.raises(ValueError, match="overflowing"):
        _kernels.sparse_product_rows(
            indptr, indices, query.data, *products._csr_arrays(wide), -1, 2, out
        )


def test_ranks_and_tops_within_groups_match_a_stable_sort():
    # groups of 1 to a few hundred (merged runs, not only insertion sorts), ties and NaN
    groups = np.sort(np.r_[RNG.integers(0, 40, 1_000), np.full(300, 17), [41]])
    keys = np.round(RNG.random(len(groups)) * 20) / 20
    keys[RNG.random(len(groups)) < 0.05] = np.nan
    ranks = products._rank_within(groups, keys)
    top = products._top_within(groups, keys, 3)
    expected_top = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        ascending = np.argsort(keys[members], kind="stable")  # NaN last, ties by position
        expected = np.empty(len(members))
        expected[ascending] = np.arange(1, len(members) + 1)
        assert np.array_equal(ranks[members], expected)
        expected_top.append(members[np.argsort(-keys[members], kind="stable")][:3])
    assert np.array_equal(top, np.concatenate(expected_top))
    assert products._rank_within(groups[:0], keys[:0]).size == 0


def test_sorting_within_groups_refuses_pointers_past_the_keys():
    order = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="indptr: row 0's pointers are out of order"):
        _kernels.sort_within(np.array([0, 4], np.int64), np.zeros(3), 1, order)
    with pytest.raises(ValueError, match="order holds 16 bytes, not 24"):
        _kernels.sort_within(np.array([0, 3], np.int64), np.zeros(3), 1, order[:2])
    assert not order.any()


def test_compiled_trees_are_kept_and_loaded_by_the_next_process(tmp_path, simulated_shop):
    features = builders.customer_features(simulated_shop, AS_OF).collect()
    X = matrix(features, ["orders_total", "recency_days", "revenue_total", "tenure_days"])
    y = (features["orders_30d"] > 0).to_numpy().astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 20)
    try:
        base.keep_compiled_trees(tmp_path)
        first = base.compile_trees(booster).result()(X)
        kept = list(tmp_path.iterdir())
        assert len(kept) == 1 and kept[0].suffix == ".o"  # whole, under its final name
        stamp = kept[0].stat().st_mtime_ns
        # another process: nothing compiled in memory, the kept file is loaded, not rewritten
        again = base._compile(booster.model_to_string(), False, kept[0])(X)
        assert kept[0].stat().st_mtime_ns == stamp
        np.testing.assert_allclose(again, first, rtol=0, atol=0)
        np.testing.assert_allclose(again, booster.predict(X), rtol=1e-9)
        changed = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 21)
        base.compile_trees(changed).result()
        assert len(list(tmp_path.iterdir())) == 2  # another model, another file
    finally:
        base.keep_compiled_trees(None)
