"""The one decision policy on a hand-made snapshot: suppression, holdouts, caps, offers,
send times, duplicates, cold start, and each configuration section changing decisions."""

from __future__ import annotations

import hashlib
import json
import string
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sendwise.errors import SendwiseError
from sendwise.policy import _randomise
from sendwise.policy.config import Settings, load_settings, to_toml
from sendwise.policy.decide import SNAPSHOT_SCHEMA, Context, Snapshot, decide, quiet_hours
from sendwise.policy.randomise import uniform
from sendwise.serving.decide import DecideRequest
from sendwise.store.decisions import DecisionLog
from sendwise.store.sends import RedisSends

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NO_HOLDOUTS = {"holdouts": {"global": 0, "campaign": 0, "products": 0, "sendtime": 0, "offer": 0}}


def snapshot(n_copies: int = 1, arms: tuple[str, ...] = ()) -> Snapshot:
    base = pl.DataFrame(
        {
            "customer_id": ["a", "b", "u", "x"],
            "timezone": ["America/New_York", None, "UTC", "Asia/Tokyo"],
            "segment": ["loyal", "lapsed", "active", "lead"],
            "unsubscribed": [False, False, True, False],
            "bounces": [0, 0, 0, 2],
            "purchase_propensity": [0.8, 0.1, 0.3, 0.05],
            "propensity_reason": ["recency_days", "base", "base", "base"],
            "products": [["p1", "p2"], ["p3"], ["p4"], None],
            "cross_sell": [["n1"], None, ["n4"], None],
            "best_hours": [[7, 19, 9], [22, 23, 0], [12, 13, 14], [10, 11, 12]],
        },
        schema=SNAPSHOT_SCHEMA,
    )
    frame = pl.concat(
        base.with_columns(customer_id=pl.col("customer_id") + (str(i) if i else ""))
        for i in range(n_copies)
    )
    for k, arm in enumerate(arms):  # arm k is worth k for everyone, costs nothing
        frame = frame.with_columns(
            pl.lit(float(k)).alias(f"value_{arm}"), pl.lit(0.0).alias(f"cost_{arm}")
        )
    return Snapshot(frame, ["top1", "top2"], ["new1", "new2"], "propensity:1", arms)


def ask(snap, recipients, settings=None, sent=None, **context) -> list[dict]:
    request = DecideRequest.model_validate(
        {"recipients": recipients, "context": {"now": NOW.isoformat(), **context}}
    )
    frame = pl.DataFrame(
        [r.model_dump() for r in request.recipients],
        schema={"customer_id": pl.String, "timezone": pl.String, "opted_out": pl.Boolean},
    )
    settings = settings or Settings.model_validate(NO_HOLDOUTS)
    return decide(snap, frame, request.context, settings, NOW, sent).to_dicts()


def send_at_by_brute_force(hours, zone, start, end, quiet, fallback):
    """The rule read literally: walk the window hour by hour, per candidate hour."""
    first = start.replace(minute=0, second=0, microsecond=0)
    first += timedelta(hours=1) if first < start else timedelta(0)
    slots = [first + timedelta(hours=h) for h in range(8 * 24 + 1)]
    slots = [t for t in slots if t <= end]
    allowed = [
        t
        for t in slots
        if not quiet_hours(np.array([t.astimezone(ZoneInfo(zone)).hour]), *quiet)[0]
    ]
    for hour in [*hours, fallback]:
        for t in allowed:
            if t.astimezone(ZoneInfo(zone)).hour == hour:
                return t
    return allowed[0] if allowed else None


