"""Files written whole or not at all: write beside the target, then rename over it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

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
        if directory and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # mkstemp makes files private; the result gets the permissions of a normal write
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o666 & ~umask)
            staging.replace(target)
    except BaseException:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def write_frame(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a table as Parquet or CSV (by the file's suffix), atomically.

    Lists (e.g. `products`) stay lists in Parquet; CSV has no lists, so they are written as
    JSON arrays.
    """
    path = Path(path)
    if path.suffix not in FRAME_SUFFIXES:
        raise SendwiseError(f"{path}: output must end in .parquet or .csv")
    with atomic_path(path) as staging:
        if path.suffix == ".parquet":
            frame.write_parquet(staging)
        else:
            lists = [n for n, d in frame.schema.items() if isinstance(d, pl.List)]
            as_json = [
                pl.struct(name).struct.json_encode().str.extract(r"^\{.*?:(.*)\}$").alias(name)
                for name in lists
            ]
            frame.with_columns(as_json).write_csv(staging)
    return path
