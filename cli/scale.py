"""Commands and options for shops beyond one machine: `sendwise shop partition`, and the
`--engine` / `--scheduler` options of the jobs that run bucket by bucket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sendwise.features.engine import SCHEDULER_VARIABLE, Engine
from sendwise.features.engine import Progress as Tick

console = Console(stderr=True)
out = Console(soft_wrap=True)

EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="local: bucket by bucket in this process; dask: one task per bucket on Dask "
        "(a bucketed shop: `sendwise shop partition`).",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help=f"Dask scheduler address (default {SCHEDULER_VARIABLE}, else a local cluster).",
    ),
]

shop_app = typer.Typer(
    help="Shop directories: split one for bucket-by-bucket jobs.", no_args_is_help=True
)


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Tick]:
    """A rich progress bar on stderr; yields the function that advances it."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no stray lines in a pipe or a log
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.advance(task, done)


@shop_app.command("partition")
def partition_command(
    shop: Annotated[Path, typer.Option("--shop", help="Shop directory to split.")],
    buckets: Annotated[int, typer.Option("--buckets", help="Number of customer-hash buckets.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bucketed shop directory to write.")],
) -> None:
    """Split every customer-keyed table into buckets by a stable hash of customer_id
    (FNV-1a 64 mod N); the product catalogue is written once, beside the buckets."""
    from sendwise.features.buckets import check_buckets, partition_shop
    from sendwise.features.contract import TABLES

    started = time.perf_counter()
    check_buckets(buckets)
    with progress_bar(f"Partitioning {shop} into {buckets:,} buckets", len(TABLES)) as tick:
        rows = partition_shop(shop, buckets, out_dir, tick)
    tables = ", ".join(f"{name} {count:,}" for name, count in rows.items())
    out.print(
        f"Wrote {out_dir}: {buckets:,} buckets in {time.perf_counter() - started:.1f}s: {tables}"
    )
