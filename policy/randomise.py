"""Deterministic randomisation: the same recipient, campaign and purpose always draw the same
number, on any machine and in any process, so holdouts are stable and auditable."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def uniform(ids: Iterable[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per id, from BLAKE2b of `salt` and the id (stable across versions)."""
    prefix = salt.encode() + b"\x00"
    digests = b"".join(
        hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest() for i in ids
    )
    return np.frombuffer(digests, dtype=">u8") / 2**64
