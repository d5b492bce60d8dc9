"""What every sendwise model shares: fitted-state checks, errors, and pickle-free persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sendwise.features.contract import SendwiseError


class NotFittedError(SendwiseError):
    """A model was asked to predict before it was fitted."""


class ModelFitError(SendwiseError):
    """Fitting produced something unusable (no rows, one class, NaNs)."""


class Settings:
    """`get_params`: the keyword-only settings a model was built with (scikit-learn manner)."""

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in type(self).__init__.__kwdefaults__}


def lightgbm_params(objective: str, seed: int, **settings: float) -> dict:
    """The LightGBM parameters every booster here shares, with its own settings on top."""
    return {
        "objective": objective,
        "bagging_freq": 1,
        "seed": seed,
        "num_threads": 2,
        "verbose": -1,
        **settings,
    }


def check_is_fitted(model: Any, attribute: str) -> None:
    if not hasattr(model, attribute):
        raise NotFittedError(f"{type(model).__name__} is not fitted yet; call fit first")


def matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """The named columns as a float32 matrix, NaN for missing values (LightGBM's convention)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SendwiseError(f"features are missing column(s) {', '.join(missing[:5])}")
    return (
        frame.select(pl.col(columns).cast(pl.Float32, strict=False)).to_numpy().astype(np.float32)
    )


def save_arrays(path: str | Path, settings: dict, **arrays: np.ndarray) -> None:
    """Settings as JSON and arrays as `.npz` (no pickle) under directory `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    np.savez(path / "arrays.npz", **arrays)


def load_arrays(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    settings = json.loads((path / "settings.json").read_text())
    with np.load(path / "arrays.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return settings, arrays
