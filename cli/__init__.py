"""The `sendwise` command (`main`): its package sets what must be set before Polars loads."""

import os

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
