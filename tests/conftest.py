"""Shared test setup. Fixtures live in tests/plugins/, one module per area."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

pytest_plugins = [
    "tests.plugins.data_fixtures",
    "tests.plugins.mlflow_fixtures",
    "tests.plugins.ray_fixtures",
]


def _shared_dir() -> Path:
    return Path(os.environ.get("VGGT_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared/ folder (reference docs and ground-truth fixtures)."""
    path = _shared_dir()
    if not (path / "fixtures").is_dir():
        pytest.fail(f"shared fixtures not found at {path}; set VGGT_SHARED_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def vggt_fixtures(shared_dir) -> Path:
    return shared_dir / "fixtures" / "vggt"
