"""The training step without host syncs: same losses as a plain eager loop, warm-up reported
apart, the divergence guard one step late, and a CPU step with the frozen base in bf16."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_train.builders import build_datasets, build_model
from lora_train.data import collate_windows
from lora_train.losses import VGGTLoss, normalize_gt
from lora_train.runtime import DistInfo, cosine_with_warmup, seed_everything
from lora_train.train import clip_groups, epoch_batches, run_training


def plain_loop_losses(config) -> list[float]:
    """The reported loss of every optimizer step, from a loop written the obvious way: eager,
    synchronous, AdamW with PyTorch's defaults, seeded and ordered as `run_training` documents."""
    cfg_o, cfg_t = config.optim, config.train
    seed_everything(cfg_t.seed)
    train_set, _ = build_datasets(config)
    model = build_model(config).train()
    groups = clip_groups(model, cfg_o.clip_norms)
    loss_fn = VGGTLoss(**dataclasses.asdict(config.loss))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg_o.lr, betas=tuple(cfg_o.betas),
        weight_decay=cfg_o.weight_decay,
    )
    total = cfg_t.steps_per_epoch * cfg_t.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total, round(cfg_o.warmup_ratio * total), cfg_o.final_lr_ratio)
    )
    seed_everything(cfg_t.seed + 1_000)
    accum = cfg_o.grad_accum_steps
    micro_batches = epoch_batches(
        len(train_set), 0, cfg_t.seed, config.data.batch_size, DistInfo(), cfg_t.steps_per_epoch * accum
    )
    losses, running = [], 0.0
    for micro, indices in enumerate(micro_batches):
        batch = normalize_gt(collate_windows([train_set[(0, i)] for i in indices]))
        objective = loss_fn(model(batch["images"]), batch)["objective"]
        (objective / accum).backward()
        running += float(objective.detach().double()) / accum
        if (micro + 1) % accum:
            continue
        for _, max_norm, params in groups:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(running)
        running = 0.0
    return losses


def test_default_cpu_losses_equal_a_plain_synchronous_loop(small_config, recording_reporter):
    config = small_config(**{
        "train.epochs": 1, "train.steps_per_epoch": 2, "optim.grad_accum_steps": 2, "lora.dropout": 0.1,
    })
    reporter = recording_reporter()
    assert run_training(config, reporter).status == "completed"
    reported = [metrics["train/loss"] for _, metrics in reporter.steps]
    assert reported == plain_loop_losses(config)  # bit for bit


def test_first_step_is_reported_as_warmup(small_config, recording_reporter):
    reporter = recording_reporter()
    run_training(small_config(**{"train.epochs": 2, "train.steps_per_epoch": 2}), reporter)
    first = reporter.steps[0][1]
    assert first["time/step_s"] > 0
    for _, metrics, _ in reporter.epochs:
        assert metrics["time/warmup_s"] == first["time/step_s"]
    steady = [m["time/step_s"] for _, m in reporter.steps[1:]]
    assert reporter.epochs[0][1]["time/steady_step_s"] == pytest.approx(steady[0])
    assert reporter.epochs[1][1]["time/steady_step_s"] == pytest.approx(sum(steady[1:]) / 2)


def test_divergence_inside_an_epoch_is_caught_one_step_late(small_config, recording_reporter):
    config = small_config(**{"train.epochs": 2, "train.steps_per_epoch": 3, "train.inject_nan_at_step": 3})
    reporter = recording_reporter()
    result = run_training(config, reporter)
    assert result.status == "diverged" and "step 3" in result.reason and "loss=nan" in result.reason
    assert result.epochs_done == 1
    assert [s for s, _ in reporter.steps] == [0, 1, 2]
    checkpoint_root = Path(config.train.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoint_root.iterdir()) == ["epoch_0001"]


def test_training_with_a_bf16_frozen_base_on_cpu(small_config, recording_reporter):
    config = small_config(**{"model.base_dtype": "bf16", "train.precision": "bf16", "train.epochs": 1})
    reporter = recording_reporter()
    result = run_training(config, reporter)
    assert result.status == "completed"
    assert all(math.isfinite(m["train/loss"]) for _, m in reporter.steps)
    adapter = load_file(f"{result.last_checkpoint}/adapter_model.safetensors")
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
