"""LoRA fine-tuning recipe for VGGT: one loop, readable top to bottom.

    python -m lora_train.train --config lora_train/configs/strategy_b.yaml --optim.lr 5e-5
    torchrun --nproc_per_node=2 -m lora_train.train --config tiny_demo --output-dir runs/demo

`run_training(config, reporter)` is the entry point the sweep calls (inside a Ray Train worker,
whose process group already exists); the CLI wraps it with a `ConsoleReporter`.

Order of things (the order matters):
  seed → build VGGT → load pretrained weights → apply LoRA (so every wrapped layer holds the
  pretrained weight) → DDP → AdamW on trainable params → warmup + cosine LambdaLR stepped every
  optimizer step → per epoch: micro-batches with accumulation, bf16 autocast on GPU, per-group
  gradient clipping, divergence guard → validation → adapter-only checkpoint (rank 0) → reporter.
"""

import contextlib
import dataclasses
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lora_train.base_model import ensure_synthetic_scenes, resolve_checkpoint
from lora_train.config import TrainConfig, load_config, save_config, vggt_config
from lora_train.data import ETH3DWindows, collate_windows
from lora_train.errors import ArgumentParser, UserError, cli_main
from lora_train.evaluate import evaluate_model
from lora_train.losses import VGGTLoss, normalize_gt
from lora_train.lora import apply_lora, load_adapter, save_adapter, trainable_parameter_groups
from lora_train.model import VGGT, load_pretrained
from lora_train.reporting import ConsoleReporter, Reporter

TRAINER_STATE = "trainer_state.pt"


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


# --- components ----------------------------------------------------------------------------------


@dataclasses.dataclass
class DistInfo:
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


def resolve_device(requested: str, info: DistInfo) -> torch.device:
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


def build_model(config: TrainConfig, adapter_dir: str | Path | None = None) -> torch.nn.Module:
    """VGGT with its pretrained weights loaded BEFORE the LoRA adapters are injected.

    With `adapter_dir` (a resume), the saved adapter is attached (trainable) instead of fresh ones.
    """
    model = VGGT(vggt_config(config.model))
    checkpoint = resolve_checkpoint(config.model.checkpoint)
    if checkpoint is not None:
        load_pretrained(model, checkpoint)
    if adapter_dir is not None:
        return load_adapter(model, adapter_dir, is_trainable=True)
    return apply_lora(model, config.lora)


def build_datasets(config: TrainConfig):
    """(train, val) window datasets; synthetic facade scenes when `data.root` is unset."""
    d = config.data
    root = d.root
    if root is None:
        root = ensure_synthetic_scenes(d.synthetic_family, d.synthetic_scenes, seed=d.synthetic_seed)
    elif not Path(root).expanduser().is_dir():
        raise UserError(f"data.root: not a directory: {root}")
    common = dict(
        scenes=d.scenes, val_scenes=d.val_scenes, num_views=d.num_views, width=d.width,
        seed=config.train.seed, cache_dir=d.cache_dir,
    )
    train = ETH3DWindows(root, split="train", color_jitter=d.color_jitter, **common)
    val = ETH3DWindows(root, split="val", color_jitter=False, **common)
    return train, val


def cosine_with_warmup(total_steps: int, warmup_steps: int, final_lr_ratio: float):
    """LR multiplier per optimizer step: 0 → 1 linearly over `warmup_steps`, then cosine to `final_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


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


def to_device(batch: dict, device: torch.device) -> dict:
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


def save_checkpoint(directory: Path, model, trainer_state: dict) -> Path:
    """Adapter + trainer state, written to a temp dir and renamed (never half-written)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_trainer_state(directory: str | Path) -> dict:
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise UserError(f"--resume: {directory} is not a checkpoint directory (no {TRAINER_STATE})")
    return torch.load(path, map_location="cpu", weights_only=False)


def _check_resumable(state: dict, config: TrainConfig, resume_from) -> None:
    """The run being resumed must train the same thing (output dir, epochs and the like may differ)."""
    saved = state["config"]
    for section in ("model", "lora", "data", "optim", "loss"):
        if saved[section] != config.to_dict()[section]:
            diff = [k for k in saved[section] if saved[section][k] != config.to_dict()[section].get(k)]
            raise UserError(f"--resume {resume_from}: config differs from the checkpoint's in {section}.{diff[0] if diff else '?'}")
    if saved["train"]["seed"] != config.train.seed:
        raise UserError(f"--resume {resume_from}: train.seed differs from the checkpoint's")


