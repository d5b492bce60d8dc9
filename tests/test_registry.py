"""Models that belong to their shop, on a real MLflow store: two shops side by side, an
experiment file's offer model beside them, a champion that does not fit its shop, promotion by
version, rollback, `models list`, the server's runtime falling back to the last good models,
tuning that tells the truth, two trainings at once, and the user's `.sendwise/` untouched."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from champions import register_champion  # tests/champions.py
from test_degenerate import orders_only_shop

from sendwise.cli.main import main
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.serving.engine import ChampionError, Champions, score_batch
from sendwise.serving.runtime import Runtime, ServeSettings
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog

AS_OF = parse_as_of("2026-05-31")
DECISION = ["customer_id", "segment", "offer", "products", "send_at", "purchase_propensity"]


@pytest.fixture(scope="module")
def other_shop(tmp_path_factory):
    """A second simulated shop, named `other` in its shop.toml."""
    tables, truth = simulate(SimulationSettings(customers=1_500, seed=5))
    directory = tmp_path_factory.mktemp("shops") / "second"
    write_shop({**tables, "ground_truth/customers": truth}, directory, name="other")
    return directory


def experiment_file(path: Path, rows: int = 3_000, seed: int = 0) -> Path:
    """A Hillstrom-like experiment: columns no shop's features have."""
    rng = np.random.default_rng(seed)
    treated = rng.random(rows) < 0.5
    recency = rng.integers(1, 13, rows)
    history = rng.gamma(2.0, 100.0, rows)
    chance = 0.10 + 0.08 * treated * (recency < 6)
    pl.DataFrame(
        {
            "recency": recency,
            "history": history,
            "mens": rng.integers(0, 2, rows),
            "segment": np.where(treated, "Womens E-Mail", "No E-Mail"),
            "visit": (rng.random(rows) < chance).astype(int),
        }
    ).write_csv(path)
    return path


def offer_args(path: Path, *more: str) -> list[str]:
    layout = ["--arm-col", "segment", "--control", "No E-Mail", "--outcome", "visit"]
    return ["train", "offer", "--experiment", str(path), *layout, *more]


def decisions(shop) -> pl.DataFrame:
    return score_batch(Champions.load(shop.name), shop, AS_OF).select(DECISION)


def test_shop_name_from_shop_toml_else_the_directory(simulated, other_shop, tmp_path):
    assert read_shop(simulated[0]).name == "shop"  # written by write_shop: the directory's name
    assert read_shop(other_shop).name == "other"
    bare = orders_only_shop(tmp_path / "My Shop", products=3)
    assert read_shop(bare).name == "my-shop"  # no shop.toml
    (bare / "shop.toml").write_text('name = "Bad Name!"\n')
    assert main(["models", "list", "--shop", str(bare)]) == 1


def test_two_shops_side_by_side_and_an_experiment_offer_touch_neither(
    simulated_shop, other_shop, mlflow_home, tmp_path, capsys
):
    for task in ("propensity", "crosssell", "sendtime"):
        register_champion(task, simulated_shop, AS_OF)
    before = decisions(simulated_shop)
    other = read_shop(other_shop)
    for task in ("propensity", "crosssell", "sendtime"):
        register_champion(
            task, other, AS_OF, **({} if task == "sendtime" else {"n_estimators": 40})
        )
    register_champion("sendtime", other, AS_OF, prior_strength=50.0)  # v2 of other's only
    assert decisions(simulated_shop).equals(before)
    assert Champions.load("other").versions == {"propensity": "1", "crosssell": "1", "sendtime": "2"}  # fmt: skip
    assert not decisions(other).equals(before)
    # an experiment file's offer model belongs to `experiments` unless told otherwise
    path = experiment_file(tmp_path / "hill.csv")
    assert main(offer_args(path)) == 0
    assert "sendwise.experiments.offer v1 is the challenger" in capsys.readouterr().out
    assert main(["promote", "offer"]) == 0
    assert "promoted sendwise-offer of shop experiments v1" in capsys.readouterr().out
    assert registry.alias_version("shop", "offer", "champion") is None
    assert decisions(simulated_shop).equals(before)
    out = tmp_path / "offers.csv"
    assert main(["score-experiment", "--experiment", str(path), "--out", str(out)]) == 0
    assert len(pl.read_csv(out)) == 3_000
    assert registry.shops() == ["experiments", "other", "shop"]


