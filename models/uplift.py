"""Uplift: each arm's incremental effect on an outcome against control, per customer.

A multi-arm X-learner (Künzel et al., 2019) on LightGBM. For every arm, and for control, an
outcome model learns E[y | x, arm]; each arm's effect is then learned twice from imputed
individual effects (treated: y - control model; control: arm model - y) and the two effect
models are blended by the share of that arm among the arm and control. On Hillstrom it beats
the two-model (T-learner) and class-transformation baselines; see experiments/uplift.md.

Randomisation probabilities, where logged and unequal, weight every row by 1 / P(its arm), so
that each arm's outcome model sees the population the campaign was drawn from.

Features are a frame of numbers and strings; strings become LightGBM categories whose
vocabulary is learned at fit time (unseen values are missing).
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from .base import (
    ModelFitError,
    Settings,
    check_is_fitted,
    compile_trees,
    lightgbm_params,
    load_arrays,
    predict_trees,
    save_arrays,
)


class UpliftModel(Settings):
    def __init__(
        self,
        *,
        n_estimators: int = 200,
        learning_rate: float = 0.02,
        num_leaves: int = 4,
        min_child_samples: int = 400,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    # --- features -------------------------------------------------------------------------

    def _matrix(self, X: pl.DataFrame) -> np.ndarray:
        """Numbers as they are, strings as codes of the fitted vocabulary (NaN if unseen)."""
        columns = []
        for name in self.feature_names_:
            if name not in X.columns:
                raise ModelFitError(f"features are missing column {name}")
            values = X[name]
            if name in self.categories_:
                lookup = {v: float(i) for i, v in enumerate(self.categories_[name])}
                values = values.cast(pl.String).replace_strict(lookup, default=None)
            columns.append(values.cast(pl.Float64, strict=False).to_numpy())
        return np.column_stack(columns).astype(np.float64) if columns else np.empty((len(X), 0))

    def _booster(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray, binary: bool):
        params = lightgbm_params(
            "binary" if binary else "regression",
            self.random_state,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            # small experiments keep at least twenty leaves' worth of rows per split
            min_child_samples=min(self.min_child_samples, max(20, len(y) // 20)),
            min_data_per_group=20,
            cat_smooth=10,
        )
        categorical = [self.feature_names_.index(c) for c in self.categories_]
        data = lgb.Dataset(
            x, y, weight=weight, categorical_feature=categorical or "auto", free_raw_data=True
        )
        return lgb.train(params, data, self.n_estimators)

    # --- learning -------------------------------------------------------------------------

    def _prepare(self, X, arm, y, control, propensity):
        """Check the experiment, learn the feature layout; (matrix, arms, outcome, weights)."""
        arm = np.asarray(arm).astype(str)
        y = np.asarray(y, dtype=float)
        if np.isnan(y).any():
            raise ModelFitError("the outcome has missing values")
        if control not in set(arm):
            raise ModelFitError(f"no row is in the control arm {control!r}")
        self.treatments_ = sorted(set(arm) - {control})
        if not self.treatments_:
            raise ModelFitError("the experiment has no arm besides control")
        self.control_ = control
        self.binary_ = bool(np.isin(y, (0.0, 1.0)).all())
        self.feature_names_ = list(X.columns)
        self.categories_ = {
            name: sorted(X[name].drop_nulls().unique().cast(pl.String).to_list())
            for name in X.columns
            if X[name].dtype in (pl.String, pl.Categorical, pl.Enum, pl.Boolean)
        }
        if propensity is None:
            shares = {a: float(np.mean(arm == a)) for a in [control, *self.treatments_]}
            propensity = np.array([shares[a] for a in arm])
        propensity = np.asarray(propensity, dtype=float)
        if ((propensity <= 0) | (propensity > 1) | np.isnan(propensity)).any():
            raise ModelFitError("randomisation probabilities must lie in (0, 1]")
        return self._matrix(X), arm, y, 1 / propensity

    def _fit_outcomes(self, x, arm, y, weight) -> None:
        self.outcome_ = {}
        for name in [self.control_, *self.treatments_]:
            rows = arm == name
            if len(np.unique(y[rows])) < 2:
                raise ModelFitError(f"arm {name!r} has one outcome value only; nothing to learn")
            self.outcome_[name] = self._booster(x[rows], y[rows], weight[rows], self.binary_)

    def fit(
        self,
        X: pl.DataFrame,
        arm: np.ndarray,
        y: np.ndarray,
        control: str,
        propensity: np.ndarray | None = None,
    ) -> UpliftModel:
        """Learn from a randomised experiment: features, assigned arm, outcome, control arm's
        name, and optionally each row's logged probability of the arm it got."""
        x, arm, y, weight = self._prepare(X, arm, y, control, propensity)
        self._fit_outcomes(x, arm, y, weight)
        self.effect_ = {}
        self.share_ = {}
        control_rows = arm == control
        base = self.outcome_[control]
        for name in self.treatments_:
            rows = arm == name
            treated_effect = y[rows] - base.predict(x[rows])
            control_effect = self.outcome_[name].predict(x[control_rows]) - y[control_rows]
            self.effect_[name] = (
                self._booster(x[rows], treated_effect, weight[rows], False),
                self._booster(x[control_rows], control_effect, weight[control_rows], False),
            )
            # the arm's share among itself and control blends the two effect models
            self.share_[name] = float(rows.sum() / (rows.sum() + control_rows.sum()))
        return self

    # --- answers --------------------------------------------------------------------------

    @property
    def arms_(self) -> list[str]:
        """Control first, then the treatment arms (the columns of `predict_outcome`)."""
        check_is_fitted(self, "outcome_")
        return [self.control_, *self.treatments_]

    def precompile(self) -> None:
        """Start compiling the trees that large batches of predictions run (compile_trees)."""
        check_is_fitted(self, "effect_")
        compile_trees(self.outcome_[self.control_])
        for pair in self.effect_.values():
            for booster in pair:
                compile_trees(booster)

    def predict_uplift(self, X: pl.DataFrame) -> np.ndarray:
        """(rows, treatment arms): each arm's predicted effect on the outcome against control."""
        check_is_fitted(self, "effect_")
        return self._uplift(self._matrix(X))

    def _uplift(self, x: np.ndarray) -> np.ndarray:
        columns = []
        for name in self.treatments_:
            from_treated, from_control = self.effect_[name]
            share = self.share_[name]
            # each effect model is trusted more where its own arm had fewer rows to impute from
            columns.append(
                share * predict_trees(from_control, x)
                + (1 - share) * predict_trees(from_treated, x)
            )
        return np.column_stack(columns)

    def predict_outcome(self, X: pl.DataFrame) -> np.ndarray:
        """(rows, arms): expected outcome under control (column 0) and under each arm."""
        check_is_fitted(self, "outcome_")
        x = self._matrix(X)
        base = predict_trees(self.outcome_[self.control_], x)
        return np.column_stack([base, base[:, None] + self._uplift(x)])

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        check_is_fitted(self, "effect_")
        path = Path(path)
        state = {
            "params": self.get_params(),
            "control": self.control_,
            "treatments": self.treatments_,
            "binary": self.binary_,
            "feature_names": self.feature_names_,
            "categories": self.categories_,
            "share": self.share_,
        }
        save_arrays(path, state)
        for name, booster in self.outcome_.items():
            (path / f"outcome-{self.arms_.index(name)}.txt").write_text(booster.model_to_string())
        for name, (treated, control) in self.effect_.items():
            i = self.arms_.index(name)
            (path / f"effect-{i}-treated.txt").write_text(treated.model_to_string())
            (path / f"effect-{i}-control.txt").write_text(control.model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> UpliftModel:
        path = Path(path)
        state, _ = load_arrays(path)
        model = cls(**state["params"])
        model.control_ = state["control"]
        model.treatments_ = state["treatments"]
        model.binary_ = state["binary"]
        model.feature_names_ = state["feature_names"]
        model.categories_ = state["categories"]
        model.share_ = state["share"]

        def booster(name: str) -> lgb.Booster:
            return lgb.Booster(model_str=(path / name).read_text())

        arms = [model.control_, *model.treatments_]
        model.outcome_ = {a: booster(f"outcome-{i}.txt") for i, a in enumerate(arms)}
        model.effect_ = {
            a: (booster(f"effect-{i}-treated.txt"), booster(f"effect-{i}-control.txt"))
            for i, a in enumerate(arms)
            if i > 0
        }
        return model


class TwoModelUplift(UpliftModel):
    """Baseline (DESIGN: "two models, LightGBM"): an outcome model per arm with LightGBM's
    default settings; the effect is their difference. For evaluation, not for serving."""

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        random_state: int = 0,
    ):
        super().__init__(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            min_child_samples=min_child_samples,
            random_state=random_state,
        )

    def fit(self, X, arm, y, control, propensity=None) -> TwoModelUplift:
        self._fit_outcomes(*self._prepare(X, arm, y, control, propensity))
        return self

    def predict_uplift(self, X: pl.DataFrame) -> np.ndarray:
        check_is_fitted(self, "outcome_")
        x = self._matrix(X)
        base = self.outcome_[self.control_].predict(x)
        return np.column_stack([self.outcome_[a].predict(x) - base for a in self.treatments_])


