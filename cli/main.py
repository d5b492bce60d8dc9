"""The `sendwise` command: one sub-command per step, one clear line on failure."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import click
import polars as pl
import typer
from rich.console import Console

from sendwise.features.clock import parse_as_of
from sendwise.features.contract import SendwiseError
from sendwise.features.shop import read_shop, write_shop
from sendwise.store.files import write_frame
from sendwise.store.settings import home

# Each command imports what only it needs, so that start-up stays short.

app = typer.Typer(
    help="sendwise: which offer, which products and when to send, for every email recipient.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Turn published data into a shop directory.", no_args_is_help=True)
features_app = typer.Typer(help="Point-in-time customer features.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(features_app, name="features")

console = Console(stderr=True)
out = Console()

ShopDir = Annotated[Path, typer.Option("--shop", help="Shop directory (Parquet or CSV tables).")]
AsOf = Annotated[
    str, typer.Option("--as-of", help="Cut-off: YYYY-MM-DD (end of day, UTC) or ISO timestamp.")
]


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@app.command("simulate")
def simulate_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Shop directory to write.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same shop.")] = 0,
    end: Annotated[str, typer.Option(help="Last day of the shop's history.")] = "2026-06-30",
) -> None:
    """Write a synthetic shop (all six tables) with its ground truth in ground_truth/."""
    from sendwise.features.simulate import SimulationSettings, simulate

    settings = SimulationSettings(customers=customers, seed=seed, end=parse_as_of(end))
    started = time.perf_counter()
    with console.status(f"Simulating {customers:,} customers..."):
        tables, truth = simulate(settings)
    with console.status(f"Writing {out_dir}..."):
        write_shop({**tables, "ground_truth/customers": truth}, out_dir)
    rows = ", ".join(f"{name} {len(frame):,}" for name, frame in tables.items())
    out.print(f"Wrote {out_dir} in {time.perf_counter() - started:.1f}s: {rows}")


@import_app.command("online-retail")
def import_online_retail(
    file: Annotated[Path, typer.Argument(help="UCI Online Retail .csv, .csv.gz or .xlsx.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Shop directory to write.")],
) -> None:
    """Import the UCI Online Retail data set; prints what was kept and dropped, and why."""
    from sendwise.features import online_retail

    with console.status(f"Reading {file}..."):
        tables, summary = online_retail.convert(file)
        write_shop(tables, out_dir)
    for line in summary.lines():
        out.print(line)
    out.print(f"Wrote {out_dir}")


@features_app.command("build")
def features_build(
    shop: ShopDir,
    as_of: AsOf,
    out_file: Annotated[Path, typer.Option("--out", help="Output .parquet or .csv file.")],
) -> None:
    """One row per customer known on the cut-off; nothing after it is read."""
    from sendwise.features import builders

    cutoff = parse_as_of(as_of)
    started = time.perf_counter()
    with console.status("Building features..."):
        frame = builders.customer_features(read_shop(shop), cutoff).collect()
        write_frame(frame, out_file)
    out.print(
        f"Wrote {out_file}: {len(frame):,} customers x {frame.width - 1} features as of "
        f"{cutoff:%Y-%m-%d %H:%M:%S} UTC in {time.perf_counter() - started:.2f}s"
    )


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=100, help="Customers in the demo shop.")] = 3_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Where to write (default: .sendwise/demo).")
    ] = None,
) -> None:
    """Simulate a shop, build point-in-time features and labels, and check the planted truth."""
    from sendwise.cli.demo import run_demo

    run_demo(workdir or home() / "demo", customers, out)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a failure is one line on stderr (a traceback only with --debug)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, prog_name="sendwise", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 1
    except (SendwiseError, pl.exceptions.PolarsError, OSError) as error:
        return _fail(error, argv)
    except Exception as error:  # noqa: BLE001 - the last line of defence for users
        return _fail(error, argv, unexpected=True)
    return 0


def _fail(error: Exception, argv: list[str], unexpected: bool = False) -> int:
    if "--debug" in argv:
        traceback.print_exc()
    message = " ".join(str(error).split()) or type(error).__name__
    if unexpected or not isinstance(error, SendwiseError):
        message = f"{type(error).__name__}: {message}"
    hint = "" if "--debug" in argv else " (--debug for details)" if unexpected else ""
    print(f"error: {message}{hint}", file=sys.stderr)
    return 1


def entry_point() -> None:
    sys.exit(main())
