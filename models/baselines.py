"""Baselines with the same API as the models, so backtests treat them alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from scipy import optimize, special

from .base import ModelFitError, check_is_fitted, load_arrays, matrix, save_arrays


class ColumnScore:
    """Ranks by one feature column (e.g. `-recency_days`, `orders_total`): nothing to learn."""

    def __init__(self, *, column: str, ascending: bool = False):
        self.column = column
        self.ascending = ascending

    def fit(self, X: pl.DataFrame, y: np.ndarray | None = None) -> ColumnScore:
        self.fitted_ = True
        return self

    def predict_proba(self, X: pl.DataFrame) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        values = np.nan_to_num(
            matrix(X, [self.column])[:, 0], nan=np.inf if self.ascending else -np.inf
        )
        ranks = values.argsort().argsort() / max(len(values) - 1, 1)
        return 1 - ranks if self.ascending else ranks


BGNBD_COLUMNS = ["orders_total", "recency_days", "first_order_days"]


class BGNBD:
    """Beta-geometric / negative binomial model of repeat purchases (Fader, Hardie & Lee 2005).

    Reads `orders_total`, `recency_days` and `first_order_days` from the features; time is in
    weeks. `predict_expected(X, days)` is the expected number of purchases in the next `days`.
    """

    def __init__(self, *, horizon_days: int = 90, penalizer: float = 0.0):
        self.horizon_days = horizon_days
        self.penalizer = penalizer

    @staticmethod
    def _summary(X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        data = np.nan_to_num(matrix(X, BGNBD_COLUMNS).astype(np.float64))
        x = np.maximum(data[:, 0] - 1, 0)  # repeat purchases
        age = data[:, 2] / 7
        t_x = np.clip(age - data[:, 1] / 7, 0, None)
        return x, t_x, age

    @staticmethod
    def _log_likelihood(params: np.ndarray, x, t_x, age) -> np.ndarray:
        r, alpha, a, b = np.exp(params)
        common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        first = (
            special.betaln(a, b + x) - special.betaln(a, b) + common - (r + x) * np.log(alpha + age)
        )
        repeat = x > 0
        second = np.full_like(x, -np.inf)
        second[repeat] = (
            special.betaln(a + 1, b + x[repeat] - 1)
            - special.betaln(a, b)
            + common[repeat]
            - (r + x[repeat]) * np.log(alpha + t_x[repeat])
        )
        return np.logaddexp(first, second)

    def fit(self, X: pl.DataFrame, y: np.ndarray | None = None) -> BGNBD:
        x, t_x, age = self._summary(X)
        buyers = age > 0
        if buyers.sum() < 10:
            raise ModelFitError("BG/NBD needs at least ten customers with a purchase")

        def loss(params):
            return -self._log_likelihood(params, x[buyers], t_x[buyers], age[buyers]).mean() + (
                self.penalizer * np.sum(np.exp(params) ** 2)
            )

        result = optimize.minimize(
            loss,
            np.zeros(4),
            method="Nelder-Mead",
            options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-9},
        )
        if not np.isfinite(result.fun):
            raise ModelFitError("BG/NBD did not converge")
        self.params_ = np.exp(result.x)
        return self

    def predict_expected(self, X: pl.DataFrame, days: float | None = None) -> np.ndarray:
        check_is_fitted(self, "params_")
        r, alpha, a, b = self.params_
        x, t_x, age = self._summary(X)
        t = (days or self.horizon_days) / 7
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + age + t))
        top = (a + b + x - 1) / (a - 1) * (1 - ((alpha + age) / (alpha + age + t)) ** (r + x) * hyp)
        bottom = 1 + (x > 0) * a / np.maximum(b + x - 1, 1e-9) * (
            (alpha + age) / (alpha + t_x)
        ) ** (r + x)
        return np.nan_to_num(top / bottom)

    def predict_proba(self, X: pl.DataFrame) -> np.ndarray:
        """P(at least one purchase), under a Poisson reading of the expected count."""
        return 1 - np.exp(-self.predict_expected(X))

    def save(self, path: str | Path) -> None:
        check_is_fitted(self, "params_")
        save_arrays(
            path,
            {"horizon_days": self.horizon_days, "penalizer": self.penalizer},
            params=self.params_,
        )

    @classmethod
    def load(cls, path: str | Path) -> BGNBD:
        settings, arrays = load_arrays(path)
        model = cls(**settings)
        model.params_ = arrays["params"]
        return model
