"""`benchmarks/bench_vs_upstream.py` on CPU: its analytic FLOP formula and one tiny run."""

import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lora_train.model import VGGT, VGGTConfig


@pytest.fixture
def bench(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import bench_vs_upstream

    return bench_vs_upstream


def test_analytic_flops_equal_pytorchs_flop_counter(bench):
    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny(enable_point=False)).eval()
    images = torch.rand(1, 3, 3, 56, 84)
    with torch.no_grad(), bench.count_flops(model) as count:
        model(images)
    with FlopCounterMode(display=False) as reference, sdpa_kernel(SDPBackend.MATH):  # math SDPA: counted bmm
        model(images)
    assert count.forward == reference.get_total_flops()
    assert {c.kind for c in count.calls} == {"linear", "conv", "attention"}

    # A step with LoRA on the depth head only back-propagates through the depth head.
    targets = {c.name for c in count.calls if c.name.startswith("depth_head.projects.")}
    head = sum(c.flops for c in count.calls if c.name.startswith("depth_head."))
    adapters = sum(2 * c.tokens * 4 * (c.fan_in + c.fan_out) for c in count.calls if c.name in targets)
    assert count.training_step(targets, rank=4) == count.forward + head + 3 * adapters


@pytest.mark.slow
def test_bench_runs_on_cpu_with_the_tiny_model(repo_root):
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_vs_upstream.py", "--tiny", "--strategies", "C", "--warmup", "1", "--iters", "1"],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "baseline: OUR model in the upstream-equivalent setup (no --upstream given)" in out
    assert out.count("[ok]") == 3  # baseline and ours vs the fp32 reference, ours compiled vs eager
    assert "| inference | + compile = ours |" in out and "| train C | + compile = ours |" in out
    assert "| train C | ours, no checkpointing |" in out
