"""The per-recipient engine behind the API: send windows, quiet hours, holdouts, cold start."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from pydantic import ValidationError

from sendwise.serving.decide import (
    Context,
    Decider,
    DecideRequest,
    FrequencyCaps,
    Holdouts,
    send_time,
)
from sendwise.store.decisions import DecisionLog
from sendwise.store.sends import RedisSends

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def snapshot() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": ["a", "b", "u"],
            "segment": ["loyal", "lapsed", "active"],
            "timezone": ["America/New_York", None, "UTC"],
            "suppression": [None, None, "suppressed_unsubscribed"],
            "best_hours": [[7, 19, 9], [22, 23, 0], [12]],
            "products": [["p1", "p2"], ["p3"], ["p4"]],
            "personal_products": [True, True, True],
            "offer": ["none", "10_off", "none"],
            "offer_value": [0.0, 1.5, 0.0],
            "offer_probability": [1.0, 1.0, 1.0],
            "holdout": [False, False, False],
            "purchase_propensity": [0.8, 0.1, 0.3],
            "reasons": [["segment_loyal", "sendtime_personal"], ["segment_lapsed"], []],
        }
    )


NO_HOLDOUTS = Holdouts(global_share=0, campaign=0, products=0, sendtime=0)


def test_send_time_honours_zone_window_and_quiet_hours():
    context = Context(window_start=NOW, window_end=datetime(2026, 6, 3, tzinfo=UTC))
    # 7 is quiet (before 8), so 19:00 New York local, the same day
    at = send_time([7, 19, 9], "America/New_York", context, NOW, 10)
    assert at.astimezone(ZoneInfo("America/New_York")).hour == 19 and at > NOW
    # all best hours quiet: the fallback hour
    at = send_time([22, 23, 0], "Europe/Berlin", context, NOW, 10)
    assert at.astimezone(ZoneInfo("Europe/Berlin")).hour == 10
    narrow = Context(window_start=NOW, window_end=datetime(2026, 6, 1, 13, 30, tzinfo=UTC))
    assert send_time([13], "UTC", narrow, NOW, 10) == datetime(2026, 6, 1, 13, tzinfo=UTC)
    # neither a best hour nor the fallback fits: the window's first allowed hour
    assert send_time([19], "UTC", narrow, NOW, 10) == NOW


def test_decisions_for_known_unknown_and_opted_out_recipients():
    decider = Decider(snapshot(), ["top1", "top2"], "propensity:1", NO_HOLDOUTS)
    request = DecideRequest(
        recipients=[
            {"customer_id": "a", "timezone": "Europe/London"},
            {"customer_id": "zz-new"},
            {"customer_id": "b", "opted_out": True},
        ],
        context={"now": NOW.isoformat(), "offers": ["none", "free_shipping"]},
    )
    a, new, b = decider.decide(request)
    assert a["send"] and a["products"] == ["p1", "p2"] and a["segment"] == "loyal"
    assert a["send_at"].astimezone(ZoneInfo("Europe/London")).hour == 19
    assert new["products"] == ["top1", "top2"] and "cold_start_unknown_customer" in new["reasons"]
    assert not b["send"] and "suppressed_opt_out" in b["reasons"]
    assert "offer_not_candidate_10_off" in b["reasons"] and b["offer"] == "none"
    assert a["reasons"] == ["segment_loyal", "sendtime_personal"]  # the snapshot's is replaced
    assert new["offer"] == "free_shipping" and new["segment"] == "lead"  # a welcome incentive


def test_unsubscribed_get_transactional_mail_only():
    decider = Decider(snapshot(), [], "v", NO_HOLDOUTS)
    marketing, receipt = (
        decider.decide(DecideRequest(recipients=[{"customer_id": "u"}], context=context))[0]
        for context in ({"now": NOW.isoformat()}, {"now": NOW.isoformat(), "transactional": True})
    )
    assert not marketing["send"] and marketing["reasons"][-1] == "suppressed_unsubscribed"
    assert receipt["send"] and receipt["send_at"] is not None


def test_holdouts_are_deterministic_and_at_their_rates():
    decider = Decider(snapshot(), [], "v", Holdouts(global_share=0.02, campaign=0.05))
    ids = [{"customer_id": f"c{i}"} for i in range(10_000)]
    first = decider.decide(DecideRequest(recipients=ids, context={"campaign": "june"}))
    again = decider.decide(DecideRequest(recipients=ids, context={"campaign": "june"}))
    other = decider.decide(DecideRequest(recipients=ids, context={"campaign": "july"}))
    held = [d["holdout"] for d in first]
    assert held == [d["holdout"] for d in again]
    assert held != [d["holdout"] for d in other]
    assert sum(held) / len(held) == pytest.approx(1 - 0.98 * 0.95, abs=0.01)
    assert all(not d["send"] for d in first if d["holdout"])
    # feature-level: known customers with personal products and hours, 20% held per feature
    decider = Decider(
        pl.concat([snapshot().with_columns(customer_id=pl.lit(f"k{i}") + pl.col("customer_id")) for i in range(3000)]).filter(pl.col("suppression").is_null()),
        ["pop"], "v", Holdouts(global_share=0, campaign=0, products=0.2, sendtime=0.2),
    )  # fmt: skip
    ids = [{"customer_id": f"k{i}a"} for i in range(3000)]
    decided = decider.decide(DecideRequest(recipients=ids, context={"now": NOW.isoformat()}))
    products_held = [d for d in decided if "holdout_products" in d["reasons"]]
    assert len(products_held) / 3000 == pytest.approx(0.2, abs=0.03)
    assert all(d["products"] == ["pop"] and d["holdout"] and d["send"] for d in products_held)
    hours_held = [d for d in decided if "holdout_sendtime" in d["reasons"]]
    assert len(hours_held) / 3000 == pytest.approx(0.2, abs=0.03)
    both = [d for d in products_held if d in hours_held]
    assert all(d["probability"] == pytest.approx(0.04) for d in both)
    assert all(d["probability"] == pytest.approx(0.64) for d in decided if not d["holdout"])


def send_history(kind, tmp_path):
    if kind == "log":
        return DecisionLog(f"sqlite:///{tmp_path / 'log.db'}")
    import redis

    redis.Redis(db=15).flushdb()  # a database of the tests' own
    return RedisSends("redis://127.0.0.1:6379/15")


@pytest.mark.parametrize("kind", ["log", "redis"])
def test_frequency_caps_count_other_campaigns_over_rolling_windows(kind, tmp_path):
    """Per recipient: 1 a day, 3 a week; lapsed: 1 a week. Transactional mail is exempt."""
    history = send_history(kind, tmp_path)
    decider = Decider(snapshot(), [], "v", NO_HOLDOUTS, FrequencyCaps())
    recipients = [{"customer_id": "a"}, {"customer_id": "b"}]

    def ask(campaign, day, hour=9, transactional=False):
        now = datetime(2026, 6, day, hour, tzinfo=UTC)
        request = DecideRequest(recipients=recipients, context={"campaign": campaign, "now": now.isoformat(), "transactional": transactional})  # fmt: skip
        batch = f"{campaign}-{day}-{hour}"
        decided = decider.decide(request, batch, history)
        if isinstance(history, DecisionLog):
            history.append(batch, now, campaign, decided)
        else:
            history.record_sends([d["customer_id"] for d in decided if d["send"] and not transactional], now, campaign)  # fmt: skip
        return {d["customer_id"]: d for d in decided}

    first = ask("c1", 1)
    assert first["a"]["send"] and first["b"]["send"]
    again = ask("c1", 1, hour=10)  # the same campaign asked again is not a second send
    assert again["a"]["send"] and again["b"]["send"]
    same_day = ask("c2", 1, hour=11)
    assert not same_day["a"]["send"] and same_day["a"]["reasons"][-1] == "freq_cap_1d"
    assert ask("receipt", 1, hour=12, transactional=True)["a"]["send"]
    next_day = ask("c3", 2)
    assert next_day["a"]["send"]  # loyal: 1 a day
    assert not next_day["b"]["send"] and "freq_cap_7d" in next_day["b"]["reasons"]  # lapsed
    assert ask("c4", 3)["a"]["send"]
    assert "freq_cap_7d" in ask("c5", 4)["a"]["reasons"]  # c1, c3, c4 within 7 days
    assert ask("c6", 9)["a"]["send"]  # c1 fell out of the window


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipients": []}, "recipients"),
        ({"recipients": [{"customer_id": ""}]}, "customer_id"),
        ({"recipients": [{"customer_id": 5}]}, "customer_id"),
        ({"recipients": [{"customer_id": "a", "timezone": "Mars/Base"}]}, "timezone"),
        (
            {
                "recipients": [{"customer_id": "a"}],
                "context": {"window_start": "2026-06-02", "window_end": "2026-06-01"},
            },
            "window_end",
        ),  # fmt: skip
        ({"recipients": [{"customer_id": "a"}] * 10_001}, "recipients"),
        ({"recipients": [{"customer_id": "a\x00b"}]}, "customer_id"),
        (
            {"recipients": [{"customer_id": "a"}], "context": {"now": "9999-12-31T23:00:00Z"}},
            "between 1970 and 2200",
        ),
    ],
)
def test_malformed_requests_name_the_field(body, field):
    with pytest.raises(ValidationError, match=field):
        DecideRequest.model_validate(body)
