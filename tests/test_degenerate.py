"""Degenerate shops degrade, never stop: one product, orders only, no buyers to validate on.

The shops are tiny orders-only directories built here (no customers, products, events or email
tables, so no time zones either); training runs through the real CLI and a private MLflow store.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sendwise.cli.main import main
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop
from sendwise.models.propensity import PurchasePropensity
from sendwise.store import registry
from sendwise.training.backtest import backtest

START = datetime(2020, 1, 1)
DAYS = 730
AS_OF = "2021-12-31"  # the shops' last day


def orders_only_shop(directory: Path, products: int, customers: int = 300, seed: int = 0) -> Path:
    """Two years of orders from customers who start, buy at their own rate for a while and
    stop: some buy in any 90 days and some do not, so propensity has both outcomes."""
    rng = np.random.default_rng(seed)
    first = rng.uniform(0, DAYS * 0.8, customers)
    last = np.minimum(first + rng.exponential(300, customers), DAYS)
    counts = 1 + rng.poisson(rng.gamma(1.0, 1 / 30, customers) * (last - first))
    owner = np.repeat(np.arange(customers), counts)
    days = first[owner] + rng.uniform(0, 1, owner.size) * (last - first)[owner]
    orders = pl.DataFrame(
        {
            "order_id": [f"o{k}" for k in range(owner.size)],
            "customer_id": [f"c{c}" for c in owner],
            "product_id": [f"p{p}" for p in rng.integers(0, products, owner.size)],
            "ordered_at": [START + timedelta(days=float(d)) for d in days],
            "quantity": rng.integers(1, 4, owner.size),
            "unit_price": np.full(owner.size, 12.5),
        }
    )
    directory.mkdir(parents=True)
    orders.write_parquet(directory / "orders.parquet")
    return directory


@pytest.fixture(scope="module")
def one_product(tmp_path_factory) -> Path:
    return orders_only_shop(tmp_path_factory.mktemp("degenerate") / "one_product", products=1)


@pytest.fixture(scope="module")
def many_products(tmp_path_factory) -> Path:
    return orders_only_shop(tmp_path_factory.mktemp("degenerate") / "many_products", products=25)


def test_the_shops_are_what_the_tests_say(one_product, many_products):
    shop = read_shop(one_product)
    assert shop.present == {"orders"}
    orders = shop.orders.collect()
    assert orders["product_id"].n_unique() == 1 and orders["customer_id"].n_unique() == 300
    assert read_shop(many_products).orders.collect()["product_id"].n_unique() > 1


def test_train_all_on_a_one_product_shop_skips_crosssell_and_trains_the_rest(
    one_product, mlflow_home, capsys
):
    assert main(["train", "all", "--shop", str(one_product), "--as-of", AS_OF]) == 0
    lines = capsys.readouterr().out.splitlines()
    skipped = [line for line in lines if line.startswith("skipped")]
    assert skipped == [
        "skipped crosssell: the shop has 1 product; decisions will use popular products"
    ]
    assert registry.alias_version("one_product", "propensity", "challenger") is not None
    assert registry.alias_version("one_product", "sendtime", "challenger") is not None
    assert registry.alias_version("one_product", "crosssell", "challenger") is None
    # promoted, the champions score the shop: every decision gets the shop's one product
    assert main(["promote", "all", "--shop", str(one_product)]) == 0
    out = one_product.parent / "decisions.parquet"
    assert main(["score", "--shop", str(one_product), "--as-of", AS_OF, "--out", str(out)]) == 0
    decisions = pl.read_parquet(out)
    assert len(decisions) == 300 and decisions["products"].to_list() == [["p0"]] * 300
    assert decisions["purchase_propensity"].is_not_null().all()
    assert all("cold_start_popular" in r for r in decisions["reasons"].to_list())


def test_train_crosssell_alone_on_a_one_product_shop_fails_in_one_line(
    one_product, mlflow_home, capsys
):
    assert main(["train", "crosssell", "--shop", str(one_product), "--as-of", AS_OF]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot train crosssell: the shop has 1 product"
    assert registry.alias_version("one_product", "crosssell", "challenger") is None


def test_train_all_on_an_orders_only_shop_trains_every_model(many_products, mlflow_home, capsys):
    assert main(["train", "all", "--shop", str(many_products), "--as-of", AS_OF]) == 0
    assert "skipped" not in capsys.readouterr().out
    for task in ("propensity", "crosssell", "sendtime"):
        assert registry.alias_version("many_products", task, "challenger") is not None, task


def test_train_all_with_no_buyers_left_to_learn_from_skips_each_model_and_fails(
    one_product, mlflow_home, capsys
):
    """A cut-off a year after the last order: no one buys in any window, so nothing could be
    validated (metrics would be NaN, and NaN never loses a promotion)."""
    assert main(["train", "all", "--shop", str(one_product), "--as-of", "2022-12-31"]) == 1
    captured = capsys.readouterr()
    skipped = [line.split(":")[0] for line in captured.out.splitlines()]
    assert skipped == ["skipped propensity", "skipped crosssell", "skipped sendtime"]
    assert captured.err.strip() == "error: no model could be trained on this shop"
    assert registry.alias_version("one_product", "sendtime", "challenger") is None


def test_backtest_leaves_out_a_task_the_shop_cannot_support(one_product, caplog):
    sections = backtest(
        read_shop(one_product), parse_as_of("2021-09-30"), 90, ["crosssell", "sendtime"]
    )
    assert [s.task for s in sections] == ["sendtime"]
    assert "skipped crosssell" in caplog.text


def test_propensity_calibration_rows_with_one_outcome_leave_the_scores_uncalibrated():
    """Regression: LogisticRegression raised "needs samples of at least 2 classes" when no
    one bought in the latest cut-off's window, stopping `train all`."""
    rng = np.random.default_rng(0)
    X = pl.DataFrame({"x": rng.uniform(size=400)})
    y = (X["x"].to_numpy() + rng.normal(0, 0.2, 400) > 0.5).astype(float)
    latest = np.arange(400) >= 300
    y[latest] = 0.0
    model = PurchasePropensity(n_estimators=10, min_child_samples=10).fit(X, y, calibration=latest)
    assert model.calibration_.tolist() == [1.0, 0.0]
    assert np.all((model.predict_proba(X) > 0) & (model.predict_proba(X) < 1))


