"""DDP: 2 CPU processes under torchrun (gloo) equal one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from lora_train.config import save_config
from lora_train.train import run_training



@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(small_config, recording_reporter, tmp_path, repo_root):
    common = {"train.epochs": 1, "train.steps_per_epoch": 3, "train.seed": 7, "lora.dropout": 0.0}
    # one process: micro-batches of 1 window, 2 accumulated per optimizer step (global batch 2)
    single = recording_reporter()
    config = small_config(**common, **{"optim.grad_accum_steps": 2, "train.output_dir": str(tmp_path / "single")})
    result_single = run_training(config, single)
    assert result_single.status == "completed"

    # two processes: 1 window each per optimizer step (global batch 2), launched like a user would
    ddp_dir = tmp_path / "ddp"
    config_file = save_config(config, tmp_path / "config.yaml")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lora_train.train", "--config", str(config_file), "--optim.grad_accum_steps", "1",
         "--output-dir", str(ddp_dir)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    events = [json.loads(line) for line in (ddp_dir / "log.jsonl").read_text().splitlines()]
    ddp_losses = [e["train/loss"] for e in events if e["event"] == "step"]
    single_losses = [m["train/loss"] for _, m in single.steps]
    assert len(ddp_losses) == len(single_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-6)
    assert [e["status"] for e in events if e["event"] == "end"] == ["completed"]

    adapter_single = load_file(f"{result_single.last_checkpoint}/adapter_model.safetensors")
    adapter_ddp = load_file(str(ddp_dir / "checkpoints" / "epoch_0001" / "adapter_model.safetensors"))
    assert adapter_single.keys() == adapter_ddp.keys()
    for key in adapter_single:
        assert adapter_ddp[key].sub(adapter_single[key]).abs().max() < 1e-4, key