def test_send_times_match_the_rule_read_literally():
    rng = np.random.default_rng(0)
    zones = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "UTC", "Australia/Lord_Howe"]
    snap = snapshot()
    for _ in range(40):
        zone = str(rng.choice(zones))
        hours = [int(h) for h in rng.choice(24, 3, replace=False)]
        start = NOW + timedelta(minutes=int(rng.integers(0, 60 * 24 * 30)))
        end = start + timedelta(hours=int(rng.integers(1, 24 * 9)))
        quiet = (int(rng.integers(0, 24)), int(rng.integers(0, 24)))
        frame = snap.frame.filter(pl.col("customer_id") == "a").with_columns(
            best_hours=pl.Series([hours], dtype=pl.List(pl.Int64))
        )
        one = Snapshot(frame, [], [], "v")
        settings = Settings.model_validate(NO_HOLDOUTS)
        context = Context(
            window_start=start, window_end=end, quiet_start=quiet[0], quiet_end=quiet[1], now=start
        )
        got = decide(
            one, pl.DataFrame({"customer_id": ["a"], "timezone": [zone]}), context, settings, start
        )
        expected = send_at_by_brute_force(hours, zone, start, end, quiet, 10)
        assert got["send_at"][0] == expected, (zone, hours, start, end, quiet)
        assert got["send"][0] == (expected is not None)


def test_send_time_honours_zone_window_and_quiet_hours():
    window = {"window_start": NOW.isoformat(), "window_end": "2026-06-03T00:00:00Z"}
    a, b = ask(
        snapshot(),
        [{"customer_id": "a"}, {"customer_id": "b", "timezone": "Europe/Berlin"}],
        **window,
    )
    # 7 is quiet (before 8), so 19:00 New York local, the same day
    assert a["send_at"].astimezone(ZoneInfo("America/New_York")).hour == 19 and a["send_at"] > NOW
    assert "sendtime_personal" in a["reasons"]
    # all best hours quiet: the fallback hour
    assert b["send_at"].astimezone(ZoneInfo("Europe/Berlin")).hour == 10
    assert "sendtime_fallback" in b["reasons"]


def test_known_unknown_opted_out_and_bounced_recipients():
    a, new, b, x = ask(
        snapshot(),
        [
            {"customer_id": "a", "timezone": "Europe/London"},
            {"customer_id": "zz-new"},
            {"customer_id": "b", "opted_out": True},
            {"customer_id": "x"},
        ],
        offers=["none", "free_shipping"],
    )
    assert a["send"] and a["products"] == ["p1", "p2"] and a["cross_sell"] == ["n1"]
    assert a["segment"] == "loyal" and a["send_at"].astimezone(ZoneInfo("Europe/London")).hour == 19
    assert a["reasons"][:3] == ["segment_loyal", "personal_products", "propensity_recency_days"]
    assert new["products"] == ["top1", "top2"] and new["cross_sell"] == ["new1", "new2"]
    assert {"cold_start_unknown_customer", "cold_start_popular"} <= set(new["reasons"])
    assert new["offer"] == "free_shipping" and new["segment"] == "lead"  # a welcome incentive
    assert new["purchase_propensity"] is None and new["best_hours"] == []
    assert not b["send"] and "suppressed_opt_out" in b["reasons"] and b["send_at"] is None
    assert "offer_not_candidate_10_off" in b["reasons"] and b["offer"] == "none"
    assert not x["send"] and "suppressed_bounced" in x["reasons"]  # two bounces
    assert all(d["trigger"] is None and d["campaign"] == "default" for d in (a, new, b, x))


def test_unsubscribed_get_transactional_mail_only_and_bounced_none():
    marketing = ask(snapshot(), [{"customer_id": "u"}, {"customer_id": "x"}])
    receipt = ask(snapshot(), [{"customer_id": "u"}, {"customer_id": "x"}], transactional=True)
    assert not marketing[0]["send"] and "suppressed_unsubscribed" in marketing[0]["reasons"]
    assert receipt[0]["send"] and receipt[0]["send_at"] is not None
    assert not receipt[1]["send"] and "suppressed_bounced" in receipt[1]["reasons"]


def test_a_customer_repeated_in_one_batch_is_decided_once():
    decided = ask(
        snapshot(),
        [{"customer_id": "a"}, {"customer_id": "zz"}, {"customer_id": "a"}, {"customer_id": "zz"}],
    )
    assert [d["send"] for d in decided] == [True, True, False, False]
    assert all("duplicate_in_batch" in d["reasons"] for d in decided[2:])
    assert decided[2]["send_at"] is None and not decided[2]["holdout"]


