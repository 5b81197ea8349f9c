"""Fixtures for the sweep tests: a real MLflow server on loopback and a stand-in sweep runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_sweep_cli(*args: str, timeout: float = 900, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`python sweeps/run.py ARGS` in a child process, on a local Ray and with no inherited tracking
    URI, output captured; the caller checks the return code."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env = {**env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300", **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def sweep_mlflow(tmp_path_factory):
    """A real `mlflow server` on a free 127.0.0.1 port for the sweep tests; stopped at the end."""
    from tracking.server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("sweep-mlflow"))
    url = server.start(timeout=120)
    yield url
    server.stop()


@pytest.fixture
def sweep_env(monkeypatch):
    """Environment every sweep test runs under (slow worker start on 2 cores)."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return os.environ
