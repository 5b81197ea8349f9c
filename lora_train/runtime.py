"""What a training process needs around the model: device, process group, seeds, RNG state,
the learning-rate schedule, cost accounting and command-line overrides."""

import dataclasses
import math
import os
import random
import resource

import numpy as np
import torch
import torch.distributed as dist

from lora_train.errors import UserError


@dataclasses.dataclass
class DistInfo:
    """This process's place in the (possibly single-process) group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Use an existing process group (Ray Train), or create one from torchrun's env, or none."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created_group=False)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created_group=True)
    return DistInfo()


def resolve_device(requested: str, info: DistInfo | None = None) -> torch.device:
    """`train.device` (auto | cpu | cuda) → this process's device (`cuda:<local rank>`)."""
    info = info or DistInfo()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device: cuda requested but no GPU is visible")
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default, plain fp32 on CPU."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, for an exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cosine_with_warmup(total_steps: int, warmup_steps: int, final_lr_ratio: float):
    """LR multiplier per optimizer step: 0 → 1 linearly over `warmup_steps`, then cosine to `final_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a collated batch onto `device` (other values untouched)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / info.world_size
    return values


def resource_usage(device: torch.device, wall_s: float, cpu_s: float, info: DistInfo) -> dict:
    """Cost so far: GPU seconds (wall × GPUs) or CPU seconds (summed over ranks), and peak memory."""
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        totals = torch.tensor([wall_s * info.world_size, peak_mb], dtype=torch.float64)
        key = "cost/gpu_seconds"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        totals = torch.tensor([cpu_s, peak_mb], dtype=torch.float64)
        key = "cost/cpu_seconds"
    if info.world_size > 1:
        seconds = totals[:1].clone()
        peak = totals[1:].clone()
        if device.type != "cuda":
            dist.all_reduce(seconds, op=dist.ReduceOp.SUM)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        totals = torch.cat([seconds, peak])
    return {key: float(totals[0]), "cost/peak_mem_mb": float(totals[1])}


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--optim.lr 1e-4 --lora.rank=8` → {"optim.lr": "1e-4", "lora.rank": "8"}."""
    overrides, i = {}, 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--") or "." not in flag.split("=")[0]:
            raise UserError(f"unknown argument '{flag}' (config overrides look like --section.key VALUE)")
        if "=" in flag:
            key, value = flag[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise UserError(f"flag '{flag}' needs a value")
            key, value = flag[2:], extra[i + 1]
            i += 2
        overrides[key] = value
    return overrides
