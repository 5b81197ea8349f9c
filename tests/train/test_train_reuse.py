"""A reused trial process (Tune's `reuse_actors`) returns to its memory baseline between trials.

Three sweep trials run one after another in this process through the trial function itself
(`sweeps.trial.train_worker`: config, training, rank 0's reporter with its final base comparison).
The model is large enough (~60 MB of weights) that one model left behind shows in the RSS.
"""

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from lora_train.model import VGGT, VGGTConfig
from sweeps.trial import TrialLoop, train_worker

MEDIUM = {"embed_dim": 256, "dino_depth": 2, "camera_num_heads": 4}  # the tiny layout, 4x wider


class Results:
    """What rank 0's reporter hands its epochs to (the trial's Tune side)."""

    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)

    def driver_gone(self):
        return False


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def live_models() -> list[str]:
    gc.collect()
    names = ("VGGT", "PeftModel", "LoraModel")
    return [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in names and isinstance(o, nn.Module)]


@pytest.fixture
def medium_base(tmp_path):
    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny(enable_point=False, **MEDIUM))
    path = tmp_path / "medium.pt"
    torch.save(model.state_dict(), path)
    return path, sum(p.numel() * 4 for p in model.parameters()) / 2**20


def test_three_trials_in_one_process_return_to_the_memory_baseline(tmp_path, medium_base, facade_root, train_cache):
    base, weights_mib = medium_base
    overrides = {
        "model.preset": "tiny", "model.checkpoint": str(base), "model.overrides.enable_point": False,
        **{f"model.overrides.{k}": v for k, v in MEDIUM.items()},
        "data.root": str(facade_root), "data.cache_dir": str(train_cache / "views"), "data.num_views": 2,
        "data.width": 70, "eval.max_windows": 2, "eval.num_visualizations": 1, "lora.rank": 4,
        "train.epochs": 1, "train.steps_per_epoch": 2, "train.progress_bar": False, "train.overwrite": True,
    }
    allocated, after = [], []
    baseline_gpu = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    for trial, strategy in enumerate(("B", "C", "B")):
        loop = TrialLoop(
            overrides={**overrides, "lora.strategy": strategy, "train.output_dir": str(tmp_path / f"trial{trial}")},
            base_config=None, resume=None, run_id=None, tracking_uri=None, train_fn=None, threads=1,
            metric="val/abs_rel", mode="min", base_cache=str(tmp_path / "base_eval"),
        )
        results = Results()
        train_worker(loop, rank=0, results=results)
        final = results.items[-2]  # the last epoch's result, then the end marker
        assert "eval/adapter_abs_rel" in final and "eval/base_abs_rel" in final, sorted(final)
        assert results.items[-1]["__trial_end__"] == "completed"
        assert live_models() == []  # nothing holds the trial's model: not the reporter, not a cache
        after.append(rss_mib())
        if torch.cuda.is_available():
            allocated.append(torch.cuda.memory_allocated())
    print(f"RSS after each trial: {', '.join(f'{m:.0f}' for m in after)} MiB (model weights {weights_mib:.0f} MiB)")
    # The first trial pays the imports and one-time caches; the next ones must not add a model.
    assert max(after[1:]) - after[0] < weights_mib / 2
    assert allocated == [baseline_gpu] * len(allocated)  # CUDA: every tensor of a trial freed