def test_holdouts_are_deterministic_and_at_their_rates():
    settings = Settings()  # defaults: global 2%, campaign 5%, features 5% each
    ids = [{"customer_id": f"c{i}"} for i in range(10_000)]
    first = ask(snapshot(), ids, settings, campaign="june")
    again = ask(snapshot(), ids, settings, campaign="june")
    other = ask(snapshot(), ids, settings, campaign="july")
    held = [d["holdout"] for d in first]
    assert held == [d["holdout"] for d in again] and held != [d["holdout"] for d in other]
    assert sum(held) / len(held) == pytest.approx(1 - 0.98 * 0.95, abs=0.01)
    assert all(
        not d["send"] and d["holdout_kind"] in ("global", "campaign") for d in first if d["holdout"]
    )
    globals_ = {d["customer_id"] for d in first if d["holdout_kind"] == "global"}
    assert globals_ == {d["customer_id"] for d in other if d["holdout_kind"] == "global"}


def test_feature_holdouts_share_one_draw_with_logged_probabilities():
    settings = Settings.model_validate(
        {"holdouts": {"global": 0, "campaign": 0, "products": 0.2, "sendtime": 0.3}}
    )
    snap = snapshot(3000)
    ids = [{"customer_id": f"a{i}" if i else "a"} for i in range(3000)]
    decided = ask(snap, ids, settings)
    kinds = pl.Series([d["holdout_kind"] for d in decided]).fill_null("")
    assert (kinds == "products").mean() == pytest.approx(0.2, abs=0.03)
    assert (kinds == "sendtime").mean() == pytest.approx(0.3, abs=0.03)
    for d in decided:
        assert d["send"]  # feature holdouts still get the email
        expected = {"products": 0.2, "sendtime": 0.3, None: 0.5}[d["holdout_kind"]]
        assert d["probability"] == pytest.approx(expected)
        if d["holdout_kind"] == "products":
            assert d["products"] == ["top1", "top2"] and d["cross_sell"] == ["new1", "new2"]
            assert "holdout_products" in d["reasons"]
        if d["holdout_kind"] == "sendtime":
            assert d["send_at"].astimezone(ZoneInfo("America/New_York")).hour == 10
    # a recipient without personal products is never in the products holdout
    leads = ask(snap, [{"customer_id": f"x{i}" if i else "x"} for i in range(3000)], settings)
    assert not any(d["holdout_kind"] == "products" for d in leads)


def test_a_global_holdout_of_half_holds_half_with_probability_half():
    settings = Settings.model_validate({"holdouts": {"global": 0.5}})
    decided = ask(snapshot(), [{"customer_id": f"c{i}"} for i in range(4000)], settings)
    held = [d for d in decided if d["holdout_kind"] == "global"]
    assert len(held) / 4000 == pytest.approx(0.5, abs=0.03)
    assert all(d["probability"] == 0.5 and not d["send"] for d in held)


def test_trigger_holdouts_use_the_triggers_share():
    settings = Settings.model_validate(
        {"holdouts": {"global": 0}, "triggers": {"cart_abandoned": {"holdout": 0.3}}}
    )
    ids = [{"customer_id": f"c{i}"} for i in range(4000)]
    cart = ask(snapshot(), ids, settings, trigger="cart_abandoned")
    assert np.mean([d["holdout_kind"] == "trigger" for d in cart]) == pytest.approx(0.3, abs=0.03)
    assert all(d["trigger"] == "cart_abandoned" for d in cart)
    welcome = ask(snapshot(), ids, settings, trigger="welcome")  # the [holdouts] default, 10%
    assert np.mean([d["holdout_kind"] == "trigger" for d in welcome]) == pytest.approx(
        0.1, abs=0.02
    )
    assert not any(d["holdout_kind"] == "campaign" for d in cart + welcome)


