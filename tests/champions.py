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
# 20 boosting rounds, not 200: the tests that serve and score these champions check where
# the ranker's lists go, not how good they are (that: test_quality_online_retail)
QUICK_PRODUCTS = {"n_estimators": 20}

# Fitted models by (task, shop files, cut-off, settings). Several modules register the same
# champions of the session's simulated shop, each in a registry of its own: the fit (seeded,
# so a refit is the same model) is done once a session, the registering every time.
_FITTED: dict[tuple, object] = {}


def _files(directory: Path) -> tuple:
    """What a fit read: every file of the shop with its size and modification time."""
    return tuple(
        sorted(
            (str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*")
            if p.is_file()
        )
    )


def fitted(task: str, shop: Shop, as_of: datetime, **params):
    """One model of a shop as read from its directory, fitted at `as_of` (horizon 30 days)
    with the quick settings above unless `params` say otherwise; the same object for the
    same inputs."""
    params = {**{"sendtime": QUICK_SENDTIME, "crosssell": QUICK_PRODUCTS}.get(task, {}), **params}
    fit = {
        "propensity": lambda: fit_propensity(shop, as_of, 30, **params)[0],
        "crosssell": lambda: fit_products(shop, as_of, 30, **params),
        "sendtime": lambda: fit_sendtime(shop, as_of, 30, **params),
    }[task]
    if shop.directory is None:
        return fit()
    directory = Path(shop.directory).resolve()
    key = (task, str(directory), _files(directory), as_of, tuple(sorted(params.items())))
    if key not in _FITTED:
        _FITTED[key] = fit()
    return _FITTED[key]


def register_champion(task: str, shop: Shop, as_of: datetime, **params) -> str:
    """Fit one model at `as_of` (horizon 30 days) and make it champion; its version."""
    version = register(task, shop, as_of, **params)
    registry.set_champion(shop.name, task, version, "promote")
    return version


def register(task: str, shop: Shop, as_of: datetime, **params) -> str:
    """Fit one model at `as_of` (horizon 30 days) and register it, not as champion; its
    version."""
    model = fitted(task, shop, as_of, **params)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        found = registry.log_and_register(
            shop.name, task, Path(tmp) / "model", model.get_params(), {}, {"task": task}, {}
        )
    return str(found.version)
