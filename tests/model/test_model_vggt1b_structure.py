"""Full-size VGGT-1B (built on meta): state_dict keys, shapes and parameter counts match upstream."""

import json

import pytest
import torch
import torch.nn as nn

from lora_train.model import VGGT, VGGTConfig


@pytest.fixture(scope="module")
def meta_vggt1b():
    with torch.device("meta"):
        return VGGT(VGGTConfig())


@pytest.fixture(scope="module")
def upstream_shapes(vggt_fixtures):
    return json.loads((vggt_fixtures / "vggt1b_state_dict_shapes.json").read_text())


def test_state_dict_keys_and_shapes_equal_upstream_minus_track_head(meta_vggt1b, upstream_shapes):
    expected = {k: v for k, v in upstream_shapes.items() if not k.startswith("track_head.")}
    assert len(upstream_shapes) == 1797 and len(expected) == 1403
    ours = {k: list(v.shape) for k, v in meta_vggt1b.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}
    assert all(v.dtype == torch.float32 for v in meta_vggt1b.state_dict().values())


def test_parameter_counts_per_group(meta_vggt1b, vggt_fixtures):
    counts = json.loads((vggt_fixtures / "vggt1b_param_counts.json").read_text())
    params = dict(meta_vggt1b.named_parameters())
    assert set(params) == set(meta_vggt1b.state_dict())  # no persistent buffers

    def group(prefix: str) -> int:
        return sum(p.numel() for name, p in params.items() if name.startswith(prefix + "."))

    for name in ("aggregator.patch_embed", "aggregator.frame_blocks", "aggregator.global_blocks",
                 "camera_head", "depth_head", "point_head"):
        assert group(name) == counts[name], name
    assert params["aggregator.camera_token"].numel() == counts["aggregator.camera_token"]
    assert params["aggregator.register_token"].numel() == counts["aggregator.register_token"]
    assert group("aggregator") == counts["aggregator (all)"]
    total = sum(p.numel() for p in meta_vggt1b.parameters())
    assert total == counts["total"] - counts["track_head"] == 1_190_596_120


def test_disabling_point_head_gives_upstream_training_model_size():
    with torch.device("meta"):
        model = VGGT(VGGTConfig(enable_point=False))
    assert model.point_head is None
    assert sum(p.numel() for p in model.parameters()) == 1_157_941_492  # reference doc, section 1.2


def test_module_names_and_types_for_lora_targets(meta_vggt1b):
    modules = dict(meta_vggt1b.named_modules())
    assert isinstance(modules["aggregator.frame_blocks.12.attn.qkv"], nn.Linear)
    assert isinstance(modules["aggregator.global_blocks.23.mlp.fc2"], nn.Linear)
    assert isinstance(modules["camera_head.trunk.3.attn.proj"], nn.Linear)
    assert isinstance(modules["depth_head.scratch.refinenet1.resConfUnit1.conv1"], nn.Conv2d)
    assert isinstance(modules["depth_head.resize_layers.0"], nn.ConvTranspose2d)
    assert isinstance(modules["depth_head.resize_layers.2"], nn.Identity)
    assert isinstance(modules["depth_head.resize_layers.3"], nn.Conv2d)
    assert "depth_head.scratch.refinenet4.resConfUnit1" not in modules
    assert not meta_vggt1b.aggregator.patch_embed.mask_token.requires_grad
    assert meta_vggt1b.aggregator.patch_start_idx == 5
