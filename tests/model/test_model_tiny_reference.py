"""The tiny reference fixture: our model, loaded strictly, reproduces every saved upstream tensor."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_train.model import VGGT, VGGTConfig, load_pretrained, pose_encoding_to_extri_intri

ATOL, RTOL = 1e-4, 1e-5
PREFIX = "state_dict."


@pytest.fixture(scope="module")
def reference(vggt_fixtures):
    tensors = load_file(str(vggt_fixtures / "vggt_tiny_reference.safetensors"))
    meta = json.loads((vggt_fixtures / "vggt_tiny_reference.json").read_text())
    state_dict = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    return tensors, meta, state_dict


def config_from_reference(meta: dict) -> VGGTConfig:
    """Translate the fixture's upstream constructor arguments into a VGGTConfig."""
    agg, dino = meta["aggregator"]["kwargs"], meta["aggregator.patch_embed"]["kwargs"]
    cam, depth, point = meta["camera_head"]["kwargs"], meta["depth_head"]["kwargs"], meta["point_head"]["kwargs"]
    assert dino["embed_dim"] == agg["embed_dim"] and dino["img_size"] == agg["img_size"]
    assert cam["dim_in"] == depth["dim_in"] == point["dim_in"] == 2 * agg["embed_dim"]
    assert depth["out_channels"] == point["out_channels"] and depth["features"] == point["features"]
    return VGGTConfig(
        img_size=agg["img_size"],
        patch_size=agg["patch_size"],
        embed_dim=agg["embed_dim"],
        depth=agg["depth"],
        num_heads=agg["num_heads"],
        mlp_ratio=agg["mlp_ratio"],
        num_register_tokens=agg["num_register_tokens"],
        qk_norm=agg["qk_norm"],
        rope_freq=agg["rope_freq"],
        init_values=agg["init_values"],
        patch_embed="dinov2",  # the fixture's conv patch embed was replaced by a DINOv2 ViT
        dino_depth=dino["depth"],
        dino_num_heads=dino["num_heads"],
        camera_trunk_depth=cam["trunk_depth"],
        camera_num_heads=cam["num_heads"],
        camera_iterations=meta["camera_head"]["num_iterations_in_forward"],
        dpt_features=depth["features"],
        dpt_out_channels=tuple(depth["out_channels"]),
        dpt_intermediate_layer_idx=tuple(depth["intermediate_layer_idx"]),
        enable_camera=True,
        enable_depth=True,
        enable_point=True,
    )


def assert_close(name, actual, expected):
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=ATOL, rtol=RTOL), f"{name}: max abs diff {diff:.3g}"


def test_tiny_preset_is_the_reference_configuration(reference):
    _, meta, _ = reference
    assert VGGTConfig.tiny() == config_from_reference(meta)


def test_layer_norms_as_built(reference):
    _, meta, _ = reference
    modules = dict(VGGT(config_from_reference(meta)).named_modules())
    for name, spec in meta["layer_norms_as_built"].items():
        norm = modules[name.replace(".N.", ".0.")]
        assert norm.eps == spec["eps"], name
        assert norm.elementwise_affine == spec["elementwise_affine"], name
        assert list(norm.normalized_shape) == spec["normalized_shape"], name


def load_reference_model(reference, directory, kind: str) -> VGGT:
    """The reference config loaded by load_pretrained from a `.safetensors` or `.pt` file.

    kind: "safetensors", "pt", or "meta-pt" (model built on the meta device, loaded by assign).
    """
    _, meta, state_dict = reference
    path = directory / f"tiny.{kind.split('-')[-1]}"
    if path.suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    with torch.device("meta" if kind.startswith("meta") else "cpu"):
        model = VGGT(config_from_reference(meta))
    report = load_pretrained(model, path)
    assert report.num_loaded == meta["state_dict"]["num_keys"] == 347
    assert report.dropped == {"track_head.": 0}
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    return model.eval()


@pytest.fixture(scope="module", params=["safetensors", "pt", "meta-pt"])
def loaded_model(request, reference, tmp_path_factory):
    return load_reference_model(reference, tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def reference_model(reference, tmp_path_factory):
    return load_reference_model(reference, tmp_path_factory.mktemp("reference"), "safetensors")


@pytest.mark.parametrize("case", ["case_a", "case_b"])
def test_outputs_match_reference(loaded_model, reference, case):
    tensors, _, _ = reference
    images = tensors[f"{case}.images"]
    with torch.no_grad():
        out = loaded_model(images)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert out[key].dtype == torch.float32
        assert_close(f"{case}.{key}", out[key], tensors[f"{case}.{key}"])
    assert len(out["pose_enc_list"]) == 4
    for i, pose_enc in enumerate(out["pose_enc_list"]):
        assert_close(f"{case}.pose_enc_list.{i}", pose_enc, tensors[f"{case}.pose_enc_list.{i}"])
    assert torch.equal(out["images"], images)

    height, width = images.shape[-2:]
    with torch.no_grad():
        pos_embed = loaded_model.aggregator.patch_embed.interpolate_pos_encoding(height, width)
    assert_close(f"{case}.dino_pos_embed_interp", pos_embed, tensors[f"{case}.dino_pos_embed_interp"])


def test_intermediates_match_reference(reference_model, reference):
    tensors, _, _ = reference
    images = tensors["case_a.images"]
    batch, frames, _, height, width = images.shape
    aggregator = reference_model.aggregator
    with torch.no_grad():
        tokens_list, patch_start_idx = aggregator(images)
        normalized = (images - aggregator._resnet_mean) / aggregator._resnet_std
        patch_tokens = aggregator.embed_patches(normalized.reshape(batch * frames, 3, height, width))
        pose_enc = reference_model(images)["pose_enc"]
    assert patch_start_idx == 5 and len(tokens_list) == 4
    for i, tokens in enumerate(tokens_list):
        assert_close(f"aggregated_tokens.{i}", tokens, tensors[f"case_a.aggregated_tokens.{i}"])
    assert_close("patch_tokens", patch_tokens, tensors["case_a.patch_tokens"])
    extrinsic, intrinsic = pose_encoding_to_extri_intri(pose_enc, (height, width))
    assert_close("extrinsic", extrinsic, tensors["case_a.extrinsic"])
    assert_close("intrinsic", intrinsic, tensors["case_a.intrinsic"])


def test_frame_chunking_does_not_change_dense_outputs(reference_model, reference):
    tensors, _, _ = reference
    images = tensors["case_a.images"]  # 3 frames; chunks of 2 → [2, 1]
    head = reference_model.depth_head
    with torch.no_grad():
        tokens_list, start = reference_model.aggregator(images)
        whole = head(tokens_list, images, start)
        head.frames_chunk_size = 2
        try:
            chunked = head(tokens_list, images, start)
        finally:
            head.frames_chunk_size = 8
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
