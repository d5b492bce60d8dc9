"""The simulated shop responds to logged decisions from its planted truth, and the campaign
report, reading only the log and the shop, finds what was planted.

The decisions come from the real policy (`policy.decide.decide`) over a snapshot built from
what the shop shows (segments from features, personal products from each customer's most-bought
category, best hours from their peak local hour), with holdout shares raised so that a
3,000-customer shop has groups worth comparing."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from sendwise.features.clock import with_local_time
from sendwise.features.respond import (
    PLANTED_FILE,
    ResponseModel,
    append_responses,
    expectations,
    planted_profit,
    planted_value,
    profit_effect,
    read_truth,
    respond,
    with_responses,
)
from sendwise.features.shop import read_shop, write_shop
from sendwise.policy.simulated import STUDY_SETTINGS, logged_campaigns
from sendwise.reports.campaign import summarise_campaign
from sendwise.reports.outcomes import outcomes
from sendwise.store.decisions import DecisionLog

DAYS = 14
SETTINGS = STUDY_SETTINGS


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A 3,000-customer shop, one logged campaign decided by the real policy, the truth."""
    directory = tmp_path_factory.mktemp("respond") / "shop"
    log = DecisionLog(f"sqlite:///{directory.parent / 'decisions.db'}")
    # two campaigns: two independent holdout draws
    shop, truth, decisions = logged_campaigns(directory, 3_000, 3, SETTINGS, log, ("june", "july"))
    log.close()
    return directory, shop, truth, decisions


def report_of(shop, responses, decisions):
    attributed = outcomes(decisions, with_responses(shop, responses), DAYS)
    return summarise_campaign(attributed, DAYS)


def test_same_seed_same_responses_from_public_inputs_only(campaign):
    directory, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    first = respond(shop, truth, june, DAYS, seed=1)
    # the same from a fresh read of the shop, the truth file and an exported decisions file
    exported = directory.parent / "june.parquet"
    june.write_parquet(exported)
    again = respond(read_shop(directory), read_truth(directory), pl.read_parquet(exported),
                    DAYS, seed=1)  # fmt: skip
    other = respond(shop, truth, june, DAYS, seed=2)
    assert first.orders.equals(again.orders)
    assert first.email_events.equals(again.email_events)
    assert first.planted == again.planted
    assert not first.orders.equals(other.orders)
    # planted values are expectations: they do not change with the draws
    assert first.planted["comparisons"] == other.planted["comparisons"]


def test_every_event_falls_in_its_decisions_window(campaign):
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    responses = respond(shop, truth, june, DAYS, seed=0)
    starts = responses.expected.select("customer_id", "start_at", "send")
    sends = responses.email_events.filter(pl.col("event_type") == "send")
    after = responses.email_events.filter(pl.col("event_type") != "send")
    for frame, at in ((responses.orders, "ordered_at"), (after, "occurred_at")):
        joined = frame.join(starts, on="customer_id")
        assert joined.height == frame.height  # one decision per customer in this campaign
        assert (joined[at] > joined["start_at"]).all()
        assert (joined[at] <= joined["start_at"] + timedelta(days=DAYS)).all()
    sent = sends.join(starts, on="customer_id")
    assert sent["send"].all() and (sent["occurred_at"] == sent["start_at"]).all()
    # held-out recipients get no mail but still buy at their baseline rate
    held = june.filter(pl.col("holdout_kind") == "global")["customer_id"]
    assert not responses.email_events["customer_id"].is_in(held.implode()).any()
    assert responses.orders["customer_id"].is_in(held.implode()).any()
    assert responses.email_events["machine_open"].any()


def test_machine_opens_do_not_depend_on_what_was_sent(campaign):
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    responses = respond(shop, truth, june, DAYS, seed=0)
    machine = responses.email_events.filter(pl.col("machine_open"))["customer_id"]
    sent = responses.expected.filter(pl.col("send"))
    planted_openers = sent.filter(pl.col("machine_opener"))["customer_id"]
    assert machine.sort().equals(planted_openers.sort())  # every send to them, nothing else
    # with the best send hour and products for everyone, the same machine opens
    better = june.with_columns(
        send_at=pl.col("send_at").dt.truncate("1d") + pl.duration(hours=12),
    )
    again = respond(shop, truth, better, DAYS, seed=0)
    assert (
        again.email_events.filter(pl.col("machine_open"))["customer_id"]
        .sort()
        .equals(machine.sort())
    )


