"""Training checkpoints: the adapter plus everything an exact resume needs, one folder per epoch.

    <train.output_dir>/checkpoints/epoch_0003/
        adapter_config.json, adapter_model.safetensors   stock PEFT files (the adapter)
        trainer_state.pt                                 optimizer, scheduler, RNG states, step,
                                                         best metrics, cost, the resolved config
"""

import shutil
from pathlib import Path

import torch

from lora_train.config import TrainConfig, config_from_dict
from lora_train.errors import UserError
from lora_train.lora import write_adapter_files
from vggt_common.files import atomic_dir

TRAINER_STATE = "trainer_state.pt"


def epoch_checkpoint(checkpoint_root: str | Path, epoch: int) -> Path:
    """`<root>/epoch_0003`: the checkpoint written after `epoch` epochs."""
    return Path(checkpoint_root) / f"epoch_{epoch:04d}"


def save_checkpoint(directory: Path, model, trainer_state: dict) -> Path:
    """Adapter + trainer state, written to a temporary folder and renamed (never half-written)."""
    with atomic_dir(directory) as tmp:
        write_adapter_files(model, tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
    return Path(directory)


def load_trainer_state(directory: str | Path) -> dict:
    """The `trainer_state.pt` of a checkpoint folder; `UserError` naming the folder if it has none."""
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise UserError(f"{directory} is not a training checkpoint (no {TRAINER_STATE})")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file
        raise UserError(f"{path}: unreadable trainer state ({type(err).__name__})") from None


def load_run_config(directory: str | Path) -> TrainConfig:
    """The resolved training config a checkpoint was written with."""
    return config_from_dict(load_trainer_state(directory)["config"], source=f"{directory}/{TRAINER_STATE}")


def check_output_dir(output_dir: str | Path, resuming: bool, overwrite: bool) -> None:
    """A fresh run never mixes its checkpoints with an earlier run's in the same folder."""
    root = Path(output_dir) / "checkpoints"
    if resuming or not root.is_dir():
        return
    earlier = sorted(p.name for p in root.glob("epoch_*[0-9]"))
    if earlier and not overwrite:
        raise UserError(f"train.output_dir {output_dir} holds checkpoints of an earlier run ({earlier[-1]}); "
                        "resume it (--resume DIR), choose another --output-dir, or pass --train.overwrite true")
    for name in earlier:
        shutil.rmtree(root / name, ignore_errors=True)


def check_resumable(state: dict, config: TrainConfig, resume_from) -> None:
    """The run being resumed must train the same thing (output dir, epochs and the like may differ)."""
    saved, current = state["config"], config.to_dict()
    for section in ("model", "lora", "data", "optim", "loss"):
        if saved[section] != current[section]:
            diff = [k for k in saved[section] if saved[section][k] != current[section].get(k)]
            raise UserError(f"--resume {resume_from}: config differs from the checkpoint's in "
                            f"{section}.{diff[0] if diff else '?'}")
    if saved["train"]["seed"] != config.train.seed:
        raise UserError(f"--resume {resume_from}: train.seed differs from the checkpoint's")


def prune_checkpoints(checkpoint_root: Path, keep: int) -> None:
    """Keep the newest `keep` epoch checkpoints (0 = keep all)."""
    if keep > 0:
        for old in sorted(Path(checkpoint_root).glob("epoch_*[0-9]"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
