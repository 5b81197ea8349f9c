"""VGGTConfig: presets, dict round trip, one-line UserErrors naming the key."""

import pytest
import torch

from lora_train.errors import UserError
from lora_train.model import VGGT, VGGTConfig


def test_default_is_vggt1b():
    config = VGGTConfig()
    assert (config.embed_dim, config.depth, config.num_heads, config.dino_depth) == (1024, 24, 16, 24)
    assert config.dpt_intermediate_layer_idx == (4, 11, 17, 23)
    assert config.enable_camera and config.enable_depth and config.enable_point
    assert not config.gradient_checkpointing


@pytest.mark.parametrize("config", [VGGTConfig(), VGGTConfig.tiny(enable_point=False, patch_embed="conv")])
def test_dict_round_trip(config):
    data = config.to_dict()
    assert isinstance(data["dpt_out_channels"], list)
    assert VGGTConfig.from_dict(data) == config


def test_from_dict_with_preset_and_overrides():
    config = VGGTConfig.from_dict({"preset": "tiny", "enable_point": False, "dpt_out_channels": [8, 16, 32, 32]})
    assert config == VGGTConfig.tiny(enable_point=False, dpt_out_channels=(8, 16, 32, 32))


@pytest.mark.parametrize(
    "values, key",
    [
        ({"embed_dims": 64}, "embed_dims"),
        ({"enable_track": True}, "enable_track"),
        ({"preset": "huge"}, "preset"),
        ({"patch_embed": "vit"}, "patch_embed"),
        ({"depth": 0}, "depth"),
        ({"img_size": 500}, "img_size"),
        ({"num_heads": 7}, "num_heads"),
        ({"dpt_intermediate_layer_idx": [4, 11, 17, 24]}, "dpt_intermediate_layer_idx"),
        ({"dpt_out_channels": [1, 2, 3]}, "dpt_out_channels"),
        ({"dpt_out_channels": "wide"}, "dpt_out_channels"),
    ],
)
def test_bad_values_raise_user_error_naming_the_key(values, key):
    with pytest.raises(UserError) as err:
        VGGTConfig.from_dict(values)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_conv_patch_embed_keys():
    model = VGGT(VGGTConfig.tiny(patch_embed="conv"))
    keys = [k for k in model.state_dict() if k.startswith("aggregator.patch_embed.")]
    assert sorted(keys) == ["aggregator.patch_embed.proj.bias", "aggregator.patch_embed.proj.weight"]
    out = model.eval()(torch.rand(2, 3, 28, 42))  # [S, 3, H, W] input gets a batch dim
    assert out["depth"].shape == (1, 2, 28, 42, 1)


def test_disabled_heads_are_absent():
    model = VGGT(VGGTConfig.tiny(enable_camera=False, enable_point=False)).eval()
    assert model.camera_head is None and model.point_head is None
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 28, 28))
    assert set(out) == {"depth", "depth_conf", "images"}
    assert not any(k.startswith(("camera_head.", "point_head.")) for k in model.state_dict())


def test_separate_mlp_ratios_shape_their_blocks_and_round_trip():
    config = VGGTConfig.tiny(mlp_ratio=1, dino_mlp_ratio=4, camera_mlp_ratio=2)
    assert VGGTConfig.from_dict(config.to_dict()) == config
    shapes = {k: tuple(v.shape) for k, v in VGGT(config).state_dict().items()}
    dim = config.embed_dim
    for blocks in ("frame_blocks", "global_blocks"):
        assert shapes[f"aggregator.{blocks}.0.mlp.fc1.weight"] == (dim, dim)  # ratio 1
    assert shapes["aggregator.patch_embed.blocks.0.mlp.fc1.weight"] == (4 * dim, dim)  # DINO keeps 4
    assert shapes["camera_head.trunk.0.mlp.fc1.weight"] == (2 * 2 * dim, 2 * dim)  # trunk width 2C, ratio 2


@pytest.mark.parametrize("key", ["mlp_ratio", "dino_mlp_ratio", "camera_mlp_ratio"])
def test_mlp_ratio_must_be_positive(key):
    with pytest.raises(UserError, match=f"'{key}'"):
        VGGTConfig.from_dict({key: 0})