def test_the_report_covers_the_planted_values(campaign):
    """Each seed is a fresh draw of the responses to the same decisions: the report's 95%
    interval should cover the planted like-with-like value (`stratified`: within the feature
    bands that applied, for the feature holdouts) about 19 times in 20."""
    _, shop, truth, decisions = campaign
    covered, misses = 0, []
    checked = 0
    seeds = range(5)
    for campaign_name in ("june", "july"):
        logged = decisions.filter(pl.col("campaign") == campaign_name)
        for seed in seeds:
            responses = respond(shop, truth, logged, DAYS, seed=seed)
            summary = report_of(shop, responses, logged)
            names = {c["name"] for c in responses.planted["comparisons"]}
            assert set(summary.names) == names
            for c in summary.comparisons:
                truth_value = planted_value(responses.planted, c.name, c.metric)
                assert (c.n_treated, c.n_control) == (
                    truth_value["n_treated"],
                    truth_value["n_control"],
                )
                checked += 1
                if c.ci_low <= truth_value["stratified"] <= c.ci_high:
                    covered += 1
                else:
                    misses.append((campaign_name, seed, c.name, c.metric))
            primary = summary.comparison("mailed vs global holdout", "conversion")
            planted = planted_value(responses.planted, primary.name, "conversion")["stratified"]
            assert primary.ci_low <= planted <= primary.ci_high, (campaign_name, seed)
    assert checked >= 2 * len(seeds) * 6 * 5  # global, campaign, 3 features, 2 arms at least
    assert covered / checked >= 0.9, misses


def test_personal_beats_popular_and_the_report_sees_it(campaign):
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    responses = respond(shop, truth, june, DAYS, seed=0)
    summary = report_of(shop, responses, june)
    name = "personal vs popular products"
    for metric in ("click_rate", "conversion", "revenue_per_recipient"):
        assert planted_value(responses.planted, name, metric)["lift"] > 0, metric
    # the default affinity adds about 1.8 points of clicks, within the noise of 3,000
    # customers compared like with like; a stronger one the report must see, of its sign
    strong = respond(shop, truth, june, DAYS, seed=0, model=ResponseModel(affinity_lift=8.0))
    planted = planted_value(strong.planted, name, "click_rate")["stratified"]
    clicks = report_of(shop, strong, june).comparison(name, "click_rate")
    assert clicks.ci_low > 0 and clicks.ci_low <= planted <= clicks.ci_high
    # the personal hour beats the fallback hour on opens, planted and measured
    hour = "personal vs fallback send hour"
    assert planted_value(responses.planted, hour, "open_rate")["lift"] > 0
    assert summary.comparison(hour, "open_rate").ci_low > 0


def test_opens_peak_near_the_planted_hour(campaign):
    _, shop, truth, decisions = campaign
    responses = respond(shop, truth, decisions, DAYS, seed=0)
    expected = responses.expected.filter(pl.col("send"))
    # the open rate falls with the distance between the send hour and the planted hour
    opened = responses.email_events.filter(
        (pl.col("event_type") == "open") & ~pl.col("machine_open")
    ).select("customer_id", "campaign_id", opened=pl.lit(True))
    by_distance = (
        expected.join(
            opened,
            left_on=["customer_id", "campaign"],
            right_on=["customer_id", "campaign_id"],
            how="left",
        )  # fmt: skip
        .with_columns(near=pl.col("hour_distance") < 1)
        .group_by("near")
        .agg(rate=pl.col("opened").fill_null(False).mean(), n=pl.len())
    )
    rates = dict(zip(by_distance["near"], by_distance["rate"], strict=True))
    assert rates[True] > 1.3 * rates[False]
    # and opens themselves happen near the planted local hour
    human = responses.email_events.filter(
        (pl.col("event_type") == "open") & ~pl.col("machine_open")
    ).join(truth.select("customer_id", "timezone", "preferred_hour"), on="customer_id")
    local = with_local_time(human.lazy(), truth["timezone"].unique().to_list()).collect()
    gap = (local["local_at"].dt.hour().cast(pl.Int64) - local["preferred_hour"]).abs()
    assert (np.minimum(gap, 24 - gap) <= 1).mean() > 0.6


