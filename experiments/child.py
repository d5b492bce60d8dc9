"""Run the real `sendwise` CLI in a child process and measure it (shared by the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def run_cli(args: list[str], env: dict | None = None, check: bool = True) -> dict:
    """Wall seconds, the child's peak RSS (MiB), its stdout and exit code; raises if it fails
    (unless `check` is false: a refusal may be an answer, as `promote`'s is).

    Output goes to temporary files, not pipes, so a chatty child can never block on a full pipe
    while we wait for its resource usage.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "sendwise.cli", *args], env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and check:
            raise RuntimeError(f"sendwise {' '.join(args)} failed: {err.read().decode()[-2000:]}")
        return {
            "wall_s": round(wall, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "stdout": " ".join(out.read().decode().split()),
            "exit_code": code,
        }


def work_env(work: Path) -> dict:
    """The environment of a throw-away sendwise home, MLflow store and artifacts under `work`."""
    return {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "SENDWISE_HOME": str(work / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "SENDWISE_ARTIFACTS": str(work / "artifacts"),
    }


@contextmanager
def serving(shop: Path, port: int, workers: int, env: dict) -> Iterator[tuple[str, float]]:
    """`sendwise serve` in child processes: (its URL, seconds until `/readyz` said 200)."""
    with tempfile.TemporaryFile() as logfile:
        args = ["serve", "--shop", str(shop), "--port", str(port), "--workers", str(workers)]
        server = subprocess.Popen(
            [sys.executable, "-m", "sendwise.cli", *args], env=env, stdout=logfile, stderr=logfile
        )
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.3)
                if time.perf_counter() - started > 300:
                    logfile.seek(0)
                    raise RuntimeError(logfile.read().decode()[-3000:])
            ready = time.perf_counter() - started
            settle(server.pid)
            yield url, ready
        finally:
            for p in psutil.Process(server.pid).children(recursive=True):
                p.terminate()
            server.terminate()
            server.wait(30)


def settle(pid: int, quiet_cpu_s: float = 0.1, limit_s: float = 120.0) -> None:
    """Wait until every worker under `pid` has done starting (used under a tenth of a CPU
    second in the last second): `/readyz` answers as soon as one worker is ready, and a
    client's kept-alive connections stay with the workers that accepted them."""
    deadline = time.monotonic() + limit_s
    workers = [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(p.cmdline())
    ]
    used = [sum(p.cpu_times()[:2]) for p in workers]
    while time.monotonic() < deadline:
        time.sleep(1)
        now = [sum(p.cpu_times()[:2]) for p in workers]
        if all(b - a < quiet_cpu_s for a, b in zip(used, now, strict=True)):
            return
        used = now


def worker_rss_mib() -> list[int]:
    """Resident memory of every BentoML worker under this process, smallest first."""
    return sorted(
        round(p.memory_info().rss / 2**20)
        for p in psutil.Process().children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(p.cmdline())
    )
