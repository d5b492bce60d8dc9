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
from sendwise.models import products
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
    scores = RNG.random((50, 40))
    mask = products._top_mask(scores.copy(), 7)
    expected = scores >= np.sort(scores, axis=1)[:, [-7]]
    assert np.array_equal(mask, expected) and (mask.sum(axis=1) == 7).all()
    assert products._top_mask(scores[:, :5], 7).all()  # fewer columns than k: all of them


def test_sparse_top_keeps_each_rows_k_largest_positive_entries():
    dense = np.where(RNG.random((300, 500)) < 0.1, RNG.random((300, 500)) - 0.1, 0.0)
    dense[3, :400] = RNG.random(400) + 0.01  # one long row, in a wider block of its own
    dense[5] = 0.0  # an empty row
    matrix_ = sp.csr_matrix(dense)
    rows, columns = products._sparse_top(matrix_.indptr, matrix_.indices, matrix_.data, 5)
    got = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=dense.shape).toarray() > 0
    positive = np.where(dense > 0, dense, -np.inf)
    kth = np.sort(positive, axis=1)[:, -5]
    expected = (dense > 0) & (dense >= kth[:, None])
    assert np.array_equal(got, expected)
    assert got[3].sum() == 5 and not got[5].any()
    ties = sp.csr_matrix(np.array([[0.5] * 8 + [0.9]]))
    rows, columns = products._sparse_top(ties.indptr, ties.indices, ties.data, 3)
    assert columns.tolist() == [0, 1, 8]  # exactly k: ties go to the first products


def test_ranks_and_tops_within_groups_match_a_sort():
    groups = np.sort(RNG.integers(0, 40, 1_000))
    keys = RNG.random(1_000)
    ranks = products._rank_within(groups, keys)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        expected = np.argsort(np.argsort(keys[members])) + 1
        assert np.array_equal(ranks[members], expected)
    top = products._top_within(groups, keys, 3)
    expected = np.concatenate(
        [
            (members := np.flatnonzero(groups == g))[np.argsort(-keys[members])][:3]
            for g in np.unique(groups)
        ]
    )
    assert np.array_equal(top, expected)
    assert products._rank_within(groups[:0], keys[:0]).size == 0


def test_lookup_finds_stored_keys_and_zero_elsewhere():
    keys = np.array([2, 5, 9])
    values = np.array([0.5, 1.5, 2.5])
    found = products._lookup(keys, values, np.array([0, 2, 5, 6, 9, 12]))
    assert found.tolist() == [0.0, 0.5, 1.5, 0.0, 2.5, 0.0]
    assert products._lookup(keys[:0], values[:0], np.array([1])).tolist() == [0.0]