def test_fatigue_raises_unsubscribes_and_discounts_lower_revenue(campaign):
    _, shop, truth, decisions = campaign
    both = expectations(shop, truth, decisions, DAYS)  # july's sends follow june's
    sent = both.filter(pl.col("send"))
    by_recent = sent.group_by(pl.col("recent_sends") > 0).agg(pl.col("p_unsubscribe").mean())
    rates = dict(zip(by_recent["recent_sends"], by_recent["p_unsubscribe"], strict=True))
    assert rates[True] > rates[False]
    ten_off = sent.filter(pl.col("offer") == "10_off")
    assert (ten_off["discount"] == 0.10).all()
    responses = respond(shop, truth, decisions, DAYS, seed=0)
    paid = responses.orders.with_columns(
        decision_id=pl.col("order_id").str.extract(r"^resp-(.+)-[bmo]$")
    ).join(both.select("decision_id", "offer", "send"), on="decision_id")
    off = (pl.col("offer") == "10_off") & pl.col("send")
    assert paid.filter(off).height > 10
    assert (paid.filter(off)["discount"] == 0.10).all()
    assert (paid.filter(~off)["discount"] == 0.0).all()


def test_no_planted_effect_gives_intervals_around_zero(campaign):
    """An A/A check: with no product affinity, the planted personal-vs-popular click effect
    is nil and the report's interval covers zero."""
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    flat = ResponseModel().without_affinity()
    responses = respond(shop, truth, june, DAYS, seed=0, model=flat)
    name = "personal vs popular products"
    planted = planted_value(responses.planted, name, "click_rate")
    summary = report_of(shop, responses, june)
    measured = summary.comparison(name, "click_rate")
    assert abs(planted["stratified"]) < 0.01  # who fell where differs a little by chance
    assert measured.ci_low <= 0 <= measured.ci_high


def test_appended_shop_passes_the_contract_and_carries_the_planted_values(tmp_path, campaign):
    directory, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    copy = tmp_path / "shop"
    write_shop({**shop.collect(), "ground_truth/customers": truth}, copy)
    responses = respond(read_shop(copy), read_truth(copy), june, DAYS, seed=4)
    append_responses(copy, responses)
    grown = read_shop(copy)  # validates every row of every table
    counts = pl.collect_all([grown.orders.select(pl.len()), grown.email_events.select(pl.len())])
    assert counts[0].item() == shop.orders.select(pl.len()).collect().item() + len(responses.orders)
    assert counts[1].item() == shop.email_events.select(pl.len()).collect().item() + len(
        responses.email_events
    )
    planted = json.loads((copy / PLANTED_FILE).read_text())
    assert planted["comparisons"] == json.loads(json.dumps(responses.planted["comparisons"]))
    # the report from the appended shop on disk equals the in-memory one
    on_disk = summarise_campaign(outcomes(june, grown, DAYS), DAYS)
    in_memory = report_of(shop, responses, june)
    assert [c.effect for c in on_disk.comparisons] == pytest.approx(
        [c.effect for c in in_memory.comparisons]
    )
    with pytest.raises(Exception, match="responded to before"):
        append_responses(copy, responses)
    assert read_shop(copy).orders.select(pl.len()).collect().item() == counts[0].item()


