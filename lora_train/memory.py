"""Peak GPU memory of a training run, predicted from its config: the sweep packs trials by it.

    estimate = estimate_peak(config)                  # MemoryEstimate, bytes per term
    estimate.gib, gpu_fraction(estimate.gib, 141.0)   # 10.1 GiB → 1/8 of an H200

The model (bytes; N = micro-batch × views frames of H × W pixels, T = N × P tokens with
P = 1 + registers + (H/14)(W/14), C = `embed_dim`, all sizes from `VGGTConfig`):

    weights      frozen parameters at their storage dtype (fp32, or bf16 for the aggregator's
                 Linear/Conv weights with `model.base_dtype`) + trainable parameters in fp32
    optimizer    trainable × 12: fp32 gradient + AdamW's two moments
    outputs      depth × T × 2C × 4: the aggregator's fp32 outputs, alive while the heads run
    heads        HEAD_BYTES × N × H × W × features/256 per DPT head on the backward path (a head
                 with adapters, or any head when the aggregator has adapters): the heads run in
                 fp32 at full resolution
    blocks       per transformer block on the backward path (every aggregator block from the first
                 adapted one on, in execution order: DINO blocks, then frame/global alternating):
                 BLOCK_BYTES × T × C/1024 of saved activations, plus the bf16 copy autocast makes of
                 its fp32 frozen weights (2 × block parameters); with gradient checkpointing only
                 the block's fp32 input, 4 × T × C

The peak is reached at the end of the forward pass, when everything above is alive at once
(a checkpointed block recomputes its activations during the backward pass, when the heads'
activations are already freed, so the recomputation does not raise the peak). What is not
modelled: the camera head's activations (one token per frame), attention workspace, the
allocator's fragmentation and the CUDA context; `gpu_fraction` adds the last two as a margin.

Calibration: measured `torch.cuda.max_memory_allocated` of one training step of VGGT-1B (camera +
depth heads), 8 views of 350 × 518, rank 16, bf16 autocast, fp32 base, on an H200 (README table,
`bench_vs_upstream.py`): A 10.1 GiB; B 19.4, with checkpointing 10.9; C 28.8, with checkpointing
11.7. Weights, optimizer and outputs are exact counts (4.31 + 0.02..0.24 + 1.36 GiB). A then leaves
4.40 GiB for the depth head: HEAD_BYTES = 4.40 GiB / (8 × 350 × 518) ≈ 3,260 bytes per pixel.
B and C leave 0.383 / 0.385 GiB per block on the backward path (24 / 48 blocks), of which 0.023 GiB
is the bf16 weight copy: BLOCK_BYTES ≈ 52,000 bytes per token at C = 1024 (C: 52,160, B: 51,960).
Checkpointed, B and C add 0.029 GiB per block, the fp32 block input (4 × 7,440 × 1,024 bytes),
and nothing else. Without bf16 autocast (fp32 training) the saved activations are taken as twice
as large: an upper bound, not calibrated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

from lora_train.config import PATCH_SIZE, TrainConfig, config_from_dict, vggt_config

GIB = 2**30
HEAD_BYTES = 3260.0  # per frame pixel of one DPT head at 256 fusion features (fp32, saved for backward)
BLOCK_BYTES = 52_000.0  # per token of one transformer block at embed_dim 1024, bf16 autocast
CHECKPOINT_BYTES = 4.0  # per token and channel: a checkpointed block's fp32 input
OPTIMIZER_BYTES = 12  # per trainable parameter: fp32 gradient + AdamW exp_avg, exp_avg_sq
FP32_ACTIVATION_FACTOR = 2.0  # saved activations without bf16 autocast (uncalibrated upper bound)
ETH3D_ASPECT = 2 / 3  # height / width of ETH3D's 6048 × 4032 images
FRACTION_STEP = 1 / 8  # GPU fractions are requested in these steps
CUDA_CONTEXT_GIB = 1.0  # per process: CUDA context, cuBLAS/cuDNN workspaces
ALLOCATOR_MARGIN = 0.10  # reserved-but-unallocated memory of PyTorch's caching allocator
PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A run's predicted peak GPU memory (allocated tensors), per term of the model, in bytes."""

    weights: float
    optimizer: float
    outputs: float
    heads: float
    blocks: float

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.outputs + self.heads + self.blocks

    @property
    def gib(self) -> float:
        return self.total / GIB

    def __str__(self) -> str:
        terms = ", ".join(f"{f.name} {getattr(self, f.name) / GIB:.2f}" for f in dataclasses.fields(self))
        return f"{self.gib:.2f} GiB ({terms})"


def default_height(width: int) -> int:
    """The height a window of `width` gets from ETH3D-shaped (3:2) images, a multiple of 14."""
    return max(PATCH_SIZE, round(width * ETH3D_ASPECT / PATCH_SIZE) * PATCH_SIZE)


