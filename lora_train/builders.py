"""The one place that turns a `TrainConfig` into a VGGT (with its weights and adapter) and into
training and validation windows. Training, evaluation, serving and the benchmarks all call it.

Order of the model build (it matters): VGGT from `model:` → pretrained weights → LoRA. Adapters
wrap layers whose weights are already the checkpoint's; a plain checkpoint cannot be loaded into
an already wrapped model.
"""

from pathlib import Path

import torch

from lora_train.config import TrainConfig, validation_protocol, vggt_config
from lora_train.errors import UserError


def resolve_checkpoint(value: str | None) -> Path | None:
    """`model.checkpoint` → a file: "tiny-base" builds/uses the cached base; None = random init."""
    if value is None:
        return None
    if value == "tiny-base":
        from lora_train.tiny_base import ensure_tiny_base

        return ensure_tiny_base()
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"model.checkpoint: file not found: {value}")
    return path


def check_pretrained(config: TrainConfig) -> Path | None:
    """Would `build_model(config)` load its checkpoint? Keys and shapes checked against the model
    the config builds (on the meta device: no weights read, seconds even for VGGT-1B).

    Returns:
        The checkpoint file, or None (random init). The tiny base is built if not cached.
    """
    from lora_train.model import VGGT
    from lora_train.model.loading import check_checkpoint

    checkpoint = resolve_checkpoint(config.model.checkpoint)
    if checkpoint is not None:
        with torch.device("meta"):
            model = VGGT(vggt_config(config.model))
        check_checkpoint(model, checkpoint)
    return checkpoint


def build_model(config: TrainConfig, adapter_dir: str | Path | None = None, *, trainable: bool = True,
                merge: bool = False, base_only: bool = False,
                device: torch.device | str = "cpu") -> torch.nn.Module:
    """VGGT as `config.model` says, pretrained weights loaded, then LoRA.

    Args:
        config: the training config (`model` and `lora` sections are used).
        adapter_dir: a saved adapter to attach instead of fresh adapters from `config.lora`.
        trainable: keep a loaded adapter trainable (resume); False for evaluation.
        merge: fold the adapter into the base weights and return a plain VGGT (serving).
        base_only: no adapter at all: the frozen base as the checkpoint holds it.
        device: where the parameters are created (a 1B model is built on the GPU directly).

    Returns:
        A `PeftModel` (or, with `merge` or `base_only`, a plain `VGGT`) on `device`, with the
        speed settings of `model:` applied: the SDPA kernel preference, the frozen base in
        `resolve_base_dtype(config, device)`, the aggregator blocks compiled if `model.compile`.
    """
    from lora_train.lora import apply_lora, load_adapter, merge_adapter
    from lora_train.model import VGGT, load_pretrained
    from lora_train.model.compile import compile_blocks
    from lora_train.model.precision import cast_frozen_base

    checkpoint = resolve_checkpoint(config.model.checkpoint)
    # On the CPU the checkpoint's memory-mapped tensors become the parameters: built on the meta
    # device, the model holds one copy of the weights (not a random init plus the file's pages).
    on_cpu = torch.device(device).type == "cpu"
    with torch.device("meta" if checkpoint is not None and on_cpu else device):
        model = VGGT(vggt_config(config.model))
    model.set_attention_backend(config.model.attention_backend)
    if checkpoint is not None:
        load_pretrained(model, checkpoint)
    if not base_only:
        if adapter_dir is not None:
            model = load_adapter(model, adapter_dir, is_trainable=trainable and not merge)
        else:
            model = apply_lora(model, config.lora)
        if merge:
            model = merge_adapter(model)
    # After the adapters: they are created in fp32 and stay so; only the frozen base is cast.
    base_dtype = resolve_base_dtype(config, device)
    if base_dtype != torch.float32:
        cast_frozen_base(model, base_dtype)
    if config.model.compile:
        compile_blocks(model)
    return model


def resolve_base_dtype(config: TrainConfig, device: torch.device | str) -> torch.dtype:
    """Storage dtype of the frozen aggregator weights for a model that runs on `device`.

    bf16 only where the forward pass runs under bf16 autocast (`train.precision`: auto on a GPU,
    or bf16), since bf16 weights need autocast to meet fp32 inputs: `auto` picks it on a GPU,
    `bf16` wherever autocast is bf16; everything else stays fp32 (CPU runs by default).
    """
    from lora_train.runtime import autocast_dtype

    device = torch.device(device)
    bf16_autocast = autocast_dtype(config.train.precision, device) == torch.bfloat16
    wanted = config.model.base_dtype
    if bf16_autocast and (wanted == "bf16" or (wanted == "auto" and device.type == "cuda")):
        return torch.bfloat16
    return torch.float32


def build_datasets(config: TrainConfig):
    """(train, val) window datasets; synthetic facade scenes when `data.root` is unset.

    Training windows follow `data.*` and `train.seed`; validation windows follow the validation
    protocol alone (`lora_train.config.validation_protocol`), so runs that train differently are
    still scored on the same windows.
    """
    from lora_train.data import ETH3DWindows
    from lora_train.data.cache import ensure_synthetic_scenes

    d = config.data
    protocol = validation_protocol(config)
    root = d.root
    if root is None:
        root = ensure_synthetic_scenes(d.synthetic_family, d.synthetic_scenes, seed=d.synthetic_seed)
    elif not Path(root).expanduser().is_dir():
        raise UserError(f"data.root: not a directory: {root}")
    common = dict(scenes=d.scenes, val_scenes=protocol["scenes"], cache_dir=d.cache_dir)
    train = ETH3DWindows(root, split="train", num_views=d.num_views, width=d.width, seed=config.train.seed,
                         color_jitter=d.color_jitter, **common)
    val = ETH3DWindows(root, split="val", num_views=protocol["num_views"], width=protocol["width"],
                       seed=protocol["seed"], max_windows=protocol["max_windows"], **common)
    return train, val
