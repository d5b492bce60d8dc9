"""The `sendwise` command (`main`): its package sets what must be set before Polars loads."""

import os

POLARS_ALLOCATOR = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what Polars 2 sets itself

# Polars' allocator hands freed memory back to the system after 0.5 s, so each bucket of a
# batch maps its pages afresh (6.7 million page faults scoring the 1M bench shop). Kept 2 s,
# three runs beside three took 103.9-109.4 s against 106.6-113.4 s, at 2.9-3.1 GiB peak
# against 2.7-2.9 (experiments/score_history.md). Polars reads it when first imported; a
# parent process that imported Polars leaves Polars' own setting here, nobody's choice.
if os.environ.get("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR) == POLARS_ALLOCATOR:
    os.environ["_RJEM_MALLOC_CONF"] = "dirty_decay_ms:2000"
