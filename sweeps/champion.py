"""Packaging the champion so that it loads on another machine (the served model: `sweeps.serving`).

The registered model carries:

    adapter/    the PEFT adapter and its trainer state (which holds the resolved training config)
    base.json   the base checkpoint's sha256, size, original location and how it travels
    base/       (mode `embed`) the base checkpoint itself — the default for small bases (the tiny one)
    merged/     (mode `merged`) VGGT with the adapter folded in: loads without base or adapter

In mode `reference` (the default for VGGT-1B, 4.7 GB) the base stays where it is and is found at
load time from `$VGGT_BASE_CHECKPOINT` or the recorded location, and checked against its sha256
(`sweeps.serving.find_base`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

BASE_MODES = ("auto", "embed", "reference", "merged")
EMBED_LIMIT_BYTES = 512 * 2**20  # `auto` embeds bases up to this size


def register_champion(tracker, run_id: str, model_name: str, adapter_dir, base_mode: str = "auto") -> int:
    """Register the adapter in `adapter_dir` (a training checkpoint) as `model_name@champion`,
    self-contained as the module docstring says; returns the version (an existing one if this run
    was registered before)."""
    from lora_train.builders import build_model, resolve_checkpoint
    from lora_train.checkpointing import load_run_config
    from sweeps.serving import VGGTLoraModel, file_sha256

    existing = tracker.model_version_of(model_name, run_id)
    if existing is not None:  # hashing or merging a 4.7 GB base again would be wasted
        tracker.set_alias(model_name, existing)
        return existing
    config = load_run_config(adapter_dir)
    base = resolve_checkpoint(config.model.checkpoint)
    if base is None:
        raise ValueError("a champion needs a pretrained base (model.checkpoint is null)")
    size = base.stat().st_size
    mode = base_mode if base_mode != "auto" else "embed" if size <= EMBED_LIMIT_BYTES else "reference"
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        record = {"mode": mode, "sha256": file_sha256(base), "size": size, "source": str(base.resolve())}
        artifacts = {"adapter": str(adapter_dir), "base_record": str(Path(tmp) / "base.json")}
        Path(artifacts["base_record"]).write_text(json.dumps(record, indent=2))
        if mode == "embed":
            artifacts["base"] = str(base)
        elif mode == "merged":
            from safetensors.torch import save_file

            merged = build_model(config, adapter_dir, merge=True)
            artifacts["merged"] = str(Path(tmp) / "merged.safetensors")
            save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, artifacts["merged"])
        return tracker.register_champion(run_id, model_name, VGGTLoraModel(), artifacts)
