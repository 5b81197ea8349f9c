"""A stand-in for `lora_train.train.run_training`, for testing the sweep plumbing fast.

It honours the training contract (reporter calls, adapter checkpoint files, resume, DDP process
group) but its "validation AbsRel" is a smooth function of the config instead of a trained model.
Run as a script, it runs `sweeps/run.py`'s sweep with this stand-in:
    python tests/sweeps/standin_sweep.py --space FILE [run.py flags]
"""

import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

EPOCH_SECONDS = float(os.environ.get("STANDIN_EPOCH_S", "0.5"))
STRATEGY_PENALTY = {"A": 0.3, "B": 0.1, "C": 0.0, "custom": 0.2}


def standin_training(config, reporter, *, resume_from=None):
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if config.lora.rank == 13:
        raise RuntimeError("stand-in failure for rank 13")
    start = 0
    if resume_from is not None:
        start = json.loads((Path(resume_from) / "trainer_state.json").read_text())["epoch"]
    quality = abs(math.log10(config.optim.lr) + 3.0) + STRATEGY_PENALTY[config.lora.strategy]
    step = start * 2
    for epoch in range(start, config.train.epochs):
        time.sleep(EPOCH_SECONDS)
        for _ in range(2):
            if rank == 0:
                reporter.on_step(step, {"train/loss": quality + 1.0 / (step + 1), "time/step_s": 0.01})
            step += 1
        if config.train.inject_nan_at_step is not None and step > config.train.inject_nan_at_step:
            if rank == 0:
                reporter.on_end("diverged", f"non-finite loss at step {step}")
            return SimpleNamespace(status="diverged", best_metrics={}, last_checkpoint=None,
                                   epochs_done=epoch, reason="nan")
        signal = torch.tensor([float(rank)])
        if world > 1:
            dist.all_reduce(signal)  # the process group is real (gloo)
        val = 0.1 + 0.1 * quality + 0.2 / (epoch + 1)
        checkpoint = Path(config.train.output_dir) / "checkpoints" / f"epoch_{epoch + 1:04d}"
        if rank == 0:
            checkpoint.mkdir(parents=True, exist_ok=True)
            (checkpoint / "adapter_config.json").write_text(json.dumps({"r": config.lora.rank}))
            save_file({"lora_A": torch.zeros(config.lora.rank, 8)}, str(checkpoint / "adapter_model.safetensors"))
            (checkpoint / "trainer_state.json").write_text(json.dumps({"epoch": epoch + 1}))
            torch.save({"config": config.to_dict(), "epoch": epoch + 1}, checkpoint / "trainer_state.pt")
            reporter.on_epoch(epoch + 1, {"epoch": epoch + 1, "step": step, "val/abs_rel": val,
                                          "val/delta1": 1 - val, "world_size": world,
                                          "cost/cpu_seconds": (epoch + 1) * EPOCH_SECONDS}, str(checkpoint))
    if rank == 0:
        reporter.on_end("completed")
    return SimpleNamespace(status="completed", best_metrics={}, last_checkpoint=None,
                           epochs_done=config.train.epochs, reason="")


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    from sweeps.run import main

    sys.exit(main(sys.argv[1:], train_fn=standin_training))
