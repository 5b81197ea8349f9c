"""LoRA adapters on VGGT with PEFT: target strategies, wrapping, saving, loading and merging.

Strategies (module names as in upstream VGGT; D = aggregator depth, 24 for VGGT-1B):

- `A`: every Conv2d in `depth_head.projects.*` and `depth_head.scratch.*`.
- `B`: `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` of the upper half of the aggregator
  (`frame_blocks` and `global_blocks` D/2 .. D−1, i.e. 12–23 for VGGT-1B and 2–3 for the tiny
  model), plus every Linear/Conv2d of `depth_head`.
- `C`: those four layers in all frame and global blocks, plus every Linear/Conv2d of
  `depth_head` and of `camera_head`.
- `custom`: aggregator blocks from `block_ranges` × `layer_kinds`, united with every Linear/Conv2d
  whose full name matches `target_regex`.

PEFT cannot wrap `nn.ConvTranspose2d` (`depth_head.resize_layers.0/1`): such layers are left
frozen and reported in `LoraSummary.skipped`. At r = 16 on VGGT-1B the trainable parameter counts
are A 1,262,624, B 7,717,920 and C 16,336,192.

PEFT receives the explicit list of full module names, never suffixes such as `"qkv"` (those would
also hit the DINOv2 blocks inside `aggregator.patch_embed`).

Order matters: load the pretrained checkpoint into the plain model first (`load_pretrained`),
then `apply_lora`. Wrapped layers keep their weights under `<name>.base_layer.*`, so loading a
plain checkpoint into an already wrapped model cannot work (the bug of the public ETH3D fork).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from lora_train.config import LAYER_KINDS, PARAMETER_GROUPS, LoraSettings
from lora_train.errors import UserError
from vggt_common.files import atomic_dir

BLOCK_LISTS = ("frame_blocks", "global_blocks")
PEFT_INITS = {"default": True, "gaussian": "gaussian"}  # lora.init → PEFT's init_lora_weights
WRAPPABLE_TYPES = (nn.Linear, nn.Conv2d)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSummary:
    """What `apply_lora` did.

    Attributes:
        strategy, rank, alpha: from the settings (alpha resolved).
        num_trainable: parameters with requires_grad after wrapping (LoRA, DoRA magnitudes and
            modules_to_save copies).
        num_total: all parameters of the wrapped model (frozen base included).
        wrapped: full (unprefixed) names of the layers that got a LoRA adapter, in model order.
        skipped: name → reason for layers the strategy selects but PEFT cannot wrap.
        modules_to_save: fully trained modules.
    """

    strategy: str
    rank: int
    alpha: float
    num_trainable: int
    num_total: int
    wrapped: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()

    def __str__(self) -> str:
        share = 100.0 * self.num_trainable / max(self.num_total, 1)
        skipped = ", ".join(self.skipped) or "none"
        return (
            f"LoRA strategy {self.strategy} r={self.rank} alpha={self.alpha:g}: {len(self.wrapped)} layers wrapped, "
            f"{self.num_trainable:,} trainable of {self.num_total:,} parameters ({share:.3f}%); "
            f"skipped (PEFT cannot wrap): {skipped}"
        )


def _parse_block_range(spec: str, depth: int, key: str) -> list[int]:
    spec = str(spec).strip()
    if spec == "all":
        return list(range(depth))
    if spec == "upper_half":
        return list(range(depth // 2, depth))
    if spec == "lower_half":
        return list(range(depth // 2))
    indices = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UserError(
                f"lora.block_ranges {key} = {spec!r}: expected 'all', 'upper_half', 'lower_half' or '0-3,20-23'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last or last >= depth:
            raise UserError(f"lora.block_ranges {key} = {spec!r}: range {first}-{last} outside blocks 0-{depth - 1}")
        indices.update(range(first, last + 1))
    return sorted(indices)


def _block_layer_names(block_indices: Mapping[str, list[int]], kinds: tuple[str, ...]) -> set[str]:
    return {
        f"aggregator.{blocks}.{i}.{LAYER_KINDS[kind]}"
        for blocks, indices in block_indices.items()
        for i in indices
        for kind in kinds
    }


def _aggregator_depth(model: nn.Module) -> int:
    aggregator = getattr(model, "aggregator", None)
    if aggregator is None or not hasattr(aggregator, "frame_blocks"):
        raise UserError(f"apply_lora: {type(model).__name__} is not a VGGT (no aggregator.frame_blocks)")
    return len(aggregator.frame_blocks)


def _head_layer_names(model: nn.Module, head: str, strategy: str, prefixes: tuple[str, ...] | None = None) -> set[str]:
    """Names of all Linear/Conv (incl. transposed) layers under `head`, optionally only below `prefixes`."""
    if getattr(model, head, None) is None:
        raise UserError(
            f"lora strategy {strategy} adapts {head}, but the model has none (enable it in the model config)"
        )
    names = set()
    for name, module in model.named_modules():
        if not name.startswith(head + "."):
            continue
        if prefixes is not None and not any(name.startswith(p) for p in prefixes):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.modules.conv._ConvTransposeNd)):
            names.add(name)
    return names


def select_targets(model: nn.Module, settings: LoraSettings) -> tuple[list[str], dict[str, str]]:
    """Resolve a strategy on a concrete (unwrapped) model.

    Returns:
        (targets, skipped): full names of the layers PEFT will wrap, in model order, and
        name → reason for selected layers PEFT cannot wrap.

    Raises:
        UserError: a needed head is missing, a block range is out of bounds, or a custom
            selection matches no wrappable layer.
    """
    depth = _aggregator_depth(model)
    all_kinds = tuple(LAYER_KINDS)
    selected: set[str] = set()
    if settings.strategy == "A":
        selected = _head_layer_names(model, "depth_head", "A", ("depth_head.projects.", "depth_head.scratch."))
    elif settings.strategy == "B":
        upper = list(range(depth // 2, depth))
        selected = _block_layer_names({b: upper for b in BLOCK_LISTS}, all_kinds)
        selected |= _head_layer_names(model, "depth_head", "B")
    elif settings.strategy == "C":
        selected = _block_layer_names({b: list(range(depth)) for b in BLOCK_LISTS}, all_kinds)
        selected |= _head_layer_names(model, "depth_head", "C") | _head_layer_names(model, "camera_head", "C")
    else:
        if settings.block_ranges is not None or settings.layer_kinds is not None:
            ranges = settings.block_ranges if settings.block_ranges is not None else "all"
            if isinstance(ranges, Mapping):
                unknown = [k for k in ranges if k not in BLOCK_LISTS]
                if unknown:
                    raise UserError(
                        f"lora.block_ranges: unknown block list {unknown[0]!r} (expected {', '.join(BLOCK_LISTS)})"
                    )
                block_indices = {b: _parse_block_range(spec, depth, b) for b, spec in ranges.items()}
            else:
                block_indices = {b: _parse_block_range(ranges, depth, b) for b in BLOCK_LISTS}
            selected |= _block_layer_names(block_indices, settings.layer_kinds or all_kinds)
        if settings.target_regex is not None:
            pattern = re.compile(settings.target_regex)
            regex_hits = {name for name, m in model.named_modules() if name and pattern.fullmatch(name)}
            # containers (blocks, Sequentials) are not layers: keep modules that own parameters
            selected |= {n for n in regex_hits if list(model.get_submodule(n).parameters(recurse=False))}

    modules = dict(model.named_modules())
    missing = sorted(n for n in selected if n not in modules)
    if missing:
        raise UserError(
            f"lora strategy {settings.strategy}: model has no module {missing[0]!r} ({len(missing)} missing)"
        )
    targets = [n for n in modules if n in selected and isinstance(modules[n], WRAPPABLE_TYPES)]
    skipped = {
        n: f"{type(modules[n]).__name__} is not supported by PEFT LoRA"
        for n in modules
        if n in selected and not isinstance(modules[n], WRAPPABLE_TYPES)
    }
    if not targets:
        raise UserError(
            f"lora strategy {settings.strategy}: the selection (target_regex={settings.target_regex!r}, "
            f"block_ranges={settings.block_ranges!r}, layer_kinds={settings.layer_kinds!r}) "
            "matches no Linear/Conv2d layer"
        )
    return targets, skipped


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip a DistributedDataParallel / torch.compile wrapper."""
    while hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _strip_prefix(name: str) -> str:
    return name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name


