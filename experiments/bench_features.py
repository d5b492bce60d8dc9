"""Benchmark: Online Retail feature build, and simulate + feature build as the shop grows.

Each step runs as the real CLI in a child process, so the wall time includes start-up and the
peak memory is the child's own maximum resident set size.

    python experiments/bench_features.py [--sizes 10000 100000 1000000] [--repeats 5]

Writes experiments/results/features.json and features.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

from child import run_cli

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail_2010_2011.csv.gz"
RESULTS = ROOT / "experiments" / "results"


def machine() -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return {
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit.stdout.strip(),
    }


def _plain(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_results(name: str, lines: list[str], result: dict | None = None) -> None:
    """`results/NAME.md` (and `NAME.json` when given the figures), and the table on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if result is not None:
        figures = json.dumps(result, indent=2, default=_plain)  # numpy scalars as numbers
        (RESULTS / f"{name}.json").write_text(figures + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bench_online_retail(work: Path, repeats: int) -> dict | None:
    if not ONLINE_RETAIL.is_file():
        print(f"skipping Online Retail: {ONLINE_RETAIL} not found")
        return None
    shop = work / "online_retail"
    imported = run_cli(["import", "online-retail", str(ONLINE_RETAIL), "--out", str(shop)])
    builds = [
        run_cli(
            [
                "features",
                "build",
                "--shop",
                str(shop),
                "--as-of",
                "2011-09-09",
                "--out",
                str(work / "or.parquet"),
            ]
        )
        for _ in range(repeats)
    ]
    return {
        "import": {k: v for k, v in imported.items() if k != "stdout"},
        "features_build_wall_s": [b["wall_s"] for b in builds],
        "features_build_median_s": statistics.median(b["wall_s"] for b in builds),
        "features_build_peak_rss_mib": max(b["peak_rss_mib"] for b in builds),
        "last_output": builds[-1]["stdout"],
    }


def bench_scale(work: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        shop = work / f"sim_{n}"
        simulated = run_cli(["simulate", "--customers", str(n), "--seed", "0", "--out", str(shop)])
        built = run_cli(
            [
                "features",
                "build",
                "--shop",
                str(shop),
                "--as-of",
                "2026-05-31",
                "--out",
                str(work / f"sim_{n}.parquet"),
            ]
        )
        disk = sum(f.stat().st_size for f in shop.rglob("*.parquet"))
        rows.append(
            {
                "customers": n,
                "simulate_wall_s": simulated["wall_s"],
                "simulate_peak_rss_mib": simulated["peak_rss_mib"],
                "features_wall_s": built["wall_s"],
                "features_peak_rss_mib": built["peak_rss_mib"],
                "shop_mib_on_disk": round(disk / 2**20),
                "simulate_output": simulated["stdout"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Feature build benchmarks",
        "",
        f"Machine: {m['cpu_count']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}; commit {m['commit']}.",
        "Command: `python experiments/bench_features.py` (each step is the real CLI in a child process; wall time includes start-up).",
        "",
    ]
    online = result.get("online_retail")
    if online:
        lines += [
            "## Online Retail (541,909 lines; as of 2011-09-09)",
            "",
            "| step | wall (s) | peak RSS (MiB) |",
            "|---|---:|---:|",
            f"| `sendwise import online-retail` | {online['import']['wall_s']} | {online['import']['peak_rss_mib']} |",
            f"| `sendwise features build` (median of {len(online['features_build_wall_s'])}; target < 2 s) | {online['features_build_median_s']} | {online['features_build_peak_rss_mib']} |",
            "",
            f"Output: {online['last_output']}",
            "",
        ]
    lines += [
        "## Simulated shops: simulate, then build features as of 2026-05-31",
        "",
        "| customers | simulate (s) | simulate peak (MiB) | features (s) | features peak (MiB) | shop on disk (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["scale"]:
        lines.append(
            f"| {r['customers']:,} | {r['simulate_wall_s']} | {r['simulate_peak_rss_mib']:,} | {r['features_wall_s']} | {r['features_peak_rss_mib']:,} | {r['shop_mib_on_disk']} |"
        )
    lines += ["", "Rows written per size:", ""]
    lines += [f"- {r['customers']:,}: {r['simulate_output']}" for r in result["scale"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendwise-bench-") as tmp:
        work = Path(tmp)
        result = {"machine": machine(), "online_retail": bench_online_retail(work, args.repeats)}
        print(result["online_retail"], flush=True)
        result["scale"] = bench_scale(work, args.sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "features.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
