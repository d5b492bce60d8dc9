"""Backtest every model beside its baselines on Online Retail and on a simulated shop.

    python experiments/backtest_models.py

Online Retail: the DESIGN.md protocol (as of 2011-09-09, horizon 90 days, customers with a
purchase on or before that day). Simulated: 20,000 customers, seed 0, as of 2026-05-31,
horizon 30 days. Writes experiments/results/models.json and models.md. Each figure is
reproduced by `sendwise backtest --shop DIR --as-of DATE --horizon-days H --json FILE`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sendwise.features import online_retail  # noqa: E402
from sendwise.features.clock import parse_as_of  # noqa: E402
from sendwise.features.shop import read_shop, write_shop  # noqa: E402
from sendwise.features.simulate import SimulationSettings, simulate  # noqa: E402
from sendwise.training.backtest import backtest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail_2010_2011.csv.gz"
RESULTS = ROOT / "experiments" / "results"
DESIGN_BARS = {  # best baseline figures of DESIGN.md, measured by the CEO on Online Retail
    "propensity": {"roc_auc": 0.729, "pr_auc": 0.800},
    "products_all": {"ndcg@10": 0.346, "recall@10": 0.127},
    "products_new": {"ndcg@10": 0.101, "recall@10": 0.046},
    "sendtime": {"hit@1": 0.178, "hit@3": 0.460},
}


def run(shop_dir: Path, as_of: str, horizon: int) -> dict:
    started = time.perf_counter()
    sections = backtest(read_shop(shop_dir), parse_as_of(as_of), horizon)
    return {
        "as_of": as_of,
        "horizon_days": horizon,
        "seconds": round(time.perf_counter() - started, 1),
        "sections": {s.task: s.rows for s in sections},
    }


def table(result: dict, bars: dict | None) -> list[str]:
    lines = []
    for task, rows in result["sections"].items():
        metrics = [k for k in next(iter(rows.values())) if k != "customers"]
        customers = next(iter(rows.values())).get("customers")
        lines += [f"### {task}" + (f" ({customers:,} customers judged)" if customers else ""), ""]
        lines += ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for name, row in rows.items():
            cells = [
                f"**{row[m]:.4f}**" if name == "sendwise" else f"{row[m]:.4f}" for m in metrics
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if bars and task in bars:
            cells = [f"{bars[task][m]:.3f}" if m in bars[task] else "" for m in metrics]
            lines.append("| DESIGN.md best baseline | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results = {
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "commit": commit,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if ONLINE_RETAIL.is_file():
            tables, _ = online_retail.convert(ONLINE_RETAIL)
            write_shop(tables, Path(tmp) / "online_retail")
            results["online_retail"] = run(Path(tmp) / "online_retail", "2011-09-09", 90)
        sim, _ = simulate(SimulationSettings(customers=20_000, seed=0))
        write_shop(sim, Path(tmp) / "simulated")
        results["simulated"] = run(Path(tmp) / "simulated", "2026-05-31", 30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "models.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Models beside their baselines",
        "",
        f"Machine: {results['machine']}; commit {commit}. Command: `python experiments/backtest_models.py`.",
        "Every model is fitted only on what was known at the cut-off (training cut-offs every 14 days",
        "whose outcome windows end by it; send-time settings chosen on those windows) and judged on",
        "the horizon after it. Baselines are computed here on the same customers and windows.",
        "",
    ]
    if "online_retail" in results:
        r = results["online_retail"]
        lines += [
            f"## Online Retail, as of {r['as_of']}, horizon {r['horizon_days']} days ({r['seconds']} s)",
            "",
        ]
        lines += table(r, DESIGN_BARS)
    r = results["simulated"]
    lines += [
        f"## Simulated shop (20,000 customers, seed 0), as of {r['as_of']}, horizon {r['horizon_days']} days ({r['seconds']} s)",
        "",
    ]
    lines += table(r, None)
    (RESULTS / "models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
