"""The engine seam: one bucket -> one pure function -> one output, here or on Dask.

A job that runs per customer (features, labels, batch scores) is a module-level function
`function(bucket, context)`: `bucket` is the path of one bucket of a partitioned shop (see
`buckets.py`) and `context` what the whole shop contributes, computed once by the caller
(the fallback time zone, the catalogue, item factors, ...). The engines differ only in where
the calls run, so their outputs are the same:

- `local` calls the function on each bucket in turn, in this process: one bucket in memory
  at a time.
- `dask` submits one task per bucket file to a Dask cluster: the scheduler at `scheduler`,
  else `DASK_SCHEDULER_ADDRESS`, else a local cluster started for the job (one worker process
  per core, about 7 s to start). Each worker reads its bucket itself from the path, so the
  shop must be on storage every worker sees; Dask never splits the data, so a customer's rows
  are never cut apart. The function and its context travel by pickle: the workers need
  sendwise installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sendwise.errors import SendwiseError

if TYPE_CHECKING:
    from distributed import Client

SCHEDULER_VARIABLE = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT = "10s"

Context = TypeVar("Context")
Output = TypeVar("Output")
Progress = Callable[[int], None]  # told how many buckets just finished


class Engine(StrEnum):
    local = "local"
    dask = "dask"


def run_buckets(
    function: Callable[[Path, Context], Output],
    buckets: Sequence[Path],
    context: Context,
    engine: Engine | str = Engine.local,
    scheduler: str | None = None,
    progress: Progress | None = None,
    then: Callable[[Output], None] | None = None,
) -> list[Output]:
    """`function(bucket, context)` for every bucket, on `engine`; outputs in bucket order.
    `then` is handed each output in bucket order as soon as it and those before it are in
    (a caller can work on the first buckets' outputs while later ones run)."""
    engine = Engine(engine)
    tick = progress or (lambda _: None)
    if engine is Engine.local:
        outputs = []
        for bucket in buckets:
            outputs.append(function(bucket, context))
            tick(1)
            if then is not None:
                then(outputs[-1])
        return outputs
    paths = [Path(bucket).resolve() for bucket in buckets]
    return run_on_dask(function, paths, context, scheduler, tick, then)


def run_on_dask(
    function: Callable[[Any, Context], Output],
    items: Sequence[Any],
    context: Context,
    scheduler: str | None = None,
    progress: Progress | None = None,
    then: Callable[[Output], None] | None = None,
) -> list[Output]:
    """`function(item, context)` as one Dask task per item, the context sent once to every
    worker; outputs in item order, the first task's error raised as soon as it comes; `then`
    as `run_buckets` has it."""
    from distributed import as_completed

    tick = progress or (lambda _: None)
    with dask_client(scheduler) as client:
        shared = client.scatter(context, broadcast=True)
        futures = client.map(_call, list(items), function=function, context=shared, pure=False)
        place = {future.key: k for k, future in enumerate(futures)}
        waiting: dict[int, Output] = {}  # in, but not yet handed to `then`
        handed = 0
        for future in as_completed(futures):
            output = future.result()
            tick(1)
            if then is None:
                continue
            waiting[place[future.key]] = output
            while handed in waiting:
                then(waiting.pop(handed))
                handed += 1
        return client.gather(futures)


def _call(item: Any, function: Callable[[Any, Any], Output], context: Any) -> Output:
    """One task on a worker, whatever the function names its parameters (a bucket is named
    by its path and read there)."""
    return function(item, context)


@contextmanager
def dask_client(scheduler: str | None = None) -> Iterator[Client]:
    """A client of the scheduler at `scheduler`, else `DASK_SCHEDULER_ADDRESS`, else of a
    local cluster that lives as long as the client (one single-threaded worker per core:
    Polars runs threads of its own inside each task)."""
    from distributed import Client, LocalCluster

    # Dask's own chatter (cluster start, workers joining) only as verbose as the caller's logs
    logging.getLogger("distributed").setLevel(logging.getLogger().getEffectiveLevel())
    address = scheduler or os.environ.get(SCHEDULER_VARIABLE) or None
    if address is None:
        with (
            LocalCluster(threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise SendwiseError(f"cannot reach the Dask scheduler at {address}: {error}") from error
    with client:
        yield client
