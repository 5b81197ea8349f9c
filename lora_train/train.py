"""LoRA fine-tuning recipe for VGGT: one loop, readable top to bottom.

    python -m lora_train.train --config lora_train/configs/strategy_b.yaml --optim.lr 5e-5
    torchrun --nproc_per_node=2 -m lora_train.train --config tiny_demo --output-dir runs/demo

`run_training(config, reporter)` is the entry point the sweep calls (inside a Ray Train worker,
whose process group already exists); the CLI wraps it with a `ConsoleReporter`.

Order of things (the order matters):
  seed → build VGGT → load pretrained weights → apply LoRA (so every wrapped layer holds the
  pretrained weight) → frozen base in bf16 on GPU, compiled blocks if asked → DDP → AdamW on
  trainable params (fused on GPU) → warmup + cosine LambdaLR stepped every optimizer step → per
  epoch: micro-batches with accumulation, bf16 autocast on GPU, per-group gradient clipping,
  divergence guard → validation → adapter-only checkpoint (rank 0) → reporter.

No host syncs inside a step: loss terms and gradient norms stay on the device, their copy to the
host is started after the optimizer step and read (with the divergence check and the report) once
the next step has been queued, so the GPU never waits for the Python side. The first optimizer
step (compilation, kernel autotuning, allocator warm-up) is reported on its own in the epoch
metrics as `time/warmup_s`; `time/steady_step_s` averages the epoch's other steps. Each step
reports `time/data_wait_s`, the time the loop waited for its batches; the epoch's
`time/data_stall_share` is that wait over the step time of its steady steps (an upper bound of the
GPU's idle share: the host runs a step ahead of the GPU). Next to the measured `cost/peak_mem_mb`,
`cost/predicted_peak_gib` is `lora_train.memory`'s prediction for this run.
"""

import contextlib
import dataclasses
import gc
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lora_train.builders import build_datasets, build_model
from lora_train.checkpointing import (
    check_output_dir,
    check_resumable,
    epoch_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    save_checkpoint,
)
from lora_train.config import TrainConfig, load_config, save_config
from lora_train.data.loading import WindowStream
from lora_train.errors import ArgumentParser, UserError, cli_main
from lora_train.evaluate import evaluate_model, write_validation_record
from lora_train.lora import trainable_parameter_groups
from lora_train.losses import VGGTLoss, normalize_gt
from lora_train.memory import predict_peak_gib
from lora_train.reporting import ConsoleReporter, Reporter
from lora_train.runtime import (
    DistInfo,
    all_reduce_mean,
    autocast_dtype,
    cosine_with_warmup,
    init_distributed,
    parse_overrides,
    resolve_device,
    resource_usage,
    rng_state,
    seed_everything,
    set_rng_state,
    to_device,
)


@dataclasses.dataclass
class TrainResult:
    """Outcome of `run_training`.

    Attributes:
        status: "completed" or "diverged" ("failed" is reported when an exception escapes).
        best_metrics: epoch metrics of the epoch with the lowest `val/abs_rel` (the same on every rank).
        last_checkpoint: directory of the newest checkpoint, or None.
        epochs_done: epochs completed, counting those before a resume.
        reason: why the run stopped early ("" when completed).
    """

    status: str
    best_metrics: dict
    last_checkpoint: str | None
    epochs_done: int
    reason: str = ""


# --- loop helpers ----------------------------------------------------------------------------------


def clip_groups(model: torch.nn.Module, clip_norms: dict[str, float]) -> list[tuple[str, float, list]]:
    """(group, max_norm, params) per trainable group (aggregator / camera_head / depth_head / ...).

    As upstream's GradientClipper, every trainable group needs a norm unless `clip_norms` is empty
    (no clipping at all).
    """
    if not clip_norms:
        return []
    out = []
    for group, params in trainable_parameter_groups(model).items():
        if group not in clip_norms:
            raise UserError(
                f"optim.clip_norms: no entry for trainable group '{group}' (e.g. {next(iter(params))}); "
                f"add optim.clip_norms.{group}"
            )
        out.append((group, clip_norms[group], list(params.values())))
    return out


