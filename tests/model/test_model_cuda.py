"""CUDA checks (skipped without a GPU): reference numerics on GPU, full-size bf16 forward and
training step, and loading a full-size official-format checkpoint (with track head keys)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lora_train.model import VGGT, VGGTConfig, load_pretrained

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PREFIX = "state_dict."


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_tiny_reference_matches_on_gpu(vggt_fixtures):
    tensors = load_file(str(vggt_fixtures / "vggt_tiny_reference.safetensors"))
    model = VGGT(VGGTConfig.tiny())
    model.load_state_dict({k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)})
    model = model.cuda().eval()
    for case in ("case_a", "case_b"):
        with torch.no_grad():
            out = model(tensors[f"{case}.images"].cuda())
        for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
            torch.testing.assert_close(out[key].cpu(), tensors[f"{case}.{key}"], atol=1e-4, rtol=1e-5, msg=f"{case}.{key}")


def test_vggt1b_bf16_forward_and_checkpointed_training_step():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = VGGT(VGGTConfig(enable_point=False))
    images = torch.rand(1, 4, 3, 294, 518, device="cuda")
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images)
    assert out["depth"].shape == (1, 4, 294, 518, 1) and out["depth"].dtype == torch.float32
    assert out["pose_enc"].shape == (1, 4, 9) and out["pose_enc"].dtype == torch.float32
    assert torch.isfinite(out["depth"]).all() and torch.isfinite(out["pose_enc"]).all()

    model.train()
    peaks = {}
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(images)
        (out["depth"].mean() + out["pose_enc"].square().mean()).backward()
        peaks[enabled] = torch.cuda.max_memory_allocated()
        assert model.aggregator.frame_blocks[0].attn.qkv.weight.grad is not None
    assert peaks[True] < peaks[False], peaks


def test_full_size_official_format_checkpoint_loads_on_meta(vggt_fixtures, tmp_path):
    shapes = json.loads((vggt_fixtures / "vggt1b_state_dict_shapes.json").read_text())
    with torch.device("cuda"):
        source = VGGT(VGGTConfig())
    state = {k: v.cpu() for k, v in source.state_dict().items()}
    state.update({k: torch.randn(s) for k, s in shapes.items() if k.startswith("track_head.")})
    assert len(state) == 1797
    path = tmp_path / "model.pt"
    torch.save(state, path)
    del state

    with torch.device("meta"):
        model = VGGT(VGGTConfig())
    report = load_pretrained(model, path)
    assert report.dropped == {"track_head.": 394} and report.num_loaded == 1403
    model = model.cuda()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
