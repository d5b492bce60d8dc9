"""Optuna tuning: the study is stored (SQLite by default, PostgreSQL when given) and the best
trial is logged to MLflow and registered."""

from __future__ import annotations

import os
import uuid

import optuna
import pytest
from test_training import AS_OF, HORIZON

from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.store import registry
from sendwise.training.tune import tune_propensity

TRIALS = 2  # each trial fits as `train` validates: two show the study is stored and used
# The sampler's seed: with it TPE's first two draws are models of 150 boosting rounds, where
# seed 0 draws 650 and 450 (what is tested here is the study's storage, not the search).
SEED = 221
POSTGRES = os.environ.get("SENDWISE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A 1,000-customer simulated shop (named `shop`): enough buyers to judge a trial on, and
    each boosting round a third of the session's 3,000-customer shop's."""
    tables, _ = simulate(SimulationSettings(customers=1_000, seed=11))
    directory = tmp_path_factory.mktemp("tune") / "shop"
    write_shop(tables, directory)
    return read_shop(directory)


def check_tuned(result, storage):
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert len(study.trials) == result.trials == TRIALS
    assert result.best_value == pytest.approx(study.best_value)
    version = registry.alias_version("shop", "propensity", "challenger")
    run = registry.client().get_run(version.run_id)
    assert run.data.tags["optuna_study"] == result.study_name
    assert run.data.params["num_leaves"] == str(result.best_params["num_leaves"])
    assert 0.5 < result.best_value <= 1.0


def test_tuning_stores_the_study_in_sqlite_and_registers_the_best(shop, mlflow_home):
    result = tune_propensity(shop, AS_OF, HORIZON, trials=TRIALS, seed=SEED)
    assert (
        result.storage.startswith("sqlite:///") and (mlflow_home / "home" / "optuna.db").is_file()
    )
    check_tuned(result, result.storage)


def require_postgres() -> None:
    import sqlalchemy

    try:
        sqlalchemy.create_engine(POSTGRES).connect().close()
    except Exception as error:  # noqa: BLE001
        if os.environ.get("CI"):
            raise  # CI's machine runs PostgreSQL: not reaching it is a failure there
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {error}")


def test_tuning_against_a_real_postgresql_server(shop, mlflow_home):
    require_postgres()
    name = f"test-{uuid.uuid4().hex[:8]}"
    try:
        result = tune_propensity(
            shop,
            AS_OF,
            HORIZON,
            trials=TRIALS,
            storage=POSTGRES,
            study_name=name,
            seed=SEED,
        )
        check_tuned(result, POSTGRES)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


def test_tuning_on_dask_workers_shares_one_study_in_postgresql(shop, mlflow_home):
    from distributed import LocalCluster

    require_postgres()
    name = f"test-{uuid.uuid4().hex[:8]}"
    trials = 3
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            result = tune_propensity(
                shop,
                AS_OF,
                HORIZON,
                trials=trials,
                storage=POSTGRES,
                study_name=name,
                seed=SEED,
                engine="dask",
                scheduler=cluster.scheduler_address,
            )
            workers = set(cluster.scheduler.workers)
        study = optuna.load_study(study_name=name, storage=POSTGRES)
        assert len(study.trials) == result.trials == trials
        # every trial ran on a worker of the cluster, each drawing its own settings
        assert {t.user_attrs["worker"] for t in study.trials} <= workers
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == trials
        assert result.best_value == pytest.approx(study.best_value)
        version = registry.alias_version("shop", "propensity", "challenger")
        run = registry.client().get_run(version.run_id)
        assert run.data.tags["optuna_study"] == name
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)
