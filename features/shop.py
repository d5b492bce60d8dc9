"""A shop: one LazyFrame per contract table, read from a directory of Parquet or CSV files."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import polars as pl

from sendwise.store.files import atomic_path

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


def shop_name(directory: str | Path) -> str:
    """The shop's name: `name` in its `shop.toml`, else the directory's name."""
    directory = Path(directory)
    path = directory / SHOP_FILE
    if not path.is_file():
        return name_from_directory(directory)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ContractError(f"{path}: not valid TOML: {error}") from error
    name = document.get("name")
    if not isinstance(name, str):
        raise ContractError(f'{path}: no name = "..." in it')
    return check_shop_name(name, str(path))


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
    raw = scan_raw(path)
    try:
        schema = raw.collect_schema()
        check_columns(table, schema, str(path))
        if validate:
            check_rows(table, raw, str(path))
    except pl.exceptions.PolarsError as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ContractError(f"{path}: cannot be read as {table.name}: {first_line}") from error
    return typed(table, raw)


def read_shop(directory: str | Path, validate: bool = True) -> Shop:
    """Read and check every table of a shop directory; `orders` is the only mandatory one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError(f"{directory}: no such shop directory")
    frames, present = {}, set()
    for name, table in TABLES.items():
        path = table_file(directory, name)
        if path is None:
            if table.mandatory:
                raise ContractError(
                    f"{directory}: no {name} table (expected {name}.parquet or {name}.csv)"
                )
            frames[name] = empty_table(table)
            continue
        frames[name] = read_table(path, table, validate)
        present.add(name)
    shop = Shop(
        **frames,
        present=frozenset(present),
        name=shop_name(directory),
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
    directory = Path(directory)
    name = check_shop_name(name) if name else name_from_directory(directory)
    with atomic_path(directory, directory=True) as staging:
        (staging / SHOP_FILE).write_text(f'name = "{name}"\n', encoding="utf-8")
        for name, frame in tables.items():
            target = staging / f"{name}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(target)
    return directory
