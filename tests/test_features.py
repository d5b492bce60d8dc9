"""Feature jobs: known answers on a tiny shop, and no influence from anything after the cut-off."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from future import future_rows
from polars.testing import assert_frame_equal

from sendwise.features import builders
from sendwise.features.clock import parse_as_of
from sendwise.features.expressions import settled_sum
from sendwise.features.shop import read_shop, write_shop

AS_OF = datetime(2024, 7, 1, 0, 0, tzinfo=UTC)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def tiny(tmp_path):
    """Two buyers, one lead, and what each of them did, with answers worked out by hand."""
    orders = pl.DataFrame(
        {
            "order_id": ["o1", "o1", "o2", "o3", "r3", "o4", "o9"],
            "customer_id": ["a", "a", "a", "a", "a", "b", "a"],
            "product_id": ["p1", "p2", "p1", "p3", "p3", "p1", "p1"],
            "ordered_at": [
                ts("2024-03-01 12:00"),
                ts("2024-03-01 12:00"),
                ts("2024-05-01 12:00"),
                ts("2024-06-20 12:00"),
                ts("2024-06-25 12:00"),
                ts("2023-07-15 08:00"),
                ts("2024-07-05 12:00"),  # after the cut-off
            ],
            "quantity": [2, 1, 1, 4, -1, 1, 3],
            "unit_price": [10.0, 5.0, 10.0, 2.5, 2.5, 100.0, 10.0],
            "discount": [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
        }
    ).with_columns(pl.col("ordered_at").cast(pl.Datetime("us", "UTC")))
    customers = pl.DataFrame(
        {
            "customer_id": ["a", "b", "lead"],
            "created_at": [ts("2024-01-01"), ts("2023-01-01"), ts("2024-06-01")],
            "timezone": ["Europe/London", "America/New_York", None],
        }
    )
    products = pl.DataFrame({"product_id": ["p1", "p2", "p3"], "category": ["x", "x", "y"]})
    events = pl.DataFrame(
        {
            "customer_id": ["a", "a", "lead", "lead"],
            "occurred_at": [
                ts("2024-06-20 11:50"),  # cart followed by the order at 12:00: not abandoned
                ts("2024-06-28 12:00"),  # view
                ts("2024-06-29 20:00"),  # cart with no order after it: abandoned
                ts("2024-06-30 09:00"),  # search
            ],
            "event_type": ["add_to_cart", "view", "add_to_cart", "search"],
        }
    )
    email_events = pl.DataFrame(
        {
            "customer_id": ["lead"] * 5,
            "occurred_at": [
                ts("2024-06-10 14:00"),
                ts("2024-06-10 14:01"),
                ts("2024-06-10 19:00"),
                ts("2024-06-10 19:02"),
                ts("2024-06-24 14:00"),
            ],
            "event_type": ["send", "open", "open", "click", "send"],
            "machine_open": [None, True, False, None, None],
        }
    )
    write_shop(
        {
            "orders": orders,
            "customers": customers,
            "products": products,
            "events": events,
            "email_events": email_events,
        },
        tmp_path / "shop",
    )
    return read_shop(tmp_path / "shop")


def test_known_answers(tiny):
    f = builders.customer_features(tiny, AS_OF).collect()
    assert f["customer_id"].to_list() == ["a", "b", "lead"]
    a, b, lead = (row for row in f.iter_rows(named=True))
    assert (a["orders_total"], a["orders_30d"], a["orders_90d"], a["orders_365d"]) == (3, 1, 2, 3)
    assert a["revenue_total"] == pytest.approx(25 + 5 + 10)  # o1 25, o2 10 at half price, o3 10
    assert a["recency_days"] == pytest.approx(10.5)
    assert a["ipi_mean_days"] == pytest.approx((61 + 50) / 2)
    assert a["due_ratio"] == pytest.approx(10.5 / 55.5)
    assert a["discounted_order_share"] == pytest.approx(1 / 3)
    assert (a["distinct_products"], a["distinct_categories"]) == (3, 2)
    assert (a["return_lines"], a["returned_units"], a["returned_value"]) == (1, 1, 2.5)
    assert a["return_rate"] == pytest.approx(1 / 8)
    assert (a["carts_total"], a["abandoned_carts_total"], a["views_30d"]) == (1, 0, 1)
    # 2023-07-15 lies in the coming 90 days, a year ago
    assert b["orders_same_season_last_year"] == 1
    assert b["orders_365d"] == 1 and b["recency_days"] == pytest.approx(351.6666, abs=1e-3)
    assert lead["orders_total"] == 0 and lead["recency_days"] is None
    assert (lead["abandoned_carts_total"], lead["searches_total"]) == (1, 1)
    # the machine open is left out; one human open from two sends
    assert (lead["sends_total"], lead["opens_total"], lead["machine_opens_total"]) == (2, 1, 1)
    assert lead["open_rate_90d"] == pytest.approx(0.5)
    assert lead["days_since_click"] == pytest.approx(20 + 4 / 24 + 58 / 1440)
    # the lead has no zone: the shop's most common one (ties: the first by name)
    assert lead["timezone"] == "America/New_York"
    # London is UTC+0 on 1 March and UTC+1 from 31 March: 12:00 UTC orders move an hour
    assert (a["hod_12"], a["hod_13"]) == (2, 3)  # March order and 11:50 cart; May, June, view
    assert a["peak_local_hour"] == 13
    assert b["hod_04"] == 1  # 08:00 UTC is 04:00 in New York (EDT)


def test_labels_read_only_the_horizon(tiny):
    labels = builders.purchase_labels(tiny, AS_OF, 30).collect().sort("customer_id")
    assert labels["purchased"].to_list() == [True, False, False]
    assert labels["orders_next"].to_list() == [1, 0, 0]
    assert labels["revenue_next"][0] == pytest.approx(30.0)
    short = builders.purchase_labels(tiny, AS_OF, 3).collect()
    assert not short["purchased"].any()


def test_interactions_are_purchases_up_to_the_cutoff(tiny):
    pairs = builders.interactions(tiny, AS_OF).collect()
    assert pairs.filter(pl.col("customer_id") == "a").select(
        "product_id", "orders", "quantity"
    ).rows() == [
        ("p1", 2, 3),
        ("p2", 1, 1),
        ("p3", 1, 4),
    ]


def assert_no_future_influence(directory, as_of, tmp_path):
    shop = read_shop(directory)
    before = builders.customer_features(shop, as_of).collect()
    tables = {name: frame for name, frame in shop.collect().items() if name in shop.present}
    write_shop(future_rows(tables, as_of), tmp_path / "with_future")
    after = builders.customer_features(read_shop(tmp_path / "with_future"), as_of).collect()
    assert_frame_equal(before, after)
    return before


def test_future_rows_change_nothing_on_a_simulated_shop(simulated, tmp_path):
    features = assert_no_future_influence(simulated[0], parse_as_of("2026-04-30"), tmp_path)
    assert len(features) > 2_000


@pytest.mark.slow
def test_future_rows_change_nothing_on_online_retail(online_retail_import, tmp_path):
    features = assert_no_future_influence(
        online_retail_import[0], parse_as_of("2011-09-09"), tmp_path
    )
    assert len(features) == 3_370


def test_a_settled_sum_has_the_same_bits_however_the_rows_arrive():
    """Rows whose float sum depends on the order they are added in (as a group-by's threads
    hand them over): the plain sum varies, the settled one does not."""
    rng = np.random.default_rng(5)
    values = [0.1, 0.2, 0.3, 1e16, -1e16, 7.7, 1 / 3]
    frame = pl.DataFrame({"customer_id": ["a"] * len(values) + ["b"], "v": [*values, 2.5]})
    plain, settled = set(), set()
    for _ in range(40):
        shuffled = frame[rng.permutation(len(frame))]
        sums = shuffled.group_by("customer_id").agg(
            plain=pl.col("v").sum(), settled=settled_sum(pl.col("v"))
        )
        row = sums.filter(pl.col("customer_id") == "a").row(0, named=True)
        plain.add(row["plain"])
        settled.add(row["settled"])
    assert len(plain) > 1  # the order matters to a plain sum of these
    assert len(settled) == 1
    empty = frame.group_by("customer_id").agg(
        settled_sum(pl.col("v").filter(pl.col("v").is_between(5, 10)))
    )
    assert empty.sort("customer_id")["v"].to_list() == [7.7, 0.0]


def test_the_hour_profile_counts_each_slot_and_gives_ties_to_the_earliest():
    """Local hours and weekdays as `activity_hours` gives them: counts by hour of day and
    day of week, the total, and both peaks, ties going to the earliest hour of the week."""
    slots = [  # (customer, weekday, hour)
        ("a", 2, 9), ("a", 2, 9), ("a", 0, 21), ("a", 0, 21), ("a", 4, 9),
        ("b", 6, 23), ("b", 1, 5),
        ("c", None, None),  # no local time: not counted
    ]  # fmt: skip
    hours = pl.DataFrame(
        slots,
        schema={"customer_id": pl.String, "local_weekday": pl.Int8, "local_hour": pl.Int8},
        orient="row",
    )
    profile = builders.hour_profile(hours.lazy()).collect().sort("customer_id")
    assert profile.schema == pl.Schema(builders.PROFILE_SCHEMA)
    a, b = profile.rows(named=True)
    assert (a["hod_09"], a["hod_21"], a["activity_total"]) == (3, 2, 5)
    assert (a["dow_0"], a["dow_2"], a["dow_4"], a["dow_1"]) == (2, 2, 1, 0)
    assert a["peak_hour_of_week"] == 21  # Monday 21:00 (2) ties Wednesday 09:00 (2)
    assert a["peak_local_hour"] == 9
    assert (b["peak_hour_of_week"], b["peak_local_hour"]) == (24 + 5, 5)
    assert builders.hour_profile(hours.head(0).lazy()).collect().is_empty()
