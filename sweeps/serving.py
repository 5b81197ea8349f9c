"""The served champion: an MLflow pyfunc model of an adapter on its base (packaged by
`sweeps.champion`). `predict` takes images `[S, 3, H, W]` (or `[B, S, 3, H, W]`) in [0, 1] as a
numpy array and returns depth maps `[B, S, H, W]`. Loading never builds or trains anything: a
missing or different base is one clear error line (`ChampionLoadError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import mlflow.pyfunc

BASE_ENV = "VGGT_BASE_CHECKPOINT"


class VGGTLoraModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        from lora_train.builders import build_model
        from lora_train.checkpointing import load_run_config
        from lora_train.config import apply_overrides

        record = json.loads(Path(context.artifacts["base_record"]).read_text())
        adapter_dir = Path(context.artifacts["adapter"])
        config = load_run_config(adapter_dir)
        if record["mode"] == "merged":
            merged = apply_overrides(config, {"model.checkpoint": context.artifacts["merged"]})
            self.model = build_model(merged, base_only=True).eval()
        else:
            base = context.artifacts["base"] if record["mode"] == "embed" else find_base(record)
            config = apply_overrides(config, {"model.checkpoint": str(base)})
            self.model = build_model(config, adapter_dir, merge=True).eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):
        images = self.torch.as_tensor(model_input, dtype=self.torch.float32)
        with self.torch.no_grad():
            out = self.model(images)
        return out["depth"][..., 0].cpu().numpy()


class ChampionLoadError(RuntimeError):
    """The champion cannot be loaded here (its base is missing or different); one line."""


def find_base(record: dict) -> Path:
    """The referenced base checkpoint: `$VGGT_BASE_CHECKPOINT` or the recorded location, checked."""
    path = Path(os.environ.get(BASE_ENV) or record["source"])
    if not path.is_file():
        raise ChampionLoadError(f"the champion's base checkpoint is not at {path}: set {BASE_ENV} to a copy of it "
                                f"(sha256 {record['sha256'][:16]}…, {record['size']} bytes)")
    if path.stat().st_size != record["size"] or file_sha256(path) != record["sha256"]:
        raise ChampionLoadError(f"{path} is not the champion's base checkpoint (sha256 {record['sha256'][:16]}… "
                                f"expected); set {BASE_ENV} to the right file")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()
