"""Does `train offer --from-log` recover the planted offer uplift? A simulated shop decides one
campaign with the real policy (a simulated snapshot, exploration 0.5, offer holdout 0.1), its
customers respond from the planted truth, and the offer model learns from the log; its
predicted uplift per arm is compared with the planted one (Spearman) on the same customers.

    python experiments/from_log.py [--customers 15000] [--seed 3]

Writes experiments/results/from_log.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_features import machine, write_results
from scipy.stats import spearmanr

from sendwise.features.experiment import logged_experiment
from sendwise.features.respond import append_responses, respond
from sendwise.features.shop import read_shop
from sendwise.policy.config import Settings
from sendwise.policy.simulated import logged_campaigns
from sendwise.store.decisions import DecisionLog
from sendwise.training.offers import fit_offer

DAYS = 14
SETTINGS = {
    "holdouts": {"global": 0.05, "campaign": 0.0, "products": 0.0, "sendtime": 0.0, "offer": 0.1},
    "offers": {"exploration": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=15_000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="from-log-") as tmp:
        work = Path(tmp)
        log = DecisionLog(f"sqlite:///{work / 'decisions.db'}")
        settings = Settings.model_validate(SETTINGS)
        shop, truth, logged = logged_campaigns(
            work / "shop", args.customers, args.seed, settings, log
        )
        log.close()
        append_responses(work / "shop", respond(shop, truth, logged, DAYS))
        table = logged_experiment(read_shop(work / "shop"), logged, DAYS)
        model = fit_offer(table)
    uplift = model.outcome.predict_uplift(table.features)
    planted = table.frame.select("customer_id").join(truth, on="customer_id", how="left")
    found = {}
    for k, arm in enumerate(model.arms[1:]):
        rho = spearmanr(uplift[:, k], planted[f"true_uplift_{arm}"].to_numpy())
        found[str(arm)] = {"spearman": round(float(rho.statistic), 4), "p": float(rho.pvalue)}
    result = {
        "machine": machine(),
        "customers": args.customers,
        "rows": table.frame.height,
        "arms": table.frame["arm"].value_counts().sort("arm").rows(),
        "spearman_with_planted_uplift": found,
    }
    lines = [
        "# Learning offers from the decision log",
        "",
        f"`python experiments/from_log.py --customers {args.customers} --seed {args.seed}` at "
        f"{result['machine']['commit']}: {table.frame.height:,} logged decisions whose offer the "
        f"policy drew; arms {dict(result['arms'])}.",
        "",
        "| arm | Spearman(predicted uplift, planted uplift) | p |",
        "|---|---:|---:|",
        *(f"| {a} | {v['spearman']:+.4f} | {v['p']:.3g} |" for a, v in found.items()),
    ]
    write_results("from_log", lines, result)


if __name__ == "__main__":
    main()
