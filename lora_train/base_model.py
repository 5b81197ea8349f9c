"""Cached demo assets: synthetic ETH3D-format scenes and the tiny pretrained VGGT base.

VGGT-1B does not fit a CPU demo, so the demo fine-tunes a `tiny` VGGT instead. To make that a
real fine-tuning (a pretrained base, then a domain shift), the base is trained fully, once, on the
synthetic `generic` scene family; LoRA then adapts it to the `facade` family. Both are cached
under `$VGGT_DATA_DIR` (default `~/.cache/vggt-lora/`), keyed by the content that produced them,
with a lock file so that concurrent trials never build the same thing twice.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lora_train.errors import UserError

# Bump when the scene writer or the base recipe changes meaning, to invalidate old caches.
ASSET_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TinyBaseRecipe:
    """How the tiny base is trained (all parameters, camera + depth heads, generic scenes)."""

    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    num_scenes: int = 8
    num_views: int = 3
    width: int = 126
    batch_size: int = 2
    seed: int = 0
    views_per_scene: int = 10
    image_size: tuple[int, int] = (384, 256)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VGGT_DATA_DIR") or Path.home() / ".cache" / "vggt-lora").expanduser()


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive inter-process lock (released when the process dies, so never stale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic_scenes(family: str, num_scenes: int, seed: int = 0, cache_dir: str | Path | None = None,
                            **writer_options) -> Path:
    """A directory of `num_scenes` synthetic ETH3D-format scenes of `family`, written once.

    Args:
        family: "facade" or "generic" (see `lora_train.data.synthetic`).
        num_scenes, seed: what to generate.
        cache_dir: cache root (default `$VGGT_DATA_DIR` or `~/.cache/vggt-lora/`).
        **writer_options: further `write_synthetic_dataset` options (views_per_scene, image_size).

    Returns:
        The dataset root (`ETH3DWindows(root, ...)` reads it).
    """
    from lora_train.data.synthetic import write_synthetic_dataset

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    options = "".join(f"-{k}{'x'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in sorted(writer_options.items()))
    root = cache / "synthetic" / f"{family}-n{num_scenes}-seed{seed}{options}-v{ASSET_VERSION}"
    done_marker = root / ".complete"
    if done_marker.is_file():
        return root
    with file_lock(cache / "synthetic" / f"{root.name}.lock"):
        if done_marker.is_file():  # another process finished it while we waited
            return root
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_synthetic_dataset(tmp, num_scenes, seed=seed, family=family, **writer_options)
        (tmp / ".complete").write_text(json.dumps({"family": family, "num_scenes": num_scenes, "seed": seed}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


def tiny_base_key(recipe: TinyBaseRecipe) -> str:
    """Content hash of everything that determines the tiny base's weights."""
    content = {
        "version": ASSET_VERSION,
        "model": tiny_base_config().to_dict(),
        "recipe": dataclasses.asdict(recipe),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def tiny_base_config():
    """The architecture of the tiny base: `VGGTConfig.tiny()` with camera and depth heads."""
    from lora_train.model import VGGTConfig

    return VGGTConfig.tiny(enable_point=False)


def ensure_tiny_base(cache_dir: str | Path | None = None, recipe: TinyBaseRecipe | None = None,
                     progress: bool = True) -> Path:
    """Path of the tiny pretrained base, training it first if it is not cached.

    Args:
        cache_dir: cache root (default `$VGGT_DATA_DIR` or `~/.cache/vggt-lora/`).
        recipe: training recipe (tests pass a short one; it is part of the cache key).
        progress: show a tqdm bar while training.

    Returns:
        `<cache>/tiny_base/<key>.safetensors`, loadable by `lora_train.model.load_pretrained`
        into `VGGT(tiny_base_config())`; a JSON card with the recipe and final loss sits next to it.
    """
    recipe = recipe or TinyBaseRecipe()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = tiny_base_key(recipe)
    weights = cache / "tiny_base" / f"{key}.safetensors"
    if weights.is_file():
        return weights
    with file_lock(cache / "tiny_base" / f"{key}.lock"):
        if weights.is_file():
            return weights
        state, card = train_tiny_base(recipe, cache, progress=progress)
        from safetensors.torch import save_file

        tmp = weights.with_name(weights.name + f".tmp{os.getpid()}")
        save_file(state, str(tmp))
        card_path = weights.with_suffix(".json")
        card_path.write_text(json.dumps({"key": key, **card}, indent=2))
        tmp.rename(weights)
    return weights


def train_tiny_base(recipe: TinyBaseRecipe, cache_dir: Path, progress: bool = True) -> tuple[dict, dict]:
    """Train `VGGT(tiny_base_config())` fully on generic synthetic scenes.

    Returns:
        (state_dict with contiguous CPU tensors, card dict with the recipe and losses).
    """
    from lora_train.data import ETH3DWindows, collate_windows
    from lora_train.losses import VGGTLoss, normalize_gt
    from lora_train.model import VGGT
    from lora_train.train import cosine_with_warmup, seed_everything

    seed_everything(recipe.seed)
    root = ensure_synthetic_scenes(
        "generic", recipe.num_scenes, seed=recipe.seed, cache_dir=cache_dir,
        views_per_scene=recipe.views_per_scene, image_size=recipe.image_size,
    )
    windows = ETH3DWindows(
        root, split="train", num_views=recipe.num_views, width=recipe.width, seed=recipe.seed,
        cache_dir=cache_dir / "windows",
    )
    if len(windows) < recipe.batch_size:
        raise UserError(f"tiny base: only {len(windows)} training windows in {root}")
    model = VGGT(tiny_base_config())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(recipe.steps, round(recipe.warmup_ratio * recipe.steps), 0.01)
    )
    loss_fn = VGGTLoss()
    generator = torch.Generator().manual_seed(recipe.seed)
    order: list[int] = []
    losses = []
    start = time.time()
    bar = tqdm(range(recipe.steps), desc="tiny base (one-time)", unit="step", disable=None if progress else True)
    for _ in bar:
        if len(order) < recipe.batch_size:
            order += torch.randperm(len(windows), generator=generator).tolist()
        batch = normalize_gt(collate_windows([windows[order.pop()] for _ in range(recipe.batch_size)]))
        objective = loss_fn(model(batch["images"]), batch)["objective"]
        if not math.isfinite(objective.item()):
            raise RuntimeError("tiny base training diverged (non-finite loss)")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(objective.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tail = losses[-max(1, len(losses) // 10):]
    card = {
        "description": "tiny VGGT trained fully on synthetic 'generic' scenes (demo base for LoRA)",
        "model": tiny_base_config().to_dict(),
        "recipe": dataclasses.asdict(recipe),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "train_seconds": round(time.time() - start, 1),
    }
    return state, card


def resolve_checkpoint(value: str | None) -> Path | None:
    """`model.checkpoint` → a file: "tiny-base" builds/uses the cached base; None = random init."""
    if value is None:
        return None
    if value == "tiny-base":
        return ensure_tiny_base()
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"model.checkpoint: file not found: {value}")
    return path
