"""The registered champion is self-contained: it loads in a fresh process with an empty cache, or
fails in one line; it never rebuilds or retrains a base. Registration is idempotent."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pytest

from lora_train.config import load_config
from lora_train.tiny_base import TinyBaseRecipe, ensure_tiny_base
from lora_train.train import run_training
from sweeps.champion import register_champion
from sweeps.serving import ChampionLoadError
from tracking.runs import SweepTracker, tracking_uri_set_to

RECIPE = TinyBaseRecipe(steps=4, num_scenes=2, num_views=2, width=56, batch_size=1, views_per_scene=4,
                        image_size=(96, 64))
LOAD = """
import sys, numpy as np, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
depth = model.predict(np.random.default_rng(0).random((2, 3, 56, 56), dtype=np.float32))
print("depth", tuple(depth.shape))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("champion")
    base = ensure_tiny_base(work / "cache", RECIPE, progress=False)
    config = load_config("default", {
        "model.checkpoint": str(base), "data.synthetic_scenes": 3, "data.num_views": 2, "data.width": 56,
        "data.cache_dir": str(work / "views"), "eval.max_windows": 1, "eval.num_visualizations": 0,
        "lora.strategy": "A", "lora.rank": 2, "train.epochs": 1, "train.steps_per_epoch": 1,
        "train.progress_bar": False, "train.output_dir": str(work / "run"),
    })
    result = run_training(config)
    return work, base, Path(result.last_checkpoint)


def load_in_fresh_process(uri, work, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"VGGT_LORA_CACHE": str(work / "empty-cache"), **(env_extra or {})})
    return subprocess.run([sys.executable, "-c", LOAD, uri], capture_output=True, text=True, env=env, timeout=300)


def register(mlflow_server, name, adapter, mode):
    tracker = SweepTracker(mlflow_server, name)
    tracker.open_parent(name, {}, "")
    run_id = tracker.open_trial("t0", {})
    return tracker, run_id, register_champion(tracker, run_id, name, adapter, mode)


def test_embedded_base_loads_anywhere_and_registration_is_idempotent(trained, mlflow_server, unique_name):
    work, base, adapter = trained
    tracker, run_id, version = register(mlflow_server, unique_name, adapter, "auto")  # tiny base: embedded
    assert register_champion(tracker, run_id, unique_name, adapter) == version  # the same run: no new version
    assert len(tracker.client.search_model_versions(f"name = '{unique_name}'")) == 1
    proc = load_in_fresh_process(f"models:/{unique_name}@champion", work, {"MLFLOW_TRACKING_URI": mlflow_server})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "depth (1, 2, 56, 56)" in proc.stdout
    assert not (work / "empty-cache" / "bases").exists()  # nothing was trained or built


def test_referenced_base_must_be_found_and_identical(trained, mlflow_server, unique_name, tmp_path, monkeypatch):
    work, base, adapter = trained
    moved = tmp_path / "base-elsewhere.safetensors"
    shutil.copy2(base, moved)
    tracker, _, version = register(mlflow_server, unique_name, adapter, "reference")
    with tracking_uri_set_to(mlflow_server):
        model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{unique_name}/{version}",
                                                             dst_path=str(tmp_path / "model")))
    record = json.loads(next(model_dir.rglob("base.json")).read_text())
    assert record["mode"] == "reference" and record["source"] == str(base.resolve())
    uri = f"models:/{unique_name}@champion"
    with tracking_uri_set_to(mlflow_server):
        monkeypatch.setenv("VGGT_BASE_CHECKPOINT", str(moved))
        mlflow.pyfunc.load_model(uri)  # found through the variable, checked by its sha256

        monkeypatch.setenv("VGGT_BASE_CHECKPOINT", str(tmp_path / "nope.safetensors"))
        with pytest.raises(ChampionLoadError, match="the champion's base checkpoint is not at") as missing:
            mlflow.pyfunc.load_model(uri)
        assert "\n" not in str(missing.value)

        other = tmp_path / "other.safetensors"
        other.write_bytes(np.random.default_rng(0).bytes(moved.stat().st_size))
        monkeypatch.setenv("VGGT_BASE_CHECKPOINT", str(other))
        with pytest.raises(ChampionLoadError, match="is not the champion's base checkpoint"):
            mlflow.pyfunc.load_model(uri)
