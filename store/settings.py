"""Where sendwise keeps its state. Read from the environment when asked, never at import."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`SENDWISE_HOME`, or `.sendwise/` under the working directory."""
    return Path(os.environ.get("SENDWISE_HOME", Path.cwd() / ".sendwise"))