def _prune_checkpoints(checkpoint_root: Path, keep: int) -> None:
    if keep > 0:
        for old in sorted(checkpoint_root.glob("epoch_*[0-9]"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _reports(reporter: Reporter, info: DistInfo) -> bool:
    """Rank 0 reports; every rank does if the reporter sets `all_ranks = True` (e.g. Ray Train,
    whose report() must run on every worker; non-zero ranks get checkpoint_dir None)."""
    return info.is_main or getattr(reporter, "all_ranks", False)


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
            and `on_end`, on rank 0 only unless it has `all_ranks = True`. Default: silent.
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
    try:
        result = _train(config, reporter, info, resume_from, device or resolve_device(config.train.device, info))
    except BaseException as err:
        if _reports(reporter, info):
            reporter.on_end("failed", f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    finally:
        if info.created_group and dist.is_initialized():
            dist.destroy_process_group()
    if _reports(reporter, info):
        reporter.on_end(result.status, result.reason)
    return result


def _train(config: TrainConfig, reporter: Reporter, info: DistInfo, resume_from, device: torch.device) -> TrainResult:
    cfg_t, cfg_o, cfg_d = config.train, config.optim, config.data
    amp_dtype = autocast_dtype(cfg_t.precision, device)
    output_dir = Path(cfg_t.output_dir)
    checkpoint_root = output_dir / "checkpoints"
    if info.is_main:
        save_config(config, output_dir / "config.yaml")

    # Model and data. Every rank builds the same model from the same seed (DDP also broadcasts).
    seed_everything(cfg_t.seed)
    state = load_trainer_state(resume_from) if resume_from is not None else None
    if state is not None:
        _check_resumable(state, config, resume_from)
    train_set, val_set = build_datasets(config)
    model = build_model(config, adapter_dir=resume_from).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UserError("lora: the settings leave no trainable parameter")
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

    optimizer = torch.optim.AdamW(
        trainable, lr=cfg_o.lr, betas=tuple(cfg_o.betas), weight_decay=cfg_o.weight_decay
    )
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

    for epoch in range(start_epoch, cfg_t.epochs):
        train_module.train()
        train_set.set_epoch(epoch)  # companion views and jitter: a function of (seed, epoch, index)
        micro_batches = epoch_batches(
            num_train, epoch, cfg_t.seed, cfg_d.batch_size, info, steps_per_epoch * cfg_o.grad_accum_steps
        )
        loader = DataLoader(
            train_set, batch_sampler=micro_batches, collate_fn=collate_windows, num_workers=cfg_d.num_workers
        )
        epoch_losses = []
        step_start = time.time()
        for micro, batch in enumerate(loader):
            batch = normalize_gt(to_device(batch, device))
            is_last_micro = (micro + 1) % cfg_o.grad_accum_steps == 0
            sync = contextlib.nullcontext() if is_last_micro or info.world_size == 1 else train_module.no_sync()
            with sync:
                with autocast:
                    predictions = train_module(batch["images"])
                losses = loss_fn(_float32(predictions), batch)
                objective = losses["objective"]
                if cfg_t.inject_nan_at_step is not None and step == cfg_t.inject_nan_at_step:
                    objective = objective * float("nan")  # test hook for the divergence guard
                (objective / cfg_o.grad_accum_steps).backward()
            if micro % cfg_o.grad_accum_steps == 0:
                step_terms = torch.zeros(len(losses), dtype=torch.float64)
            step_terms += torch.stack([objective.detach().double().cpu()] + [
                v.detach().double().cpu() for k, v in losses.items() if k != "objective"
            ]) / cfg_o.grad_accum_steps
            if not is_last_micro:
                continue

            # One optimizer step: all ranks agree on the loss (and on divergence) first.
            step_terms = all_reduce_mean(step_terms, info)
            grad_norms = {}
            for name, max_norm, params in groups:
                grad_norms[name] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not torch.isfinite(step_terms).all() or not all(map(math.isfinite, grad_norms.values())):
                optimizer.zero_grad(set_to_none=True)
                progress.close()
                reason = f"non-finite loss or gradient at step {step} (loss={float(step_terms[0])})"
                return TrainResult("diverged", best, last_checkpoint, epoch, reason)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            names = ["loss"] + [k.removeprefix("loss_") for k in losses if k != "objective"]
            step_metrics = {f"train/{n}": float(v) for n, v in zip(names, step_terms)}
            step_metrics.update({"train/lr": lr, "time/step_s": time.time() - step_start})
            step_metrics["epoch"] = epoch + (micro + 1) / (steps_per_epoch * cfg_o.grad_accum_steps)
            step_metrics.update({f"train/grad_norm_{n}": v for n, v in grad_norms.items()})
            epoch_losses.append(step_metrics["train/loss"])
            if _reports(reporter, info):
                reporter.on_step(step, step_metrics)
            if info.is_main:
                progress.update(1)
                progress.set_postfix(loss=f"{step_metrics['train/loss']:.4f}", lr=f"{lr:.2e}")
            step += 1
            step_start = time.time()

        # Validation on rank 0 (the set is small); the others wait at the barrier below.
        epochs_done = epoch + 1
        metrics = {"epoch": epochs_done, "train/loss": float(np.mean(epoch_losses)), "step": step}
        if info.is_main and (epochs_done % config.eval.every_epochs == 0 or epochs_done == cfg_t.epochs):
            val = evaluate_model(
                model, val_set, config.eval.align, loss_fn=loss_fn, device=device, amp_dtype=amp_dtype,
                max_windows=cfg_d.max_val_windows,
            )
            metrics.update({f"val/{k}": v for k, v in val.items()})
        wall = wall_before + time.time() - wall_start
        cpu = cpu_before + time.process_time() - cpu_start
        metrics.update(resource_usage(device, wall, cpu, info))
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
                checkpoint_dir = str(save_checkpoint(checkpoint_root / f"epoch_{epochs_done:04d}", model, trainer_state))
                _prune_checkpoints(checkpoint_root, cfg_t.keep_checkpoints)
            last_checkpoint = checkpoint_dir or str(checkpoint_root / f"epoch_{epochs_done:04d}")
        if info.world_size > 1:
            dist.barrier()
        if _reports(reporter, info):
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