def test_a_champion_that_does_not_fit_its_shop(simulated, simulated_shop, mlflow_home, tmp_path, capsys):  # fmt: skip
    for task in ("propensity", "sendtime"):
        register_champion(task, simulated_shop, AS_OF)
    path = experiment_file(tmp_path / "hill.csv")
    # trained on the file but filed under the shop: promotion refuses it before scoring
    assert main(offer_args(path, "--shop-name", "shop")) == 0
    capsys.readouterr()
    assert main(["promote", "offer", "--shop", str(simulated[0])]) == 1
    said = capsys.readouterr().out
    assert said.startswith("refused: sendwise-offer of shop shop v1 reads columns the shop's")
    assert "recency, history, mens" in said
    assert registry.alias_version("shop", "offer", "champion") is None
    # made champion behind promotion's back: scoring is one line naming model, version, columns
    # and the fix
    registry.set_champion("shop", "offer", "1", "choose")
    score = ["score", "--shop", str(simulated[0]), "--as-of", "2026-05-31", "--out", str(tmp_path / "d.parquet")]  # fmt: skip
    assert main(score) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400, err
    assert err.startswith("error: champion sendwise-offer of shop shop v1 does not fit this data")
    assert "recency, history, mens" in err and "sendwise rollback offer --shop-name shop" in err


