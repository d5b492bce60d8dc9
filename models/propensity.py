"""Purchase propensity: P(purchase within the horizon), calibrated, with per-customer reasons.

LightGBM learns on examples stacked from several past cut-offs; a logistic (Platt) map learned
on the most recent cut-off, out of time for the booster that scored it, turns scores into
probabilities. The map is monotone, so calibration never changes the ranking.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from .base import (
    ModelFitError,
    Settings,
    check_is_fitted,
    compile_trees,
    lightgbm_params,
    load_arrays,
    matrix,
    predict_trees,
    save_arrays,
)


class PurchasePropensity(Settings):
    def __init__(
        self,
        *,
        n_estimators: int = 500,
        learning_rate: float = 0.02,
        num_leaves: int = 7,
        min_child_samples: int = 100,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.random_state = random_state

    def booster_params(self) -> dict:
        """The LightGBM parameters of this model's boosters (a learner elsewhere, such as
        `lightgbm.dask`, fits with the same ones)."""
        return lightgbm_params(
            "binary",
            self.random_state,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            feature_fraction=self.feature_fraction,
            bagging_fraction=self.bagging_fraction,
            lambda_l2=self.lambda_l2,
        )

    def fit(
        self,
        X: pl.DataFrame,
        y: np.ndarray,
        *,
        calibration: np.ndarray | None = None,
        eval_set: tuple[pl.DataFrame, np.ndarray] | None = None,
        callbacks: list | None = None,
    ) -> PurchasePropensity:
        """Learn from X (numeric feature columns) and y (bought or not).

        `calibration` marks the rows (the latest cut-off) that fit the probability map out of
        time; the booster is then refitted on every row. Without it (or when those rows hold
        one outcome only) the booster's own probabilities are used as is.
        `eval_set` is scored (AUC, as `valid_0`) while boosting, for callbacks such as pruning.
        """
        y = np.asarray(y, dtype=np.float32)
        if len(y) == 0 or y.min() == y.max():
            raise ModelFitError("purchase propensity needs both buyers and non-buyers to learn")
        self.feature_names_ = list(X.columns)
        features = matrix(X, self.feature_names_)
        if (
            calibration is not None
            and (~calibration).any()
            and len(np.unique(y[calibration])) == 2  # a map needs both outcomes to learn
        ):
            early = lgb.train(
                self.booster_params(),
                lgb.Dataset(features[~calibration], y[~calibration]),
                self.n_estimators,
            )
            scores = early.predict(features[calibration], raw_score=True)
            self.calibration_ = platt_map(scores, y[calibration])
        else:
            self.calibration_ = np.array([1.0, 0.0])
        params, valid = self.booster_params(), []
        if eval_set is not None:
            params["metric"] = "auc"
            valid = [lgb.Dataset(matrix(eval_set[0], self.feature_names_), eval_set[1])]
        self.booster_ = lgb.train(
            params,
            lgb.Dataset(features, y),
            self.n_estimators,
            valid_sets=valid,
            callbacks=callbacks,
        )
        return self

    def adopt(
        self, booster: lgb.Booster, feature_names: list[str], calibration: np.ndarray | None
    ) -> PurchasePropensity:
        """Take a booster fitted elsewhere with `booster_params` (on a cluster, by
        `lightgbm.dask`) on `feature_names`, with its Platt map (`platt_map`; None: the
        booster's own probabilities), as `fit` would have left it."""
        self.feature_names_ = list(feature_names)
        self.calibration_ = np.array([1.0, 0.0]) if calibration is None else calibration
        self.booster_ = booster
        return self

    def score(self, X: pl.DataFrame) -> np.ndarray:
        """Uncalibrated raw scores (log-odds), the order the booster ranks by."""
        check_is_fitted(self, "booster_")
        return predict_trees(self.booster_, matrix(X, self.feature_names_), raw_score=True)

    def precompile(self) -> None:
        """Start compiling the trees that large batches of `score` run (see compile_trees)."""
        check_is_fitted(self, "booster_")
        compile_trees(self.booster_, raw_score=True)

    def predict_proba(self, X: pl.DataFrame) -> np.ndarray:
        """Calibrated P(purchase within the horizon)."""
        check_is_fitted(self, "booster_")
        slope, intercept = self.calibration_
        return 1 / (1 + np.exp(-(slope * self.score(X) + intercept)))

    @property
    def feature_importances_(self) -> dict[str, float]:
        check_is_fitted(self, "booster_")
        gain = self.booster_.feature_importance("gain")
        return dict(
            sorted(zip(self.feature_names_, gain / gain.sum(), strict=True), key=lambda kv: -kv[1])
        )

    def top_reasons(
        self, X: pl.DataFrame, k: int = 3, trees: int | None = None
    ) -> np.ma.MaskedArray:
        """(rows, k) names of the features that raise each row's score most (SHAP
        contributions), best first; masked (None in `tolist`, null in Polars) where fewer
        than k raise it. Of equal contributions, the feature named first goes first.

        Strings under a mask, not an object array holding None: Polars types an object column
        by its first value, so one whose first row had no reason became an Object series that
        cannot be cast to String (it crashed scoring a million customers).
        `trees` limits the explanation to the first trees, the coarse effects: TreeSHAP costs
        grow with every tree, and for a million customers the full model takes minutes.
        """
        check_is_fitted(self, "booster_")
        contrib = self.booster_.predict(
            matrix(X, self.feature_names_), pred_contrib=True, num_iteration=trees
        )[:, :-1]
        if k == 1:  # the usual question, and a tenth of a sort's time: 0.02 s for 60,000 rows
            order = contrib.argmax(axis=1)[:, None]
        else:
            order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
        names = np.array(self.feature_names_, dtype=str)[order]
        return np.ma.masked_array(names, mask=np.take_along_axis(contrib, order, axis=1) <= 0)

    def save(self, path: str | Path) -> None:
        check_is_fitted(self, "booster_")
        save_arrays(
            path,
            {"params": self.get_params(), "feature_names": self.feature_names_},
            calibration=self.calibration_,
        )
        Path(path, "booster.txt").write_text(self.booster_.model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> PurchasePropensity:
        settings, arrays = load_arrays(path)
        model = cls(**settings["params"])
        model.feature_names_ = settings["feature_names"]
        model.calibration_ = arrays["calibration"]
        model.booster_ = lgb.Booster(model_str=Path(path, "booster.txt").read_text())
        return model


def platt_map(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(slope, intercept) of the logistic map from raw scores to P(purchase), learned out of
    time: on rows the booster that scored them did not learn from."""
    platt = LogisticRegression(C=1e4).fit(scores[:, None], y)
    return np.array([platt.coef_[0, 0], platt.intercept_[0]])
