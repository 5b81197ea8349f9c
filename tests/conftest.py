"""Shared test setup. Fixtures live in tests/plugins/, one module per area."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

pytest_plugins = [
    "pytester",
    "tests.plugins.data_fixtures",
    "tests.plugins.mlflow_fixtures",
    "tests.plugins.postgres_fixtures",
    "tests.plugins.ray_fixtures",
]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Reference data made with the upstream implementation (tests/fixtures/, in the repository)."""
    return REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def vggt_fixtures(fixtures_dir) -> Path:
    return fixtures_dir / "vggt"
