"""The `sendwise` command (`main`): its package sets the environment the libraries read
when they load (BLAS threads, telemetry, Polars' allocator), before `main` imports them."""

import os

# implicit's ALS fold-in is ~60x faster on one BLAS thread; set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

POLARS_ALLOCATOR = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what Polars 2 sets itself
ALLOCATOR = f"dirty_decay_ms:2000,narenas:{os.cpu_count() or 1}"

# Polars' allocator (jemalloc) hands freed memory back to the system after 0.5 s, and spreads
# threads over four arenas a core, so each bucket of a batch mapped its pages afresh (6.4-6.9
# million page faults scoring the 1M bench shop, 23-25 s of system time). Kept 2 s: 1-5%
# faster; and in one arena a core: 3.7-3.9 million faults and 17-18.5 s, the wall time within
# the machine's drift (README, "Beyond one machine"). Polars reads it when first imported;
# a parent process that imported Polars leaves Polars' own setting here, nobody's choice.
if os.environ.get("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR) == POLARS_ALLOCATOR:
    os.environ["_RJEM_MALLOC_CONF"] = ALLOCATOR
