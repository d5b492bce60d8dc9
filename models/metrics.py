"""Backtest metrics, each a plain function of predictions and outcomes."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score


def propensity_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Ranking (ROC-AUC, PR-AUC, top-decile lift) and calibration (Brier, ECE) of P(purchase)."""
    y = np.asarray(y, dtype=float)
    top = np.argsort(-p)[: max(len(p) // 10, 1)]
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(
        abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean()
        for b in range(10)
        if (bins == b).any()
    )
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "lift_top_decile": float(y[top].mean() / y.mean()),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(ece),
    }


def ranking_metrics(
    recommended: pl.DataFrame, truth: pl.DataFrame, k: int = 10
) -> dict[str, float]:
    """NDCG@k and recall@k over every customer with at least one true item.

    `recommended`: customer_id, products (list, best first); `truth`: customer_id, product_id.
    A customer with no recommendation scores zero.
    """
    relevant = truth.group_by("customer_id").agg(pl.col("product_id").alias("truth"))
    joined = relevant.join(
        recommended.select("customer_id", "products"), on="customer_id", how="left"
    )
    discounts = 1 / np.log2(np.arange(2, k + 2))
    ndcg, recall = [], []
    for items, shown in joined.select("truth", "products").iter_rows():
        wanted = set(items)
        hits = np.array([p in wanted for p in (shown or [])[:k]], dtype=float)
        dcg = float((hits * discounts[: hits.size]).sum())
        ideal = float(discounts[: min(len(wanted), k)].sum())
        ndcg.append(dcg / ideal)
        recall.append(hits.sum() / len(wanted))
    return {
        f"ndcg@{k}": float(np.mean(ndcg)),
        f"recall@{k}": float(np.mean(recall)),
        "customers": len(ndcg),
    }


def hour_hits(best_hours: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """hit@1 and hit@3: the actual hour is the first, or among the first three, predicted."""
    return {
        "hit@1": float(np.mean(best_hours[:, 0] == actual)),
        "hit@3": float(np.mean((best_hours[:, :3] == actual[:, None]).any(axis=1))),
        "customers": len(actual),
    }


def _qini_points(y: np.ndarray, uplift: np.ndarray, treated: np.ndarray):
    """Cumulative (targeted, incremental responders) at each distinct uplift, best first."""
    order = np.argsort(-uplift, kind="mergesort")
    y, uplift, treated = y[order], uplift[order], treated[order]
    ends = np.r_[np.flatnonzero(np.diff(uplift)), len(uplift) - 1]
    n_treated = np.cumsum(treated)[ends]
    n_control = ends + 1 - n_treated
    y_treated = np.cumsum(y * treated)[ends]
    y_control = np.cumsum(y * (1 - treated))[ends]
    ratio = np.divide(n_treated, n_control, out=np.zeros(len(ends)), where=n_control > 0)
    return np.r_[0, ends + 1], np.r_[0, y_treated - y_control * ratio]


def qini_curve(y: np.ndarray, uplift: np.ndarray, treated: np.ndarray):
    """Qini curve (Radcliffe): customers targeted, best predicted uplift first, against the
    incremental responders among them (treated responders minus scaled control responders)."""
    y, treated = np.asarray(y, float), np.asarray(treated, float)
    return _qini_points(y, np.asarray(uplift, float), treated)


def qini_auc(y: np.ndarray, uplift: np.ndarray, treated: np.ndarray) -> float:
    """Area between the Qini curve and random targeting, over that of the perfect ranking
    (negative effects allowed): the normalised Qini coefficient of scikit-uplift."""
    y, treated = np.asarray(y, float), np.asarray(treated, float)
    x, q = qini_curve(y, uplift, treated)
    px, pq = qini_curve(y, y * treated - y * (1 - treated), treated)
    baseline = px[-1] * pq[-1] / 2
    return float((np.trapezoid(q, x) - baseline) / (np.trapezoid(pq, px) - baseline))


def uplift_at_k(y: np.ndarray, uplift: np.ndarray, treated: np.ndarray, k: float = 0.3) -> float:
    """Response rate of treated minus control among the top `k` share by predicted uplift."""
    y, treated = np.asarray(y, float), np.asarray(treated, bool)
    top = np.argsort(-np.asarray(uplift, float), kind="mergesort")[: int(np.ceil(len(y) * k))]
    return float(y[top][treated[top]].mean() - y[top][~treated[top]].mean())


def policy_value(
    value: np.ndarray, arm: np.ndarray, chosen: np.ndarray, propensity: np.ndarray
) -> tuple[float, float]:
    """Inverse-propensity estimate of the mean value per customer had everyone received the
    `chosen` arm, from randomised data (`arm` got, `propensity` its probability), with the
    standard error of that mean."""
    terms = np.asarray(value, float) * (np.asarray(arm) == np.asarray(chosen)) / propensity
    return float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(len(terms)))