def lora_summary(peft_model: nn.Module) -> LoraSummary:
    """Summary of a wrapped model, recounted from the model itself.

    `skipped` and the settings fields come from `apply_lora` / `load_adapter` when the model was
    made by them.
    """
    peft_model = _unwrap(peft_model)
    previous: LoraSummary | None = getattr(peft_model, "lora_summary", None)
    wrapped = tuple(_strip_prefix(n) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    saved = tuple(_strip_prefix(n) for n, m in peft_model.named_modules() if isinstance(m, ModulesToSaveWrapper))
    config = peft_model.peft_config[peft_model.active_adapter] if isinstance(peft_model, PeftModel) else None
    return LoraSummary(
        strategy=previous.strategy if previous else "loaded",
        rank=previous.rank if previous else int(config.r) if config else 0,
        alpha=previous.alpha if previous else float(config.lora_alpha) if config else 0.0,
        num_trainable=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        num_total=sum(p.numel() for p in peft_model.parameters()),
        wrapped=wrapped,
        skipped=dict(previous.skipped) if previous else {},
        modules_to_save=saved,
    )


def apply_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap a VGGT with LoRA adapters (PEFT) according to `settings`.

    Load the pretrained weights into `model` BEFORE calling this (`load_pretrained(model, path)`):
    the wrapped layers keep their weights as `<name>.base_layer.*`, so a plain checkpoint cannot
    be loaded afterwards. Works on a model built on the meta device (e.g. to count parameters).

    Args:
        model: an unwrapped `VGGT` (modified in place: its layers are replaced by LoRA layers
            and all base parameters are frozen).
        settings: strategy and LoRA hyperparameters.

    Returns:
        The `PeftModel`; its `lora_summary` attribute is a `LoraSummary` (trainable count,
        wrapped layers, layers skipped because PEFT cannot wrap them).

    Raises:
        UserError: model already wrapped, unknown module in `modules_to_save`, a selection that
            matches nothing, or a missing head.
    """
    if isinstance(model, PeftModel) or any(isinstance(m, LoraLayer) for m in model.modules()):
        raise UserError("apply_lora: the model already has LoRA adapters (wrap a plain VGGT once)")
    targets, skipped = select_targets(model, settings)
    modules = dict(model.named_modules())
    for name in settings.modules_to_save:
        if name not in modules or not name:
            raise UserError(f"lora.modules_to_save: model has no module {name!r}")
        if any(t == name or t.startswith(name + ".") for t in targets):
            raise UserError(f"lora.modules_to_save: {name!r} overlaps the LoRA targets of strategy {settings.strategy}")
    fully_trained = settings.modules_to_save
    skipped = {n: why for n, why in skipped.items() if not any(n == s or n.startswith(s + ".") for s in fully_trained)}

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        modules_to_save=list(settings.modules_to_save) or None,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        init_lora_weights=PEFT_INITS[settings.init],
        bias="none",
    )
    peft_model = get_peft_model(model, config)

    wrapped = [_strip_prefix(n) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    if wrapped != targets:  # PEFT matched more or fewer modules than we asked for
        difference = sorted(set(wrapped) ^ set(targets))[:5]
        raise RuntimeError(f"PEFT wrapped {len(wrapped)} layers, expected {len(targets)}; differing: {difference}")
    peft_model.lora_summary = LoraSummary(
        strategy=settings.strategy,
        rank=settings.rank,
        alpha=settings.lora_alpha,
        num_trainable=0,
        num_total=0,
        wrapped=tuple(wrapped),
        skipped=skipped,
    )
    peft_model.lora_summary = lora_summary(peft_model)
    return peft_model


def save_adapter(peft_model: nn.Module, out_dir: str | Path) -> Path:
    """Save the adapter as stock PEFT files (`adapter_config.json`, `adapter_model.safetensors`).

    `PeftModel.from_pretrained(base_vggt, out_dir)` (or `load_adapter`) loads them onto a VGGT
    that holds the original pretrained weights. The folder is written under a temporary name
    and renamed into place, replacing an older save; nothing is half-written.

    Args:
        peft_model: the wrapped model (a DDP wrapper is unwrapped).
        out_dir: target directory.

    Returns:
        `out_dir` as a Path.
    """
    with atomic_dir(out_dir) as tmp:
        write_adapter_files(peft_model, tmp)
    return Path(out_dir)


def write_adapter_files(peft_model: nn.Module, folder: Path) -> None:
    """The adapter's PEFT files into an existing `folder` (see `save_adapter` for the atomic form)."""
    peft_model = _unwrap(peft_model)
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"save_adapter needs a PeftModel, got {type(peft_model).__name__}")
    peft_model.save_pretrained(str(folder))
    (Path(folder) / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template


def load_adapter(base_model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Attach a saved adapter to a VGGT that already holds the pretrained base weights.

    Args:
        base_model: unwrapped VGGT of the same configuration the adapter was trained on, with
            its checkpoint loaded (`load_pretrained`) first.
        adapter_dir: directory written by `save_adapter` (or any stock PEFT LoRA save).
        is_trainable: keep the adapter trainable (to continue training) instead of inference mode.

    Returns:
        The `PeftModel`, with a `lora_summary` attribute.

    Raises:
        UserError: missing files, or an adapter that does not fit the model.
    """
    adapter_dir = Path(adapter_dir)
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise UserError(f"adapter directory {adapter_dir} lacks {', '.join(missing)}")
    try:
        peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"adapter {adapter_dir} does not fit the model: {reason}") from None
    peft_model.lora_summary = lora_summary(peft_model)
    return peft_model


def merge_adapter(peft_model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return the plain VGGT (for inference).

    The base layers are modified in place; the returned model has the original module names
    and state_dict keys again.
    """
    peft_model = _unwrap(peft_model)
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"merge_adapter needs a PeftModel, got {type(peft_model).__name__}")
    return peft_model.merge_and_unload()


def trainable_parameter_groups(peft_model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """Trainable parameters grouped by top-level VGGT module, for per-group gradient clipping.

    Returns:
        `{group: {parameter name: parameter}}` with groups among aggregator, camera_head,
        depth_head, point_head (only non-empty groups; names as in `peft_model.named_parameters()`).
        Every trainable parameter is in exactly one group.
    """
    groups: dict[str, dict[str, nn.Parameter]] = {}
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        plain = _strip_prefix(name[len("module.") :] if name.startswith("module.") else name)
        top = plain.split(".", 1)[0]
        groups.setdefault(top, {})[name] = param
    ordered = {g: groups.pop(g) for g in PARAMETER_GROUPS if g in groups}
    ordered.update(groups)
    return ordered