def test_top_reasons_cannot_cast_object_type_when_the_first_row_has_no_reason():
    """Regression: `pl.Series(top_reasons(...)[:, 0], dtype=pl.String)` raised "cannot cast
    'Object' type" scoring 1M customers. Reasons were an object array with None where no
    feature raised the score; Polars types an object column by its first value, so a first
    customer without a reason made the whole column Object."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=400)
    X = pl.DataFrame({"x": x})
    model = PurchasePropensity(n_estimators=20, min_child_samples=10).fit(
        X, (x > 0.5).astype(float)
    )
    batch = X.sort("x")  # the first customer's only feature lowers their score
    reasons = model.top_reasons(batch, k=1)[:, 0]
    column = pl.Series(reasons, dtype=pl.String)
    assert column[0] is None and column[-1] == "x"
    assert 0 < column.null_count() < len(column)
    assert reasons.tolist()[0] is None and reasons.tolist()[-1] == "x"


def test_the_first_reason_is_the_same_asked_alone_or_with_others():
    """`top_reasons` answers k = 1 by the largest contribution, k > 1 by a sort: the first
    reason and its mask agree, and a feature that raises no one's score is never a reason."""
    rng = np.random.default_rng(1)
    X = pl.DataFrame({"a": rng.uniform(size=600), "b": rng.uniform(size=600), "c": 0.0})
    y = ((X["a"] + 0.5 * X["b"]).to_numpy() > 0.8).astype(float)
    model = PurchasePropensity(n_estimators=20, min_child_samples=10).fit(X, y)
    alone, among = model.top_reasons(X, k=1), model.top_reasons(X, k=3)
    assert alone[:, 0].tolist() == among[:, 0].tolist()
    assert set(alone[:, 0].compressed()) == {"a", "b"}
    assert "c" not in among.compressed()
