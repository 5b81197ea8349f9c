"""Storage dtype of the frozen base: bf16 copies of the aggregator's frozen Linear/Conv weights."""

import torch
import torch.nn as nn

CASTABLE_TYPES = (nn.Linear, nn.Conv2d)


def cast_frozen_base(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen Linear/Conv2d weights and biases of the aggregator (DINO included) in `dtype`.

    Under bf16 autocast these layers compute in bf16 anyway, and autocast re-casts a frozen fp32
    weight on every call (its cast cache only keeps weights that require grad), so a bf16 copy
    gives the same outputs bit for bit while halving their memory and skipping the casts. What
    autocast runs in fp32 stays fp32: LayerNorms, LayerScale gammas, tokens and pos-embeds. The
    heads stay fp32 too: they run with autocast disabled. Trainable parameters (LoRA adapters,
    DoRA magnitudes, modules_to_save) and adapter layers, frozen or not, keep their dtype, so
    adapters and their optimizer state stay fp32.

    Needs bf16 autocast around the forward pass: without it, bf16 weights meet fp32 inputs.

    Args:
        model: a VGGT, plain or wrapped by PEFT (adapter sub-layers are the `lora_*` modules).
        dtype: storage dtype of the frozen base, e.g. `torch.bfloat16`.

    Returns:
        The number of parameters cast.
    """
    count = 0
    for name, module in model.named_modules():
        in_aggregator = name == "aggregator" or ".aggregator." in f".{name}."
        if not isinstance(module, CASTABLE_TYPES) or not in_aggregator or ".lora_" in f".{name}":
            continue
        for param in module.parameters(recurse=False):
            if not param.requires_grad and param.dtype != dtype:
                param.data = param.data.to(dtype)
                count += param.numel()
    return count
