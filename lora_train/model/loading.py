"""Strict loading of VGGT checkpoints (official `model.pt` / `model.safetensors`, training checkpoints)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from lora_train.errors import UserError
from lora_train.model.aggregator import Aggregator

_SHOW_KEYS = 5  # offending keys named in an error message; the rest are counted


@dataclass
class LoadReport:
    """What `load_pretrained` did.

    Attributes:
        path: the checkpoint file.
        num_loaded: state_dict entries loaded into the model (= all of the model's entries).
        dropped: key prefix (e.g. "track_head.") → number of checkpoint entries dropped because
            the model does not build that head; every prefix that was eligible is listed.
    """

    path: str
    num_loaded: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def __str__(self) -> str:
        dropped = ", ".join(f"{count} {prefix}*" for prefix, count in self.dropped.items()) or "none"
        return f"loaded {self.num_loaded} tensors from {self.path}; dropped (heads not built): {dropped}"


def disabled_head_prefixes(model: nn.Module) -> list[str]:
    """Prefixes of checkpoint keys that belong to heads `model` does not build."""
    prefixes = ["track_head."]
    for name in ("camera_head", "depth_head", "point_head"):
        if getattr(model, name, None) is None:
            prefixes.append(f"{name}.")
    return prefixes


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state_dict without a second in-memory copy.

    `.safetensors` files are opened with safetensors; anything else with `torch.load`
    (mmap, weights_only). A `{"model": state_dict, ...}` training checkpoint is unwrapped.

    Raises:
        UserError: missing or unreadable file, or no state_dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # corrupt file, pickle with non-tensor objects, ...
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {reason}") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"checkpoint {path} holds no state_dict (expected {{key: tensor}} or {{'model': {{key: tensor}}}})")
    return dict(state)


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a checkpoint without reading its tensors (safetensors header, or a
    memory-mapped `torch.load`); same errors as `read_state_dict`."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:
            raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}") from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def check_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Would `load_pretrained(model, path)` succeed? Checks keys and shapes only (works on a model
    built on the meta device, reads no tensor data). Raises `UserError` like `load_pretrained`."""
    shapes = read_shapes(path)
    for prefix in disabled_head_prefixes(model):
        shapes = {k: v for k, v in shapes.items() if not k.startswith(prefix)}
    _check_compatible(Path(path), {k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes)


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    more = f" and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else ""
    return f"{len(keys)} ({shown}{more})"


def _check_compatible(path: Path, model_state: Mapping, state: Mapping) -> None:
    """Keys and shapes of a checkpoint (tensors or shapes) against the model's; `UserError` listing
    what differs."""
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [
        f"{k}: checkpoint {list(_shape(state[k]))} vs model {list(_shape(model_state[k]))}"
        for k in model_state
        if k in state and _shape(state[k]) != _shape(model_state[k])
    ]
    problems = [
        f"{label} {_describe(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise UserError(f"checkpoint {path} does not match the model: " + "; ".join(problems))


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a VGGT checkpoint into `model`, strictly, before any LoRA wrapping.

    Accepts the official plain state_dict (`model.pt`), `model.safetensors`, or a training
    checkpoint `{"model": state_dict, ...}`. Keys of heads the model does not build are dropped
    by explicit prefix (always `track_head.`, and `camera_head.` / `depth_head.` /
    `point_head.` when disabled) and counted in the report. Every other difference (missing,
    unexpected, or shape-mismatched keys) is an error. A model built on the meta device is
    loaded with `assign=True`, so its parameters become the (memory-mapped) checkpoint tensors.

    Args:
        model: a `VGGT` (not wrapped by PEFT).
        path: checkpoint file.

    Returns:
        A `LoadReport` with the number of loaded tensors and the per-prefix dropped counts.

    Raises:
        UserError: unreadable file, or keys/shapes that do not match (message lists them).
    """
    path = Path(path)
    model_state = model.state_dict()
    if any(".base_layer." in key or ".lora_A." in key for key in model_state):
        raise UserError(
            f"cannot load {path} into a LoRA-wrapped model: call load_pretrained on the plain VGGT "
            "first, then add adapters (wrapped layers keep their weights under '.base_layer.')"
        )
    state = read_state_dict(path)
    dropped = {}
    for prefix in disabled_head_prefixes(model):
        keys = [k for k in state if k.startswith(prefix)]
        dropped[prefix] = len(keys)
        for key in keys:
            del state[key]

    _check_compatible(path, model_state, state)
    on_meta = any(t.is_meta for t in model_state.values())
    if on_meta:
        state = {k: v.to(model_state[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=on_meta)
    if on_meta:
        for module in model.modules():
            if isinstance(module, Aggregator) and module._resnet_mean.is_meta:
                module.reset_normalization_buffers(device="cpu")
    return LoadReport(path=str(path), num_loaded=len(state), dropped=dropped)
