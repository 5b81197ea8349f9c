"""load_pretrained: strict, names every offending key, drops disabled heads by prefix and counts them."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_train.errors import UserError
from lora_train.model import VGGT, VGGTConfig, load_pretrained

PREFIX = "state_dict."


@pytest.fixture(scope="module")
def reference_state_dict(vggt_fixtures):
    tensors = load_file(str(vggt_fixtures / "vggt_tiny_reference.safetensors"))
    return {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}


@pytest.fixture
def state_dict(reference_state_dict):
    return dict(reference_state_dict)


def save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_renamed_key_is_named(tmp_path, state_dict):
    old = "aggregator.frame_blocks.2.attn.qkv.weight"
    state_dict["aggregator.frame_blocks.2.attn.qkv_renamed.weight"] = state_dict.pop(old)
    with pytest.raises(UserError) as err:
        load_pretrained(VGGT(VGGTConfig.tiny()), save(tmp_path, state_dict))
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys 1 (aggregator.frame_blocks.2.attn.qkv.weight)" in message
    assert "unexpected keys 1 (aggregator.frame_blocks.2.attn.qkv_renamed.weight)" in message


def test_missing_key_is_named(tmp_path, state_dict):
    del state_dict["depth_head.scratch.refinenet1.resConfUnit1.conv1.bias"]
    with pytest.raises(UserError, match=r"missing keys 1 \(depth_head\.scratch\.refinenet1\.resConfUnit1\.conv1\.bias\)"):
        load_pretrained(VGGT(VGGTConfig.tiny()), save(tmp_path, state_dict))


def test_wrong_shape_is_named(tmp_path, state_dict):
    state_dict["camera_head.embed_pose.weight"] = torch.zeros(128, 8)
    with pytest.raises(UserError) as err:
        load_pretrained(VGGT(VGGTConfig.tiny()), save(tmp_path, state_dict))
    assert "shape mismatches 1 (camera_head.embed_pose.weight: checkpoint [128, 8] vs model [128, 9])" in str(err.value)
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)


def test_many_offending_keys_are_summarised(tmp_path, state_dict):
    for key in [k for k in state_dict if k.startswith("aggregator.global_blocks.")]:
        del state_dict[key]
    with pytest.raises(UserError) as err:
        load_pretrained(VGGT(VGGTConfig.tiny()), save(tmp_path, state_dict))
    message = str(err.value)
    assert "\n" not in message and "missing keys 72 (" in message and "and 67 more" in message


def test_failed_load_leaves_weights_untouched(tmp_path, state_dict):
    model = VGGT(VGGTConfig.tiny())
    before = model.camera_head.embed_pose.weight.clone()
    del state_dict["aggregator.camera_token"]
    with pytest.raises(UserError):
        load_pretrained(model, save(tmp_path, state_dict))
    assert torch.equal(model.camera_head.embed_pose.weight, before)


def test_training_checkpoint_with_model_key_loads(tmp_path, state_dict):
    checkpoint = {"model": state_dict, "optimizer": {}, "prev_epoch": 3, "steps": {"train": 10}}
    model = VGGT(VGGTConfig.tiny())
    report = load_pretrained(model, save(tmp_path, checkpoint))
    assert report.num_loaded == len(state_dict)
    assert torch.equal(model.aggregator.camera_token, state_dict["aggregator.camera_token"])


def test_disabled_heads_are_dropped_by_prefix_and_counted(tmp_path, state_dict):
    state_dict["track_head.tracker.query_ref_token"] = torch.zeros(1, 2, 388)
    state_dict["track_head.feature_extractor.norm.weight"] = torch.ones(128)
    num_point = sum(k.startswith("point_head.") for k in state_dict)
    assert num_point == 62
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))

    model = VGGT(VGGTConfig.tiny(enable_point=False))
    report = load_pretrained(model, path)
    assert report.dropped == {"track_head.": 2, "point_head.": 62}
    assert report.num_dropped == 64
    assert report.num_loaded == len(state_dict) - 64 == len(model.state_dict())
    text = str(report)
    assert "2 track_head.*" in text and "62 point_head.*" in text and str(path) in text
    assert torch.equal(model.depth_head.norm.weight, state_dict["depth_head.norm.weight"])


def test_only_disabled_heads_are_dropped(tmp_path, state_dict):
    """A camera_head key is not dropped for a model that builds the camera head: it must match."""
    state_dict["camera_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"unexpected keys 1 \(camera_head\.extra\.weight\)"):
        load_pretrained(VGGT(VGGTConfig.tiny(enable_point=False)), save(tmp_path, state_dict))


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope" / "model.pt"
    with pytest.raises(UserError, match="checkpoint not found: .*nope/model.pt"):
        load_pretrained(VGGT(VGGTConfig.tiny()), path)


@pytest.mark.parametrize("name", ["garbage.pt", "garbage.safetensors"])
def test_unreadable_file_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match=f"cannot read checkpoint .*{name}"):
        load_pretrained(VGGT(VGGTConfig.tiny()), path)


def test_file_without_state_dict_is_named(tmp_path):
    path = save(tmp_path, {"epoch": 3, "notes": "no weights"})
    with pytest.raises(UserError, match="holds no state_dict"):
        load_pretrained(VGGT(VGGTConfig.tiny()), path)


def anonymous_rss_mb() -> float:
    """Private (non file-backed) resident memory of this process, in MB (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("RssAnon not available")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_meta_model_loads_memory_mapped_without_a_copy(tmp_path, suffix):
    config = VGGTConfig.tiny(embed_dim=192)  # ~35 MB of fp32 weights
    state_dict = VGGT(config).state_dict()
    num_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    assert num_bytes > 30e6
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(state_dict, path)
    else:
        save_file(state_dict, str(path))
    expected = {k: v.clone() for k, v in list(state_dict.items())[:20]}
    del state_dict

    with torch.device("meta"):
        model = VGGT(config)
    before = anonymous_rss_mb()
    load_pretrained(model, path)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())  # touch every page
    grown = anonymous_rss_mb() - before
    assert checksum == checksum  # not NaN
    assert grown < 0.3 * num_bytes / 1e6, f"loading copied {grown:.0f} MB of {num_bytes / 1e6:.0f} MB"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_lora_wrapped_model_is_refused(tmp_path, state_dict):
    """The fork's bug: wrapping first leaves the wrapped layers at random init. We refuse."""
    from peft import LoraConfig, get_peft_model

    path = save(tmp_path, state_dict)
    wrapped = get_peft_model(VGGT(VGGTConfig.tiny()), LoraConfig(r=2, target_modules=["qkv"]))
    with pytest.raises(UserError, match="LoRA-wrapped model: call load_pretrained on the plain VGGT first"):
        load_pretrained(wrapped, path)
