"""The frozen base model's evaluation, kept between calls of `lora_train.evaluate`.

Every trial of a sweep compares its adapter with the same frozen base on the same validation
windows; evaluating the base once per distinct setting instead of once per trial saves one full
validation pass per trial (a minute or more for VGGT-1B on ETH3D-size windows).

An entry is keyed by everything the base's results depend on: the checkpoint file (path, size,
modification time), the model, data, loss and eval settings, the seed, device type and precision,
the split and the number of windows. It holds the metrics (`<key>.json`) and the base's depth maps
of the visualised windows (`<key>.npz`); both are written to a temporary name and renamed, the
JSON last, so a reader sees a whole entry or none.
"""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from vggt_common.files import atomic_write


class BaseEvalCache:
    """One cache entry. `load()` → (metrics, {window index: depth [S,H,W]}) or None; `save(...)`."""

    def __init__(self, directory: str | Path, settings: dict):
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.directory = Path(directory)
        self.metrics_path = self.directory / f"{digest}.json"
        self.depths_path = self.directory / f"{digest}.npz"

    @staticmethod
    def settings(config, checkpoint: Path, *, device_type: str, split: str, align: str,
                 max_windows: int | None, num_vis: int) -> dict:
        """What the base's results depend on (`config` is a `TrainConfig`)."""
        stat = Path(checkpoint).stat()
        sections = config.to_dict()
        return {
            "checkpoint": str(Path(checkpoint).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "model": sections["model"], "data": sections["data"], "loss": sections["loss"],
            "eval": sections["eval"], "seed": config.train.seed, "precision": config.train.precision,
            "device_type": device_type, "split": split, "align": align, "max_windows": max_windows,
            "num_vis": num_vis,
        }

    def load(self) -> tuple[dict, dict[int, np.ndarray]] | None:
        try:
            metrics = json.loads(self.metrics_path.read_text())
            with np.load(self.depths_path) as arrays:
                depths = {int(name.removeprefix("window_")): arrays[name] for name in arrays.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        return metrics, depths

    def save(self, metrics: dict, depths: dict[int, np.ndarray]) -> None:
        atomic_write(self.depths_path, lambda tmp: _save_npz(tmp, depths))
        atomic_write(self.metrics_path, json.dumps(metrics))


def _save_npz(path: Path, depths: dict[int, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **{f"window_{index}": depth for index, depth in depths.items()})
