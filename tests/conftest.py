"""Shared fixtures: a simulated shop (always), the real Online Retail shop (when ../shared has it)."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit wants one
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


@pytest.fixture(scope="session", autouse=True)
def private_store(tmp_path_factory):
    """No test writes to the user's `.sendwise/`: the MLflow store, artifacts, decision log and
    Optuna studies of the whole session live in a temporary home (a test may still choose
    its own, as `mlflow_home` does)."""
    root = tmp_path_factory.mktemp("session_store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SENDWISE_HOME", str(root / "home"))
        patch.setenv("SENDWISE_ARTIFACTS", str(root / "artifacts"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
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
def mlflow_home(tmp_path, monkeypatch):
    """A real MLflow store (SQLite) and sendwise home, private to one test."""
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SENDWISE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
