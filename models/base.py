"""What every sendwise model shares: fitted-state checks, errors, and pickle-free persistence."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import lightgbm as lgb
import lleaves
import numpy as np
import polars as pl

from sendwise.errors import SendwiseError


class NotFittedError(SendwiseError):
    """A model was asked to predict before it was fitted."""


class ModelFitError(SendwiseError):
    """Fitting produced something unusable (no rows, one class, NaNs)."""


THREADS = 2  # this machine kind's cores: training and batch prediction use them all


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
        "num_threads": THREADS,
        "verbose": -1,
        **settings,
    }


COMPILE_ROWS = 500_000  # from about this many rows a booster's compiled form pays for itself
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sendwise-trees")
_COMPILED: WeakKeyDictionary[lgb.Booster, dict[bool, Future]] = WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()
_KEPT: list[Path] = []  # where compiled trees are kept between processes; empty: nowhere


def keep_compiled_trees(directory: Path | None) -> None:
    """Keep compiled trees as files in `directory` (None: not at all), named by a hash of the
    booster, the compiler and this CPU, so the next process loads them in milliseconds
    instead of compiling them again (about ten seconds of a core per booster)."""
    _KEPT[:] = [] if directory is None else [Path(directory)]


def compile_trees(booster: lgb.Booster, raw_score: bool = False) -> Future:
    """Compile `booster`'s trees to machine code (lleaves), once per booster, in a background
    thread: the future's result predicts as `booster.predict` does, about ten times faster.
    Started early, the compiling overlaps other work."""
    with _COMPILED_LOCK:
        forms = _COMPILED.setdefault(booster, {})
        if raw_score not in forms:
            model = booster.model_to_string()
            kept = _kept_file(model, raw_score)
            forms[raw_score] = _COMPILER.submit(_compile, model, raw_score, kept)
        return forms[raw_score]


def _kept_file(model: str, raw_score: bool) -> Path | None:
    """Where the compiled form of `model` is kept, if compiled trees are kept at all: the
    machine code fits this CPU and this lleaves only, so both are in the name."""
    if not _KEPT:
        return None
    from llvmlite import binding

    key = hashlib.sha256(
        "\n".join(
            [
                model,
                str(raw_score),
                metadata.version("lleaves"),
                binding.get_host_cpu_name(),
                binding.get_host_cpu_features().flatten(),
            ]
        ).encode()
    ).hexdigest()
    return _KEPT[0] / f"{key}.o"


def _compile(model: str, raw_score: bool, kept: Path | None) -> Callable[..., np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="sendwise-trees-") as tmp:
        path = Path(tmp, "booster.txt")
        path.write_text(model)
        compiled = lleaves.Model(model_file=str(path))
        if kept is not None and kept.is_file():
            compiled.compile(cache=str(kept), raw_score=raw_score)
        else:
            written = Path(tmp, "compiled.o")
            compiled.compile(cache=str(written), raw_score=raw_score)
            if kept is not None:
                _keep(written, kept)
    return compiled.predict


def _keep(written: Path, kept: Path) -> None:
    """Put a compiled form in place whole (another process may be reading the directory);
    where it cannot be kept, it is compiled again next time."""
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        staged = kept.with_name(f".{kept.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.copyfile(written, staged)
        os.replace(staged, kept)
    except OSError:
        pass


def tree_predictor(
    booster: lgb.Booster, compiled: bool, raw_score: bool = False, threads: int = THREADS
) -> Callable[[np.ndarray], np.ndarray]:
    """How to predict with `booster` on `threads` threads: LightGBM itself, or (`compiled`)
    its compiled trees."""
    if not compiled:
        return partial(booster.predict, raw_score=raw_score, num_threads=threads)
    return partial(compile_trees(booster, raw_score).result(), n_jobs=threads)


_BATCH_ROWS: ContextVar[int | None] = ContextVar("sendwise_batch_rows", default=None)


@contextmanager
def part_of_batch(rows: int) -> Iterator[None]:
    """Predict as for a whole batch of `rows` rows while scoring a part of it (a bucket):
    compiled trees and LightGBM differ in the last bits, so every part takes the whole
    batch's choice and the parts' numbers are the whole's."""
    token = _BATCH_ROWS.set(rows)
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


def predict_trees(booster: lgb.Booster, rows: np.ndarray, raw_score: bool = False) -> np.ndarray:
    """`booster.predict(rows)`, through the compiled trees when the batch pays for them."""
    batch = _BATCH_ROWS.get()
    size = len(rows) if batch is None else batch
    return tree_predictor(booster, size >= COMPILE_ROWS, raw_score)(rows)


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


def positions(ids: pl.Series, values: pl.Series) -> np.ndarray:
    """Position of each value among `ids` (distinct), -1 where absent: a hash join (a binary
    search over numpy's strings of sorted ids took ten times as long: 10 s for 6M values)."""
    index = pl.DataFrame({"value": ids.cast(pl.String), "code": np.arange(len(ids))})
    found = pl.DataFrame({"value": values.cast(pl.String)}).join(
        index, on="value", how="left", maintain_order="left", validate="m:1"
    )
    return found["code"].fill_null(-1).to_numpy()


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