def test_offer_model_values_candidates_exploration_and_offer_holdout():
    arms = ("none", "free_shipping", "10_off")
    snap = snapshot(2000, arms)
    ids = [{"customer_id": f"a{i}" if i else "a"} for i in range(2000)]
    quiet = {
        "holdouts": {"global": 0, "campaign": 0, "products": 0, "sendtime": 0, "offer": 0},
        "offers": {"exploration": 0},
    }
    decided = ask(snap, ids, Settings.model_validate(quiet))
    assert {d["offer"] for d in decided} == {"10_off"}  # worth most
    assert all(d["offer_value"] == 2.0 and "uplift_10_off" in d["reasons"] for d in decided)
    only = ask(snap, ids, Settings.model_validate(quiet), offers=["free_shipping"])
    assert {d["offer"] for d in only} == {"free_shipping"}
    explore = {
        **quiet,
        "holdouts": {**quiet["holdouts"], "offer": 0.1},
        "offers": {"exploration": 0.3},
    }
    mixed = ask(snap, ids, Settings.model_validate(explore))
    held = [d for d in mixed if d["holdout_kind"] == "offer"]
    assert len(held) / 2000 == pytest.approx(0.1, abs=0.02)
    assert all(
        d["offer"] == "none" and d["send"] and d["probability"] == pytest.approx(0.1) for d in held
    )
    exploring = [d for d in mixed if "offer_explore" in d["reasons"]]
    assert len(exploring) / 2000 == pytest.approx(0.9 * 0.3, abs=0.03)
    for d in mixed:
        if d["holdout_kind"] is None:
            best = d["offer"] == "10_off"
            expected = 0.9 * (0.3 / 3 + 0.7 * best)
            assert d["probability"] == pytest.approx(expected, abs=1e-6)
    # new customers keep the welcome rule even with an offer model
    assert (
        ask(snap, [{"customer_id": "new"}], Settings.model_validate(quiet))[0]["offer"]
        == "free_shipping"
    )