def estimate_peak(config: TrainConfig, *, device_type: str = "cuda", height: int | None = None,
                  model=None) -> MemoryEstimate:
    """Predict the peak memory of training `config` on a `device_type` device (module docstring).

    Args:
        config: the run's config (model, lora, data, optim, train sections are used).
        device_type: "cuda" or "cpu": decides autocast and the frozen base's dtype, as training does.
        height: image height; default `default_height(data.width)` (what ETH3D windows get).
        model: the built (wrapped) model, if at hand; else its parameters are counted on a model
            built on the meta device (cached per model and LoRA settings).
    """
    cfg = vggt_config(config.model)
    bf16 = _autocast_bf16(config, device_type)
    if model is not None:
        frozen_bytes, trainable, adapted = _count(model)
    else:
        frozen_bytes, trainable, adapted = _meta_counts(_settings_key(config, device_type))

    height = height or default_height(config.data.width)
    frames = config.data.batch_size * config.data.num_views
    tokens = frames * (1 + cfg.num_register_tokens + (height // cfg.patch_size) * (config.data.width // cfg.patch_size))
    activation_factor = 1.0 if bf16 else FP32_ACTIVATION_FACTOR

    blocks_on_path = _blocks_on_path(cfg, adapted)
    aggregator_adapted = bool(blocks_on_path)
    heads_on_path = sum(
        1 for head, enabled in (("depth_head", cfg.enable_depth), ("point_head", cfg.enable_point))
        if enabled and (aggregator_adapted or any(name.startswith(head + ".") for name in adapted))
    )
    heads = heads_on_path * HEAD_BYTES * frames * height * config.data.width * cfg.dpt_features / 256
    block_params = 4 * cfg.embed_dim**2 + 2 * cfg.mlp_ratio * cfg.embed_dim**2  # qkv + proj + fc1 + fc2
    if cfg.gradient_checkpointing:
        per_block = CHECKPOINT_BYTES * tokens * cfg.embed_dim
    else:
        weight_copy = 2 * block_params if bf16 and not _base_is_bf16(config, device_type) else 0
        per_block = activation_factor * BLOCK_BYTES * tokens * cfg.embed_dim / 1024 + weight_copy
    return MemoryEstimate(
        weights=frozen_bytes + 4 * trainable,
        optimizer=OPTIMIZER_BYTES * trainable,
        outputs=cfg.depth * tokens * 2 * cfg.embed_dim * 4,
        heads=heads,
        blocks=blocks_on_path * per_block,
    )


def predict_peak_gib(config: TrainConfig, **kwargs) -> float:
    """`estimate_peak(config, **kwargs).gib`."""
    return estimate_peak(config, **kwargs).gib


def gpu_fraction(peak_gib: float, gpu_gib: float) -> float:
    """The share of one GPU of `gpu_gib` a process of predicted peak `peak_gib` asks for.

    The need is the peak plus the caching allocator's margin plus the CUDA context, rounded up to
    a multiple of `FRACTION_STEP`; at most one whole GPU (a bigger run gets a GPU to itself and may
    still run out of memory: the sweep then retries it with less, `sweeps/trial.py`).
    """
    need = peak_gib * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_GIB
    steps = math.ceil(need / gpu_gib / FRACTION_STEP - 1e-9)
    return min(1.0, max(1, steps) * FRACTION_STEP)


# --- parameter counts ------------------------------------------------------------------------------


def _autocast_bf16(config: TrainConfig, device_type: str) -> bool:
    precision = config.train.precision
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


def _base_is_bf16(config: TrainConfig, device_type: str) -> bool:
    import torch

    from lora_train.builders import resolve_base_dtype

    return resolve_base_dtype(config, device_type) == torch.bfloat16


def _settings_key(config: TrainConfig, device_type: str) -> str:
    """What the parameter counts depend on (hashable, for the cache)."""
    model = {k: v for k, v in config.to_dict()["model"].items() if k not in ("checkpoint", "compile")}
    return json.dumps({"model": model, "lora": config.lora.to_dict(), "precision": config.train.precision,
                       "device_type": device_type}, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _meta_counts(key: str) -> tuple[float, int, tuple[str, ...]]:
    """Counts of the model `key` describes, built on the meta device (no memory, a second or two)."""
    import torch

    from lora_train.builders import build_model
    from lora_train.model.precision import cast_frozen_base

    settings = json.loads(key)
    config = config_from_dict({"model": {**settings["model"], "checkpoint": None, "compile": False},
                               "lora": settings["lora"], "train": {"precision": settings["precision"]}},
                              source="memory model")
    model = build_model(config, device="meta")
    if _base_is_bf16(config, settings["device_type"]):  # build_model decides by the (meta) device
        cast_frozen_base(model, torch.bfloat16)
    return _count(model)


def _count(model) -> tuple[float, int, tuple[str, ...]]:
    """(frozen bytes, trainable parameters, names of the layers holding trainable parameters)."""
    frozen, trainable, adapted = 0.0, 0, set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            trainable += param.numel()
            adapted.add(name.removeprefix(PEFT_PREFIX).split(".lora_")[0].split(".modules_to_save")[0])
        else:
            frozen += param.numel() * param.element_size()
    return frozen, trainable, tuple(sorted(adapted))


def _blocks_on_path(cfg, adapted: tuple[str, ...]) -> int:
    """Transformer blocks the backward pass runs through: every aggregator block (DINO blocks
    first, then frame and global blocks alternating) from the first one holding a trainable
    parameter to the last."""
    order = [f"aggregator.patch_embed.blocks.{i}." for i in range(cfg.dino_depth if cfg.patch_embed == "dinov2" else 0)]
    order += [f"aggregator.{kind}_blocks.{i}." for i in range(cfg.depth) for kind in ("frame", "global")]
    first = next((i for i, prefix in enumerate(order) if any(n.startswith(prefix) for n in adapted)), len(order))
    if any(n.startswith("aggregator.patch_embed.") and not n.startswith("aggregator.patch_embed.blocks.")
           for n in adapted):
        first = 0  # the patch projection itself is adapted: every block is on the path
    return len(order) - first
