"""Trials sized to GPU memory: `resources.gpus_per_trial: auto` and the out-of-memory fallbacks.

With `auto`, each trial asks Ray for the share of a GPU its predicted peak memory needs
(`lora_train.memory`: the prediction; `gpu_fraction`: plus margins, rounded up to 1/8), through
Tune's per-trial resources (`tune.with_resources` with `PackedResources`, a callable of the trial
config). Ray then runs several small trials on one large GPU and gives a big one a whole GPU. Ray's
fractional GPUs are bookkeeping only: the prediction is what keeps co-located trials in memory.

The memory of one GPU comes from `resources.gpu_memory_gib` when set (set it to the smallest GPU
of a mixed cluster), else from `nvidia-smi` on the driver, else from `nvidia-smi` in a small Ray
task on a GPU node; nothing creates a CUDA context on the driver.

A one-process trial that still runs out of memory before its first epoch's result is retried in
the same process, first with gradient checkpointing, then with half the micro-batch and twice the
gradient accumulation (the same global batch): `oom_fallback`, driven by
`sweeps.trial.train_fitting_memory`. (A DDP trial's out-of-memory error fails it, as any error.)
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from lora_train.errors import UserError

MAX_OOM_RETRIES = 2
PROBE_TIMEOUT_S = 120


def trial_resources(space, setup):
    """What one trial asks Ray for: a dict, or `PackedResources` (a callable of the trial config)."""
    if not space.runs_in_trial():  # it only drives a Train run whose workers hold the resources
        return {"CPU": 0, "memory": 2**20}  # Ray needs a non-empty request
    if not space.pack_gpus:
        return {"CPU": space.cpus_per_trial, "GPU": space.gpus_per_trial}
    return PackedResources(space, setup.fixed_overrides, gpu_memory_gib(space))


class PackedResources:
    """`tune.with_resources` callable: trial config → `PlacementGroupFactory` of the trial's CPUs
    and the GPU share of its predicted peak memory (picklable: Tune stores it with the trainable)."""

    def __init__(self, space, fixed_overrides: dict, gpu_gib: float):
        self.space, self.fixed_overrides, self.gpu_gib = space, dict(fixed_overrides), gpu_gib

    def predicted_gib(self, trial_config: dict) -> float:
        from lora_train.config import load_config
        from lora_train.memory import predict_peak_gib
        from sweeps.space import trial_overrides

        base = str(self.space.base_config_path) if self.space.base_config_path else None
        overrides = {**trial_overrides(trial_config, self.space), **self.fixed_overrides}
        return predict_peak_gib(load_config(base, overrides), device_type="cuda")

    def gpu_share(self, trial_config: dict) -> float:
        from lora_train.memory import gpu_fraction

        return gpu_fraction(self.predicted_gib(trial_config), self.gpu_gib)

    def __call__(self, trial_config: dict):
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory([{"CPU": self.space.cpus_per_trial, "GPU": self.gpu_share(trial_config)}])


def gpu_memory_gib(space) -> float:
    """GiB of one GPU of the cluster (see the module docstring for where it comes from)."""
    if space.gpu_memory_gib:
        return float(space.gpu_memory_gib)
    local = visible_gpu_gib()
    if local:
        return local
    import ray

    probe = ray.remote(num_gpus=1 / 8, num_cpus=0)(visible_gpu_gib)
    try:
        remote = ray.get(probe.remote(), timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remote = None
    if not remote:
        raise UserError("resources.gpus_per_trial auto: cannot read the memory of the cluster's GPUs (no "
                        "nvidia-smi answer on the driver or on a GPU node); set resources.gpu_memory_gib")
    return remote


def visible_gpu_gib() -> float | None:
    """Memory of the smallest GPU this process may use, by `nvidia-smi` (no CUDA context); None
    without GPUs or nvidia-smi."""
    command = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if not visible.strip():
            return None
        command.insert(1, f"--id={visible}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
        sizes = [float(line) for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) / 1024 if sizes else None  # MiB → GiB


def oom_fallback(config) -> dict[str, Any] | None:
    """Overrides that make an out-of-memory run smaller, in this order: gradient checkpointing on;
    then half the micro-batch with twice the accumulation (the same global batch); None when
    neither applies."""
    if not config.model.gradient_checkpointing:
        return {"model.gradient_checkpointing": True}
    batch = config.data.batch_size
    if batch > 1 and batch % 2 == 0:
        return {"data.batch_size": batch // 2, "optim.grad_accum_steps": 2 * config.optim.grad_accum_steps}
    return None
