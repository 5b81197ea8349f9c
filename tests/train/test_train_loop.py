"""The training loop on CPU: schedule, checkpoints, exact resume, divergence guard."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_train.checkpointing import TRAINER_STATE
from lora_train.runtime import cosine_with_warmup
from lora_train.train import run_training


def test_cosine_with_warmup_shape():
    factor = cosine_with_warmup(total_steps=100, warmup_steps=10, final_lr_ratio=0.01)
    assert factor(0) == 0.0
    assert factor(5) == pytest.approx(0.5)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(100) == pytest.approx(0.01)
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warmup
    assert cosine_with_warmup(10, 0, 0.0)(0) == 1.0  # no warmup: start at the peak


def test_run_steps_schedule_reports_and_saves_adapter_only(small_config, recording_reporter):
    config = small_config(**{"train.epochs": 2, "train.steps_per_epoch": 2, "optim.warmup_ratio": 0.25})
    reporter = recording_reporter()
    result = run_training(config, reporter)

    assert result.status == "completed" and result.epochs_done == 2
    assert reporter.ends == [("completed", "")]
    lrs = [m["train/lr"] for _, m in reporter.steps]
    assert [s for s, _ in reporter.steps] == list(range(4))
    # the LambdaLR steps every optimizer step: 0 at step 0, peak after 1 warmup step, then cosine
    peak = config.optim.lr
    factor = cosine_with_warmup(4, 1, config.optim.final_lr_ratio)
    assert lrs == pytest.approx([peak * factor(s) for s in range(4)])
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(peak) and lrs[3] < lrs[2] < lrs[1]
    for _, metrics in reporter.steps:
        assert {"train/loss", "train/conf_depth", "train/reg_depth", "train/camera", "time/step_s"} <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())

    assert [e for e, _, _ in reporter.epochs] == [1, 2]
    _, metrics, checkpoint_dir = reporter.epochs[-1]
    for key in ("val/loss", "val/abs_rel", "val/delta1", "val/tau103", "val/auc30", "cost/cpu_seconds", "cost/peak_mem_mb"):
        assert math.isfinite(metrics[key]), key
    assert checkpoint_dir == result.last_checkpoint
    files = sorted(p.name for p in Path(checkpoint_dir).iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", TRAINER_STATE]
    adapter = load_file(f"{checkpoint_dir}/adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)  # adapter only, no base weights
    assert json.loads(open(f"{checkpoint_dir}/adapter_config.json").read())["r"] == 4


def test_resume_continues_bit_for_bit(small_config, recording_reporter, tmp_path):
    overrides = {
        "train.epochs": 3,
        "train.steps_per_epoch": 1,
        "lora.dropout": 0.2,  # dropout masks come from the RNG: the RNG state must be restored
        "optim.grad_accum_steps": 2,
    }
    full = recording_reporter()
    result_full = run_training(small_config(**overrides, **{"train.output_dir": str(tmp_path / "full")}), full)
    assert result_full.status == "completed"

    interrupted = recording_reporter(stop_after_epoch=1)
    config_b = small_config(**overrides, **{"train.output_dir": str(tmp_path / "resumed")})
    with pytest.raises(KeyboardInterrupt):
        run_training(config_b, interrupted)
    assert interrupted.ends[-1][0] == "failed"
    assert interrupted.steps[0][1]["train/loss"] == full.steps[0][1]["train/loss"]  # seeded: same start
    checkpoint = interrupted.epochs[0][2]

    resumed = recording_reporter()
    result_b = run_training(config_b, resumed, resume_from=checkpoint)
    assert result_b.status == "completed" and result_b.epochs_done == 3
    assert [s for s, _ in resumed.steps] == [1, 2]
    for (step_a, metrics_a), (step_b, metrics_b) in zip(full.steps[1:], resumed.steps):
        assert step_a == step_b
        assert metrics_a["train/loss"] == metrics_b["train/loss"]  # bit-for-bit
        assert metrics_a["train/lr"] == metrics_b["train/lr"]
    adapter_a = load_file(f"{result_full.last_checkpoint}/adapter_model.safetensors")
    adapter_b = load_file(f"{result_b.last_checkpoint}/adapter_model.safetensors")
    assert adapter_a.keys() == adapter_b.keys()
    assert all(torch.equal(adapter_a[k], adapter_b[k]) for k in adapter_a)


def test_nan_loss_stops_with_diverged_and_keeps_last_good_checkpoint(small_config, recording_reporter):
    config = small_config(**{"train.epochs": 3, "train.steps_per_epoch": 2, "train.inject_nan_at_step": 3})
    reporter = recording_reporter()
    result = run_training(config, reporter)
    assert result.status == "diverged" and "step 3" in result.reason
    assert result.epochs_done == 1
    assert reporter.ends == [("diverged", result.reason)]
    assert [s for s, _ in reporter.steps] == [0, 1, 2]  # the poisoned step is not reported as a step
    checkpoint_root = Path(config.train.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoint_root.iterdir()) == ["epoch_0001"]  # none of the diverged epoch
    assert result.last_checkpoint == str(checkpoint_root / "epoch_0001")
