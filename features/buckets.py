"""Customer-hash buckets: a shop split so that each bucket holds all of some customers' rows.

`sendwise shop partition --shop DIR --buckets N --out OUT` writes

```
OUT/shop.toml                        name = "<the shop's name>"
                                     [partition] buckets = N, key = "customer_id", hash = "fnv1a-64"
OUT/products.parquet                 the catalogue, shared by every bucket (if the shop has one)
OUT/buckets/00000/orders.parquet     every customer-keyed table of the shop: orders, customers,
OUT/buckets/00000/customers.parquet  events, email_events, assignments; each bucket has every
...                                  table the shop has, empty where none of its customers
OUT/buckets/<N-1, 5 digits>/...      has rows, so each reads alone with its schema
```

A row's bucket is `FNV-1a 64(UTF-8 bytes of customer_id) mod N`: the 64-bit Fowler-Noll-Vo
hash, variant 1a (offset basis 14695981039346656037, prime 1099511628211), computed here with
numpy, so it is the same on every machine and with every library version (Python's `hash` is
salted per process and Polars' `hash` may change between releases). Rows keep their order
within a bucket; a table is split a batch of rows at a time, so a shop larger than memory
partitions too. Tables are typed and checked once, on the way in; every command that reads
a shop reads a bucketed one as the whole shop, and the engine seam (`engine.py`) runs
per-customer jobs one bucket at a time.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from sendwise.errors import SendwiseError
from sendwise.store.files import PartWriter, atomic_path

from .contract import TABLES
from .engine import Progress
from .shop import (
    PARTITION,
    SHARED_TABLES,
    SHOP_FILE,
    bucket_dir,
    read_shop,
    shop_document,
)

KEY = "customer_id"
HASH = "fnv1a-64"
MAX_BUCKETS = 100_000  # bucket directories are numbered with five digits
FNV_OFFSET = np.uint64(14_695_981_039_346_656_037)
FNV_PRIME = np.uint64(1_099_511_628_211)
_BUCKET = "__bucket"
BATCH_ROWS = 2_000_000  # rows split at a time: memory holds a batch, not a table
OPEN_FILES = 256  # bucket files written at once; more buckets take more passes


def fnv1a_64(ids: pl.Series) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over strings one byte position at a
    time (ids are short), as unsigned 64-bit integers."""
    if ids.null_count():
        raise SendwiseError(f"{ids.name}: {ids.null_count()} empty ids cannot be bucketed")
    strings = ids.cast(pl.String).rechunk().to_arrow().cast(pa.large_string())
    _, offset_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(len(strings), FNV_OFFSET, dtype=np.uint64)
    for position in range(int(lengths.max(initial=0))):
        longer = np.flatnonzero(lengths > position)
        mixed = hashes[longer] ^ data[starts[longer] + position].astype(np.uint64)
        hashes[longer] = mixed * FNV_PRIME  # wraps modulo 2**64, as FNV defines
    return hashes


def bucket_of(ids: pl.Series, buckets: int) -> pl.Series:
    """Each id's bucket, 0 to `buckets` - 1."""
    return pl.Series(_BUCKET, fnv1a_64(ids) % np.uint64(buckets), dtype=pl.UInt32)


def check_buckets(buckets: int) -> int:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise SendwiseError(f"--buckets: {buckets} is not between 1 and {MAX_BUCKETS:,}")
    return buckets


def partition_shop(
    source: str | Path,
    buckets: int,
    out: str | Path,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Split the shop at `source` into `buckets` customer-hash buckets at `out`, whole or not
    at all; returns the rows written per table. `progress` is told of each contract table done."""
    source, out = Path(source), Path(out)
    check_buckets(buckets)
    _check_target(source, out)
    shop = read_shop(source)
    tick = progress or (lambda _: None)
    rows = {}
    with atomic_path(out, directory=True) as staging:
        (staging / SHOP_FILE).write_text(
            f'name = "{shop.name}"\n\n[{PARTITION}]\nbuckets = {buckets}\n'
            f'key = "{KEY}"\nhash = "{HASH}"\n',
            encoding="utf-8",
        )
        for index in range(buckets):
            bucket_dir(staging, index).mkdir(parents=True)
        for name in TABLES:
            if name in shop.present:
                table = shop.table(name)
                if name in SHARED_TABLES:
                    frame = table.collect()
                    rows[name] = len(frame)
                    frame.write_parquet(staging / f"{name}.parquet")
                else:
                    rows[name] = _write_buckets(table, name, buckets, staging)
            tick(1)
    return rows


def _write_buckets(table: pl.LazyFrame, name: str, buckets: int, staging: Path) -> int:
    """One table into every bucket, in the rows' order, a batch of rows at a time (a table
    larger than memory splits too); an empty frame where none fall. Returns its rows."""
    rows, empty = 0, table.clear().collect()
    for first in range(0, buckets, OPEN_FILES):  # one pass per so many open files
        group = range(first, min(first + OPEN_FILES, buckets))
        with ExitStack() as files:
            writers = {
                index: files.enter_context(
                    PartWriter(bucket_dir(staging, index) / f"{name}.parquet", ".parquet")
                )
                for index in group
            }
            for batch in table.collect_batches(chunk_size=BATCH_ROWS):
                if first == 0:
                    rows += len(batch)
                parts = batch.with_columns(bucket_of(batch[KEY], buckets)).partition_by(
                    _BUCKET, as_dict=True, include_key=False, maintain_order=True
                )
                for (index,), part in parts.items():
                    if index in writers:
                        writers[index].write(part)
        for index in group:
            path = bucket_dir(staging, index) / f"{name}.parquet"
            if not path.exists():
                empty.write_parquet(path)
    return rows


def _check_target(source: Path, out: Path) -> None:
    """`out` is replaced whole: refuse the source itself, or a folder that is not a shop."""
    if out.resolve() == source.resolve() or source.resolve().is_relative_to(out.resolve()):
        raise SendwiseError(f"--out {out}: would replace the shop it is partitioned from")
    if out.exists() and not out.is_dir():
        raise SendwiseError(f"--out {out}: is a file, not a directory")
    if out.exists() and any(out.iterdir()) and shop_document(out) is None:
        raise SendwiseError(
            f"--out {out}: exists and is not a shop directory (no {SHOP_FILE}); name a new one"
        )
