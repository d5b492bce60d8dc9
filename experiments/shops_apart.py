"""Two shops and an experiment file in one MLflow store: does each shop's `score` stay the same
while the other is trained and promoted, and when a Hillstrom offer model is promoted?

    python experiments/shops_apart.py [--work DIR]

Online Retail (as of 2011-09-09, horizon 90) and a 3,000-customer simulated shop (as of
2026-05-31, horizon 30), each through the real CLI. Writes experiments/results/shops_apart.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl
from bench_features import machine, write_results
from child import run_cli, work_env

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HILLSTROM = ["--arm-col", "segment", "--control", "No E-Mail", "--outcome", "visit",
             "--exclude", "conversion", "--revenue", "spend"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path)
    work = parser.parse_args().work or Path(tempfile.mkdtemp(prefix="shops-apart-"))
    env = work_env(work)
    retail, sim = work / "online_retail", work / "sim"
    shops = {
        "online_retail": (retail, "2011-09-09", "90"),
        "sim": (sim, "2026-05-31", "30"),
    }
    run_cli(["import", "online-retail", str(DATA / "online_retail" / "online_retail_2010_2011.csv.gz"), "--out", str(retail)], env)  # fmt: skip
    run_cli(["simulate", "--customers", "3000", "--seed", "4", "--out", str(sim)], env)

    def train(name: str) -> None:
        shop, as_of, horizon = shops[name]
        run_cli(["train", "all", "--shop", str(shop), "--as-of", as_of, "--horizon-days", horizon], env)  # fmt: skip
        run_cli(["promote", "all", "--shop", str(shop)], env)

    def score(name: str, tag: str) -> pl.DataFrame:
        shop, as_of, _ = shops[name]
        out = work / f"{name}-{tag}.parquet"
        run_cli(["score", "--shop", str(shop), "--as-of", as_of, "--out", str(out)], env)
        return pl.read_parquet(out).drop("decision_id")

    train("online_retail")
    before = {"online_retail": score("online_retail", "before")}
    train("sim")
    before["sim"] = score("sim", "before")
    after_other = {"online_retail": score("online_retail", "after-sim")}
    hillstrom = str(DATA / "hillstrom" / "hillstrom.csv.gz")
    run_cli(["train", "offer", "--experiment", hillstrom, *HILLSTROM], env)
    run_cli(["promote", "offer"], env)
    after_offer = {name: score(name, "after-hillstrom") for name in shops}
    rows = [
        ("online_retail", "after the simulated shop's training and promotion",
         before["online_retail"].equals(after_other["online_retail"])),
        *((name, "after a Hillstrom offer model's promotion",
           before[name].equals(after_offer[name])) for name in shops),
    ]  # fmt: skip
    lines = [
        "# Shops apart in one store",
        "",
        f"`python experiments/shops_apart.py` at {machine()['commit']}: Online Retail and a "
        "3,000-customer simulated shop trained and promoted in one MLflow store through the "
        "CLI; each `score` (decision ids aside) compared before and after.",
        "",
        "| shop | scored again | identical |",
        "|---|---|---|",
        *(f"| {shop} | {when} | {'yes' if same else 'NO'} |" for shop, when, same in rows),
    ]
    write_results("shops_apart", lines)


if __name__ == "__main__":
    main()
