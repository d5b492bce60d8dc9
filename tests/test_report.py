"""The uplift report, rendered in headless Chromium: no errors, and its figures are the ones
computed directly from the experiment table."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sendwise.cli.main import main
from sendwise.features.experiment import campaign_experiment

pytest_plugins = ("browser",)  # the `page_of` fixture: headless Chromium


def test_report_renders_cleanly_and_its_figures_match(simulated, simulated_shop, tmp_path, page_of):
    out = tmp_path / "report.html"
    assert main(["report", "uplift", "--shop", str(simulated[0]), "--out", str(out)]) == 0
    html = out.read_text()
    # self-contained: nothing fetched (namespace URIs inside the SVGs are not fetches)
    assert not re.search(r"""(src|href)=["']?https?:|url\(["']?https?:""", html)
    assert "<script" not in html
    figures, errors, svgs, text = page_of(out)
    assert errors == []
    assert svgs >= 3  # effects on conversion and on revenue, Qini and decile curves

    table = campaign_experiment(simulated_shop)
    arm, y = table.arm, table.outcome
    revenue = table.frame["revenue"].to_numpy()
    for offer in ("10_off", "free_shipping"):
        lift = y[arm == offer].mean() - y[arm == "none"].mean()
        money = revenue[arm == offer].mean() - revenue[arm == "none"].mean()
        assert float(figures[f"effect_{offer}_conversion"]) == pytest.approx(lift)
        assert float(figures[f"incremental_{offer}_conversion"]) == pytest.approx(
            lift * (arm == offer).sum()
        )
        assert float(figures[f"effect_{offer}_revenue"]) == pytest.approx(money)
    p = table.propensity
    no_one = np.mean(revenue * (arm == "none") / p)
    assert float(figures["policy_no_one_revenue"]) == pytest.approx(no_one)
    assert "Of 2 offers tested against 'none'" in text
    assert "Qini" in text and "by segment" in text


def test_report_on_an_experiment_file(hillstrom, tmp_path, page_of):
    out = tmp_path / "hillstrom.html"
    flags = ["--arm-col", "segment", "--control", "No E-Mail", "--outcome", "visit"]
    extra = ["--exclude", "conversion", "--revenue", "spend", "--segment-col", "zip_code"]
    assert main(["report", "uplift", "--experiment", str(hillstrom), *flags, *extra,
                 "--out", str(out)]) == 0  # fmt: skip
    figures, errors, _, text = page_of(out)
    assert errors == []
    # DESIGN's data README: visit 15.14% (Womens) vs 10.62% (no e-mail)
    assert float(figures["effect_womens_e_mail_visit"]) == pytest.approx(0.1514 - 0.1062, abs=5e-4)
    assert "Surburban" in text  # the segment breakdown by zip_code


def test_the_headline_claims_a_targeting_gain_only_when_the_evidence_shows_one():
    """It announced "+1.1741 revenue per customer" from targeting while the intervals
    overlapped and both Qini AUCs were negative; money goes to the cent."""
    import numpy as np
    import polars as pl

    from sendwise.reports.uplift import Effect, PolicyValue, UpliftSummary

    def summary(target: PolicyValue, qini: float) -> UpliftSummary:
        effects = [Effect("10_off", o, 500, 0.2, 0.1, 0.1, 0.05, 0.15) for o in ("bought", "spend")]
        policies = [
            target,
            PolicyValue("best single arm", 10.0, 9.0, 11.0),
            PolicyValue("no one", 8.0, 7.0, 9.0),
        ]
        return UpliftSummary("t", "s", 1000, "none", "bought", "spend", effects, pl.DataFrame(),
                             pl.DataFrame(), {"10_off": (np.zeros(2), np.zeros(2))},
                             {"10_off": qini}, {"spend": policies})  # fmt: skip

    overlapping = summary(PolicyValue("model targeting", 11.1741, 10.5, 11.8), qini=-0.02)
    said = overlapping.headline()
    assert "is not shown to beat" in said and "the two intervals overlap" in said
    assert "no better than chance (Qini AUC 10_off -0.020)" in said
    assert "11.17 spend per customer" in said and "1.1741" not in said
    clear = summary(PolicyValue("model targeting", 13.0, 12.0, 14.0), qini=0.05).headline()
    assert "a real gain of about 3.00 spend per customer" in clear
    chance = summary(PolicyValue("model targeting", 13.0, 12.0, 14.0), qini=-0.01).headline()
    assert "is not shown to beat" in chance and "overlap" not in chance
