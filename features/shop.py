"""A shop: one LazyFrame per contract table, read from a directory of Parquet or CSV files."""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.store.files import PartWriter, atomic_path

from .contract import (
    TABLES,
    ContractError,
    Table,
    check_columns,
    check_rows,
    dtype_of,
    typed_columns,
)

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv", ".csv.gz")
SHOP_FILE = "shop.toml"  # `name = "..."`: whose models these are in the registry
EXPERIMENTS = "experiments"  # the shop an experiment file's models belong to by default
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A bucketed shop (`sendwise shop partition`, layout in buckets.py) keeps each customer-keyed
# table in buckets/NNNNN/ and the tables below, shared by every customer, once at the top.
PARTITION = "partition"  # the shop.toml table that marks a bucketed shop
BUCKETS = "buckets"
BUCKET_DIGITS = 5
SHARED_TABLES = ("products",)


def check_shop_name(name: str, where: str = "--shop-name") -> str:
    """A shop name as the registry keys models by it: lower-case letters, digits, `_`, `-`."""
    if not NAME.fullmatch(name):
        raise ContractError(
            f"{where}: {name!r} is not a shop name (lower-case letters, digits, _ and -, "
            "starting with a letter or digit, at most 63)"
        )
    return name


def name_from_directory(directory: Path) -> str:
    """A directory's name made into a shop name: `Shops/My Shop` -> `my-shop`."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower()).strip("-_")
    return slug[:63] or "shop"


def shop_document(directory: Path) -> dict | None:
    """The shop's `shop.toml`, parsed; None when it has none."""
    path = directory / SHOP_FILE
    if not path.is_file():
        return None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ContractError(f"{path}: not valid TOML: {error}") from error


def shop_name(directory: str | Path) -> str:
    """The shop's name: `name` in its `shop.toml`, else the directory's name."""
    directory = Path(directory)
    document = shop_document(directory)
    if document is None:
        return name_from_directory(directory)
    name = document.get("name")
    if not isinstance(name, str):
        raise ContractError(f'{directory / SHOP_FILE}: no name = "..." in it')
    return check_shop_name(name, str(directory / SHOP_FILE))