def test_the_offer_probability_weights_each_arm_back_to_everyone():
    """`offer_probability` is P(the logged offer | customer) from the offer's own draws, given
    where the shared feature draw fell: weighting each arm's rows by its inverse counts every
    customer once per arm (E[1{arm}/p] = 1), which the whole assignment's `probability`, with
    the other holdouts' shares in it, does not."""
    arms = ("none", "free_shipping", "10_off")
    n = 10_000  # the most one request takes
    snap = snapshot(n // 2, arms)
    ids = [{"customer_id": f"{c}{i}" if i else c} for i in range(n // 2) for c in ("a", "b")]
    settings = Settings.model_validate(
        {
            "holdouts": {
                "global": 0.1,
                "campaign": 0.05,
                "products": 0.2,
                "sendtime": 0.2,
                "offer": 0.1,
            },
            "offers": {"exploration": 0.3},
        }
    )
    decided = pl.DataFrame(ask(snap, ids, settings))
    drawn = decided.filter(pl.col("offer_probability").is_not_null())
    assert drawn.height == decided["send"].sum() > 0.8 * n
    for arm in arms:
        weight = (pl.col("offer") == arm) / pl.col("offer_probability")
        assert drawn.select(weight.sum()).item() / drawn.height == pytest.approx(1, abs=0.06)
    whole = (pl.col("offer") == "none") / pl.col("probability")
    assert drawn.select(whole.sum()).item() / drawn.height > 1.5
    # held out of offers: only where the feature draw fell outside products and sendtime
    # (1 in 6 there, offer 0.1 of the 0.6 left), or explored into none: 0.3 / 3
    held = drawn.filter(pl.col("holdout_kind") == "offer")
    share = 0.1 / 0.6
    assert held["offer_probability"].to_numpy() == pytest.approx(share + (1 - share) * 0.1)
    banded = drawn.filter(pl.col("holdout_kind").is_in(["products", "sendtime"]))
    best = (banded["offer"] == "10_off").to_numpy()
    assert banded["offer_probability"].to_numpy() == pytest.approx(0.1 + 0.7 * best)


def history_of(kind, tmp_path):
    if kind == "log":
        return DecisionLog(f"sqlite:///{tmp_path / 'log.db'}")
    import redis

    redis.Redis(db=15).flushdb()  # a database of the tests' own
    return RedisSends("redis://127.0.0.1:6379/15")


@pytest.mark.parametrize("kind", ["log", "redis"])
def test_frequency_caps_count_other_campaigns_over_rolling_windows(kind, tmp_path):
    """Per recipient: 1 a day, 3 a week; lapsed: 1 a week. Transactional mail is exempt."""
    history = history_of(kind, tmp_path)
    snap, settings = snapshot(), Settings.model_validate(NO_HOLDOUTS)
    recipients = pl.DataFrame({"customer_id": ["a", "b"]})

    def ask_at(campaign, day, hour=9, transactional=False):
        now = datetime(2026, 6, day, hour, tzinfo=UTC)
        context = Context(campaign=campaign, now=now, transactional=transactional)
        sent = history.sends(["a", "b"], now - timedelta(days=7), campaign)
        batch = f"{campaign}-{day}-{hour}"
        decided = decide(snap, recipients, context, settings, now, sent, batch)
        if isinstance(history, DecisionLog):
            history.append(batch, now, decided)
        elif not transactional:
            history.record_sends(decided.filter("send")["customer_id"].to_list(), now, campaign)
        return {d["customer_id"]: d for d in decided.to_dicts()}

    first = ask_at("c1", 1)
    assert first["a"]["send"] and first["b"]["send"]
    again = ask_at("c1", 1, hour=10)  # the same campaign asked again is not a second send
    assert again["a"]["send"] and again["b"]["send"]
    same_day = ask_at("c2", 1, hour=11)
    assert not same_day["a"]["send"] and "freq_cap_1d" in same_day["a"]["reasons"]
    assert ask_at("receipt", 1, hour=12, transactional=True)["a"]["send"]
    next_day = ask_at("c3", 2)
    assert next_day["a"]["send"]  # loyal: 1 a day
    assert not next_day["b"]["send"] and "freq_cap_7d" in next_day["b"]["reasons"]  # lapsed
    assert ask_at("c4", 3)["a"]["send"]
    assert "freq_cap_7d" in ask_at("c5", 4)["a"]["reasons"]  # c1, c3, c4 within 7 days
    assert ask_at("c6", 9)["a"]["send"]  # c1 fell out of the window


def test_each_request_time_section_changes_decisions():
    """[caps] is tested above, [segments] and [products] where snapshots are built."""
    ids = [{"customer_id": c} for c in ("a", "b", "x", "zz")]

    def decided(rules: dict | None = None) -> dict[str, dict]:
        settings = None if rules is None else Settings.model_validate({**NO_HOLDOUTS, **rules})
        return {d["customer_id"]: d for d in ask(snapshot(), ids, settings)}

    base = decided()
    quiet = decided({"send_time": {"quiet_start": 0, "quiet_end": 1, "fallback_hour": 15}})
    new_york = ZoneInfo("America/New_York")
    assert base["a"]["send_at"].astimezone(new_york).hour == 19
    assert quiet["a"]["send_at"].astimezone(new_york).hour == 7  # 7 no longer quiet
    assert quiet["b"]["send_at"] != base["b"]["send_at"]  # 22:00 UTC is allowed now
    offers = decided({"offers": {"welcome": "5_off", "lapsed": "20_off"}})
    assert base["zz"]["offer"] == "free_shipping" and offers["zz"]["offer"] == "5_off"
    assert base["b"]["offer"] == "10_off" and offers["b"]["offer"] == "20_off"
    lenient = decided({"suppression": {"bounce_limit": 3}})
    assert not base["x"]["send"] and lenient["x"]["send"]


def test_configuration_file_round_trips_and_names_bad_keys(tmp_path, monkeypatch):
    path = tmp_path / "rules.toml"
    path.write_text(
        "[holdouts]\nglobal = 0.5\n[caps]\nper_recipient = { 1 = 2, 7 = 5 }\n[triggers.cart_abandoned]\nholdout = 0.2\n"
    )
    settings = load_settings(path)
    assert settings.holdouts.global_ == 0.5 and settings.caps.per_recipient == {1: 2, 7: 5}
    assert (
        settings.trigger_holdout("cart_abandoned") == 0.2
        and settings.trigger_holdout("welcome") == 0.1
    )
    again = tmp_path / "again.toml"
    again.write_text(to_toml(settings))
    assert load_settings(again) == settings
    monkeypatch.setenv("SENDWISE_CONFIG", str(path))
    assert load_settings().holdouts.global_ == 0.5
    for text, message in [
        ("[holdouts]\nglobl = 0.1", "unknown key holdouts.globl"),
        (
            "[holdouts]\nglobal = 1.5",
            "holdouts.global: input should be less than or equal to 1 (got 1.5)",
        ),
        ("[send_time]\nquiet_start = 25", "send_time.quiet_start"),
        ("[triggers.bogus]\nholdout = 0.1", "unknown key triggers.bogus"),
        ("[caps]\nper_segment = { vip = { 7 = 1 } }", "caps.per_segment.vip"),
        ("[holdouts\n", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(
            SendwiseError, match=message.replace("(", r"\(").replace(")", r"\)")
        ) as error:
            load_settings(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


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
        ),
        ({"recipients": [{"customer_id": "a"}] * 10_001}, "recipients"),
        ({"recipients": [{"customer_id": "a\x00b"}]}, "customer_id"),
        (
            {"recipients": [{"customer_id": "a"}], "context": {"now": "9999-12-31T23:00:00Z"}},
            "between 1970 and 2200",
        ),
        ({"recipients": [{"customer_id": "a"}], "bogus": 1}, "bogus"),
        ({"recipients": [{"customer_id": "a"}], "context": {"quiet_start": 24}}, "quiet_start"),
    ],
)
def test_malformed_requests_name_the_field(body, field):
    with pytest.raises(ValidationError, match=field):
        DecideRequest.model_validate(body)


def test_the_api_answer_written_by_polars_is_what_pydantic_would_write():
    from sendwise.serving.decide import Decision, answer_json

    decisions = decide(
        snapshot(arms=("none", "free_shipping")),
        pl.DataFrame({"customer_id": ["a", "b", "zz-new", "a"]}),
        Context(now=NOW),
        Settings(),
        NOW,
    )
    answer = json.loads(answer_json("batch-1", decisions))
    assert answer["batch_id"] == "batch-1" and answer["logged"] is True
    expected = [
        Decision.model_validate(row).model_dump(mode="json") for row in decisions.to_dicts()
    ]
    assert answer["decisions"] == expected
    assert any(d["send_at"] for d in expected) and any(d["send_at"] is None for d in expected)


def _hashlib_draws(ids: list, salt: str) -> np.ndarray:
    """The draws as documented: BLAKE2b-64 of salt, NUL and the id, big-endian over 2^64."""
    prefix = salt.encode() + b"\x00"
    digests = b"".join(
        hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest() for i in ids
    )
    return np.frombuffer(digests, dtype=">u8") / 2**64


def test_uniform_draws_are_hashlibs_blake2b_of_salt_and_id_bit_for_bit():
    """Holdouts must not move between versions: the compiled draws are hashlib's, for ids of
    every length around BLAKE2b's 128-byte blocks, non-ASCII text, ids that are not text,
    and a slice of a column (an Arrow offset)."""
    rng = np.random.default_rng(3)
    alphabet = list(string.printable + "éüß漢字🙂")
    ids = ["", "C0000001", *("x" * n for n in (118, 119, 127, 128, 129, 255, 256, 257, 600))]
    ids += ["".join(rng.choice(alphabet, rng.integers(0, 200))) for _ in range(2000)]
    for salt in ("", "global-holdout", "spring:offer-arm", "ü" * 130):
        expected = _hashlib_draws(ids, salt)
        assert np.array_equal(uniform(ids, salt), expected)
        assert np.array_equal(uniform(pl.Series(ids), salt), expected)
        assert np.array_equal(uniform(pl.Series(ids)[7:], salt), expected[7:])
    assert np.array_equal(uniform([17, 4.5], "s"), _hashlib_draws([17, 4.5], "s"))
    assert np.array_equal(uniform(pl.Series(["a", None]), "s"), _hashlib_draws(["a", None], "s"))
    assert uniform([], "s").shape == (0,)


def test_compiled_draws_refuse_offsets_that_do_not_fit_their_text():
    out = np.zeros(2)
    with pytest.raises(ValueError, match="do not fit"):
        _randomise.draws(b"s", b"abc", np.array([0, 2, 9], np.int64), 2, out)  # past the text
    with pytest.raises(ValueError, match="do not fit"):
        _randomise.draws(b"s", b"abc", np.array([0, 2, 1], np.int64), 2, out)  # falling
    with pytest.raises(ValueError, match="do not fit"):
        _randomise.draws(b"s", b"abc", np.array([0, 1, 2], np.int64), 3, out)  # too few
    assert not out.any()
