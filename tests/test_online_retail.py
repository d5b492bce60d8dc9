"""The Online Retail adapter on the real file: counts pinned against ../shared/data/README.md."""

from __future__ import annotations

import polars as pl
import pytest

from sendwise.features import builders, online_retail
from sendwise.features.clock import parse_as_of
from sendwise.features.contract import ContractError
from sendwise.features.shop import read_shop

pytestmark = pytest.mark.slow


def test_import_summary_counts(online_retail_import):
    _, summary = online_retail_import
    assert summary.rows_read == 541_909
    assert summary.dropped["no customer id"] == 135_080
    assert summary.customers == 4_338
    assert summary.cancellations > 8_000


def test_features_as_of_2011_09_09_one_row_per_buyer(online_retail_import):
    shop = read_shop(online_retail_import[0])
    features = builders.customer_features(shop, parse_as_of("2011-09-09")).collect()
    assert len(features) == 3_370  # buyers on or before that day after the usual cleaning
    assert features["customer_id"].is_unique().all()
    assert (features["orders_total"] > 0).all()
    assert features["timezone"].null_count() == 0
    # InvoiceDate is London time: the shop's trading hours land between 7 and 20 local
    assert features.select(pl.col("peak_local_hour").is_between(6, 20).mean()).item() > 0.99


def test_usual_cleaning_line_count(online_retail_import):
    orders = read_shop(online_retail_import[0]).orders.collect()
    purchases = orders.filter(pl.col("quantity") > 0)
    # 397,884 lines after the usual cleaning, less the exact duplicates merged into one line
    assert purchases["quantity"].sum() == 5_167_812


def test_xlsx_and_csv_of_the_same_rows_import_alike(online_retail_file, tmp_path):
    rows = pl.read_csv(online_retail_file, infer_schema=False, n_rows=400)
    csv = tmp_path / "sample.csv"
    rows.write_csv(csv)
    xlsx = tmp_path / "sample.xlsx"
    typed = rows.with_columns(
        pl.col("Quantity").cast(pl.Int64),
        pl.col("UnitPrice").cast(pl.Float64),
        pl.col("CustomerID").cast(pl.Float64),
        pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S"),
    )
    typed.write_excel(xlsx)
    from_csv, _ = online_retail.convert(csv)
    from_xlsx, _ = online_retail.convert(xlsx)
    for name in from_csv:
        assert from_csv[name].equals(from_xlsx[name]), name


def test_a_file_without_the_layout_is_refused(tmp_path):
    bad = tmp_path / "retail.csv"
    bad.write_text("InvoiceNo,StockCode\n1,2\n")
    with pytest.raises(ContractError, match=r"retail.csv: missing column 'Description'"):
        online_retail.convert(bad)
