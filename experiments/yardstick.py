"""The yardstick: a fixed reference job timed on the same machine in the same run as a
benchmark, so that its figures can be given as multiples of it and compared across machines
(machines of one kind differ by 2x, and a shared one from minute to minute).

The job reads every table of a shop (plain or bucketed) and runs one Polars group-by per
customer over each customer-keyed table, aggregating every column (so every column is read).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import polars as pl

from sendwise.features.shop import read_shop

TIMES = 3  # runs per measurement; the median is the yardstick


def reference_job(shop: Path) -> float:
    """Seconds to read the shop's tables and group each by customer, once."""
    started = time.perf_counter()
    tables = read_shop(shop, validate=False)
    jobs = [
        tables.table(name).group_by("customer_id").agg(pl.len(), pl.all().max())
        for name in sorted(tables.present)
        if "customer_id" in tables.table(name).collect_schema()
    ]
    jobs.append(tables.products.select(pl.all().max()))
    pl.collect_all(jobs)
    return time.perf_counter() - started


def yardstick(shop: Path, times: int = TIMES) -> dict:
    """The reference job's median seconds on `shop` over `times` runs, and every run."""
    runs = [round(reference_job(shop), 3) for _ in range(times)]
    return {"median_s": statistics.median(runs), "runs_s": runs}


def multiple(seconds: float, unit: dict) -> float:
    """`seconds` in yardsticks."""
    return round(seconds / unit["median_s"], 1)
