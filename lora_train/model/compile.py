"""Regional `torch.compile`: every transformer block compiled on its own, not the whole model.

`compile_blocks(model)` calls `block.compile()` on each `Block` of the aggregator (24 DINO,
24 frame and 24 global blocks for VGGT-1B: nearly all of the FLOPs). The camera trunk is left
eager: it attends over one token per frame, too little work to repay its compilation. Why
regional and how the compiled code is shared:

- TorchDynamo keys its cache on the code object being run (the blocks' shared `forward`) and
  treats module parameters as graph inputs; its guards check the structure it traced (layer
  types, LoRA wrappers, dropout, training flag), the tensors' shapes, dtypes, devices and
  `requires_grad`, and the grad mode, not which module instance runs. So all frame blocks
  share one compiled graph, the global blocks (another token count) a second, the DINO blocks
  a third: compile time is that of a few blocks, not of 72, and the rest of the model (heads,
  the loss, the per-step Python) stays eager and flexible. Training adds graphs per kind of
  block: frozen, LoRA-wrapped, and LoRA-wrapped behind a trainable block (its input needs a
  gradient).
- Reuse across trials in a reused process (Ray Tune's `reuse_actors`): the cache lives with the
  code object, not with the model, so a new model built in the same process for the next trial
  runs the graphs already compiled when its blocks look the same: same strategy and LoRA rank
  (a LoRA-wrapped block is a different structure), base dtype, views, image size and micro-batch.
  Anything else adds a graph (recompile) next to the old ones; `RECOMPILE_LIMIT` leaves room for
  the dozen or so variants a sweep produces before Dynamo falls back to eager.
- Across processes, Inductor's on-disk caches (FX graph and AOTAutograd caches, on by default,
  under `TORCHINDUCTOR_CACHE_DIR`) skip the backend compilation of a graph seen before; tracing
  still runs (seconds per graph).

Gradient checkpointing wraps the compiled block (the recomputation reruns the compiled forward).
`dynamic=False` keeps one static graph per shape: frame and global blocks are two fixed shapes,
and static kernels are the fastest ones.
"""

import torch
import torch.nn as nn

from lora_train.model.blocks import Block

RECOMPILE_LIMIT = 64  # graphs per code object before Dynamo gives up and runs it eagerly


def compile_blocks(model: nn.Module) -> int:
    """Compile every transformer `Block` of the aggregator in place (lazily: on its first call).

    Args:
        model: a VGGT, plain or wrapped by PEFT / DDP.

    Returns:
        The number of blocks set up for compilation.
    """
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [m for n, m in model.named_modules() if isinstance(m, Block) and ".aggregator." in f".{n}."]
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)