class ClassTransformationUplift(TwoModelUplift):
    """Baseline (DESIGN: "class transformation, LightGBM"; Jaskowski & Jaroszewicz, 2012): one
    classifier per arm on z = 1 when (treated and responded) or (control and did not);
    uplift = 2 P(z) - 1, exact when arm and control are equally likely."""

    def fit(self, X, arm, y, control, propensity=None) -> ClassTransformationUplift:
        x, arm, y, _ = self._prepare(X, arm, y, control, propensity)
        self.outcome_ = {}
        for name in self.treatments_:
            rows = (arm == name) | (arm == control)
            z = ((arm[rows] == name) == (y[rows] > 0)).astype(float)
            self.outcome_[name] = self._booster(x[rows], z, np.ones(rows.sum()), True)
        return self

    def predict_uplift(self, X: pl.DataFrame) -> np.ndarray:
        check_is_fitted(self, "outcome_")
        x = self._matrix(X)
        return np.column_stack([2 * self.outcome_[a].predict(x) - 1 for a in self.treatments_])


class OfferModel:
    """The uplift models of one experiment: its outcome (conversion, visit...) and, where the
    experiment has one, revenue; with the experiment's layout, so scoring needs no flags, and
    the held-out evidence of what its targeting earns (`training.offers.policy_evidence`)."""

    def __init__(
        self,
        outcome: UpliftModel,
        revenue: UpliftModel | None,
        spec: dict,
        evidence: dict | None = None,
    ):
        self.outcome = outcome
        self.revenue = revenue
        self.spec = spec
        self.evidence = evidence

    @property
    def arms(self) -> list[str]:
        return self.outcome.arms_

    @property
    def feature_names(self) -> list[str]:
        return self.outcome.feature_names_

    def precompile(self) -> None:
        for model in (self.outcome, self.revenue):
            if model is not None:
                model.precompile()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.outcome.save(path / "outcome")
        if self.revenue is not None:
            self.revenue.save(path / "revenue")
        save_arrays(path, {"spec": self.spec, "evidence": self.evidence})

    @classmethod
    def load(cls, path: str | Path) -> OfferModel:
        path = Path(path)
        state, _ = load_arrays(path)
        revenue = UpliftModel.load(path / "revenue") if (path / "revenue").is_dir() else None
        outcome = UpliftModel.load(path / "outcome")
        return cls(outcome, revenue, state["spec"], state.get("evidence"))
