"""The input contract: good shops read in either format, bad ones fail with one clear line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from sendwise.cli.main import main
from sendwise.features.contract import ContractError
from sendwise.features.shop import read_shop

ORDERS = """order_id,customer_id,product_id,ordered_at,quantity,unit_price,note
o1,c1,p1,2024-01-05 10:00:00,2,3.50,gift
o1,c1,p2,2024-01-05T10:00:00Z,1,2,
o2,c2,p1,2024-02-01,1,3.50,
o3,c1,p1,2024-03-01 09:30:00+01:00,-1,3.50,return
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def broken_orders(old: str, new: str, line: int = 2) -> str:
    """ORDERS with one substitution on one line (line 1 is the header)."""
    lines = ORDERS.splitlines()
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    return "\n".join(lines) + "\n"


def test_csv_shop_reads_typed_with_defaults_and_extra_columns(tmp_path):
    write(tmp_path, "orders.csv", ORDERS)
    shop = read_shop(tmp_path)
    orders = shop.orders.collect()
    assert orders.schema["ordered_at"] == pl.Datetime("us", "UTC")
    assert orders["quantity"].to_list() == [2, 1, 1, -1]
    assert orders["discount"].to_list() == [0.0] * 4  # absent optional column: its default
    assert orders["note"][0] == "gift"  # unknown columns are kept
    # "+01:00" is converted to UTC; a bare date is midnight UTC
    assert orders["ordered_at"][3] == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    assert orders["ordered_at"][2] == datetime(2024, 2, 1, tzinfo=UTC)
    assert shop.present == {"orders"}
    assert shop.events.collect().is_empty()  # optional tables may be absent


def test_parquet_and_csv_shops_read_the_same(tmp_path):
    write(tmp_path / "csv", "orders.csv", ORDERS)
    from_csv = read_shop(tmp_path / "csv").orders.collect()
    (tmp_path / "pq").mkdir()
    from_csv.write_parquet(tmp_path / "pq" / "orders.parquet")
    assert read_shop(tmp_path / "pq").orders.collect().equals(from_csv)


@pytest.mark.parametrize(
    ("table", "text", "expected"),
    [
        (
            "orders.csv",
            ORDERS.replace("unit_price", "price"),
            "missing required column 'unit_price'",
        ),
        (
            "orders.csv",
            broken_orders(",2,3.50", ",two,3.50"),
            "column 'quantity' is not a valid integer in 1 row; first rows: 1 (two)",
        ),
        (
            "orders.csv",
            broken_orders("2024-02-01", "01/02/2024x", 4),
            "column 'ordered_at' is not a valid timestamp in 1 row; first rows: 3 (01/02/2024x)",
        ),
        (
            "orders.csv",
            broken_orders(",3.50,gift", ",-3.50,gift"),
            "column 'unit_price' is below 0 in 1 row; first rows: 1 (-3.50)",
        ),
        (
            "orders.csv",
            broken_orders("o2,c2", "o2,", 4),
            "column 'customer_id' is empty in 1 row; first rows: 3",
        ),
        (
            "orders.csv",
            ORDERS + "o2,c2,p1,2024-02-01,1,3.50,again\n",
            "has exact duplicate lines in 2 rows; first rows: 3 (o2|c2|p1|2024-02-01|1|3.50), 5",
        ),
        ("orders.csv", "", "file is empty"),
        ("orders.csv", ORDERS.splitlines()[0] + "\n", "has no rows"),
    ],
)
def test_bad_orders_fail_naming_file_column_and_rows(tmp_path, table, text, expected):
    path = write(tmp_path, table, text)
    with pytest.raises(ContractError) as caught:
        read_shop(tmp_path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_unknown_event_type_and_bad_timezone_are_refused(tmp_path):
    write(tmp_path, "orders.csv", ORDERS)
    events = write(
        tmp_path,
        "events.csv",
        "customer_id,occurred_at,event_type\nc1,2024-01-01,view\nc1,2024-01-02,wishlist\n",
    )
    with pytest.raises(
        ContractError,
        match=r"events.csv: column 'event_type' has unknown values .* first rows: 2 \(wishlist\)",
    ):
        read_shop(tmp_path)
    events.unlink()
    write(tmp_path, "customers.csv", "customer_id,timezone\nc1,Europe/London\nc2,Mars/Olympus\n")
    with pytest.raises(
        ContractError,
        match=r"customers.csv: column 'timezone' is not an IANA time zone .* 2 \(Mars/Olympus\)",
    ):
        read_shop(tmp_path)


def test_duplicate_customer_ids_are_refused(tmp_path):
    write(tmp_path, "orders.csv", ORDERS)
    write(tmp_path, "customers.csv", "customer_id,country\nc1,GB\nc2,FR\nc1,DE\n")
    with pytest.raises(
        ContractError,
        match=r"column 'customer_id' repeats a value that must be unique in 2 rows; first rows: 1 \(c1\), 3 \(c1\)",
    ):
        read_shop(tmp_path)


def test_directory_without_orders_is_refused(tmp_path):
    write(tmp_path, "customers.csv", "customer_id\nc1\n")
    with pytest.raises(ContractError, match="no orders table"):
        read_shop(tmp_path)


def test_a_table_given_twice_is_refused(tmp_path):
    write(tmp_path, "orders.csv", ORDERS)
    read_shop(tmp_path).orders.collect().write_parquet(tmp_path / "orders.parquet")
    with pytest.raises(ContractError, match="given twice"):
        read_shop(tmp_path)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"orders.csv": ORDERS.replace("quantity", "qty")}, "missing required column 'quantity'"),
        (
            {"orders.csv": broken_orders(",2,3.50", ",2.5,3.50")},
            "'quantity' is not a valid integer",
        ),
        (
            {"orders.csv": broken_orders("2024-01-05 10:00:00", "yesterday")},
            "'ordered_at' is not a valid timestamp",
        ),
        (
            {
                "orders.csv": ORDERS,
                "events.csv": "customer_id,occurred_at,event_type\nc1,2024-01-01,like\n",
            },
            "'event_type' has unknown values",
        ),
        ({"orders.csv": ""}, "file is empty"),
        ({"customers.csv": "customer_id\nc1\n"}, "no orders table"),
    ],
)
def test_cli_reports_bad_input_in_one_line_and_fails(tmp_path, capsys, files, expected):
    shop = tmp_path / "shop"
    for name, text in files.items():
        write(shop, name, text)
    code = main(
        [
            "features",
            "build",
            "--shop",
            str(shop),
            "--as-of",
            "2024-06-01",
            "--out",
            str(tmp_path / "f.parquet"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "f.parquet").exists()  # nothing half-written


def test_cli_rejects_a_bad_date_in_one_line(tmp_path, capsys):
    write(tmp_path / "shop", "orders.csv", ORDERS)
    code = main(
        [
            "features",
            "build",
            "--shop",
            str(tmp_path / "shop"),
            "--as-of",
            "09/09/2011",
            "--out",
            str(tmp_path / "f.parquet"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "is not YYYY-MM-DD" in err and err.count("\n") == 1