def make_optimizer(params: list[torch.nn.Parameter], cfg_o, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `params`: the fused CUDA kernel when `optim.fused` and on a GPU, else PyTorch's default."""
    fused = True if cfg_o.fused and device.type == "cuda" else None
    return torch.optim.AdamW(
        params, lr=cfg_o.lr, betas=tuple(cfg_o.betas), weight_decay=cfg_o.weight_decay, fused=fused
    )


def clip_gradients(groups: list[tuple[str, float, list]], device: torch.device) -> torch.Tensor:
    """Clip every group to its max norm; returns the pre-clip norms `[len(groups)]`, on the device."""
    if not groups:
        return torch.zeros(0, device=device)
    return torch.stack([torch.nn.utils.clip_grad_norm_(params, max_norm) for _, max_norm, params in groups])


def forward_losses(module: torch.nn.Module, batch: dict, loss_fn: VGGTLoss, autocast) -> dict:
    """One micro-batch forward pass (under `autocast`) and the loss terms, in fp32."""
    with autocast:
        predictions = module(batch["images"])
    return loss_fn(_float32(predictions), batch)


class HostCopy:
    """A device tensor copied to the host without waiting; `read()` waits for that copy only.

    Started right after a step's kernels are queued and read after the next step's are, so the
    copy is long done and the GPU never idles on the Python side. On CPU it is the tensor itself.
    """

    def __init__(self, values: torch.Tensor):
        self.ready = None
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.values = values

    def read(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


def epoch_batches(num_windows: int, epoch: int, seed: int, batch_size: int, info: DistInfo, micro_batches: int):
    """This rank's window indices for one epoch: `micro_batches` lists of `batch_size` indices.

    The global order is a permutation seeded by (seed, epoch) alone, so it survives resumes. Global
    micro-batch m is perm[m·B·W : (m+1)·B·W]; rank r takes its r-th slice of B, so W processes with
    batch B see exactly what one process with batch B·W sees.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_windows, generator=generator).tolist()
    global_batch = batch_size * info.world_size
    return [
        perm[m * global_batch + info.rank * batch_size : m * global_batch + (info.rank + 1) * batch_size]
        for m in range(micro_batches)
    ]


def timed_batches(loader, waits: list[float]):
    """`loader`'s batches; the seconds spent waiting for each are appended to `waits`."""
    batches = iter(loader)
    while True:
        asked = time.time()
        batch = next(batches, None)
        if batch is None:
            return
        waits.append(time.time() - asked)
        yield batch


def _is_better(metrics: dict, best: dict) -> bool:
    key = "val/abs_rel" if "val/abs_rel" in metrics else "train/loss"
    return not best or metrics.get(key, math.inf) < best.get(key, math.inf)


# --- the recipe ----------------------------------------------------------------------------------


def run_training(config: TrainConfig, reporter: Reporter | None = None, *, resume_from=None,
                 device: torch.device | str | None = None) -> TrainResult:
    """Fine-tune VGGT with LoRA as `config` says, reporting to `reporter`.

    Args:
        config: a validated `TrainConfig` (see `lora_train.config.load_config`).
        reporter: receives `on_step` (every optimizer step), `on_epoch` (with the checkpoint dir)
            and `on_end`, on rank 0 only. Default: silent.
        resume_from: a checkpoint directory written by an earlier run of the same config; training
            continues from the epoch after it with the saved optimizer, scheduler and RNG states.
        device: this process's device when the launcher knows better than `train.device` and
            LOCAL_RANK (Ray Train: `ray.train.torch.get_device()`).

    Returns:
        `TrainResult`. Exceptions propagate after `reporter.on_end("failed", ...)`.
    """
    reporter = reporter or Reporter()
    if device is not None:
        device = torch.device(device)
        wants_gpu = device.type == "cuda"
    else:
        wants_gpu = config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if wants_gpu else "cpu")
    device = device or resolve_device(config.train.device, info)
    try:
        result = _train(config, reporter, info, resume_from, device)
    except BaseException as err:
        if info.is_main:
            reporter.on_end("failed", f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    finally:
        if info.created_group and dist.is_initialized():
            dist.destroy_process_group()
    release_memory(device)  # the model is gone: the reporter's final evaluation gets the memory back
    if info.is_main:
        reporter.on_end(result.status, result.reason)
    return result


def release_memory(device: torch.device) -> None:
    """Free what a finished (or failed) run left: reference cycles of its model, and on CUDA the
    caching allocator's blocks, so other processes on a shared GPU (packed sweep trials) and the
    next run in this process start from the same baseline. Call it where no frame of the run is
    alive any more (not inside an `except` block holding the run's exception)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _train(config: TrainConfig, reporter: Reporter, info: DistInfo, resume_from, device: torch.device) -> TrainResult:
    cfg_t, cfg_o, cfg_d = config.train, config.optim, config.data
    amp_dtype = autocast_dtype(cfg_t.precision, device)
    output_dir = Path(cfg_t.output_dir)
    checkpoint_root = output_dir / "checkpoints"
    if info.is_main:
        check_output_dir(output_dir, resume_from is not None, cfg_t.overwrite)
        save_config(config, output_dir / "config.yaml")

    # Model and data. Every rank builds the same model from the same seed (DDP also broadcasts).
    seed_everything(cfg_t.seed)
    state = load_trainer_state(resume_from) if resume_from is not None else None
    if state is not None:
        check_resumable(state, config, resume_from)
    train_set, val_set = build_datasets(config)
    if info.is_main:
        write_validation_record(output_dir, config, val_set)
    if device.type == "cuda":  # this run's peak, also in a process that trained before
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(config, resume_from, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UserError("lora: the settings leave no trainable parameter")
    predicted_gib = predict_peak_gib(config, device_type=device.type, height=train_set.height, model=model)
    groups = clip_groups(model, cfg_o.clip_norms)
    loss_fn = VGGTLoss(**dataclasses.asdict(config.loss))

    train_module = model
    if info.world_size > 1:
        unused_possible = config.loss.camera_weight == 0 or config.loss.depth_weight == 0
        train_module = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused_possible,
            gradient_as_bucket_view=True,
        )

    # Schedule: every count is in optimizer steps.
    per_step_windows = cfg_d.batch_size * info.world_size * cfg_o.grad_accum_steps
    num_train = len(train_set) if cfg_d.max_train_windows is None else min(len(train_set), cfg_d.max_train_windows)
    steps_per_epoch = num_train // per_step_windows
    if steps_per_epoch == 0:
        raise UserError(
            f"data: {num_train} training windows cannot fill one optimizer step of {per_step_windows} "
            "(data.batch_size × processes × optim.grad_accum_steps)"
        )
    if cfg_t.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg_t.steps_per_epoch)
    total_steps = steps_per_epoch * cfg_t.epochs
    warmup_steps = round(cfg_o.warmup_ratio * total_steps)

    optimizer = make_optimizer(trainable, cfg_o, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, warmup_steps, cfg_o.final_lr_ratio)
    )

    # Training-time randomness (dropout, augmentation) is per rank.
    seed_everything(cfg_t.seed + 1_000 * (info.rank + 1))
    start_epoch, step, best, last_checkpoint = 0, 0, {}, None
    if state is not None:
        if state["total_steps"] != total_steps or state["world_size"] != info.world_size:
            raise UserError(
                f"--resume {resume_from}: saved for {state['total_steps']} steps on {state['world_size']} "
                f"process(es), this run has {total_steps} on {info.world_size}"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][info.rank])
        start_epoch, step, best = state["epoch"], state["step"], state.get("best_metrics", {})
        last_checkpoint = str(resume_from)

    wall_start, cpu_start = time.time(), time.process_time()
    wall_before, cpu_before = state["cost"] if state is not None else (0.0, 0.0)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    progress = tqdm(
        total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
        disable=(not info.is_main) or (None if cfg_t.progress_bar else True),
    )
    warmup_s, term_names = None, []

    def publish(pending: tuple[HostCopy, dict]) -> str | None:
        """Report one optimizer step from its host copy; returns the reason if it diverged."""
        nonlocal warmup_s
        copy, metrics = pending
        values = copy.read()
        terms, norms = values[: len(term_names)], values[len(term_names) :]
        if not all(map(math.isfinite, values)):
            return f"non-finite loss or gradient at step {metrics['step']} (loss={terms[0]})"
        step_index = metrics.pop("step")
        metrics.update({f"train/{n}": v for n, v in zip(term_names, terms)})
        metrics.update({f"train/grad_norm_{group[0]}": v for group, v in zip(groups, norms)})
        if warmup_s is None:
            warmup_s = metrics["time/step_s"]
        else:
            steady_times.append(metrics["time/step_s"])
            steady_waits.append(metrics["time/data_wait_s"])
        epoch_losses.append(metrics["train/loss"])
        if info.is_main:
            reporter.on_step(step_index, metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}")
        return None

    # Background workers load the next batches during each step and across epoch ends; companion
    # views and jitter are a function of (seed, epoch, index), so any worker count trains alike.
    stream = WindowStream(train_set, {
        e: epoch_batches(num_train, e, cfg_t.seed, cfg_d.batch_size, info, steps_per_epoch * cfg_o.grad_accum_steps)
        for e in range(start_epoch, cfg_t.epochs)
    }, cfg_d.num_workers, device)
    for epoch in range(start_epoch, cfg_t.epochs):
        train_module.train()
        loader = stream.epoch(epoch)
        epoch_losses, steady_times, steady_waits, waits = [], [], [], []
        pending, diverged = None, None  # pending: the last optimizer step, not yet read on the host
        step_start = time.time()
        for micro, batch in enumerate(timed_batches(loader, waits)):
            if cfg_t.inject_oom_above_gib is not None and predicted_gib > cfg_t.inject_oom_above_gib:
                raise torch.cuda.OutOfMemoryError(  # test hook: this run does not fit the simulated GPU
                    f"injected: predicted peak {predicted_gib:.3f} GiB > train.inject_oom_above_gib "
                    f"{cfg_t.inject_oom_above_gib} GiB")
            batch = normalize_gt(to_device(batch, device))
            is_last_micro = (micro + 1) % cfg_o.grad_accum_steps == 0
            sync = contextlib.nullcontext() if is_last_micro or info.world_size == 1 else train_module.no_sync()
            with sync:
                losses = forward_losses(train_module, batch, loss_fn, autocast)
                objective = losses["objective"]
                if cfg_t.inject_nan_at_step is not None and step == cfg_t.inject_nan_at_step:
                    objective = objective * float("nan")  # test hook for the divergence guard
                (objective / cfg_o.grad_accum_steps).backward()
            if micro % cfg_o.grad_accum_steps == 0:
                step_terms = torch.zeros(len(losses), dtype=torch.float64, device=device)
                term_names = ["loss"] + [k.removeprefix("loss_") for k in losses if k != "objective"]
            step_terms += torch.stack(
                [objective.detach()] + [v.detach() for k, v in losses.items() if k != "objective"]
            ).double() / cfg_o.grad_accum_steps
            if not is_last_micro:
                continue

            # One optimizer step. All ranks agree on the loss first, so they agree on divergence.
            step_terms = all_reduce_mean(step_terms, info)
            grad_norms = clip_gradients(groups, device)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # Step time: between the ends of two steps' host work. Waiting for the previous step
            # (below) falls into the next one, so in steady state this is the device's pace.
            queued = time.time()
            current = (HostCopy(torch.cat([step_terms, grad_norms.double()])), {
                "step": step, "train/lr": lr, "time/step_s": queued - step_start, "time/data_wait_s": sum(waits),
                "epoch": epoch + (micro + 1) / (steps_per_epoch * cfg_o.grad_accum_steps),
            })
            waits.clear()
            step_start = queued
            # The previous step is read now that this one is queued. A diverged step is thus
            # caught one step late; the extra step's weights are never saved.
            diverged = publish(pending) if pending is not None else None
            pending = current
            if diverged is not None:
                break
            step += 1
        if diverged is None and pending is not None:
            diverged = publish(pending)
        if diverged is not None:
            progress.close()
            return TrainResult("diverged", best, last_checkpoint, epoch, diverged)

        # Validation on rank 0 (the set is small); the others wait at the barrier below.
        epochs_done = epoch + 1
        metrics = {"epoch": epochs_done, "train/loss": float(np.mean(epoch_losses)), "step": step}
        metrics["time/warmup_s"] = warmup_s
        if steady_times:
            metrics["time/steady_step_s"] = float(np.mean(steady_times))
            metrics["time/data_stall_share"] = float(np.sum(steady_waits) / np.sum(steady_times))
        if info.is_main and (epochs_done % config.eval.every_epochs == 0 or epochs_done == cfg_t.epochs):
            val = evaluate_model(
                model, val_set, config.eval.align, loss_fn=loss_fn, device=device, amp_dtype=amp_dtype,
            )
            metrics.update({f"val/{k}": v for k, v in val.items()})
        wall = wall_before + time.time() - wall_start
        cpu = cpu_before + time.process_time() - cpu_start
        metrics.update(resource_usage(device, wall, cpu, info))
        metrics["cost/predicted_peak_gib"] = predicted_gib
        metrics["time/wall_s"] = wall
        if info.world_size > 1:  # every rank gets rank 0's validation metrics
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        if _is_better(metrics, best):
            best = metrics

        # Adapter-only checkpoint with everything needed for an exact resume.
        rng_states = [None] * info.world_size
        if info.world_size > 1:
            dist.all_gather_object(rng_states, rng_state())
        else:
            rng_states = [rng_state()]
        checkpoint_dir = None
        if cfg_t.save_checkpoints:
            if info.is_main:
                trainer_state = {
                    "epoch": epochs_done, "step": step, "total_steps": total_steps,
                    "world_size": info.world_size, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng_states, "best_metrics": best,
                    "cost": (wall, cpu), "config": config.to_dict(),
                }
                checkpoint_dir = str(save_checkpoint(epoch_checkpoint(checkpoint_root, epochs_done), model, trainer_state))
                prune_checkpoints(checkpoint_root, cfg_t.keep_checkpoints)
            last_checkpoint = checkpoint_dir or str(epoch_checkpoint(checkpoint_root, epochs_done))
        if info.world_size > 1:
            dist.barrier()
        if info.is_main:
            reporter.on_epoch(epochs_done, metrics, checkpoint_dir)

    progress.close()
    return TrainResult("completed", best, last_checkpoint, cfg_t.epochs)


def _float32(predictions: dict) -> dict:
    """The loss runs in fp32 even when the forward pass ran under bf16 autocast."""
    out = {}
    for key, value in predictions.items():
        if torch.is_tensor(value) and value.is_floating_point():
            out[key] = value.float()
        elif isinstance(value, list):
            out[key] = [v.float() if torch.is_tensor(v) else v for v in value]
        else:
            out[key] = value
    return out


# --- CLI -----------------------------------------------------------------------------------------


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m lora_train.train",
        description="LoRA fine-tuning of VGGT. Any config key can be overridden: --optim.lr 5e-5 --lora.rank 8",
    )
    parser.add_argument("--config", default="default", help="YAML file or preset name (default: default)")
    parser.add_argument("--resume", default=None, help="checkpoint directory to resume from")
    parser.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    args, extra = parser.parse_known_args(argv)
    overrides = parse_overrides(extra)
    if args.output_dir is not None:
        overrides["train.output_dir"] = args.output_dir
    config = load_config(args.config, overrides)
    rank = int(os.environ.get("RANK", 0))
    log_path = Path(config.train.output_dir) / "log.jsonl" if rank == 0 else None
    reporter = ConsoleReporter(log_path) if rank == 0 else Reporter()
    result = run_training(config, reporter, resume_from=args.resume)
    if rank == 0:
        print(f"status: {result.status}; last checkpoint: {result.last_checkpoint}", flush=True)
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
