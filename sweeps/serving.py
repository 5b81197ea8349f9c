"""The champion: an MLflow pyfunc model wrapping the base VGGT config and the best LoRA adapter.

`load_context` imports `lora_train` lazily, so the registry entry can be listed without torch; it
rebuilds VGGT from the training config saved with the adapter, loads the pretrained base weights,
applies the adapter and merges it. `predict` takes images `[S, 3, H, W]` (or `[B, S, 3, H, W]`) in
[0, 1] as a numpy array and returns the depth maps `[B, S, H, W]`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc


class VGGTLoraModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        from lora_train.base_model import resolve_checkpoint
        from lora_train.config import config_from_dict
        from lora_train.lora import load_adapter
        from lora_train.model import VGGT, VGGTConfig, load_pretrained
        from lora_train.train import load_trainer_state

        adapter_dir = Path(context.artifacts["adapter"])
        config = config_from_dict(load_trainer_state(adapter_dir)["config"], source=str(adapter_dir))
        model = VGGT(VGGTConfig.from_dict({"preset": config.model.preset, **config.model.overrides}))
        checkpoint = resolve_checkpoint(config.model.checkpoint)
        if checkpoint is not None:
            load_pretrained(model, checkpoint)
        model = load_adapter(model, adapter_dir)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        self.model = model.eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):
        images = self.torch.as_tensor(model_input, dtype=self.torch.float32)
        with self.torch.no_grad():
            out = self.model(images)
        return out["depth"][..., 0].cpu().numpy()


def register_champion(tracker, run_id: str, model_name: str, adapter_dir) -> str | None:
    """Register the best adapter as `model_name` with alias `champion`; returns the version."""
    return tracker.register_champion(
        run_id, model_name, VGGTLoraModel(), {"adapter": str(adapter_dir)}
    )
