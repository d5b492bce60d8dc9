"""The quality bars of DESIGN.md on UCI Online Retail (as of 2011-09-09, horizon 90 days)."""

from __future__ import annotations

import pytest

from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop
from sendwise.training.backtest import backtest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sections(online_retail_import):
    shop = read_shop(online_retail_import[0])
    return {s.task: s.rows for s in backtest(shop, parse_as_of("2011-09-09"), 90)}


def best_baseline(rows: dict, metric: str) -> float:
    return max(row[metric] for name, row in rows.items() if name != "sendwise")


def test_propensity_beats_the_bars_and_every_baseline(sections):
    rows = sections["propensity"]
    assert rows["sendwise"]["roc_auc"] > 0.729 and rows["sendwise"]["pr_auc"] > 0.800
    assert rows["sendwise"]["roc_auc"] > best_baseline(rows, "roc_auc")
    assert rows["sendwise"]["pr_auc"] > best_baseline(rows, "pr_auc")


def test_products_beat_the_bars(sections):
    assert sections["products_all"]["sendwise"]["ndcg@10"] > 0.346
    assert sections["products_all"]["sendwise"]["ndcg@10"] > best_baseline(
        sections["products_all"], "ndcg@10"
    )
    assert sections["products_new"]["sendwise"]["recall@10"] > 0.046


def test_send_time_beats_the_bars_and_both_baselines(sections):
    rows = sections["sendtime"]
    assert rows["sendwise"]["hit@1"] > 0.178 and rows["sendwise"]["hit@3"] > 0.460
    assert rows["sendwise"]["hit@3"] > best_baseline(rows, "hit@3")
    assert rows["sendwise"]["hit@1"] > best_baseline(rows, "hit@1")
