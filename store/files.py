"""Files written whole or not at all: write beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import polars as pl
import pyarrow.parquet as pq

from sendwise.errors import SendwiseError

FRAME_SUFFIXES = (".parquet", ".csv")


@contextmanager
def atomic_path(target: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside `target`; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        # mkstemp and mkdtemp make them private; the result gets the mode of a normal write
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod((0o777 if directory else 0o666) & ~umask)
        if directory and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.replace(target)
    except BaseException:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def write_frame(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a table as Parquet or CSV (by the file's suffix), atomically."""
    path = frame_path(path)
    with atomic_path(path) as staging:
        write_frame_to(frame, staging, path.suffix)
    return path


def frame_path(path: str | Path) -> Path:
    """`path` if it names a table file we write, else a one-line error."""
    path = Path(path)
    if path.suffix not in FRAME_SUFFIXES:
        raise SendwiseError(f"{path}: output must end in .parquet or .csv")
    return path


def write_frame_to(frame: pl.DataFrame, staging: Path, suffix: str) -> None:
    """Write `frame` to `staging` in the format of `suffix`. Lists (e.g. `products`) stay
    lists in Parquet; CSV has no lists, so they are written as JSON arrays."""
    if suffix == ".parquet":
        frame.write_parquet(staging)
    else:
        lists_as_json(frame).write_csv(staging)


def constant(value, n: int, dtype: pl.DataType | None = None) -> pl.Series:
    """`value` repeated `n` times: a batch's own value as a column, so that the select that
    reads the column is built once, not once per batch (building costs more than running
    it on a small batch)."""
    return pl.Series([value], dtype=dtype).new_from_index(0, n)


def json_array(name: str) -> pl.Expr:
    """A list column as the text of a JSON array: Polars' JSON of a one-field struct,
    `{"name":[...]}`, less the `{"name":` before the array and the `}` after it."""
    encoded = pl.struct(name).struct.json_encode()
    skip = len(json.dumps(name)) + 2
    return encoded.str.slice(skip, encoded.str.len_chars() - skip - 1).alias(name)


def lists_as_json(frame: pl.DataFrame) -> pl.DataFrame:
    """Every list column as the text of a JSON array."""
    return frame.with_columns(
        json_array(name) for name, kind in frame.schema.items() if isinstance(kind, pl.List)
    )


class PartWriter:
    """Frames appended to one Parquet (a row group each) or CSV file, part by part: a table
    too large to hold is written as it is made."""

    def __init__(self, path: Path, suffix: str):
        self.path, self.suffix = path, suffix
        self._parquet: pq.ParquetWriter | None = None
        self._csv: IO[bytes] | None = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def write(self, frame: pl.DataFrame) -> None:
        if self.suffix == ".parquet":
            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._parquet.write_table(table)
            return
        first = self._csv is None
        if first:
            self._csv = self.path.open("wb")
        lists_as_json(frame).write_csv(self._csv, include_header=first)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None
