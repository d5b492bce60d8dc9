"""Adapter: the UCI Online Retail layout (CSV, gzipped CSV or the original .xlsx) to a shop.

Cancellations (`C...` invoices) become negative quantities. Lines without a customer, with a
non-positive price, or non-positive quantities outside a cancellation are dropped and counted.
InvoiceDate is the shop's local time (Europe/London) and is converted to UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .contract import Column, ContractError, Kind, Table, check_rows

SHOP_TIMEZONE = "Europe/London"

SOURCE_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
SOURCE = Table(
    "online retail",
    (
        Column("InvoiceNo", Kind.ID, required=True),
        Column("StockCode", Kind.ID, required=True),
        Column("Quantity", Kind.INT, required=True),
        Column("UnitPrice", Kind.FLOAT, required=True),
        Column("InvoiceDate", Kind.TEXT, required=True),
    ),
)
# the published CSV writes ISO dates; copies saved from the original workbook write US ones
LOCAL_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")

# A default IANA zone per country as the dataset spells it.
COUNTRY_TIMEZONES = {
    "United Kingdom": "Europe/London",
    "EIRE": "Europe/Dublin",
    "Channel Islands": "Europe/Jersey",
    "France": "Europe/Paris",
    "Germany": "Europe/Berlin",
    "Spain": "Europe/Madrid",
    "Portugal": "Europe/Lisbon",
    "Netherlands": "Europe/Amsterdam",
    "Belgium": "Europe/Brussels",
    "European Community": "Europe/Brussels",
    "Switzerland": "Europe/Zurich",
    "Austria": "Europe/Vienna",
    "Italy": "Europe/Rome",
    "Malta": "Europe/Malta",
    "Greece": "Europe/Athens",
    "Cyprus": "Asia/Nicosia",
    "Norway": "Europe/Oslo",
    "Sweden": "Europe/Stockholm",
    "Denmark": "Europe/Copenhagen",
    "Finland": "Europe/Helsinki",
    "Iceland": "Atlantic/Reykjavik",
    "Poland": "Europe/Warsaw",
    "Czech Republic": "Europe/Prague",
    "Lithuania": "Europe/Vilnius",
    "Israel": "Asia/Jerusalem",
    "Lebanon": "Asia/Beirut",
    "Bahrain": "Asia/Bahrain",
    "Saudi Arabia": "Asia/Riyadh",
    "United Arab Emirates": "Asia/Dubai",
    "RSA": "Africa/Johannesburg",
    "USA": "America/New_York",
    "Canada": "America/Toronto",
    "Brazil": "America/Sao_Paulo",
    "Japan": "Asia/Tokyo",
    "Singapore": "Asia/Singapore",
    "Hong Kong": "Asia/Hong_Kong",
    "Australia": "Australia/Sydney",
}


@dataclass(frozen=True)
class ImportSummary:
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]
    merged_duplicates: int
    customers: int
    products: int
    orders: int
    cancellations: int

    def lines(self) -> list[str]:
        out = [
            f"rows read      {self.rows_read:>10,}",
            f"rows kept      {self.rows_kept:>10,}  ({self.cancellations:,} cancellation lines)",
        ]
        out += [f"dropped        {n:>10,}  {why}" for why, n in self.dropped.items() if n]
        if self.merged_duplicates:
            out.append(f"merged         {self.merged_duplicates:>10,}  exact duplicate lines")
        out.append(
            f"shop           {self.customers:>10,} customers, {self.products:,} products, "
            f"{self.orders:,} orders"
        )
        return out


def read_source(path: Path) -> pl.DataFrame:
    """The file as text columns, whatever its format."""
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".xlsx", ".xls")):
        frame = pl.read_excel(path, engine="calamine")
        if "InvoiceDate" in frame.columns and frame.schema["InvoiceDate"] != pl.String:
            frame = frame.with_columns(pl.col("InvoiceDate").dt.strftime("%Y-%m-%d %H:%M:%S"))
        if "CustomerID" in frame.columns:
            frame = frame.with_columns(pl.col("CustomerID").cast(pl.String))
        frame = frame.with_columns(pl.all().cast(pl.String))
    elif name.endswith((".csv", ".csv.gz")):
        if path.stat().st_size == 0:
            raise ContractError(f"{path}: file is empty")
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    else:
        raise ContractError(f"{path}: expected a .csv, .csv.gz or .xlsx file")
    missing = [c for c in SOURCE_COLUMNS if c not in frame.columns]
    if missing:
        raise ContractError(
            f"{path}: missing column {', '.join(repr(m) for m in missing)} of the Online Retail "
            f"layout (columns found: {', '.join(frame.columns) or 'none'})"
        )
    return frame


def _typed(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    check_rows(SOURCE, frame.lazy(), str(path))
    text = pl.col("InvoiceDate").str.strip_chars()
    local = pl.coalesce(
        [text.str.to_datetime(f, strict=False, time_unit="us") for f in LOCAL_TIME_FORMATS]
    )
    typed = frame.select(
        invoice=pl.col("InvoiceNo").str.strip_chars(),
        product_id=pl.col("StockCode").str.strip_chars(),
        description=pl.col("Description").str.strip_chars(),
        quantity=pl.col("Quantity").cast(pl.Float64).cast(pl.Int64),
        ordered_at=local.dt.replace_time_zone(
            SHOP_TIMEZONE, ambiguous="earliest", non_existent="null"
        ).dt.convert_time_zone("UTC"),
        unit_price=pl.col("UnitPrice").cast(pl.Float64),
        # CustomerID arrives as a float ("17850.0") in the published files
        customer_id=pl.col("CustomerID")
        .str.strip_chars()
        .cast(pl.Float64, strict=False)
        .cast(pl.Int64)
        .cast(pl.String),
        country=pl.col("Country").str.strip_chars(),
    )
    unparsed = typed.with_row_index(offset=1).filter(
        pl.col("ordered_at").is_null() & frame["InvoiceDate"].is_not_null()
    )
    if len(unparsed):
        rows = ", ".join(
            f"{r['index']} ({frame['InvoiceDate'][r['index'] - 1]})"
            for r in unparsed.head(3).iter_rows(named=True)
        )
        raise ContractError(
            f"{path}: column 'InvoiceDate' is not a valid timestamp in {len(unparsed)} rows; "
            f"first rows: {rows}"
        )
    return typed


def convert(path: str | Path) -> tuple[dict[str, pl.DataFrame], ImportSummary]:
    """The shop tables and the import summary for one Online Retail file."""
    path = Path(path)
    lines = _typed(read_source(path), path)
    cancelled = pl.col("invoice").str.starts_with("C")
    no_customer = pl.col("customer_id").is_null()
    bad_price = pl.col("unit_price") <= 0
    bad_quantity = (pl.col("quantity") <= 0) & ~cancelled
    drop_reasons = {
        "no customer id": no_customer,
        "price not positive": ~no_customer & bad_price,
        "quantity not positive outside a cancellation": ~no_customer & ~bad_price & bad_quantity,
    }
    counts = lines.select(**{why: expr.sum() for why, expr in drop_reasons.items()}).row(
        0, named=True
    )
    kept = lines.filter(~(no_customer | bad_price | bad_quantity)).with_columns(
        quantity=pl.when(cancelled).then(-pl.col("quantity").abs()).otherwise(pl.col("quantity"))
    )
    # A customer who only ever cancelled (the purchase predates the data) is not a customer here.
    buyers = kept.filter(pl.col("quantity") > 0).select("customer_id").unique()
    orphan = kept.join(buyers, on="customer_id", how="anti")
    counts["cancellation by a customer with no purchase in the file"] = len(orphan)
    kept = kept.join(buyers, on="customer_id", how="semi")

    key = ["invoice", "customer_id", "product_id", "ordered_at", "unit_price"]
    order_lines = kept.group_by(key, maintain_order=True).agg(
        pl.col("quantity").sum(),
        pl.len().alias("copies"),
        pl.col("description").first(),
        pl.col("country").first(),
    )
    merged = int((order_lines["copies"] - 1).sum())
    orders = order_lines.select(
        pl.col("invoice").alias("order_id"),
        "customer_id",
        "product_id",
        "ordered_at",
        "quantity",
        "unit_price",
        pl.lit(0.0).alias("discount"),
        pl.lit("GBP").alias("currency"),
    ).sort("ordered_at", "order_id", maintain_order=True)

    purchases = kept.filter(pl.col("quantity") > 0)
    customers = (
        purchases.group_by("customer_id")
        .agg(
            created_at=pl.col("ordered_at").min(),
            country=pl.col("country").mode().sort().first(),
        )
        .with_columns(
            timezone=pl.col("country").replace_strict(COUNTRY_TIMEZONES, default=None),
            email_opt_in=pl.lit(True),
        )
        .sort("customer_id")
    )
    products = (
        purchases.group_by("product_id")
        .agg(
            title=pl.col("description").drop_nulls().mode().sort().first(),
            price=pl.col("unit_price").median(),
        )
        .with_columns(
            # the dataset has no categories: the title's last word ("... T-LIGHT HOLDER") stands in
            category=pl.col("title")
            .str.extract(r"([A-Za-z][A-Za-z\-]*)\s*$", 1)
            .str.to_uppercase(),
            in_stock=pl.lit(True),
        )
        .sort("product_id")
    )
    summary = ImportSummary(
        rows_read=len(lines),
        rows_kept=len(kept),
        dropped=counts,
        merged_duplicates=merged,
        customers=len(customers),
        products=len(products),
        orders=orders["order_id"].n_unique(),
        cancellations=int((kept["quantity"] < 0).sum()),
    )
    return {"orders": orders, "customers": customers, "products": products}, summary