def bucket_count(directory: Path) -> int | None:
    """`[partition] buckets` in the shop's `shop.toml`: None for a plain shop."""
    partition = (shop_document(directory) or {}).get(PARTITION)
    if partition is None:
        return None
    count = partition.get("buckets") if isinstance(partition, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ContractError(
            f"{directory / SHOP_FILE}: [{PARTITION}] buckets must be a whole number above 0"
        )
    return count


def bucket_dirs(directory: str | Path) -> list[Path]:
    """A bucketed shop's bucket directories in order (`buckets/00000`, ...); [] for a plain
    shop (layout in `buckets.py`)."""
    directory = Path(directory)
    found = [bucket_dir(directory, index) for index in range(bucket_count(directory) or 0)]
    missing = [path.name for path in found if not path.is_dir()]
    if missing:
        raise ContractError(
            f"{directory / BUCKETS}: no bucket {missing[0]} of {len(found)} "
            f"({len(missing)} missing); partition the shop again"
        )
    return found


def bucketed_dirs(directory: str | Path, action: str) -> list[Path]:
    """`bucket_dirs` of a shop that `action` (e.g. "--engine dask trains") needs bucketed: a
    plain shop is one line saying how to split it."""
    found = bucket_dirs(directory)
    if not found:
        raise SendwiseError(
            f"{action} on a bucketed shop; {directory} is not a bucketed shop: split it first "
            "with `sendwise shop partition --shop DIR --buckets N --out DIR`"
        )
    return found


def bucket_dir(directory: Path, index: int) -> Path:
    return directory / BUCKETS / f"{index:0{BUCKET_DIGITS}d}"


@dataclass(frozen=True)
class Shop:
    """Every contract table, typed; an absent optional table is an empty frame of its schema."""

    orders: pl.LazyFrame
    customers: pl.LazyFrame
    products: pl.LazyFrame
    events: pl.LazyFrame
    email_events: pl.LazyFrame
    assignments: pl.LazyFrame
    present: frozenset[str]
    name: str = "shop"  # whose models: the registry keeps each shop's models apart
    directory: Path | None = None  # where it was read from

    def table(self, name: str) -> pl.LazyFrame:
        return getattr(self, name)

    def until(self, as_of: datetime) -> Shop:
        """The shop as it was known at `as_of`: the one place the point-in-time rule is applied."""
        limited = {}
        for name, table in TABLES.items():
            frame = self.table(name)
            if table.time_column:
                stamp = pl.col(table.time_column)
                keep = stamp <= as_of
                if name == "customers":  # a customer record without a date is known all along
                    keep = keep | stamp.is_null()
                frame = frame.filter(keep)
            limited[name] = frame
        return replace(self, **limited)

    def latest(self) -> datetime | None:
        """The time of the shop's last recorded activity: its "now" when no date is given."""
        stamps = [
            self.table(name).select(pl.col(TABLES[name].time_column).max())
            for name in ("orders", "events", "email_events")
        ]
        found = [f.item() for f in pl.collect_all(stamps) if f.item() is not None]
        return max(found, default=None)

    @property
    def missing(self) -> list[str]:
        return [name for name in TABLES if name not in self.present]

    def collect(self) -> dict[str, pl.DataFrame]:
        return dict(zip(TABLES, pl.collect_all([self.table(n) for n in TABLES]), strict=True))


def table_file(directory: Path, name: str) -> Path | None:
    """The file holding table `name` in a shop directory, if any (Parquet preferred)."""
    found = [directory / f"{name}{suffix}" for suffix in SUFFIXES]
    found = [f for f in found if f.is_file()]
    if len(found) > 1:
        raise ContractError(
            f"{directory}: table '{name}' is given twice ({', '.join(f.name for f in found)}); "
            "keep one"
        )
    return found[0] if found else None


def scan_raw(path: Path) -> pl.LazyFrame:
    """A table file as stored: Parquet with its types, CSV as text (typed by the contract)."""
    if path.stat().st_size == 0:
        raise ContractError(f"{path}: file is empty")
    if path.suffix == ".parquet":
        return pl.scan_parquet(path)
    try:
        return pl.scan_csv(path, infer_schema=False, raise_if_empty=True)
    except pl.exceptions.NoDataError as error:
        raise ContractError(f"{path}: file is empty") from error


def empty_table(table: Table) -> pl.LazyFrame:
    return pl.LazyFrame(schema=pl.Schema({c.name: dtype_of(c.kind) for c in table.columns}))


def typed(table: Table, raw: pl.LazyFrame) -> pl.LazyFrame:
    """Contract columns typed, absent optional ones filled with defaults, extra columns kept."""
    schema = raw.collect_schema()
    extra = [pl.col(n) for n in schema.names() if n not in {c.name for c in table.columns}]
    return raw.select(*typed_columns(table, schema), *extra)


def read_table(path: Path, table: Table, validate: bool = True) -> pl.LazyFrame:
    return checked_table(scan_raw(path), table, str(path), validate)


def checked_table(raw: pl.LazyFrame, table: Table, where: str, validate: bool) -> pl.LazyFrame:
    """A table as read, its columns checked (and its rows, if `validate`), then typed."""
    try:
        schema = raw.collect_schema()
        check_columns(table, schema, where)
        if validate:
            check_rows(table, raw, where)
    except pl.exceptions.PolarsError as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ContractError(f"{where}: cannot be read as {table.name}: {first_line}") from error
    return typed(table, raw)


def read_bucketed_table(
    directory: Path, buckets: list[Path], table: Table, validate: bool
) -> pl.LazyFrame | None:
    """One customer-keyed table of a bucketed shop: all its buckets' files as one table."""
    if table_file(directory, table.name) is not None:
        raise ContractError(
            f"{directory}: table '{table.name}' is both beside and inside {BUCKETS}/; "
            f"a bucketed shop keeps it in {BUCKETS}/ only (partition the shop again)"
        )
    files = [bucket / f"{table.name}.parquet" for bucket in buckets]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    where = str(directory / BUCKETS / "*" / f"{table.name}.parquet")
    return checked_table(pl.scan_parquet(files), table, where, validate)


def read_shop(directory: str | Path, validate: bool = True) -> Shop:
    """Read and check every table of a shop directory; `orders` is the only mandatory one.

    A bucketed shop (`sendwise shop partition`) reads as the whole shop: every bucket's rows.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError(f"{directory}: no such shop directory")
    buckets = bucket_dirs(directory)
    frames = {}
    for name, table in TABLES.items():
        if buckets and name not in SHARED_TABLES:
            frames[name] = read_bucketed_table(directory, buckets, table, validate)
        else:
            path = table_file(directory, name)
            frames[name] = None if path is None else read_table(path, table, validate)
    return _shop(frames, directory, shop_name(directory))


def read_bucket(bucket: str | Path, validate: bool = True) -> Shop:
    """One bucket of a bucketed shop as a Shop of its customers, with the shared catalogue.

    A bucket may hold no orders (a small shop in many buckets): the whole shop's orders were
    checked when it was partitioned.
    """
    bucket = Path(bucket)
    root = bucket.parent.parent
    count = bucket_count(root) if bucket.parent.name == BUCKETS else None
    known = count is not None and bucket.name.isdigit() and int(bucket.name) < count
    if not (known and bucket == bucket_dir(root, int(bucket.name)) and bucket.is_dir()):
        raise ContractError(f"{bucket}: not a bucket of a shop made by `sendwise shop partition`")
    frames = {}
    for name, table in TABLES.items():
        folder = root if name in SHARED_TABLES else bucket
        path = table_file(folder, name)
        table = replace(table, mandatory=False)
        frames[name] = None if path is None else read_table(path, table, validate)
    return _shop(frames, bucket, shop_name(root))


def _shop(frames: dict[str, pl.LazyFrame | None], directory: Path, name: str) -> Shop:
    """A Shop of the tables found (None: absent); only `orders` is mandatory."""
    for table_name, table in TABLES.items():
        if frames[table_name] is None and table.mandatory:
            raise ContractError(
                f"{directory}: no {table_name} table "
                f"(expected {table_name}.parquet or {table_name}.csv)"
            )
    present = frozenset(n for n, frame in frames.items() if frame is not None)
    shop = Shop(
        **{n: empty_table(TABLES[n]) if f is None else f for n, f in frames.items()},
        present=present,
        name=name,
        directory=directory.resolve(),
    )
    if shop.missing:
        log.info("shop %s has no %s table(s)", directory, ", ".join(shop.missing))
    return shop


def write_shop(
    tables: dict[str, pl.DataFrame], directory: str | Path, name: str | None = None
) -> Path:
    """Write tables as `<name>.parquet` into `directory`, all at once or not at all, with
    the shop's name in `shop.toml` (default: the directory's name).

    A name with a slash (`ground_truth/customers`) goes into a sub-directory.
    """
    return write_shop_parts([tables], directory, name)


def write_shop_parts(
    parts: Iterable[dict[str, pl.DataFrame]], directory: str | Path, name: str | None = None
) -> Path:
    """`write_shop` of a shop made part by part (`simulate_parts`), each table the parts'
    rows in order, written as they come: only one part is ever held."""
    directory = Path(directory)
    name = check_shop_name(name) if name else name_from_directory(directory)
    with atomic_path(directory, directory=True) as staging, ExitStack() as files:
        (staging / SHOP_FILE).write_text(f'name = "{name}"\n', encoding="utf-8")
        writers: dict[str, PartWriter] = {}
        for tables in parts:
            for table, frame in tables.items():
                if table not in writers:
                    target = staging / f"{table}.parquet"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writers[table] = files.enter_context(PartWriter(target, ".parquet"))
                writers[table].write(frame)
    return directory
