"""Fixtures of the training-loop tests: one small synthetic facade dataset and one briefly trained
tiny base per session, and a helper that builds small CPU configs on top of them."""

from pathlib import Path

import pytest

from lora_train.config import load_config
from lora_train.data.cache import ensure_synthetic_scenes
from lora_train.reporting import Reporter
from lora_train.tiny_base import TinyBaseRecipe, ensure_tiny_base

# A base trained for a few steps only: enough to be a real pretrained checkpoint for the tests.
TEST_BASE_RECIPE = TinyBaseRecipe(
    steps=6, num_scenes=2, num_views=2, width=70, batch_size=1, views_per_scene=6, image_size=(192, 128)
)


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vggt_cache")


@pytest.fixture(scope="session")
def facade_root(train_cache) -> Path:
    """4 small synthetic facade scenes in ETH3D format."""
    return ensure_synthetic_scenes(
        "facade", 4, seed=0, root=train_cache, views_per_scene=6, image_size=(192, 128)
    )


@pytest.fixture(scope="session")
def tiny_base(train_cache) -> Path:
    return ensure_tiny_base(train_cache, recipe=TEST_BASE_RECIPE, progress=False)


@pytest.fixture
def small_config(tmp_path, train_cache, facade_root, tiny_base):
    """`small_config(**{"optim.lr": 1e-3})` → a validated TrainConfig sized for a CPU test."""

    def make(**overrides):
        values = {
            "model.checkpoint": str(tiny_base),
            "data.root": str(facade_root),
            "data.cache_dir": str(train_cache / "views"),
            "data.num_views": 2,
            "data.width": 70,
            "eval.max_windows": 1,
            "lora.strategy": "B",
            "lora.rank": 4,
            "optim.lr": 1e-3,
            "train.epochs": 2,
            "train.steps_per_epoch": 2,
            "train.progress_bar": False,
            "train.output_dir": str(tmp_path / "run"),
            "eval.num_visualizations": 0,
        }
        values.update(overrides)
        return load_config("default", values)

    return make


class RecordingReporter(Reporter):
    """Keeps every event (the tests assert on what the loop reported)."""

    def __init__(self, stop_after_epoch: int | None = None):
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict, str | None]] = []
        self.ends: list[tuple[str, str]] = []
        self.stop_after_epoch = stop_after_epoch

    def on_step(self, step, metrics):
        self.steps.append((step, dict(metrics)))

    def on_epoch(self, epoch, metrics, checkpoint_dir):
        self.epochs.append((epoch, dict(metrics), checkpoint_dir))
        if epoch == self.stop_after_epoch:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")

    def on_end(self, status, reason=""):
        self.ends.append((status, reason))


@pytest.fixture
def recording_reporter():
    return RecordingReporter
