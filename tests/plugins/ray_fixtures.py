"""Fixtures for the sweep tests: a real MLflow server on loopback and a stand-in sweep runner."""

import os
from pathlib import Path

import pytest


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
