"""The decision log on SQLite (default) and on the real PostgreSQL server here: batches are
whole or absent, and the send history frequency caps read comes back right."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
import sqlalchemy as sa

from sendwise.errors import SendwiseError
from sendwise.store.decisions import DecisionLog, log_url

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)


def batch(campaign: str, *rows: dict) -> pl.DataFrame:
    return pl.DataFrame([{**row, "campaign": campaign} for row in rows])


def decision(i: int, customer: str, send: bool = True, transactional: bool = False) -> dict:
    return {
        "decision_id": f"d{i}",
        "customer_id": customer,
        "trigger": None,
        "holdout_kind": None if send else "global",
        "cross_sell": ["p9"],
        "best_hours": [9, 10, 11],
        "purchase_propensity": 0.5,
        "segment": "active",
        "send": send,
        "holdout": not send,
        "probability": 0.9,
        "offer": "none",
        "offer_value": 0.0,
        "products": ["p1", "p2"],
        "send_at": T0 + timedelta(hours=3),
        "reasons": ["segment_active"],
        "model_versions": "propensity:1",
        "transactional": transactional,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        yield DecisionLog(f"sqlite:///{tmp_path / 'sub' / 'decisions.db'}")
        return
    monkeypatch.setenv("SENDWISE_DECISION_LOG_URL", POSTGRES)
    url = log_url()
    assert url.startswith("postgresql+psycopg://")  # psycopg 3, the driver we ship
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS decisions, batches, sends, segments"))
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES} is not reachable: {error}")
    engine.dispose()
    found = DecisionLog()
    yield found
    found.close()


def test_batches_are_logged_whole_or_not_at_all(log):
    log.append("b1", T0, batch("june", decision(1, "a"), decision(2, "b", send=False)))
    assert log.ping()
    # a batch that fails half way (a repeated decision id) leaves nothing behind
    with pytest.raises(sa.exc.IntegrityError):
        log.append("b2", T0, batch("june", decision(3, "c"), decision(1, "a")))
    assert log.batch_sizes() == {"b1": (2, 2)}
    assert log.count() == 2
    with log.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT send_at, products FROM decisions WHERE decision_id = 'd1'")).one()  # fmt: skip
    assert json.loads(row.products) == ["p1", "p2"]


def test_send_history_counts_each_other_campaign_once(log):
    log.append("b1", T0, batch("c1", decision(1, "a"), decision(2, "b", send=False)))
    log.append("b2", T0 + timedelta(hours=1), batch("c1", decision(3, "a")))  # asked again
    log.append("b3", T0 + timedelta(days=1), batch("c2", decision(4, "a")))
    log.append("b4", T0 + timedelta(days=1), batch("receipt", decision(5, "a", transactional=True)))
    log.append("b5", T0 - timedelta(days=30), batch("old", decision(6, "a")))
    sends = log.sends(["a", "b", "z"], T0 - timedelta(days=7), campaign="c3")
    assert sorted(sends.filter(pl.col("customer_id") == "a")["sent_at"]) == [
        T0,
        T0 + timedelta(days=1),
    ]
    assert set(sends["customer_id"]) == {"a"}  # b was held out, z never sent to
    assert len(log.sends(["a"], T0 - timedelta(days=7), campaign="c2")) == 1  # not itself
    # a whole shop's recipients: one scan, the same answer
    many = [f"x{i}" for i in range(20_000)] + ["a"]
    assert (
        log.sends(many, T0 - timedelta(days=7), campaign="c3")
        .sort("sent_at")
        .equals(sends.sort("sent_at"))
    )


def test_a_campaign_name_sent_again_after_90_days_counts_anew(log):
    log.append("b1", T0 - timedelta(days=100), batch("weekly", decision(1, "a")))
    log.append("b2", T0 - timedelta(days=2), batch("weekly", decision(2, "a")))
    log.append("b3", T0 - timedelta(days=1), batch("weekly", decision(3, "a")))  # not again
    sent = log.sends(["a"], T0 - timedelta(days=7), campaign="other")
    assert sent["sent_at"].to_list() == [T0 - timedelta(days=2)]


def test_a_log_from_before_the_send_table_gets_its_history(tmp_path):
    """Logs written before sends had their own table: the history is rebuilt on open."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    log = DecisionLog(url)
    log.append("b1", T0, batch("c1", decision(1, "a"), decision(2, "b", send=False)))
    log.append("b2", T0 + timedelta(hours=1), batch("c1", decision(3, "a")))
    with log.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE sends"))
    log.close()
    sent = DecisionLog(url).sends(None, T0 - timedelta(days=7), campaign="c2")
    assert sent.rows() == [("a", T0)]