def test_simulate_respond_then_report_campaign_from_the_command_line(
    campaign, tmp_path, monkeypatch, capsys
):
    """The loop's middle, as a user runs it: the shop responds to its logged campaign, then
    the campaign report reads the log and the grown shop; its interval covers the planted
    like-with-like value (responses are seeded, so this is the same draw every run)."""
    import shutil

    from sendwise.cli.main import main

    directory, _, _, decisions = campaign
    shop = tmp_path / "shop"
    shutil.copytree(directory, shop)
    shutil.copy(directory.parent / "decisions.db", tmp_path / "decisions.db")
    monkeypatch.setenv("SENDWISE_DECISION_LOG_URL", f"sqlite:///{tmp_path / 'decisions.db'}")
    orders_before = read_shop(shop).orders.select(pl.len()).collect().item()
    respond_args = ["simulate", "respond", "--shop", str(shop), "--campaign", "june"]
    assert main([*respond_args, "--days", str(DAYS)]) == 0
    assert "planted values in" in capsys.readouterr().out
    assert read_shop(shop).orders.select(pl.len()).collect().item() > orders_before
    planted = json.loads((shop / "ground_truth" / "planted.json").read_text())
    figures = tmp_path / "june.json"
    report = ["report", "campaign", "--shop", str(shop), "--campaign", "june"]
    assert main([*report, "--days", str(DAYS), "--out", str(tmp_path / "june.html"),
                 "--json", str(figures)]) == 0  # fmt: skip
    found = {(c["name"], c["metric"]): c for c in json.loads(figures.read_text())["comparisons"]}
    mailed = found[("mailed vs global holdout", "conversion")]
    target = planted_value(planted, "mailed vs global holdout", "conversion")["stratified"]
    assert mailed["ci_low"] <= target <= mailed["ci_high"]
    # the same decisions cannot respond twice
    assert main([*respond_args, "--days", str(DAYS)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_train_offer_from_the_log_learns_from_what_the_policy_drew(
    campaign, tmp_path, monkeypatch, mlflow_home, capsys
):
    """The offer experiment sendwise ran itself: one row per customer whose offer the policy
    drew (chosen, explored or held out), weighted by the probability of its offer's draws."""
    import shutil

    from sendwise.cli.main import main
    from sendwise.features.experiment import logged_experiment
    from sendwise.models.uplift import OfferModel
    from sendwise.store import registry

    directory, _, _, decisions = campaign
    shop = tmp_path / "shop"
    shutil.copytree(directory, shop)
    shutil.copy(directory.parent / "decisions.db", tmp_path / "decisions.db")
    monkeypatch.setenv("SENDWISE_DECISION_LOG_URL", f"sqlite:///{tmp_path / 'decisions.db'}")
    june = decisions.filter(pl.col("campaign") == "june")
    assert main(["simulate", "respond", "--shop", str(shop), "--campaign", "june"]) == 0
    table = logged_experiment(read_shop(shop), june, DAYS)
    drawn = june.filter(
        pl.col("send")
        & pl.col("reasons").list.eval(pl.element().str.contains("^(uplift_|offer_)")).list.any()
        & ~pl.col("reasons").list.eval(pl.element().str.starts_with("offer_rule")).list.any()
    )
    assert table.frame.height == drawn.height == table.frame["customer_id"].n_unique()
    by_id = drawn.select("customer_id", "offer", "offer_probability").sort("customer_id")
    assert table.frame.select("customer_id", "arm", "propensity").sort("customer_id").rows() == (
        by_id.rows()
    )
    assert set(table.arm) == {"none", "free_shipping", "10_off"} and table.spec.control == "none"
    args = ["train", "offer", "--shop", str(shop), "--from-log", "--campaign", "june"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "sendwise.shop.offer v1 is the challenger" in said
    assert registry.alias_version("shop", "offer", "challenger") is not None
    # the held-out evidence it will be served by travels with the model
    path, _ = registry.download("shop", "offer", alias="challenger")
    evidence = OfferModel.load(path).evidence
    assert set(evidence["arms"]) == {"free_shipping", "10_off"}
    assert f"over {evidence['best_single_arm']} for everyone" in said
    assert main(["promote", "offer", "--shop", str(shop)]) == 0  # the first champion
    # a second from-log challenger is judged against it on the log's held-out rows, read
    # again from the log (not from the shop's assignments, where its campaign is not)
    assert main(args) == 0
    capsys.readouterr()
    main(["promote", "offer", "--shop", str(shop)])
    said = capsys.readouterr()
    assert "challenger v2" in said.out + said.err and "no campaign" not in said.out + said.err
    assert main(["train", "offer", "--experiment", str(shop / "x.csv"), "--from-log"]) == 1


def test_an_offer_model_from_the_log_is_promoted_on_what_it_earns_as_served(
    campaign, tmp_path, monkeypatch, mlflow_home, capsys
):
    """A champion from the shop's own offer test and a challenger from the log are valued
    on the log's held-out rows as the policy would serve each (targeting, one arm for
    everyone, or nothing), in profit over no offer; the one that earns more is champion."""
    import re
    import shutil

    import numpy as np

    from sendwise.cli.main import main
    from sendwise.models.uplift import OfferModel
    from sendwise.policy.offers import OfferPolicy
    from sendwise.store import registry
    from sendwise.training.promote import _served_gain

    directory = campaign[0]
    shop = tmp_path / "shop"
    shutil.copytree(directory, shop)
    shutil.copy(directory.parent / "decisions.db", tmp_path / "decisions.db")
    monkeypatch.setenv("SENDWISE_DECISION_LOG_URL", f"sqlite:///{tmp_path / 'decisions.db'}")
    assert main(["simulate", "respond", "--shop", str(shop), "--campaign", "june"]) == 0
    assert main(["train", "offer", "--shop", str(shop), "--campaign", "offer_test"]) == 0
    assert main(["promote", "offer", "--shop", str(shop)]) == 0
    args = ["train", "offer", "--shop", str(shop), "--from-log", "--campaign", "june"]
    assert main(args) == 0
    capsys.readouterr()
    promoted = main(["promote", "offer", "--shop", str(shop)]) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    served = re.search(r"earns ([+-][\d.]+) against ([+-][\d.]+) profit per customer", said)
    assert served, said
    challenger, champion = float(served[1]), float(served[2])
    qini = re.search(r"qini_auc ([+-]?[\d.]+), champion v1 ([+-]?[\d.]+)", said)
    # Qini decides only between two that earn the same (two serving no offer)
    wins = challenger > champion or (challenger == champion and float(qini[1]) > float(qini[2]))
    assert promoted == wins, said
    assert int(registry.alias_version("shop", "offer", "champion").version) == (
        2 if promoted else 1
    )

    # what a model earns as served, read from its evidence
    model = OfferModel.load(registry.download("shop", "offer", version="2")[0])
    arms, policy = model.arms, OfferPolicy()

    def interval(value: float, se: float = 0.01) -> dict:
        return {"value": value, "se": se, "low": value - 0.0196, "high": value + 0.0196}

    def evidence(targeting: float, arm_gain: float) -> dict:
        return {
            "learned_policy": interval(1.0 + 0.3),
            "single_arm": {a: interval(1.0 + (arm_gain if a == arms[1] else 0.0)) for a in arms},
            "gain_over_best_single_arm": interval(targeting),
            "arms": {a: interval(arm_gain if a == arms[1] else -1.0) for a in arms[1:]},
        }

    model.evidence = evidence(targeting=0.3, arm_gain=0.1)  # targeting proven: its 0.3
    assert np.isclose(_served_gain(model.evidence, model, policy), 0.3)
    model.evidence = evidence(targeting=0.0, arm_gain=0.2)  # one arm proven: everyone gets it
    assert np.isclose(_served_gain(model.evidence, model, policy), 0.2)
    model.evidence = evidence(targeting=0.0, arm_gain=0.0)  # nothing proven: no offer
    assert _served_gain(model.evidence, model, policy) == 0.0


def test_planted_profit_is_what_the_draws_earn_on_average(campaign):
    """Naive policies are valued with `planted_profit` instead of drawn responses: the
    planted profit plus the unmailed margin is the mean profit the orders of many draws
    bring (full price times margin, less the discount, less free shipping's fee per order)."""
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")
    margin, fee = 0.4, {"free_shipping": 4.95}
    expected = expectations(shop, truth, june, DAYS)
    profit = planted_profit(expected, margin, fee)
    assert profit.filter(~expected["send"]).abs().max() < 1e-12  # nothing sent, nothing earned
    total = float(profit.sum() + margin * expected["unmailed_revenue"].sum())
    offers = dict(june.select("decision_id", "offer").iter_rows())
    draws = []
    for seed in range(40):
        orders = respond(shop, truth, june, DAYS, seed=seed).orders.with_columns(
            offer=pl.col("order_id").str.slice(5).str.replace(r"-[bmo]$", "").replace_strict(offers)
        )
        earned = (margin - pl.col("discount")) * pl.col("unit_price") - pl.when(
            pl.col("offer") == "free_shipping"
        ).then(4.95).otherwise(0.0)
        draws.append(orders.select(earned.sum()).item())
    spread = np.std(draws, ddof=1) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - total) < 4 * spread
    effect = profit_effect(expected, margin, fee)
    assert 0 < effect["recipients"] < june.height
    # without offers, the same mail with the shop's best sellers earns less: their first
    # product is bought after a click only as far as the customer likes its category
    no_offer = june.with_columns(offer=pl.lit("none"), offer_value=pl.lit(0.0))
    best_sellers = june.filter(pl.col("holdout_kind") == "products")["products"][0]
    popular = no_offer.with_columns(products=pl.lit(best_sellers.to_list(), pl.List(pl.String)))
    earned = {
        name: profit_effect(expectations(shop, truth, frame, DAYS), margin, fee)["per_1000"]
        for name, frame in (("personal", no_offer), ("popular", popular))
    }
    print(f"planted profit per 1,000 without offers: {earned}, with them {effect['per_1000']:.1f}")
    assert earned["personal"] > earned["popular"] > 0


def test_each_trigger_pulls_its_subject_as_planted(campaign):
    """A triggered mail's opens buy its subject (the first product) at the trigger's planted
    pull: a cart pulls harder than a welcome, the draws earn what the expectations say, and
    the report's trigger holdout finds the cart's planted effect."""
    _, shop, truth, decisions = campaign
    june = decisions.filter(pl.col("campaign") == "june")

    def as_trigger(name: str) -> pl.DataFrame:  # the campaign holdout stands in for the trigger's
        held = pl.col("holdout_kind") == "campaign"
        return june.with_columns(
            trigger=pl.lit(name),
            holdout_kind=pl.when(held).then(pl.lit("trigger")).otherwise("holdout_kind"),
        )

    model = ResponseModel()
    cart, welcome = as_trigger("cart_abandoned"), as_trigger("welcome")
    expected = expectations(shop, truth, cart, DAYS)
    sent = expected["send"] & expected["known"]
    assert np.allclose(
        expected["p_trigger_buy"].to_numpy(),
        np.where(
            sent.to_numpy(),
            expected["p_open"].to_numpy() * model.trigger_pull["cart_abandoned"],
            0.0,
        ),
    )
    assert expectations(shop, truth, june, DAYS)["p_trigger_buy"].sum() == 0  # a campaign: none
    name = "mailed vs trigger holdout ({})"
    found, draws = [], []
    for seed in range(4):
        responses = respond(shop, truth, cart, DAYS, seed=seed)
        pulled = responses.orders.filter(pl.col("order_id").str.ends_with("-t"))
        draws.append(pulled.height)
        # each pulled order is its decision's first listed product
        firsts = dict(
            zip(responses.expected["decision_id"], responses.expected["first_product"], strict=True)
        )
        ids = pulled["order_id"].str.slice(5).str.replace(r"-t$", "")
        assert pulled["product_id"].to_list() == [firsts[i] for i in ids]
        comparison = report_of(shop, responses, cart).comparison(
            name.format("cart_abandoned"), "conversion"
        )
        planted = planted_value(responses.planted, comparison.name, "conversion")
        found.append(comparison.ci_low <= planted["stratified"] <= comparison.ci_high)
    expected_pulls = expected["p_trigger_buy"].sum()
    assert abs(np.mean(draws) - expected_pulls) < 4 * np.sqrt(expected_pulls / len(draws))
    assert sum(found) >= 3, found
    lift = {
        trigger: planted_value(
            respond(shop, truth, frame, DAYS).planted, name.format(trigger), "conversion"
        )["lift"]
        for trigger, frame in (("cart_abandoned", cart), ("welcome", welcome))
    }
    assert lift["cart_abandoned"] > lift["welcome"] + 0.01, lift
