"""The per-recipient engine behind the API: send windows, quiet hours, holdouts, cold start."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from pydantic import ValidationError

from sendwise.serving.decide import Context, Decider, DecideRequest, send_time

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def snapshot() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": ["a", "b"],
            "segment": ["loyal", "lapsed"],
            "best_hours": [[7, 19, 9], [22, 23, 0]],
            "products": [["p1", "p2"], ["p3"]],
            "offer": ["none", "10_off"],
            "offer_value": [0.0, 1.5],
            "purchase_propensity": [0.8, 0.1],
            "reasons": [["segment_loyal"], ["segment_lapsed"]],
        }
    )


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
    decider = Decider(snapshot(), "propensity:1", ["top1", "top2"], {"a": "Europe/London"},
                      global_holdout=0.0, campaign_holdout=0.0)  # fmt: skip
    request = DecideRequest(
        recipients=[
            {"customer_id": "a"},
            {"customer_id": "zz-new"},
            {"customer_id": "b", "opted_out": True},
        ],
        context={"now": NOW.isoformat(), "offers": ["none", "free_shipping"]},
    )
    a, new, b = decider.decide(request)
    assert a["send"] and a["products"] == ["p1", "p2"] and a["segment"] == "loyal"
    assert datetime.fromisoformat(a["send_at"]).astimezone(ZoneInfo("Europe/London")).hour == 19
    assert new["products"] == ["top1", "top2"] and "cold_start_unknown_customer" in new["reasons"]
    assert not b["send"] and "suppressed_opt_out" in b["reasons"]
    assert "offer_not_candidate_10_off" in b["reasons"] and b["offer"] == "none"


def test_holdouts_are_deterministic_and_at_their_rates():
    decider = Decider(snapshot(), "v", [], {}, global_holdout=0.02, campaign_holdout=0.05)
    ids = [{"customer_id": f"c{i}"} for i in range(10_000)]
    first = decider.decide(DecideRequest(recipients=ids, context={"campaign": "june"}))
    again = decider.decide(DecideRequest(recipients=ids, context={"campaign": "june"}))
    other = decider.decide(DecideRequest(recipients=ids, context={"campaign": "july"}))
    held = [d["holdout"] for d in first]
    assert held == [d["holdout"] for d in again]
    assert held != [d["holdout"] for d in other]
    assert sum(held) / len(held) == pytest.approx(1 - 0.98 * 0.95, abs=0.01)
    assert all(not d["send"] for d in first if d["holdout"])


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
    ],
)
def test_malformed_requests_name_the_field(body, field):
    with pytest.raises(ValidationError, match=field):
        DecideRequest.model_validate(body)
