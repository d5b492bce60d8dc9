"""The `sendwise` command (`main`): its package sets the environment the libraries read
when they load (BLAS threads, telemetry, Polars' allocator), before `main` imports them."""

import os

# implicit's ALS fold-in is ~60x faster on one BLAS thread; set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

POLARS_ALLOCATOR = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what Polars 2 sets itself
ALLOCATOR = f"dirty_decay_ms:5000,narenas:{os.cpu_count() or 1}"

# Polars' allocator (jemalloc) hands freed memory back to the system after 0.5 s, and spreads
# threads over four arenas a core, so each bucket of a batch mapped its pages afresh (6.4-6.9
# million page faults scoring the 1M bench shop, 23-25 s of system time). In one arena a core
# and kept 2 s: 3.7-4.0 million; kept 5 s, about a bucket's time: 2.9-3.1 million and 6%
# faster, at the same peak (10 s: 2.5-2.7 million, but 0.25 GiB more at the peak; README,
# "Beyond one machine"). Polars reads it when first imported; a parent process that imported
# Polars leaves Polars' own setting here, nobody's choice.
if os.environ.get("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR) == POLARS_ALLOCATOR:
    os.environ["_RJEM_MALLOC_CONF"] = ALLOCATOR
