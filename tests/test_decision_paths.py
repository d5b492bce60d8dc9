"""One policy, three doors: `sendwise score`, `POST /decide` (in process, through the same
`Runtime` the server runs) and the decision log agree, on real champions in a real registry."""

from __future__ import annotations

import polars as pl
import pytest
from champions import register_champion  # tests/champions.py

from sendwise.cli.main import main
from sendwise.features.clock import parse_as_of
from sendwise.serving.decide import DecideRequest
from sendwise.serving.engine import Champions, score_batch
from sendwise.serving.runtime import Runtime, ServeSettings
from sendwise.store.decisions import DecisionLog

AS_OF = parse_as_of("2026-05-31")


@pytest.fixture(scope="module")
def registry_env(simulated, simulated_shop, tmp_path_factory, new_store):
    root = tmp_path_factory.mktemp("paths")
    env = new_store(root)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for task in ("propensity", "crosssell", "sendtime"):
            register_champion(task, simulated_shop, AS_OF)
        yield root


def test_batch_and_api_answer_the_same_for_the_same_context_and_clock(
    registry_env, simulated, simulated_shop, tmp_path
):
    batch = score_batch(Champions.load(simulated_shop.name), simulated_shop, AS_OF, campaign="june")
    runtime = Runtime(
        ServeSettings(simulated[0], AS_OF),
        decision_log=DecisionLog(f"sqlite:///{tmp_path / 'l.db'}"),
    )
    sample = batch.sample(400, seed=1)["customer_id"].to_list()
    answer = runtime.serve(
        DecideRequest.model_validate(
            {
                "recipients": [{"customer_id": c} for c in sample],
                "context": {"campaign": "june", "now": AS_OF.isoformat()},
            }
        )
    )
    api = pl.DataFrame(answer["decisions"]).drop("decision_id")
    expected = batch.filter(pl.col("customer_id").is_in(sample)).drop("decision_id")
    expected = (
        expected.join(pl.DataFrame({"customer_id": sample}).with_row_index("i"), on="customer_id")
        .sort("i")
        .drop("i")
    )
    assert api.columns == expected.columns
    for column in api.columns:
        assert api[column].to_list() == expected[column].to_list(), column
    # the sample covers what matters: holdouts of several kinds, sends, cross-sell
    assert expected["send"].any() and expected["holdout"].sum() > 0
    assert expected["cross_sell"].list.len().min() > 0
    personal = expected.filter(pl.col("reasons").list.contains("personal_products"))
    bought = (
        simulated_shop.until(AS_OF).orders.collect().select("customer_id", "product_id").unique()
    )
    repeat = personal.explode("cross_sell").join(
        bought,
        left_on=["customer_id", "cross_sell"],
        right_on=["customer_id", "product_id"],
        how="semi",
    )
    assert repeat.is_empty(), "cross_sell holds only products the customer never bought"
    assert runtime.log.count() == 400
    runtime.close()


def test_score_logs_its_batch_and_a_config_changes_it(registry_env, simulated, tmp_path, capsys):
    rules = tmp_path / "rules.toml"
    rules.write_text("[holdouts]\nglobal = 0.5\n")
    out = tmp_path / "decisions.parquet"
    args = ["score", "--shop", str(simulated[0]), "--as-of", "2026-05-31", "--out", str(out)]
    assert main([*args, "--campaign", "spring", "--config", str(rules)]) == 0
    assert "logged as campaign 'spring'" in capsys.readouterr().out
    exported = tmp_path / "log.parquet"
    assert main(["decisions", "export", "--out", str(exported), "--campaign", "spring"]) == 0
    written, logged = pl.read_parquet(out), pl.read_parquet(exported)
    assert logged["decision_id"].to_list() == written["decision_id"].to_list()
    assert logged["products"].to_list() == written["products"].to_list()
    eligible = logged.filter(
        ~pl.col("reasons").list.eval(pl.element().str.starts_with("suppressed_")).list.any()
    )
    held = eligible.filter(pl.col("holdout_kind") == "global")
    assert len(held) / len(eligible) == pytest.approx(0.5, abs=0.04)
    assert (held["probability"] == 0.5).all() and not held["send"].any()
    assert set(logged.columns) >= {
        "batch_id",
        "decided_at",
        "campaign",
        "trigger",
        "holdout_kind",
        "cross_sell",
    }
    # with the default rules, 2% global; a second campaign is capped by the first (1 a day)
    assert main([*args, "--campaign", "summer"]) == 0
    main(["decisions", "export", "--out", str(exported), "--campaign", "summer"])
    summer = pl.read_parquet(exported)
    sent_in_spring = set(written.filter("send")["customer_id"])
    capped = summer.filter(pl.col("reasons").list.contains("freq_cap_1d"))["customer_id"]
    assert set(capped) and set(capped) <= sent_in_spring
    assert summer["holdout_kind"].eq_missing("global").mean() == pytest.approx(0.02, abs=0.01)


def test_a_failed_export_logs_nothing(registry_env, simulated, tmp_path, capsys):
    bad = tmp_path / "decisions.json"
    args = ["score", "--shop", str(simulated[0]), "--as-of", "2026-05-31"]
    code = main([*args, "--out", str(bad), "--campaign", "never"])
    assert code == 1 and "must end in .parquet or .csv" in capsys.readouterr().err
    main(["decisions", "export", "--out", str(tmp_path / "x.csv"), "--campaign", "never"])
    assert pl.read_csv(tmp_path / "x.csv").is_empty()


def test_config_show_prints_effective_settings(tmp_path, capsys, monkeypatch):
    rules = tmp_path / "rules.toml"
    rules.write_text("[send_time]\nfallback_hour = 15\n")
    monkeypatch.setenv("SENDWISE_CONFIG", str(rules))
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "fallback_hour = 15" in shown and "global = 0.02" in shown and str(rules) in shown
    rules.write_text("[send_time]\nfallbak_hour = 15\n")
    assert main(["config", "show"]) == 1
    assert "unknown key send_time.fallbak_hour" in capsys.readouterr().err
