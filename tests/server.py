"""A real `sendwise` BentoML server in child processes, for the tests that talk HTTP."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil
import pytest


def server_workers() -> list[psutil.Process]:
    """The BentoML workers under this process (one killed and not yet reaped is none)."""
    workers = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(
                p.cmdline()
            ):
                workers.append(p)
        except psutil.Error:  # gone meanwhile
            continue
    return workers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def enable_sendwise_loggers() -> None:
    """`bentoml.serve` configures this process's logging with `disable_existing_loggers`,
    silencing every sendwise logger made before it: later tests here must still hear them."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("sendwise") and isinstance(logger, logging.Logger):
            logger.disabled = False


@contextmanager
def serving(env: dict[str, str], **extra: str) -> Iterator[tuple[str, object]]:
    """A real server in child processes; yields (base URL, server) once `/readyz` answers."""
    import bentoml

    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**env, **extra}.items():
            patch.setenv(name, value)
        server = bentoml.serve("sendwise.serving.service:Sendwise", host="127.0.0.1", port=port)
    enable_sendwise_loggers()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)
        yield url, server
    finally:
        server.stop()
