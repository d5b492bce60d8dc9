"""The CLI as users run it: each verb end to end on real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import polars as pl
from typer.testing import CliRunner

from sendwise.cli import ALLOCATOR, POLARS_ALLOCATOR
from sendwise.cli.main import app
from sendwise.features.contract import TABLES
from sendwise.features.shop import read_shop

runner = CliRunner()

RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom
C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2010-12-01 09:41:00,2.55,17850.0,United Kingdom
536370,22728,ALARM CLOCK BAKELIKE PINK,24,2010-12-01 08:45:00,3.75,12583.0,France
536371,22728,ALARM CLOCK BAKELIKE PINK,1,2010-12-01 08:45:00,0.0,12583.0,France
"""


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_simulate_then_build_features_as_parquet_and_csv(tmp_path):
    shop = tmp_path / "shop"
    result = invoke("simulate", "--customers", "400", "--seed", "3", "--out", str(shop))
    assert "orders" in result.output
    assert (shop / "ground_truth" / "customers.parquet").is_file()
    assert read_shop(shop).present == set(TABLES)  # all six
    for name in ("f.parquet", "f.csv"):
        invoke(
            "features",
            "build",
            "--shop",
            str(shop),
            "--as-of",
            "2026-05-01",
            "--out",
            str(tmp_path / name),
        )
    parquet = pl.read_parquet(tmp_path / "f.parquet")
    csv = pl.read_csv(tmp_path / "f.csv")
    assert len(parquet) == len(csv) > 300
    assert parquet["customer_id"].is_unique().all()


def test_import_online_retail_prints_what_was_kept_and_dropped(tmp_path):
    source = tmp_path / "retail.csv"
    source.write_text(RETAIL)
    result = invoke("import", "online-retail", str(source), "--out", str(tmp_path / "shop"))
    assert "rows read               6" in result.output
    assert "1  no customer id" in result.output
    assert "1  price not positive" in result.output
    shop = read_shop(tmp_path / "shop")
    orders = shop.orders.collect()
    assert orders.filter(pl.col("order_id") == "C536379")["quantity"].to_list() == [-1]
    customers = shop.customers.collect().sort("customer_id")
    assert customers["customer_id"].to_list() == ["12583", "17850"]
    assert customers["timezone"].to_list() == ["Europe/Paris", "Europe/London"]
    products = shop.products.collect().sort("product_id")
    assert products.filter(pl.col("product_id") == "85123A")["category"].item() == "HOLDER"


def test_demo_runs_end_to_end_logs_its_decisions_and_reads_in_80_columns(mlflow_home, monkeypatch):
    from rich.console import Console

    from sendwise.cli import main
    from sendwise.store.decisions import DecisionLog

    # the CLI's own console, 80 columns wide, printing into the runner's stdout (not a terminal)
    monkeypatch.setattr(main, "out", Console(width=80, soft_wrap=True))
    workdir = mlflow_home / "demo"
    output = invoke("demo", "--customers", "500", "--workdir", str(workdir)).output
    assert "Planted truth" in output
    assert (workdir / "features.parquet").is_file() and (workdir / "labels.parquet").is_file()
    # a piped run says each step as it starts, with the time since the start
    steps = re.findall(r"^\[ *\d+\.\ds\] (\w+)", output, re.MULTILINE)
    assert steps[0] == "Simulating" and steps.count("Training") == 3 and "Scoring" in steps
    # scored through export_decisions: the file and the decision log hold the same batch
    decisions = pl.read_parquet(workdir / "decisions.parquet")
    logged = DecisionLog().read(campaign="demo")
    assert logged["decision_id"].to_list() == decisions["decision_id"].to_list()
    assert "Decision log" in output and "decisions.db" in output
    # the sample: the first decision of each segment, each on one uncut line of 80 columns
    sample = decisions.group_by("segment", maintain_order=True).head(1).head(6)
    lines = output.splitlines()
    for customer, segment, send_at in sample.select("customer_id", "segment", "send_at").rows():
        line = next(line for line in lines if line.startswith(customer))
        assert len(line) <= 80 and segment in line
        assert (f"{send_at:%b %d %H:%M}" if send_at else "not sent") in line
    assert "…" not in output
    # it ends with what its own campaign earned, measured against the holdouts
    assert (workdir / "campaign_report.html").is_file() and "Campaign report" in output
    assert "Mailed (" in output and "against the global holdout" in output


def test_backtest_writes_json_beside_the_table(simulated, tmp_path):
    import json

    out = tmp_path / "bt.json"
    result = invoke(
        "backtest",
        "--shop",
        str(simulated[0]),
        "--as-of",
        "2026-05-31",
        "--horizon-days",
        "30",
        "--task",
        "sendtime",
        "--json",
        str(out),
    )
    assert "shop_best_hours" in result.output
    rows = json.loads(out.read_text())["sections"]["sendtime"]
    assert rows["sendwise"]["hit@3"] > rows["shop_best_hours"]["hit@3"]


def test_promote_without_a_challenger_says_so_and_fails(tmp_path, monkeypatch, capsys, new_store):
    from sendwise.cli.main import main

    new_store(tmp_path)  # an empty MLflow store at tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path))
    assert main(["promote", "propensity"]) == 1
    assert "has no challenger" in capsys.readouterr().out


def test_score_without_champions_is_one_clear_line(
    simulated, tmp_path, monkeypatch, capsys, new_store
):
    from sendwise.cli.main import main

    new_store(tmp_path)  # an empty MLflow store at tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path))
    code = main(
        [
            "score",
            "--shop",
            str(simulated[0]),
            "--as-of",
            "2026-05-31",
            "--out",
            str(tmp_path / "d.parquet"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no champion for sendwise-propensity" in err and err.count("\n") == 1


def test_the_command_keeps_freed_memory_longer_unless_told_otherwise():
    """Polars reads its allocator's settings when first imported: the command sets them
    before, and a user's own setting wins."""
    assert allocator_setting(None).endswith("," + ALLOCATOR)
    # left by a parent that imported Polars: nobody's choice
    assert allocator_setting(POLARS_ALLOCATOR).endswith("," + ALLOCATOR)
    assert allocator_setting("dirty_decay_ms:0").endswith(",dirty_decay_ms:0")


def allocator_setting(inherited: str | None) -> str:
    """`_RJEM_MALLOC_CONF` as a new process importing the command leaves it."""
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    if inherited is not None:
        env["_RJEM_MALLOC_CONF"] = inherited
    show = "import os, sendwise.cli.main; print(os.environ['_RJEM_MALLOC_CONF'])"
    child = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    return child.stdout.strip()
