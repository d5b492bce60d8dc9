"""Champions for serving and scoring tests: fitted quickly and made `champion` in the real
registry. Backtests and promotion rules have their own tests (test_training)."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from sendwise.features.shop import Shop
from sendwise.store import registry
from sendwise.training.backtest import fit_products, fit_propensity, fit_sendtime

QUICK_SENDTIME = {"prior_strength": 3.0, "kernel_width": 1.0, "half_life_days": 90.0}


def register_champion(task: str, shop: Shop, as_of: datetime, **params) -> str:
    """Fit one model at `as_of` (horizon 30 days) and make it champion; its version."""
    fit = {
        "propensity": lambda: fit_propensity(shop, as_of, 30, **params)[0],
        "crosssell": lambda: fit_products(shop, as_of, 30, **params),
        "sendtime": lambda: fit_sendtime(shop, as_of, 30, **{**QUICK_SENDTIME, **params}),
    }[task]
    model = fit()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        found = registry.log_and_register(
            shop.name, task, Path(tmp) / "model", model.get_params(), {}, {"task": task}, {}
        )
    registry.set_champion(shop.name, task, found.version, "promote")
    return str(found.version)
