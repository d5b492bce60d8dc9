"""Deterministic randomisation: the same recipient, campaign and purpose always draw the same
number, on any machine and in any process, so holdouts are stable and auditable."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def uniform(ids: Iterable[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per id, from BLAKE2b of `salt` and the id (stable across versions)."""
    prefix = salt.encode() + b"\x00"
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest())
            / 2**64
            for i in ids
        ),
        dtype=np.float64,
    )