def test_promote_version_rollback_and_models_list(simulated, simulated_shop, mlflow_home, capsys):
    shop_dir = str(simulated[0])
    for n_estimators in (30, 60, 90):
        register_champion("sendtime", simulated_shop, AS_OF, prior_strength=float(n_estimators))
    assert str(registry.alias_version("shop", "sendtime", "champion").version) == "3"
    assert main(["promote", "sendtime", "--shop", shop_dir, "--version", "1"]) == 0
    assert "champion is now v1 (chosen with --version; was v3)" in capsys.readouterr().out
    assert main(["rollback", "sendtime", "--shop-name", "shop"]) == 0
    assert "champion v1 -> v3" in capsys.readouterr().out
    assert main(["rollback", "sendtime", "--shop-name", "shop"]) == 0
    assert "champion v3 -> v2" in capsys.readouterr().out
    moves = [(e["version"], e["action"]) for e in registry.champion_log("shop", "sendtime")]
    assert moves == [("1", "promote"), ("2", "promote"), ("3", "promote"), ("1", "choose"), ("3", "rollback"), ("2", "rollback")]  # fmt: skip
    assert main(["promote", "sendtime", "--shop-name", "shop", "--version", "9"]) == 1
    assert "has no version 9" in capsys.readouterr().err
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["shops"]
    assert list(listed) == ["shop"]
    rows = listed["shop"]["sendtime"]
    assert [r["version"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["aliases"] == ["champion"] and rows[2]["aliases"] == ["challenger"]
    assert all(r["trained_at"] for r in rows)
    assert main(["models", "list", "--shop-name", "nobody"]) == 0
    assert "No models of shop nobody" in capsys.readouterr().out


def test_promote_scores_champion_and_challenger_on_the_same_window(
    many_products, mlflow_home, capsys
):
    """A champion trained later than the challenger's window is re-validated there with its
    own settings; a weaker challenger is refused with both figures printed."""
    shop = str(many_products)
    train = ["train", "propensity", "--shop", shop, "--as-of", "2021-12-31"]
    assert main(train) == 0 and main(["promote", "propensity", "--shop", shop]) == 0
    earlier = ["train", "propensity", "--shop", shop, "--as-of", "2021-10-31"]
    capsys.readouterr()
    from sendwise.training import train as training

    real = training.validate
    weak = {"n_estimators": 1, "min_child_samples": 10**6}  # one tree without a split
    try:  # the challenger's validation figure: a constant score's
        training.validate = lambda task, s, t, h, params, fit: real(task, s, t, h, weak, fit)  # noqa: E731
        assert main(earlier) == 0
    finally:
        training.validate = real
    capsys.readouterr()
    assert main(["promote", "propensity", "--shop", shop]) == 1
    said = capsys.readouterr().out
    assert said.startswith("refused: sendwise-propensity of shop many_products: challenger v2")
    assert "champion v1" in said and "re-validated on 2021-08-02..2021-10-31" in said


@pytest.fixture(scope="module")
def many_products(tmp_path_factory):
    return orders_only_shop(tmp_path_factory.mktemp("registry") / "many_products", products=25)


def test_serving_starts_on_the_last_good_champion_and_counts_failed_reloads(
    simulated, simulated_shop, mlflow_home, tmp_path, caplog
):
    for task in ("propensity", "sendtime"):
        register_champion(task, simulated_shop, AS_OF)
    register_champion("sendtime", simulated_shop, AS_OF, prior_strength=20.0)  # good v2
    # a broken v3 (its files damaged) made champion
    version = register_champion("sendtime", simulated_shop, AS_OF)
    source = registry.model_version("shop", "sendtime", version).source
    for f in Path(source.removeprefix("file://")).iterdir():
        f.write_text("damaged")
    failures = []
    settings = ServeSettings(simulated[0], AS_OF, reload_seconds=0.5)
    runtime = Runtime(
        settings,
        decision_log=DecisionLog(f"sqlite:///{tmp_path / 'log.db'}"),
        on_reload_failure=lambda: failures.append(1),
    )
    ready, body = runtime.health()
    assert ready and body["status"] == "degraded" and body["serving"]["sendtime"] == "2"
    assert "sendwise-sendtime of shop shop v3 does not load" in body["problem"]
    assert failures == [1]
    # back to v2, then an incompatible champion appears: one line, one count, still v2
    registry.set_champion("shop", "sendtime", "2", "rollback")
    assert not runtime.reload_if_promoted() and runtime.health()[1]["status"] == "ready"
    with pytest.raises(ChampionError):
        Champions.load("shop", {"propensity": "1", "sendtime": "3"})
    registry.set_champion("shop", "sendtime", "3", "choose")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sendwise.serving.runtime"):
        assert not runtime.reload_if_promoted()
        assert not runtime.reload_if_promoted()  # the same broken champion is not retried
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None
    assert failures == [1, 1]
    ready, body = runtime.health()
    assert ready and body["status"] == "degraded" and body["serving"]["sendtime"] == "2"
    assert runtime.snapshot.model_versions == "propensity:1,sendtime:2"
    runtime.close()


def test_tune_prints_what_it_registers_and_keeps_a_better_challenger(
    many_products, mlflow_home, capsys, monkeypatch
):
    from sendwise.training import tune

    shop = str(many_products)
    assert main(["train", "propensity", "--shop", shop, "--as-of", "2021-12-31"]) == 0
    capsys.readouterr()
    # every trial a one-tree model: worse than the trained challenger
    monkeypatch.setattr(
        tune, "suggest", lambda trial: {"n_estimators": trial.suggest_int("n_estimators", 1, 1)}
    )
    assert main(["tune", "propensity", "--shop", shop, "--as-of", "2021-12-31", "--trials", "2"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    tuned = registry.model_version("many_products", "propensity", "2")
    figure = registry.run_metric(tuned.run_id, "roc_auc")
    assert f"best validation ROC-AUC {figure:.4f} (as registered: v2)" in said
    assert "kept challenger v1" in said and "the tuned v2" in said
    assert str(registry.alias_version("many_products", "propensity", "challenger").version) == "1"


def test_two_trainings_at_once_on_a_fresh_store(many_products, tmp_path):
    env = {
        **os.environ,
        "SENDWISE_HOME": str(tmp_path / "home"),
        "SENDWISE_ARTIFACTS": str(tmp_path / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}",
    }
    command = [sys.executable, "-m", "sendwise.cli", "train", "sendtime", "--shop", str(many_products), "--as-of", "2021-12-31"]  # fmt: skip
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    # one of them is the challenger; the other says so, whichever finished first
    final = registry_challenger(env)
    assert any(f"v{final} is the challenger" in s for s in said), said
    assert all("is the challenger" in s or f"the challenger is v{final}" in s for s in said), said


def registry_challenger(env: dict) -> str:
    code = "from sendwise.store import registry; print(registry.alias_version('many_products', 'sendtime', 'challenger').version)"  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return found.stdout.strip()


def test_a_command_leaves_the_working_directory_registry_untouched(many_products):
    """The session's store is private (conftest); the user's `.sendwise/` where the tests run
    is never written, here checked around a real training command."""
    user = Path.cwd() / ".sendwise"

    def state():
        if not user.exists():
            return None
        return sorted((str(p), p.stat().st_mtime_ns) for p in user.rglob("*"))

    before = state()
    assert registry.tracking_uri() != f"sqlite:///{user / 'mlflow.db'}"
    assert main(["train", "sendtime", "--shop", str(many_products), "--as-of", "2021-12-31"]) == 0
    assert state() == before
