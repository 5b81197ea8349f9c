"""LoRA strategies, counts, PEFT round trips (save / load / merge) on VGGT-1B (meta) and the tiny model."""

import copy
import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file

from lora_train.errors import UserError
from lora_train.lora import (
    LoraSettings,
    apply_lora,
    load_adapter,
    lora_summary,
    merge_adapter,
    save_adapter,
    trainable_parameter_groups,
)
from lora_train.model import VGGT, VGGTConfig, load_pretrained

RESIZE_CONVT = {"depth_head.resize_layers.0", "depth_head.resize_layers.1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny-model forwards are latency bound; extra threads only contend on a shared CI box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def meta_vggt1b():
    with torch.device("meta"):
        return VGGT(VGGTConfig())


@pytest.mark.parametrize(
    "strategy, expected, num_wrapped, skipped",
    [("A", 1_262_624, 29, set()), ("B", 7_717_920, 126, RESIZE_CONVT), ("C", 16_336_192, 242, RESIZE_CONVT)],
)
def test_strategy_counts_on_meta_vggt1b(meta_vggt1b, strategy, expected, num_wrapped, skipped):
    peft_model = apply_lora(copy.deepcopy(meta_vggt1b), LoraSettings(strategy=strategy, rank=16))
    assert isinstance(peft_model, PeftModel)
    summary = peft_model.lora_summary
    assert summary.num_trainable == expected == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert len(summary.wrapped) == num_wrapped
    assert set(summary.skipped) == skipped
    assert not any(name.startswith("aggregator.patch_embed") for name in summary.wrapped)  # DINO untouched
    blocks = {int(n.split(".")[2]) for n in summary.wrapped if n.startswith("aggregator.")}
    assert blocks == {"A": set(), "B": set(range(12, 24)), "C": set(range(24))}[strategy]
    assert lora_summary(peft_model).num_trainable == expected
    # rank scales the count linearly
    if strategy == "A":
        r8 = apply_lora(copy.deepcopy(meta_vggt1b), LoraSettings(strategy="A", rank=8))
        assert r8.lora_summary.num_trainable == expected // 2


def _tiny(seed):
    torch.manual_seed(seed)
    return VGGT(VGGTConfig.tiny()).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny 'pretrained' model and its checkpoint file."""
    model = _tiny(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@pytest.fixture(scope="module")
def images():
    return torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(3))


def _pretrained_tiny(path, seed=1):
    model = _tiny(seed)  # different random init than the checkpoint
    load_pretrained(model, path)
    return model


def _randomize_lora(peft_model, seed=5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _outputs(model, images):
    with torch.no_grad():
        out = model(images)
    return {k: out[k] for k in ("pose_enc", "depth", "depth_conf", "world_points")}


def test_tiny_strategy_b_is_upper_half(tiny_checkpoint):
    peft_model = apply_lora(_pretrained_tiny(tiny_checkpoint[1]), LoraSettings(strategy="B", rank=4))
    blocks = {n.split(".")[1] + "." + n.split(".")[2] for n in peft_model.lora_summary.wrapped if n.startswith("aggregator.")}
    assert blocks == {"frame_blocks.2", "frame_blocks.3", "global_blocks.2", "global_blocks.3"}
    assert set(peft_model.lora_summary.skipped) == RESIZE_CONVT


def test_base_weights_are_the_checkpoint_after_wrapping(tiny_checkpoint):
    source, path = tiny_checkpoint
    fresh = _tiny(1)
    name = "aggregator.frame_blocks.3.attn.qkv"
    assert not torch.equal(fresh.get_submodule(name).weight, source.get_submodule(name).weight)
    load_pretrained(fresh, path)
    peft_model = apply_lora(fresh, LoraSettings(strategy="C", rank=4))
    for wrapped in peft_model.lora_summary.wrapped:
        layer = peft_model.base_model.model.get_submodule(wrapped)
        assert torch.equal(layer.base_layer.weight, source.get_submodule(wrapped).weight), wrapped
        assert not layer.base_layer.weight.requires_grad
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_fresh_adapter_is_a_no_op_and_gradients_reach_lora(tiny_checkpoint, images):
    base_out = _outputs(_pretrained_tiny(tiny_checkpoint[1]), images)
    peft_model = apply_lora(_pretrained_tiny(tiny_checkpoint[1]), LoraSettings(strategy="B", rank=4))
    for key, value in _outputs(peft_model, images).items():
        torch.testing.assert_close(value, base_out[key], atol=1e-6, rtol=0)
    peft_model.train()
    _randomize_lora(peft_model)  # B = 0 at init would block the gradient of A
    out = peft_model(images)
    (out["depth"].mean() + out["pose_enc"].pow(2).mean()).backward()
    groups = trainable_parameter_groups(peft_model)
    assert list(groups) == ["aggregator", "depth_head"]
    for group in groups.values():
        for name, param in group.items():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert sum(len(g) for g in groups.values()) == sum(1 for p in peft_model.parameters() if p.requires_grad)


def test_save_load_merge_round_trip(tiny_checkpoint, images, tmp_path):
    path = tiny_checkpoint[1]
    base_out = _outputs(_pretrained_tiny(path), images)
    peft_model = apply_lora(_pretrained_tiny(path), LoraSettings(strategy="C", rank=4, use_rslora=True))
    _randomize_lora(peft_model)
    peft_model.eval()
    adapted = _outputs(peft_model, images)
    assert (adapted["depth"] - base_out["depth"]).abs().max() > 1e-3  # the adapter changes the output

    out_dir = save_adapter(peft_model, tmp_path / "adapter")
    assert sorted(p.name for p in out_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["use_rslora"] is True
    save_adapter(peft_model, out_dir)  # overwriting an existing save works
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp dirs left behind

    stock = PeftModel.from_pretrained(_pretrained_tiny(path), str(out_dir))
    for key, value in _outputs(stock, images).items():
        torch.testing.assert_close(value, adapted[key], atol=0, rtol=0)
    reloaded = load_adapter(_pretrained_tiny(path), out_dir)
    assert reloaded.lora_summary.wrapped == peft_model.lora_summary.wrapped
    for key, value in _outputs(reloaded, images).items():
        torch.testing.assert_close(value, adapted[key], atol=0, rtol=0)

    merged = merge_adapter(reloaded)
    assert isinstance(merged, VGGT)
    assert set(merged.state_dict()) == set(_tiny(0).state_dict())  # plain VGGT keys again
    for key, value in _outputs(merged, images).items():
        torch.testing.assert_close(value, adapted[key], atol=1e-5, rtol=1e-5)


def test_rslora_and_dora_reach_peft(tiny_checkpoint, images):
    settings = LoraSettings(strategy="A", rank=4, alpha=8, use_rslora=True, use_dora=True, dropout=0.1)
    peft_model = apply_lora(_pretrained_tiny(tiny_checkpoint[1]), settings)
    config = peft_model.peft_config["default"]
    assert config.use_rslora and config.use_dora and config.r == 4 and config.lora_alpha == 8
    assert config.lora_dropout == 0.1
    layer = peft_model.base_model.model.depth_head.projects[0]
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert any("lora_magnitude_vector" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    default_alpha = apply_lora(_pretrained_tiny(tiny_checkpoint[1]), LoraSettings(strategy="A", rank=4))
    assert default_alpha.peft_config["default"].lora_alpha == 8  # None -> 2 * rank
    assert default_alpha.base_model.model.depth_head.projects[0].scaling["default"] == pytest.approx(2.0)


def test_modules_to_save_trains_the_transposed_convs(tiny_checkpoint, images, tmp_path):
    path = tiny_checkpoint[1]
    settings = LoraSettings(strategy="B", rank=4, modules_to_save=tuple(sorted(RESIZE_CONVT)))
    peft_model = apply_lora(_pretrained_tiny(path), settings)
    summary = peft_model.lora_summary
    assert summary.skipped == {} and set(summary.modules_to_save) == RESIZE_CONVT
    extra = sum(tiny_checkpoint[0].get_submodule(n).weight.numel() + tiny_checkpoint[0].get_submodule(n).bias.numel() for n in RESIZE_CONVT)
    lora_only = apply_lora(_pretrained_tiny(path), LoraSettings(strategy="B", rank=4)).lora_summary.num_trainable
    assert summary.num_trainable == lora_only + extra
    with torch.no_grad():
        peft_model.base_model.model.depth_head.resize_layers[0].modules_to_save["default"].weight.mul_(1.5)
    adapted = _outputs(peft_model, images)
    reloaded = load_adapter(_pretrained_tiny(path), save_adapter(peft_model, tmp_path / "a"))
    torch.testing.assert_close(_outputs(reloaded, images)["depth"], adapted["depth"], atol=0, rtol=0)


def test_custom_selection(tiny_checkpoint):
    path = tiny_checkpoint[1]
    settings = LoraSettings(
        strategy="custom",
        rank=2,
        block_ranges={"global_blocks": "0,2-3"},
        layer_kinds=("qkv", "fc2"),
        target_regex=r"camera_head\.pose_branch\..*",
    )
    wrapped = set(apply_lora(_pretrained_tiny(path), settings).lora_summary.wrapped)
    expected = {f"aggregator.global_blocks.{i}.{k}" for i in (0, 2, 3) for k in ("attn.qkv", "mlp.fc2")}
    assert wrapped == expected | {"camera_head.pose_branch.fc1", "camera_head.pose_branch.fc2"}
    only_kinds = apply_lora(_pretrained_tiny(path), LoraSettings(strategy="custom", layer_kinds=("proj",)))
    assert len(only_kinds.lora_summary.wrapped) == 8  # 4 frame + 4 global blocks
    regex = apply_lora(_pretrained_tiny(path), LoraSettings(strategy="custom", target_regex=r"depth_head\..*"))
    assert set(regex.lora_summary.skipped) == RESIZE_CONVT | {"depth_head.norm"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strategy="D"), "strategy"),
        (dict(strategy="custom"), "custom"),
        (dict(strategy="B", target_regex="x"), "only applies"),
        (dict(rank=0), "rank"),
        (dict(init="pissa"), "init"),
        (dict(strategy="custom", layer_kinds=("q",)), "layer_kinds"),
        (dict(strategy="custom", target_regex="("), "regex"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(UserError, match=match):
        LoraSettings(**kwargs)


def test_bad_targets(tiny_checkpoint):
    path = tiny_checkpoint[1]
    with pytest.raises(UserError, match="matches no"):
        apply_lora(_pretrained_tiny(path), LoraSettings(strategy="custom", target_regex=r"nothing\.here"))
    with pytest.raises(UserError, match="outside blocks"):
        apply_lora(_pretrained_tiny(path), LoraSettings(strategy="custom", block_ranges="12-23"))
    with pytest.raises(UserError, match="no module"):
        apply_lora(_pretrained_tiny(path), LoraSettings(strategy="A", modules_to_save=("depth_head.nope",)))
    with pytest.raises(UserError, match="camera_head"):
        apply_lora(VGGT(VGGTConfig.tiny(enable_camera=False)), LoraSettings(strategy="C"))
    wrapped = apply_lora(_pretrained_tiny(path), LoraSettings(strategy="A"))
    with pytest.raises(UserError, match="already"):
        apply_lora(wrapped, LoraSettings(strategy="A"))
    with pytest.raises(UserError, match="unknown lora config key"):
        LoraSettings.from_dict({"rnak": 4})
    settings = LoraSettings(strategy="custom", block_ranges={"frame_blocks": "1"}, layer_kinds=["qkv"])
    assert LoraSettings.from_dict(settings.to_dict()) == settings


def test_load_adapter_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="lacks"):
        load_adapter(_pretrained_tiny(tiny_checkpoint[1]), tmp_path)
    peft_model = apply_lora(_pretrained_tiny(tiny_checkpoint[1]), LoraSettings(strategy="B", rank=4))
    out_dir = save_adapter(peft_model, tmp_path / "b")
    other = VGGT(VGGTConfig.tiny(embed_dim=32, dpt_features=16))  # different sizes
    with pytest.raises(UserError, match="does not fit"):
        load_adapter(other, out_dir)