def test_export_reads_back_what_was_logged_with_lists_and_filters(log):
    log.append("b1", T0, batch("c1", decision(1, "a"), decision(2, "b", send=False)))
    log.append("b2", T0 + timedelta(days=2), batch("c2", decision(3, "a")))
    everything = log.read()
    assert everything["decision_id"].to_list() == ["d1", "d2", "d3"]
    first = everything.row(0, named=True)
    assert first["products"] == ["p1", "p2"] and first["cross_sell"] == ["p9"]
    assert first["best_hours"] == [9, 10, 11] and first["reasons"] == ["segment_active"]
    assert first["send_at"] == T0 + timedelta(hours=3) and first["decided_at"] == T0
    assert everything.row(1, named=True)["holdout_kind"] == "global"
    assert log.read(campaign="c2")["decision_id"].to_list() == ["d3"]
    assert log.read(since=T0 + timedelta(days=1))["decision_id"].to_list() == ["d3"]


def test_a_batch_in_parts_logs_what_one_append_logs_and_is_whole_or_absent(log, tmp_path):
    """`append_parts` (batch scoring, one part per bucket) stores the rows, sends and batch
    that one `append` stores; a part that fails leaves nothing."""
    rows = batch("c1", decision(1, "a"), decision(2, "b", send=False), decision(3, "c"))
    rows = rows.with_columns(cross_sell=pl.when(pl.col("customer_id") == "c").then(None).otherwise(pl.col("cross_sell")))  # fmt: skip
    log.append_parts("b1", T0, [rows.head(2), rows.head(0), rows.tail(1)])
    single = DecisionLog(f"sqlite:///{tmp_path / 'single.db'}")
    single.append("b1", T0, rows)
    assert log.read().equals(single.read())
    assert log.batch_sizes() == single.batch_sizes() == {"b1": (3, 3)}
    since = T0 - timedelta(days=1)
    assert (
        log.sends(None, since, "c2")
        .sort("customer_id")
        .equals(single.sends(None, since, "c2").sort("customer_id"))
    )

    def failing():
        yield batch("c1", decision(4, "d"))
        raise RuntimeError("a bucket failed")

    with pytest.raises(RuntimeError):
        log.append_parts("b2", T0, failing())
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        log.append_parts("b3", T0, [batch("c1", decision(5, "e")), batch("c1", decision(1, "a"))])
    assert log.batch_sizes() == {"b1": (3, 3)} and log.count() == 3
    assert set(log.sends(None, since, "c2")["customer_id"]) == {"a", "c"}


def test_a_scored_batch_kept_as_columnar_segments_reads_back_as_its_rows_would(log, tmp_path):
    """A scored batch's parts (`columnar`, ids `<batch>-<n>`) are kept as segments, not a
    row each: `read` and its filters, sizes and sends give what rows give, and a failing
    part leaves nothing."""
    rows = batch("c1", decision(0, "a"), decision(1, "b", send=False), decision(2, "c"))
    rows = rows.with_columns(
        decision_id=pl.format("b1-{}", pl.int_range(3)),
        cross_sell=pl.when(pl.col("customer_id") == "c").then(None).otherwise("cross_sell"),
    )
    later = batch("c2", decision(3, "a"))
    plain = DecisionLog(f"sqlite:///{tmp_path / 'plain.db'}")
    for each, columnar in ((log, True), (plain, False)):
        each.append_parts("b1", T0, [rows.head(2), rows.tail(1)], columnar=columnar)
        each.append("b2", T0 + timedelta(days=2), later)
    with log.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 1
    assert log.read().equals(plain.read())
    assert log.read()["decision_id"].to_list() == ["b1-0", "b1-1", "b1-2", "d3"]
    for filters in (
        {"campaign": "c1"},
        {"campaign": "c2"},
        {"since": T0 + timedelta(days=1)},
        {"decision_ids": ["b1-2", "d3", "b1-9", "b2-0"]},
    ):
        assert log.read(**filters).equals(plain.read(**filters)), filters
    assert log.read(decision_ids=["b1-2"])["customer_id"].to_list() == ["c"]
    many = ["b1-2"] * 300 + ["b1-0"] * 300  # two statements' worth, one batch: read once
    assert log.read(decision_ids=many)["decision_id"].to_list() == ["b1-0", "b1-2"]
    assert log.batch_sizes() == plain.batch_sizes() == {"b1": (3, 3), "b2": (1, 1)}
    assert log.count() == 4
    since = T0 - timedelta(days=1)
    assert set(log.sends(None, since, "c3")["customer_id"]) == {"a", "c"}

    def failing():
        yield rows.with_columns(decision_id=pl.format("b3-{}", pl.int_range(3)))
        raise RuntimeError("a bucket failed")

    with pytest.raises(RuntimeError):
        log.append_parts("b3", T0, failing(), columnar=True)
    with pytest.raises(SendwiseError, match="b4-<n>"):
        log.append_parts("b4", T0, [rows], columnar=True)
    assert log.batch_sizes() == {"b1": (3, 3), "b2": (1, 1)} and log.count() == 4
