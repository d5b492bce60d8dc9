"""The uplift report, rendered in headless Chromium: no errors, and its figures are the ones
computed directly from the experiment table."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from sendwise.cli.main import main
from sendwise.features.experiment import campaign_experiment

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def page_of(tmp_path_factory):
    """Open an HTML file in headless Chromium; (figures by data-key, errors, html)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

        def load(path):
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
            page.goto(path.as_uri(), wait_until="load")
            figures = page.eval_on_selector_all(
                "[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value])"
            )
            svgs = page.locator("svg").count()
            text = page.inner_text("body")
            page.close()
            return dict(figures), errors, svgs, text

        yield load
        browser.close()


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
