"""Shared fixtures: a simulated shop (always), the real Online Retail shop (when ../shared has it)."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit wants one
# Before LightGBM loads its OpenMP runtime: its idle threads sleep instead of spinning.
# Spinning threads fight for the two cores with whatever else runs (the tests' own servers
# and Dask workers, another job on the machine): measured here, a boosting round of two
# threads on 20,000 rows took 20-130 ms so, about 5 ms with this set. Results are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
from pathlib import Path

import pytest

from sendwise.features import online_retail
from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # noqa: E402
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONLINE_RETAIL = DATA / "online_retail" / "online_retail_2010_2011.csv.gz"
HILLSTROM = DATA / "hillstrom" / "hillstrom.csv.gz"


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow store whose tables MLflow has created. Creating them (MLflow's
    migrations) takes seconds a store, so each private store starts as a copy of this file:
    the same file the migrations would write."""
    from sendwise.store import registry

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        registry.client()
    assert not path.with_name("mlflow.db-wal").exists()  # the one file holds it all
    return path


@pytest.fixture(scope="session")
def new_store(mlflow_template):
    """`new_store(root)`: a new MLflow store (a copy of the empty template), artifacts and
    sendwise home under `root`; returns the environment that points at them."""

    def make(root: Path) -> dict[str, str]:
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, root / "mlflow.db")
        return {
            "SENDWISE_HOME": str(root / "home"),
            "SENDWISE_ARTIFACTS": str(root / "artifacts"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }

    return make


@pytest.fixture(scope="session", autouse=True)
def private_store(tmp_path_factory, new_store):
    """No test writes to the user's `.sendwise/`: the MLflow store, artifacts, decision log and
    Optuna studies of the whole session live in a temporary home (a test may still choose
    its own, as `mlflow_home` does)."""
    root = tmp_path_factory.mktemp("session_store")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in new_store(root).items():
            patch.setenv(name, value)
        yield root


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """A 3,000-customer simulated shop on disk: (directory, tables, ground truth)."""
    tables, truth = simulate(SimulationSettings(customers=3_000, seed=11))
    directory = tmp_path_factory.mktemp("sim") / "shop"
    write_shop({**tables, "ground_truth/customers": truth}, directory)
    return directory, tables, truth


@pytest.fixture(scope="session")
def simulated_shop(simulated):
    return read_shop(simulated[0])


def real_data(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def online_retail_file() -> Path:
    return real_data(ONLINE_RETAIL)


@pytest.fixture(scope="session")
def hillstrom() -> Path:
    return real_data(HILLSTROM)


@pytest.fixture(scope="session")
def online_retail_import(online_retail_file, tmp_path_factory):
    """(shop directory, import summary) of the real Online Retail file."""
    tables, summary = online_retail.convert(online_retail_file)
    directory = tmp_path_factory.mktemp("online_retail") / "shop"
    write_shop(tables, directory)
    return directory, summary


@pytest.fixture
def mlflow_home(tmp_path, monkeypatch, new_store):
    """A real MLflow store (SQLite) and sendwise home, private to one test."""
    for name, value in new_store(tmp_path).items():
        monkeypatch.setenv(name, value)
    return tmp_path
