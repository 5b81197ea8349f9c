"""The tiny pretrained base: the demo's stand-in for VGGT-1B, trained once and cached.

VGGT-1B does not fit a CPU demo, so the demo fine-tunes a `tiny` VGGT instead. To make that a
real fine-tuning (a pretrained base, then a domain shift), the base is trained fully, once, on the
synthetic `generic` scene family; LoRA then adapts it to the `facade` family. The weights are
cached in the `bases/` folder of the cache root (`lora_train.data.cache`), keyed by the content
that produced them, with a lock so that concurrent trials never train it twice.
"""

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lora_train.data.cache import ASSET_VERSION, cache_dir, ensure_synthetic_scenes
from lora_train.errors import UserError
from lora_train.runtime import cosine_with_warmup, seed_everything
from vggt_common.files import atomic_write, file_lock


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


def ensure_tiny_base(root: str | Path | None = None, recipe: TinyBaseRecipe | None = None,
                     progress: bool = True) -> Path:
    """Path of the tiny pretrained base, training it first if it is not cached.

    Args:
        root: cache root (default `lora_train.data.cache.cache_root()`).
        recipe: training recipe (tests pass a short one; it is part of the cache key).
        progress: show a tqdm bar while training.

    Returns:
        `<root>/bases/tiny-<key>.safetensors`, loadable by `lora_train.model.load_pretrained`
        into `VGGT(tiny_base_config())`; a JSON card with the recipe and final loss sits next to it.
    """
    recipe = recipe or TinyBaseRecipe()
    bases = cache_dir("bases", root)
    key = tiny_base_key(recipe)
    weights = bases / f"tiny-{key}.safetensors"
    if weights.is_file():
        return weights
    with file_lock(bases / f"tiny-{key}.lock"):
        if weights.is_file():
            return weights
        state, card = train_tiny_base(recipe, root, progress=progress)
        from safetensors.torch import save_file

        atomic_write(weights.with_suffix(".json"), json.dumps({"key": key, **card}, indent=2))
        atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    return weights


def train_tiny_base(recipe: TinyBaseRecipe, root: str | Path | None = None,
                    progress: bool = True) -> tuple[dict, dict]:
    """Train `VGGT(tiny_base_config())` fully on generic synthetic scenes.

    Returns:
        (state_dict with contiguous CPU tensors, card dict with the recipe and losses).
    """
    from lora_train.data import ETH3DWindows, collate_windows
    from lora_train.losses import VGGTLoss, normalize_gt
    from lora_train.model import VGGT

    seed_everything(recipe.seed)
    scenes = ensure_synthetic_scenes(
        "generic", recipe.num_scenes, seed=recipe.seed, root=root,
        views_per_scene=recipe.views_per_scene, image_size=recipe.image_size,
    )
    windows = ETH3DWindows(
        scenes, split="train", num_views=recipe.num_views, width=recipe.width, seed=recipe.seed,
        cache_dir=cache_dir("views", root),
    )
    if len(windows) < recipe.batch_size:
        raise UserError(f"tiny base: only {len(windows)} training windows in {scenes}")
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
